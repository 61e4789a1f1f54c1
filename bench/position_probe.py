"""How much absolute position the vision tower's output carries: a linear probe (ridge) from each merged image
token to its normalized centre (x, y), fitted on 3/4 of the images, R^2 on the other 1/4.

    python bench/position_probe.py CHECKPOINT [--images 120] [--seed 5] [--cases 64]

Then, whether the decoder reads it: teacher forced on held-out one-shape grounding cases (`ground_one`) and the
suite's `ground`, the loss (nats; a uniform guess 2.30) and argmax accuracy of the first digit of each coordinate.

Grounding needs this: the decoder's rotary positions are relative, so a box's 0..1000 coordinates can only come
from what the image tokens carry (docs/training.md, "Position"). Images: the suite's one-shape images.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from qvl_compile.families.qwen3_vl.loaders import load_full_model
from qvl_compile.runtime.preprocess import ImageProcessorConfig, preprocess_image
from qvl_compile.tasks.shapes import SPEC_SIZES, single_shape
from qvl_compile.training.examples import ExampleEncoder, collate
from qvl_compile.training.shapes import _forward
from qvl_compile.training.stepping_stones import make_training_case
from qvl_compile.training.vision_aux import dense_targets

COORDINATES = ("x1", "y1", "x2", "y2")


@torch.no_grad()
def tower_outputs(model, checkpoint: Path, images: int, seed: int):
    """-> per image: {output name: [tokens, hidden]}, [tokens, 2] normalized centres."""
    config = ImageProcessorConfig.from_dir(checkpoint)
    merge = model.config.vision_config.spatial_merge_size
    rng = np.random.default_rng(seed)
    for _ in range(images):
        image, _ = single_shape(rng, SPEC_SIZES)
        rows, grid = preprocess_image(image, config)
        out = model.model.visual(torch.from_numpy(rows), grid_thw=torch.tensor([grid]))
        merged, deepstack = (out[0], out[1]) if isinstance(out, tuple) else (out.pooler_output, out.deepstack_features)
        named = {"image_embeds": merged, **{f"deepstack {i}": d for i, d in enumerate(deepstack)}}
        yield {k: v.numpy() for k, v in named.items()}, dense_targets(image, grid, merge)[0][:, :2]


def probe_r2(features: list[np.ndarray], centres: list[np.ndarray], ridge: float = 10.0) -> np.ndarray:
    """Fit on the first 3/4 of the images, -> R^2 of (x, y) on the rest."""
    split = len(features) * 3 // 4
    train, test = np.concatenate(features[:split]), np.concatenate(features[split:])
    mean, std = train.mean(0), train.std(0) + 1e-6
    design = lambda a: np.c_[(a - mean) / std, np.ones(len(a))]  # noqa: E731
    y_train, y_test = np.concatenate(centres[:split]), np.concatenate(centres[split:])
    a = design(train)
    weights = np.linalg.solve(a.T @ a + ridge * np.eye(a.shape[1]), a.T @ y_train)
    residual = ((design(test) @ weights - y_test) ** 2).sum(0)
    return 1 - residual / ((y_test - y_test.mean(0)) ** 2).sum(0)


def _first_digits(example, tokenizer) -> list[int]:
    """Positions of the first digit of x1, y1, x2, y2 in the example (the reply's first number is the "2" of
    "bbox_2d")."""
    reply = [int(p) for p in np.nonzero(example.labels != -100)[0]]
    starts = [p for p in reply if tokenizer.id_to_token(int(example.input_ids[p])).isdigit()
              and not tokenizer.id_to_token(int(example.input_ids[p - 1])).isdigit()]
    return starts[1:5]


@torch.no_grad()
def first_digit_table(model, checkpoint: Path, task: str, cases: int, seed: int) -> dict[str, tuple[float, float]]:
    """-> coordinate: (mean loss of its first digit, share of cases where it is the argmax), teacher forced."""
    encoder = ExampleEncoder(checkpoint)
    rng = np.random.default_rng(seed)
    examples = [encoder.encode(make_training_case(task, rng)) for _ in range(cases)]
    losses: dict[str, list[float]] = {c: [] for c in COORDINATES}
    right: dict[str, list[bool]] = {c: [] for c in COORDINATES}
    for start in range(0, cases, 16):
        chunk = examples[start:start + 16]
        batch = collate(chunk, encoder.pad_id, model.config.image_token_id, model.config.video_token_id)
        log_probs = _forward(model, batch).log_softmax(-1)  # [B, S, V]
        for row, example in enumerate(chunk):
            for name, position in zip(COORDINATES, _first_digits(example, encoder.tokenizer)):
                predicted = log_probs[row, position - 1]  # the logits at p-1 predict token p
                losses[name].append(-float(predicted[example.input_ids[position]]))
                right[name].append(int(predicted.argmax()) == int(example.input_ids[position]))
    return {c: (float(np.mean(losses[c])), float(np.mean(right[c]))) for c in COORDINATES}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--images", type=int, default=120)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--cases", type=int, default=64, help="grounding cases per task for the first digits")
    args = parser.parse_args()
    torch.set_num_threads(2)
    model = load_full_model(args.checkpoint).eval()  # loaded once, for the probe and both tasks
    rows = list(tower_outputs(model, args.checkpoint, args.images, args.seed))
    print(f"{args.checkpoint}: {args.images} one-shape images, linear probe R^2 of each token's centre")
    print("| output | R^2 x | R^2 y |\n|---|---:|---:|")
    for name in rows[0][0]:
        r2 = probe_r2([features[name] for features, _ in rows], [centres for _, centres in rows])
        print(f"| {name} | {r2[0]:.3f} | {r2[1]:.3f} |")
    print(f"\nfirst digit of each coordinate, teacher forced, {args.cases} cases per task: loss (nats) / argmax right")
    print("| task | " + " | ".join(COORDINATES) + " |\n|---|" + "---:|" * len(COORDINATES))
    for task in ("ground_one", "ground"):
        table = first_digit_table(model, args.checkpoint, task, args.cases, 424_242)
        print(f"| {task} | " + " | ".join(f"{loss:.2f} / {share:.0%}" for loss, share in table.values()) + " |")


if __name__ == "__main__":
    main()
