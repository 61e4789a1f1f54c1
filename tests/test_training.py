"""The trainer learns (slow tier: a few minutes on two cores): a few hundred steps from transformers' own
initialisation on the colour task; the loss falls and held-out accuracy beats chance (1 in 6)."""
import json

import pytest

pytestmark = pytest.mark.slow


def test_a_short_run_learns_colour(tmp_path):
    from qvl_compile.training.shapes import Stage, TrainConfig, train

    config = TrainConfig(steps=300, warmup=30, stages=(Stage((("color", 1.0),)),), log_every=50, eval_every=300,
                         save_every=300, held_out=24, decay_fraction=0.5)
    out = train(tmp_path / "model", config)
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    first, last = log[0]["loss"]["color"], log[-1]["loss"]["color"]
    assert last < 0.5 * first, (first, last)
    accuracy = log[-1]["held_out_accuracy"]["color"]
    assert accuracy >= 0.5, accuracy  # chance is 1/6
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
