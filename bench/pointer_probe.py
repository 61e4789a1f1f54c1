"""Where the pointer head looks when the model boxes a shape: for each grounding case, the model's own reply is fed
back (teacher-forced) and one decoder head's attention, at the positions predicting the reply's tokens, is split
into the mass on the true shape's image tokens and the mass on the tokens of the box the model replied.

    python bench/pointer_probe.py MODEL_DIR CASES.jsonl PREDICTIONS.jsonl [--layer 2 --head 0]

MODEL_DIR: a checkpoint in transformers' layout (PyTorch runs it); PREDICTIONS.jsonl as `qvl-compile eval --output`
wrote it for that model. It tells a wrong box read from the right shape (mass on the true shape high) from a box
read off another shape (mass on the true shape low). The head is training/pointer.py's (--pointer-layer/-head).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from qvl_compile.families.qwen3_vl.loaders import load_full_model
from qvl_compile.runtime.evaluate import read_cases
from qvl_compile.runtime.grounding import parse_boxes
from qvl_compile.tasks.shapes import Case
from qvl_compile.training.examples import ExampleEncoder, collate
from qvl_compile.training.pointer import pointer_targets, predicting_reply
from qvl_compile.training.shapes import model_inputs


def _masses(model, encoder, case: Case, reply: str, layer: int, head: int) -> tuple[float, float]:
    """-> mean attention mass on the true box's tokens and on the replied box's tokens, over the reply positions."""
    config = model.config
    ids = (config.image_token_id, config.video_token_id)
    replied = Case(case.task, case.prompt, reply, case.images)
    example = encoder.encode(replied)
    batch = collate([example], encoder.pad_id, *ids)
    true_target = pointer_targets([case], [example], batch["input_ids"], ids[0], encoder.merge_size)[0]
    reply_target = pointer_targets([replied], [example], batch["input_ids"], ids[0], encoder.merge_size)[0]
    with torch.no_grad():
        attentions = model(**model_inputs(model, batch), use_cache=False, output_attentions=True).attentions
    attention = attentions[layer][0, head]  # [S, S]: query position, key position
    rows = attention[predicting_reply(batch["labels"])[0]]  # [reply tokens, S]
    return float((rows @ true_target).mean()), float((rows @ reply_target).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path)
    parser.add_argument("cases", type=Path)
    parser.add_argument("predictions", type=Path)
    parser.add_argument("--layer", type=int, default=2)
    parser.add_argument("--head", type=int, default=0)
    args = parser.parse_args()
    model = load_full_model(args.model).eval()
    model.model.language_model.config._attn_implementation = "eager"  # sdpa returns no attention weights
    encoder = ExampleEncoder(args.model)
    cases = {c.id: c for c in read_cases(args.cases) if c.task == "ground"}
    rows = []  # (right, mass on the true shape, mass on the replied box)
    for line in args.predictions.read_text().splitlines():
        prediction = json.loads(line)
        case = cases.get(prediction["id"])
        if case is None or parse_boxes(prediction["reply"]) is None or len(case.images) != 1:
            continue
        image = Image.open(case.images[0]).convert("RGB")
        suite_case = Case(case.task, case.prompt, case.answer, (image,))
        rows.append((prediction["correct"], *_masses(model, encoder, suite_case, prediction["reply"], args.layer,
                                                     args.head)))
    right = np.array([r[0] for r in rows], bool)
    true_mass, reply_mass = np.array([r[1] for r in rows]), np.array([r[2] for r in rows])
    print(f"{len(rows)} grounding replies that parse; layer {args.layer} head {args.head}")
    print("| replies | n | mass on the true shape (median) | on the replied box (median) | true shape > 0.5 |")
    print("|---|---:|---:|---:|---:|")
    for name, pick in (("right", right), ("wrong", ~right)):
        if pick.any():
            print(f"| {name} | {pick.sum()} | {np.median(true_mass[pick]):.2f} | {np.median(reply_mass[pick]):.2f} | "
                  f"{(true_mass[pick] > 0.5).mean():.0%} |")


if __name__ == "__main__":
    main()
