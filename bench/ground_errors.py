"""Where grounding replies go wrong: accuracy by how many shapes the image holds, and each coordinate's mean
prediction against the truth, bucketed by the true value.

    python bench/ground_errors.py CASES.jsonl PREDICTIONS.jsonl

CASES.jsonl as `qvl-compile cases` writes it, PREDICTIONS.jsonl as `qvl-compile eval --output` writes it. The
number of shapes is read from the image: the suite's colours present, each counted once (two shapes may share a
colour, so this is a lower bound). A reply that does not parse counts as wrong and has no coordinates.
"""
from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image

from qvl_compile.runtime.evaluate import read_cases
from qvl_compile.runtime.grounding import iou, parse_boxes
from qvl_compile.tasks.shapes import COLORS

COORDINATES = ("x1", "y1", "x2", "y2")
BUCKET = 200  # width of a true-value bucket, in 0..1000 units


def colours_in(path: Path) -> int:
    pixels = np.asarray(Image.open(path).convert("RGB")).reshape(-1, 3)
    return sum(int((pixels == np.array(rgb)).all(1).sum() > 30) for rgb in COLORS.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("cases", type=Path)
    parser.add_argument("predictions", type=Path)
    args = parser.parse_args()
    cases = {c.id: c for c in read_cases(args.cases) if c.task == "ground"}
    by_colours: dict[int, list[bool]] = defaultdict(list)
    pairs = []  # (predicted box, true box) of replies that parse
    for line in args.predictions.read_text().splitlines():
        prediction = json.loads(line)
        case = cases.get(prediction["id"])
        if case is None:
            continue
        truth, reply = parse_boxes(case.answer)[0], parse_boxes(prediction["reply"])
        right = bool(reply) and iou(reply[0].bbox, truth.bbox) >= 0.5
        by_colours[colours_in(case.images[0])].append(right)
        if reply:
            pairs.append((reply[0].bbox, truth.bbox))
    print(f"{sum(map(len, by_colours.values()))} ground cases; IoU >= 0.5 by colours in the image (about the shapes)")
    print("| colours | cases | right |\n|---:|---:|---:|")
    for colours, rights in sorted(by_colours.items()):
        print(f"| {colours} | {len(rights)} | {100 * np.mean(rights):.1f}% |")
    predicted, true = np.array([p for p, _ in pairs]), np.array([t for _, t in pairs])
    print(f"\nmean predicted coordinate by true value ({len(pairs)} replies that parse)")
    buckets = range(0, 1000, BUCKET)
    print("| coordinate | " + " | ".join(f"true {b}-{b + BUCKET}" for b in buckets) + " |")
    print("|---|" + "---:|" * len(buckets))
    for k, name in enumerate(COORDINATES):
        cells = []
        for b in buckets:
            inside = (true[:, k] >= b) & (true[:, k] < b + BUCKET)
            cells.append(f"{predicted[inside, k].mean():.0f} (n={inside.sum()})" if inside.any() else "-")
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
