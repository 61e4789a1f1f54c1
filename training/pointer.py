"""A pointer loss on one decoder attention head, for training only: at every position that predicts a grounding
reply's token, the head is asked to put its attention on the image tokens of the shape the reply boxes.

Why (docs/training.md, "Picking out"): the trained model boxes one-shape images right about half the time and the
named shape among two or three 3-15%, and stones that ask for the named shape's side with a one-token answer
learned it slowly (color_side 60-80% after 5,000 steps). Reading a box needs two hops: carry the asked colour and
shape from the question, then attend to the image tokens that match. This loss supervises the second hop directly;
the reply's own loss still has to learn to read the box from what the head attends to. The model's weights and
architecture are unchanged (the head is one of its own); the text attention runs eagerly while training so that its
weights can be read.
"""
from __future__ import annotations

import numpy as np
import torch

from qvl_compile.runtime.grounding import parse_boxes
from qvl_compile.training.examples import IGNORE
from qvl_compile.training.vision_aux import merged_token_centres

TARGET_KEY = "pointer_target"  # batch entry: [B, S] 1.0 at the boxed shape's image tokens (rows without one: zeros)


def _boxed(case) -> tuple[float, float, float, float] | None:
    """The box of a one-image case whose answer is a one-box grounding reply, 0..1 of the image; None otherwise."""
    if len(case.images) != 1 or case.video:
        return None
    boxes = parse_boxes(case.answer)
    if boxes is None or len(boxes) != 1:
        return None
    return tuple(v / 1000 for v in boxes[0].bbox)


def pointer_targets(cases, examples, input_ids: torch.Tensor, image_token_id: int, merge: int) -> torch.Tensor:
    """[B, S] float: for one-image cases whose answer is a box, 1.0 at the image tokens whose centre lies in it."""
    target = torch.zeros(input_ids.shape, dtype=torch.float32)
    for row, (case, example) in enumerate(zip(cases, examples)):
        box = _boxed(case)
        if box is None:
            continue
        x, y = merged_token_centres(example.image_grids[0], merge)
        inside = (x >= box[0]) & (x <= box[2]) & (y >= box[1]) & (y <= box[3])  # [tokens]
        positions = torch.nonzero(input_ids[row] == image_token_id).flatten()
        if len(positions) != len(inside):
            raise ValueError(f"pointer targets: expected {len(inside)} image tokens in row {row}, got {len(positions)}")
        target[row, positions] = torch.from_numpy(inside.astype(np.float32))
    return target


def pointer_boxes(cases) -> torch.Tensor:
    """[B, 4] float: the box (0..1 of the image) of one-image cases whose answer is a box, as pointer_targets reads
    it; zeros for the others."""
    boxes = torch.zeros((len(cases), 4), dtype=torch.float32)
    for row, case in enumerate(cases):
        box = _boxed(case)
        if box is not None:
            boxes[row] = torch.tensor(box)
    return boxes


def predicting_reply(labels: torch.Tensor) -> torch.Tensor:
    """[B, S] labels -> [B, S] bool: the positions whose next token is a reply token (labelled, not IGNORE)."""
    predicting = torch.zeros(labels.shape, dtype=torch.bool, device=labels.device)
    predicting[:, :-1] = labels[:, 1:] != IGNORE
    return predicting


class PointerChoiceError(ValueError):
    """--pointer-layer or --pointer-head names a layer or head the model does not have."""


class PointerLoss:
    """Keeps one decoder layer's attention weights during the forward (eager attention), and scores one head."""

    def __init__(self, model, layer: int, head: int):
        text = model.model.language_model
        layers, heads = len(text.layers), text.config.num_attention_heads
        if not 0 <= layer < layers:
            raise PointerChoiceError(f"--pointer-layer: expected 0 to {layers - 1} (the model's decoder layers), got {layer}")
        if not 0 <= head < heads:
            raise PointerChoiceError(f"--pointer-head: expected 0 to {heads - 1} (attention heads per layer), got {head}")
        self.head = head
        text.config._attn_implementation = "eager"  # sdpa returns no weights; the masks follow the same setting
        self._weights: list[torch.Tensor] = []
        self.hook = text.layers[layer].self_attn.register_forward_hook(self._keep)

    def _keep(self, module, inputs, output) -> None:
        if torch.is_grad_enabled() and output[1] is not None:
            self._weights.append(output[1])

    def loss(self, batch: dict) -> torch.Tensor:
        """-log(attention mass on the boxed shape), averaged over the positions predicting a reply token of rows
        that have a target; 0 when the batch has none."""
        weights, self._weights = self._weights, []
        target = batch.get(TARGET_KEY)
        if target is None or not weights or float(target.sum()) == 0:
            return torch.zeros(())
        attention = weights[-1][:, self.head]  # [B, S, S]: query position, key position
        mass = (attention * target[:, None, :]).sum(-1)  # [B, S]
        predicting = predicting_reply(batch["labels"]) & (target.sum(1, keepdim=True) > 0)
        return -torch.log(mass[predicting].clamp(min=1e-6)).mean()
