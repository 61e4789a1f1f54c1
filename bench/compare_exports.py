"""Two export folders of the same checkpoint, graph against graph (torch-free): do they compute the same thing?

    python bench/compare_exports.py OLD_DIR NEW_DIR [--seed 0]

Vision: both graphs at three grids (one image, mixed images, image + video), max rel of image_embeds and
deepstack_embeds. Decoder: a 40-token prefill with 16 visual positions and 8 cached steps, max rel of the
logits, and whether the greedy tokens agree. Used to check a new exporter against the one it replaces.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from qvl_compile.parity import max_rel, random_pixels
from qvl_compile.runtime.decoder import TextDecoder
from qvl_compile.runtime.vision import VisionEncoder

GRIDS = {"one image": [[1, 8, 12]], "mixed images": [[1, 4, 6], [1, 10, 4]], "image + video": [[1, 6, 6], [2, 4, 8]]}


def compare_vision(old: Path, new: Path, seed: int) -> dict[str, float]:
    encoders = [VisionEncoder.from_export(folder) for folder in (old, new)]
    worst = {}
    for offset, (name, grid) in enumerate(GRIDS.items()):
        pixels = random_pixels(grid, encoders[0].patch_dim, seed + offset)
        a, b = (encoder(pixels, np.asarray(grid, np.int64)) for encoder in encoders)
        worst[name] = max(max_rel(b.image_embeds, a.image_embeds), max_rel(b.deepstack_embeds, a.deepstack_embeds))
    return worst


def compare_decoder(old: Path, new: Path, seed: int) -> dict:
    decoders = [TextDecoder.from_export(folder) for folder in (old, new)]
    facts = decoders[0].facts
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, min(1000, decoders[0].artifact.image_token_id, facts.vocab_size), (1, 40))  # text tokens
    ids[0, 10:26] = decoders[0].artifact.image_token_id
    visual = rng.standard_normal((16, facts.hidden_size)).astype(np.float32)
    deepstack = rng.standard_normal((facts.num_deepstack, 16, facts.hidden_size)).astype(np.float32)
    positions = np.broadcast_to(np.arange(40), (3, 1, 40)).copy()
    runs = []
    for decoder in decoders:
        logits, cache = decoder.forward(ids, positions, decoder.empty_cache(), visual, deepstack,
                                        logit_positions=np.arange(40))
        steps, tokens = [logits], [int(logits[0, -1].argmax())]
        for step in range(8):
            logits, cache = decoder.forward(np.array([[tokens[-1]]]), np.full((3, 1, 1), 40 + step), cache)
            steps.append(logits)
            tokens.append(int(logits[0, -1].argmax()))
        runs.append((steps, tokens))
    (old_steps, old_tokens), (new_steps, new_tokens) = runs
    return {"prefill_max_rel": max_rel(new_steps[0], old_steps[0]),
            "steps_max_rel": max(max_rel(b, a) for a, b in zip(old_steps[1:], new_steps[1:])),
            "greedy_tokens_identical": old_tokens == new_tokens}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("old", type=Path)
    parser.add_argument("new", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    report = {}
    if (args.old / "vision.onnx").is_file() and (args.new / "vision.onnx").is_file():
        report["vision_max_rel"] = compare_vision(args.old, args.new, args.seed)
    if (args.old / "decoder.onnx").is_file() and (args.new / "decoder.onnx").is_file():
        report["decoder"] = compare_decoder(args.old, args.new, args.seed)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
