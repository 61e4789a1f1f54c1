"""Train the embedded Qwen3-VL on the shapes suite: transformers' own model, our tokenizer and template.

    python -m qvl_compile.training.shapes OUT_DIR --steps 6000   # seeded; --start-from continues from saved weights

OUT_DIR receives a complete checkpoint (the trained architecture, from `write_tiny_untrained`, its weights replaced
every `save_every` steps) and train_log.jsonl (loss per task, teacher-forced accuracy on held-out cases).
Loss: each example's mean over its reply tokens, so long grounding replies do not outweigh one-word answers.
Curriculum: colour and shape first; each other task joins once held-out accuracy says the ones before it are
learned (TrainConfig.stages, gated stages; docs/training.md says why and what was measured).
"""
from __future__ import annotations

import argparse
import inspect
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from qvl_compile.tasks.shapes import SPEC_SIZES, ShapeSizes
from qvl_compile.training.batches import TRAINING_ONLY_KEYS, BatchSource
from qvl_compile.training.examples import IGNORE, ExampleEncoder, collate
from qvl_compile.training.pointer import PointerChoiceError, PointerLoss
from qvl_compile.training.pointer_readout import PointerReadout
from qvl_compile.training.stepping_stones import TRAINING_TASKS, make_training_case
from qvl_compile.training.vision_aux import VisionAux

log = logging.getLogger(__name__)

HELD_OUT_SEED = 999_983  # teacher-forced accuracy during training; the README's table uses yet another seed


@dataclass(frozen=True)
class Stage:
    """One curriculum stage: the tasks a batch is drawn from (with weights), and when to move on."""
    tasks: tuple[tuple[str, float], ...]
    # Move on once every task named here reaches this held-out accuracy (checked every eval_every steps) ...
    gates: tuple[tuple[str, float], ...] = ()
    # ... or after this many steps in the stage, whichever comes first. The last stage runs to the end.
    max_steps: int = 0
    sizes: ShapeSizes = SPEC_SIZES  # the shapes' sizes in this stage's training cases


# Measured (docs/training.md): mixing all six tasks from the start stalls at the answer priors, and at the suite's
# shape sizes the shape features are never learned (loss at chance after 2,500 steps); with shapes of 0.6-0.9 of the
# image they are learned in 300 steps. So shapes start large and shrink to the suite's sizes, and each task joins
# only once the ones before it are learned. Gates are read on held-out cases at the suite's own sizes.
_BIG, _MEDIUM = ShapeSizes(0.55, 0.9), ShapeSizes(0.3, 0.7)
_BASICS = (("color", 1.0), ("shape", 1.0))
DEFAULT_STAGES: tuple[Stage, ...] = (
    Stage((("color", 1.0), ("shape", 2.0)), max_steps=400, sizes=_BIG),
    Stage((("color", 1.0), ("shape", 2.0)), gates=(("shape", 0.9),), max_steps=600, sizes=_MEDIUM),
    Stage((("color", 1.0), ("shape", 2.0)), gates=(("color", 0.95), ("shape", 0.95)), max_steps=800),
    Stage(_BASICS + (("count", 2.0),), gates=(("count", 0.9),), max_steps=1000),
    Stage(_BASICS + (("count", 1.0), ("two_images", 2.0)), gates=(("two_images", 0.95),), max_steps=800),
    Stage(_BASICS + (("count", 1.0), ("two_images", 1.0), ("motion", 2.0)), gates=(("motion", 0.9),), max_steps=1000),
    Stage(_BASICS + (("count", 1.0), ("two_images", 1.0), ("motion", 1.0), ("ground", 4.0))),
)

# The finishing recipe continues from DEFAULT_STAGES' checkpoint (--recipe finish --start-from DIR --lr 5e-4):
# count at half of every batch (three shapes were its weak case), the other tasks replayed so they are not
# forgotten. Measured first (docs/training.md): 600 steps that gave two_images its stepping stone
# (training/stepping_stones.py) at weight 3 learned that stone in 300 steps, but left two_images and ground at
# chance and let shape slip to 75-88% held-out; the stone stays in at a small weight as a base for the next try.
FINISHING_STAGES: tuple[Stage, ...] = (
    Stage((("color", 0.5), ("shape", 1.0), ("motion", 0.5), ("two_images", 0.5), ("image_color", 0.5),
           ("ground", 1.0), ("count", 4.0))),
)

# The grounding recipe continues from the finishing runs' checkpoint, with batches of 64 on a GPU (--device cuda
# --workers N): grounding and two_images, the two tasks still at chance after them, at 2/3 of every batch, the
# others replayed. Measured (docs/training.md, GPU runs): 1,267 steps of 64 moved neither (grounding loss 0.75 ->
# 0.70, two_images at chance); kept to repeat that finding.
GROUNDING_STAGES: tuple[Stage, ...] = (
    Stage((("color", 0.5), ("shape", 1.0), ("count", 1.5), ("motion", 0.5), ("image_color", 0.5),
           ("two_images", 2.0), ("ground", 4.0))),
)
# which_image: two_images through answers that one feature predicts (docs/training.md, "Which image"): the colour
# asked is red only, then red, blue or green, then any; each stage replays the solved tasks.
_REPLAY = (("color", 0.5), ("shape", 1.0), ("count", 1.0), ("motion", 0.5), ("image_color", 0.5))
WHICH_IMAGE_STAGES: tuple[Stage, ...] = (
    Stage(_REPLAY + (("two_images_red", 4.0),), gates=(("two_images_red", 0.9),), max_steps=600),
    Stage(_REPLAY + (("two_images_red", 1.0), ("two_images_rgb", 4.0)), gates=(("two_images_rgb", 0.9),),
          max_steps=800),
    Stage(_REPLAY + (("two_images_rgb", 1.0), ("two_images", 4.0))),
)
# After which_image: every task, two_images at a quarter of each batch (batches of 64 on a GPU).
CONSOLIDATING_STAGES: tuple[Stage, ...] = (
    Stage((("color", 0.5), ("shape", 1.5), ("count", 2.0), ("motion", 0.5), ("image_color", 0.5),
           ("two_images_rgb", 0.5), ("two_images", 3.0), ("ground", 1.0))),
)
# A pilot for grounding (docs/training.md, "What is left: grounding"): one shape per image first, where the box is
# where the coloured patches are, beside the suite's ground and the solved tasks.
GROUNDING_ONE_STAGES: tuple[Stage, ...] = (
    Stage((("color", 0.5), ("shape", 1.0), ("count", 1.5), ("motion", 0.5), ("two_images", 1.0),
           ("ground_one", 4.0), ("ground", 1.0))),
)
# A second pilot: the position readout alone first (shape_side), beside ground_one.
SHAPE_SIDE_STAGES: tuple[Stage, ...] = (
    Stage((("color", 0.5), ("shape", 1.0), ("count", 1.0), ("motion", 0.5), ("two_images", 0.5),
           ("shape_side", 3.0), ("ground_one", 3.0))),
)
# A third: each edge of the box as its own answer (shape_edge), beside the side and ground_one, the solved tasks
# replayed at the weights that kept them in the which_image runs.
EDGE_STAGES: tuple[Stage, ...] = (
    Stage((("color", 0.5), ("shape", 1.0), ("count", 1.5), ("motion", 0.5), ("two_images", 1.0),
           ("shape_side", 1.0), ("shape_edge", 4.0), ("ground_one", 1.5))),
)
# A fourth, with the dense position loss on (--vision-aux-weight): the tower's tokens carry no position until it is
# on (bench/position_probe.py); the readouts of it (side, one edge, one box) beside the suite's ground, solved tasks
# replayed.
POSITION_STAGES: tuple[Stage, ...] = (
    Stage((("color", 0.5), ("shape", 1.0), ("count", 1.0), ("motion", 0.5), ("two_images", 0.5),
           ("shape_side", 1.0), ("shape_edge", 3.0), ("ground_one", 3.0), ("ground", 1.0))),
)
# A fifth: the first digit of an edge as the whole answer (shape_tenth), with the position loss on.
TENTHS_STAGES: tuple[Stage, ...] = (
    Stage((("color", 0.5), ("shape", 1.0), ("count", 1.0), ("motion", 0.5), ("two_images", 0.5),
           ("shape_side", 0.5), ("shape_tenth", 4.0), ("ground_one", 2.0), ("ground", 1.0))),
)
# After tenths: the suite's box replies at most of each batch, the stones that read one number kept in.
BOXES_STAGES: tuple[Stage, ...] = (
    Stage((("color", 0.5), ("shape", 1.0), ("count", 1.5), ("motion", 0.5), ("two_images", 0.5),
           ("shape_side", 0.25), ("shape_tenth", 1.5), ("ground_one", 3.0), ("ground", 3.0))),
)
# After boxes: picking the named shape out of two or three. The boxes checkpoint boxed one-shape images right 51% of
# the time and two- or three-shape ones 3-10% (docs/training.md, "Picking out"): the stones ask for the named
# shape's side and one first digit, one token each, beside the suite's ground.
SELECT_STAGES: tuple[Stage, ...] = (
    Stage((("color", 0.5), ("shape", 1.0), ("count", 1.5), ("motion", 0.5), ("two_images", 0.5),
           ("shape_tenth", 0.5), ("ground_one", 1.0), ("ground_side", 1.5), ("ground_tenth", 2.0), ("ground", 3.0))),
)
# Measured: 1,000 steps of `select` left ground_side and ground_tenth at chance (held-out 44% and 16%). So the pick
# is built as two_images' was (which_image): by the shape's colour, red alone first (one fixed feature to look up),
# then any colour, then by the full label; the suite's ground stays in every stage.
_PICK_REPLAY = (("color", 0.5), ("shape", 1.0), ("count", 1.5), ("motion", 0.5), ("two_images", 0.5),
                ("shape_tenth", 0.5))
PICK_STAGES: tuple[Stage, ...] = (
    Stage(_PICK_REPLAY + (("red_side", 3.0), ("ground", 2.0)), gates=(("red_side", 0.9),), max_steps=800),
    Stage(_PICK_REPLAY + (("red_side", 0.5), ("color_side", 3.0), ("ground", 2.0)), gates=(("color_side", 0.9),),
          max_steps=1200),
    Stage(_PICK_REPLAY + (("color_side", 0.5), ("ground_side", 1.5), ("ground_tenth", 1.5), ("ground_one", 1.0),
                          ("ground", 3.0))),
)
# After pick (2026-12-06): the suite's ground at most of each batch. The three arms of 2026-12-05 gained from steps,
# not from their auxiliary losses, and pick's last stage gives ground a quarter of each batch (3 of 12) and the
# stones and replay the rest; here ground has 8.5 of 12, the stones are dropped (the pointer loss does their job) and
# the solved tasks are replayed at the weights that held them.
FOCUS_STAGES: tuple[Stage, ...] = (
    Stage((("color", 0.25), ("shape", 0.5), ("count", 1.0), ("motion", 0.25), ("two_images", 0.5),
           ("ground_one", 1.0), ("ground", 8.5))),
)
RECIPES = {"full": DEFAULT_STAGES, "finish": FINISHING_STAGES, "grounding": GROUNDING_STAGES,
           "which_image": WHICH_IMAGE_STAGES, "consolidate": CONSOLIDATING_STAGES,
           "grounding_one": GROUNDING_ONE_STAGES, "shape_side": SHAPE_SIDE_STAGES,
           "edges": EDGE_STAGES, "position": POSITION_STAGES, "tenths": TENTHS_STAGES, "boxes": BOXES_STAGES,
           "select": SELECT_STAGES, "pick": PICK_STAGES,
           "focus": FOCUS_STAGES}


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 6000
    batch: int = 16
    lr: float = 1e-3
    min_lr: float = 5e-5
    warmup: int = 100
    decay_fraction: float = 0.2  # cosine decay to min_lr over the last fifth of the steps; constant lr before it
    weight_decay: float = 0.01
    seed: int = 0
    threads: int = 2
    stages: tuple[Stage, ...] = DEFAULT_STAGES
    first_stage: int = 0  # > 0: begin at this stage (an earlier leg passed the ones before it)
    log_every: int = 50
    eval_every: int = 100
    save_every: int = 500
    held_out: int = 32  # cases per task for teacher-forced accuracy (and the stage gates)
    device: str = "cpu"  # or "cuda"
    workers: int = 0  # processes making batches ahead of the training step (0: made in line)
    # > 0: after `calibration_steps`, set `steps` so the whole run takes about this many seconds (the chosen
    # number is written to train_config.json; pass it as --steps to repeat the run exactly)
    time_budget: float = 0.0
    calibration_steps: int = 100
    # The vision tower's learned position embedding learns at this multiple of lr. It is the only thing that tells
    # one white background patch from another, and it starts 25x smaller than the patch features (RMS 0.06 vs ~1.5):
    # at Adam's ~lr per step it grows too slowly for grounding (docs/training.md, "Position").
    position_lr_scale: float = 1.0
    # > 0: add this multiple of the dense position loss on the vision tower's image tokens (training/vision_aux.py):
    # each token regresses its centre and the box it lies in, so that position reaches what the decoder reads
    vision_aux_weight: float = 0.0
    # > 0 (with vision_aux_weight): the same tokens also classify their box's hundreds and tens digits, this weighted
    # (a digit the decoder can copy from the tokens it attends to, instead of cutting a position into digits itself)
    vision_digit_weight: float = 0.0
    # > 0: add this multiple of the pointer loss (training/pointer.py): one decoder head attends to the boxed shape
    pointer_weight: float = 0.0
    pointer_layer: int = 2
    pointer_head: int = 0
    # > 0 (with pointer_weight): a linear head on the pointer head's output classifies the boxed shape's hundreds and
    # tens digits at the reply positions, this weighted (training/pointer_readout.py): the head carries the box out
    pointer_digit_weight: float = 0.0


def _lr(config: TrainConfig, step: int) -> float:
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    decay_start = config.steps * (1 - config.decay_fraction)
    if step < decay_start:
        return config.lr
    progress = (step - decay_start) / max(1.0, config.steps - decay_start)
    return config.min_lr + 0.5 * (config.lr - config.min_lr) * (1 + math.cos(math.pi * min(1.0, progress)))


def _stage_passed(stage: Stage, steps_in_stage: int, accuracy: dict[str, float]) -> bool:
    if stage.max_steps and steps_in_stage >= stage.max_steps:
        return True
    return bool(stage.gates) and all(accuracy.get(task, 0.0) >= bar for task, bar in stage.gates)


def per_example_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """[B, S, V], [B, S] -> [B]: mean cross-entropy over each example's labelled next tokens."""
    logits, labels = logits[:, :-1], labels[:, 1:]
    token = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels.clamp(min=0), reduction="none")
    mask = (labels != IGNORE).float()
    return (token * mask).sum(1) / mask.sum(1).clamp(min=1)


def model_inputs(model, batch: dict) -> dict:
    """The batch entries the model's forward takes (not labels or training targets; mm_token_type_ids on 5.x only)."""
    kwargs = {k: v for k, v in batch.items() if k not in TRAINING_ONLY_KEYS}
    if "mm_token_type_ids" not in inspect.signature(model.forward).parameters:  # transformers 4.57
        kwargs.pop("mm_token_type_ids")
    return kwargs


def _forward(model, batch: dict) -> torch.Tensor:
    return model(**model_inputs(model, batch), use_cache=False).logits


@torch.no_grad()
def teacher_forced_accuracy(model, examples, pad_id: int, device: str = "cpu") -> dict[str, float]:
    """Share of held-out examples whose every reply token is the argmax (the greedy reply, without decoding)."""
    model.eval()
    right: dict[str, list[bool]] = {}
    for start in range(0, len(examples), 16):
        chunk = examples[start:start + 16]
        batch = _on(collate(chunk, pad_id, model.config.image_token_id, model.config.video_token_id), device)
        logits = _forward(model, batch)
        predicted, labels = logits[:, :-1].argmax(-1), batch["labels"][:, 1:]
        ok = ((predicted == labels) | (labels == IGNORE)).all(1)
        for example, correct in zip(chunk, ok.tolist()):
            right.setdefault(example.task, []).append(correct)
    model.train()
    return {task: float(np.mean(v)) for task, v in right.items()}


def _on(batch: dict, device: str) -> dict:
    return {k: v.to(device) for k, v in batch.items()} if device != "cpu" else batch


def _save(model, out_dir: Path, step: int, config: TrainConfig, *heads: torch.nn.Module) -> None:
    """The model, then each training-only head (`.save(folder)`) beside it, then the step reached."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()
               if not (k == "lm_head.weight" and model.config.tie_word_embeddings)}
    tmp = out_dir / "model.safetensors.tmp"
    save_file(tensors, str(tmp), metadata={"format": "pt", "step": str(step), "seed": str(config.seed)})
    tmp.replace(out_dir / "model.safetensors")
    for head in heads:
        head.save(out_dir)
    torch.save({"step": step}, out_dir / "train_state.pt")


def _record_config(out_dir: Path, config: TrainConfig, start_from) -> None:
    recorded = {**asdict(config), "start_from": str(start_from) if start_from else None}
    (out_dir / "train_config.json").write_text(json.dumps(recorded, indent=2) + "\n")


POSITION_EMBEDDING = "visual.pos_embed.weight"


def _optimizer(model, config: TrainConfig, *heads: torch.nn.Module) -> torch.optim.Optimizer:
    """AdamW over the model and the training-only heads."""
    named = list(model.named_parameters()) + [item for head in heads for item in head.named_parameters()]
    position = [p for n, p in named if n.endswith(POSITION_EMBEDDING)]
    decay = [p for n, p in named if p.ndim >= 2 and not n.endswith(POSITION_EMBEDDING)]
    no_decay = [p for n, p in named if p.ndim < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay, "lr_scale": 1.0},
                              {"params": no_decay, "weight_decay": 0.0, "lr_scale": 1.0},
                              {"params": position, "weight_decay": 0.0, "lr_scale": config.position_lr_scale}],
                             lr=config.lr, betas=(0.9, 0.98))


def _train_step(model, optimizer, batch: dict, lr: float, extras: dict) -> tuple[list[float], dict[str, float]]:
    """One optimizer step on one batch; `extras`: name -> (an auxiliary loss with `.loss(batch)`, its weight).
    -> each example's loss, and each auxiliary loss's value (with its `parts`, where it keeps them)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group["lr_scale"]
    losses = per_example_loss(_forward(model, batch), batch["labels"])
    values = {name: extra.loss(batch) for name, (extra, _) in extras.items()}
    total = losses.mean() + sum(weight * values[name] for name, (_, weight) in extras.items())
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    torch.nn.utils.clip_grad_norm_([p for group in optimizer.param_groups for p in group["params"]], 1.0)
    optimizer.step()
    logged = {name: float(value.detach()) for name, value in values.items()}
    for extra, _ in extras.values():
        logged.update(getattr(extra, "parts", {}))
    return losses.tolist(), logged


def _calibrated(config: TrainConfig, done: int, seconds: float) -> TrainConfig:
    """The run's length chosen from the speed of its first steps, to end within config.time_budget."""
    per_step = seconds / done
    steps = max(done + 1, int(config.time_budget / per_step))
    log.info("%.3f s per step over the first %d steps: %d steps fit in %.0f s", per_step, done, steps,
             config.time_budget)
    return replace(config, steps=min(config.steps, steps) if config.steps else steps)


def _held_out_examples(config: TrainConfig, encoder: ExampleEncoder) -> dict[str, list]:
    """Held-out cases for the tasks the recipe's stages use. Cases are drawn for every task in TRAINING_TASKS'
    order from one generator, so a task's cases do not depend on the recipe; only the recipe's are encoded."""
    rng = np.random.default_rng(HELD_OUT_SEED)
    used = {task for stage in config.stages for task, weight in stage.tasks if weight > 0}
    cases = {task: [make_training_case(task, rng) for _ in range(config.held_out)] for task in TRAINING_TASKS}
    return {task: [encoder.encode(case) for case in cases[task]] for task in TRAINING_TASKS if task in used}


def _auxiliary_losses(model, config: TrainConfig, start: Path) -> tuple[dict, list[torch.nn.Module]]:
    """-> the auxiliary losses the config turns on (name -> (loss, weight)), and their trainable heads, each
    continuing with the one saved in `start` where there is one."""
    extras, heads = {}, []
    if config.vision_aux_weight > 0:
        aux = VisionAux(model, config.vision_digit_weight)
        extras["vision_aux"] = (aux, config.vision_aux_weight)
        heads.append(aux)
    if config.pointer_weight > 0:
        extras["pointer"] = (PointerLoss(model, config.pointer_layer, config.pointer_head), config.pointer_weight)
    if config.pointer_digit_weight > 0:
        readout = PointerReadout(model, config.pointer_layer, config.pointer_head)
        extras["pointer_readout"] = (readout, config.pointer_digit_weight)
        heads.append(readout)
    for head in heads:
        if head.load_if_saved(start):
            log.info("%s: continuing with the head saved in %s", type(head).__name__, start)
    return extras, heads


def train(out_dir: str | Path, config: TrainConfig, start_from: str | Path | None = None) -> Path:
    """Write the untrained checkpoint to out_dir, then train it in place; returns out_dir."""
    from qvl_compile.families.qwen3_vl.fixtures import write_tiny_untrained
    from qvl_compile.families.qwen3_vl.loaders import load_full_model

    out_dir = Path(out_dir)
    torch.manual_seed(config.seed)
    torch.set_num_threads(config.threads)
    if not (out_dir / "config.json").is_file():
        write_tiny_untrained(out_dir, seed=config.seed)
    model = load_full_model(Path(start_from or out_dir)).to(config.device).train()
    encoder = ExampleEncoder(out_dir)
    ids = (model.config.image_token_id, model.config.video_token_id)
    extras, heads = _auxiliary_losses(model, config, Path(start_from or out_dir))
    optimizer = _optimizer(model, config, *heads)
    held_out = _held_out_examples(config, encoder)
    batches = BatchSource(out_dir, encoder, config.seed, config.batch, ids, config.workers)
    _record_config(out_dir, config, start_from)
    log_file = (out_dir / "train_log.jsonl").open("a")
    window: dict[str, list[float]] = {}
    started = time.time()
    stage_index, stage_start, step = config.first_stage, 0, 0
    while step < config.steps:
        stage = config.stages[stage_index]
        tasks, batch = batches.get(step, stage, config.steps)
        losses, extra_losses = _train_step(model, optimizer, _on(batch, config.device), _lr(config, step), extras)
        for task, loss in list(zip(tasks, losses)) + list(extra_losses.items()):
            window.setdefault(task, []).append(loss)
        step += 1
        if config.time_budget and step == config.calibration_steps:
            config = _calibrated(config, step, time.time() - started)
            _record_config(out_dir, config, start_from)
        if step % config.log_every == 0 or step == config.steps:
            record = {"step": step, "seconds": round(time.time() - started, 1), "lr": _lr(config, step - 1),
                      "stage": stage_index, "loss": {t: round(float(np.mean(v)), 4) for t, v in sorted(window.items())}}
            window = {}
            if step % config.eval_every == 0 or step == config.steps:
                examples = [e for task, weight in stage.tasks if weight > 0 for e in held_out[task]]
                record["held_out_accuracy"] = accuracy = teacher_forced_accuracy(model, examples, encoder.pad_id,
                                                                                 config.device)
                if stage_index + 1 < len(config.stages) and _stage_passed(stage, step - stage_start, accuracy):
                    stage_index, stage_start = stage_index + 1, step
                    record["next_stage"] = stage_index
            log_file.write(json.dumps(record) + "\n")
            log_file.flush()
            log.info("%s", json.dumps(record))
        if step % config.save_every == 0 or step == config.steps:
            _save(model, out_dir, step, config, *heads)
    batches.close()
    log_file.close()
    return out_dir


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--steps", type=int, default=TrainConfig.steps)
    parser.add_argument("--batch", type=int, default=TrainConfig.batch)
    parser.add_argument("--lr", type=float, default=TrainConfig.lr)
    parser.add_argument("--decay-fraction", type=float, default=TrainConfig.decay_fraction,
                        help="the share of the steps, at the end, over which lr decays to its minimum (cosine)")
    parser.add_argument("--seed", type=int, default=TrainConfig.seed)
    parser.add_argument("--threads", type=int, default=TrainConfig.threads)
    parser.add_argument("--start-from", help="a checkpoint folder to continue from")
    parser.add_argument("--recipe", choices=sorted(RECIPES), default="full",
                        help="full: the curriculum from scratch; finish, grounding: continue a full run "
                             "(with --start-from; docs/training.md)")
    parser.add_argument("--first-stage", type=int, default=0,
                        help="begin at this stage of the recipe, counted from 0 (an earlier leg passed the ones before)")
    parser.add_argument("--device", default=TrainConfig.device, help="cpu or cuda")
    parser.add_argument("--workers", type=int, default=TrainConfig.workers,
                        help="processes making batches ahead of the training step")
    parser.add_argument("--time-budget", type=float, default=TrainConfig.time_budget,
                        help="seconds: choose --steps (as a cap) from the speed of the first steps")
    parser.add_argument("--held-out", type=int, default=TrainConfig.held_out, help="held-out cases per task")
    parser.add_argument("--vision-aux-weight", type=float, default=TrainConfig.vision_aux_weight,
                        help="weight of the dense position loss on the vision tower's image tokens (0: off)")
    parser.add_argument("--vision-digit-weight", type=float, default=TrainConfig.vision_digit_weight,
                        help="weight of a digit head on the same tokens: their box's hundreds and tens (0: off)")
    parser.add_argument("--pointer-weight", type=float, default=TrainConfig.pointer_weight,
                        help="weight of the pointer loss: one decoder head attends to the boxed shape (0: off)")
    parser.add_argument("--pointer-layer", type=int, default=TrainConfig.pointer_layer)
    parser.add_argument("--pointer-head", type=int, default=TrainConfig.pointer_head)
    parser.add_argument("--pointer-digit-weight", type=float, default=TrainConfig.pointer_digit_weight,
                        help="weight of a digit head on the pointer head's output: the boxed shape's hundreds and tens "
                             "(0: off)")
    parser.add_argument("--position-lr-scale", type=float, default=TrainConfig.position_lr_scale,
                        help="the vision position embedding's learning rate as a multiple of --lr")
    args = parser.parse_args(argv)
    if args.vision_digit_weight > 0 and args.vision_aux_weight <= 0:
        parser.error(f"--vision-digit-weight {args.vision_digit_weight}: expected --vision-aux-weight > 0 too, "
                     f"got {args.vision_aux_weight}")
    if args.pointer_digit_weight > 0 and args.pointer_weight <= 0:
        parser.error(f"--pointer-digit-weight {args.pointer_digit_weight}: expected --pointer-weight > 0 too, "
                     f"got {args.pointer_weight}")
    if not 0 < args.decay_fraction <= 1:
        parser.error(f"--decay-fraction: expected a number in (0, 1], got {args.decay_fraction}")
    if not 0 <= args.first_stage < len(RECIPES[args.recipe]):
        parser.error(f"--first-stage: expected 0 to {len(RECIPES[args.recipe]) - 1} for recipe {args.recipe!r}, "
                     f"got {args.first_stage}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    config = TrainConfig(steps=args.steps, batch=args.batch, lr=args.lr, decay_fraction=args.decay_fraction, seed=args.seed,
                         threads=args.threads, stages=RECIPES[args.recipe], first_stage=args.first_stage, device=args.device,
                         workers=args.workers, time_budget=args.time_budget, held_out=args.held_out,
                         position_lr_scale=args.position_lr_scale, vision_aux_weight=args.vision_aux_weight,
                         vision_digit_weight=args.vision_digit_weight,
                         pointer_weight=args.pointer_weight, pointer_layer=args.pointer_layer,
                         pointer_head=args.pointer_head, pointer_digit_weight=args.pointer_digit_weight)
    try:
        train(args.out_dir, config, args.start_from)
    except PointerChoiceError as error:
        parser.error(str(error))


if __name__ == "__main__":
    main()
