"""Training batches, step by step: each drawn from its own seeded stream (seed, step), so a batch depends only on
the seed, the step and the curriculum stage, whichever process makes it. With workers > 0 they are made in
worker processes a few steps ahead (a GPU takes a step faster than one core makes 16 cases)."""
from __future__ import annotations

import multiprocessing
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from qvl_compile.training.examples import ExampleEncoder, collate
from qvl_compile.training.pointer import TARGET_KEY as POINTER_TARGET
from qvl_compile.training.pointer import pointer_boxes, pointer_targets
from qvl_compile.training.pointer_readout import BOX_KEY as POINTER_BOX
from qvl_compile.training.stepping_stones import TRAINING_TASKS, make_training_case
from qvl_compile.training.vision_aux import TARGET_KEYS as VISION_TARGETS
from qvl_compile.training.vision_aux import batch_targets

if TYPE_CHECKING:
    from qvl_compile.training.shapes import Stage

TRAINING_ONLY_KEYS = (*VISION_TARGETS, POINTER_TARGET, POINTER_BOX, "labels")  # batch entries the model's forward does not take
_encoder: ExampleEncoder | None = None  # one per worker process


def _task_probabilities(stage: Stage) -> tuple[list[str], np.ndarray]:
    weights = dict(stage.tasks)
    names = [t for t in TRAINING_TASKS if weights.get(t, 0) > 0]
    p = np.asarray([weights[t] for t in names], np.float64)
    return names, p / p.sum()


def make_batch(encoder: ExampleEncoder, stage: Stage, seed: int, step: int, size: int, ids: tuple[int, int]):
    """-> (the cases' tasks, the collated batch) for one step; ids: the image and video placeholder token ids.
    The batch also holds the image tokens' position targets (training/vision_aux.py), the pointer targets
    (training/pointer.py) and the boxed shapes' boxes (training/pointer_readout.py), used when those losses are on."""
    rng = np.random.default_rng([seed, step])
    names, p = _task_probabilities(stage)
    tasks = rng.choice(names, size=size, p=p)
    cases = [make_training_case(str(t), rng, stage.sizes) for t in tasks]
    examples = [encoder.encode(case) for case in cases]
    targets = batch_targets(cases, examples, encoder.merge_size)
    batch = collate(examples, encoder.pad_id, *ids)
    batch[POINTER_TARGET] = pointer_targets(cases, examples, batch["input_ids"], ids[0], encoder.merge_size)
    batch[POINTER_BOX] = pointer_boxes(cases)
    return [e.task for e in examples], {**batch, **targets}


def _start_worker(checkpoint: str) -> None:
    import torch

    global _encoder
    torch.set_num_threads(1)
    _encoder = ExampleEncoder(checkpoint)


def _make_batch_in_worker(job):
    return make_batch(_encoder, *job)


class BatchSource:
    """`get(step, stage)` returns that step's batch; with workers, the next `ahead` steps are already being made."""

    def __init__(self, checkpoint: Path, encoder: ExampleEncoder, seed: int, size: int, ids: tuple[int, int],
                 workers: int = 0, ahead: int = 0):
        self.encoder, self.seed, self.size, self.ids = encoder, seed, size, ids
        self.ahead = ahead or 2 * workers
        # spawn, not fork: the parent may already hold a CUDA context
        self.pool = (multiprocessing.get_context("spawn").Pool(workers, _start_worker, (str(checkpoint),))
                     if workers else None)
        self.pending: dict[int, tuple[Stage, object]] = {}

    def get(self, step: int, stage: Stage, last_step: int):
        if self.pool is None:
            return make_batch(self.encoder, stage, self.seed, step, self.size, self.ids)
        for future_step in range(step, min(step + self.ahead, last_step)):
            made = self.pending.get(future_step)
            if made is None or made[0] != stage:  # not asked yet, or asked under an earlier stage
                job = (stage, self.seed, future_step, self.size, self.ids)
                self.pending[future_step] = (stage, self.pool.apply_async(_make_batch_in_worker, (job,)))
        return self.pending.pop(step)[1].get()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()
