"""A dense auxiliary loss on the vision tower's merged image tokens, for training only (its head is saved beside the
training checkpoint, not in the model: a run that starts from that folder goes on with it).

Measured (docs/training.md, "Position"): the trained tower's output carries almost no absolute position (a linear
probe reads a token's normalized x with R^2 0.03, y with 0.22), so no amount of grounding data can teach the decoder a box: there
is nothing to read. This head asks every merged image token to regress its own normalized centre (x, y), and every
token whose centre lies inside a shape's box to regress that box (x1, y1, x2, y2, normalized), so position reaches
the tokens the decoder reads. Boxes come from `tasks.shapes.draw` (image.info[BOXES_KEY]).

With a digit weight (--vision-digit-weight), a second linear head on the same normalized tokens classifies, for each
token inside a shape, the hundreds and tens of its box's four numbers as a grounding reply writes them (`box_digits`),
so the decoder can copy a digit from the tokens it attends to. Both heads are saved beside the checkpoint; the
training log shows the position loss (`vision_position`) and the digits' cross-entropy (`vision_digits`) apart, their
weighted sum as `vision_aux`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from qvl_compile.tasks.shapes import BOXES_KEY

TARGET_KEYS = ("vision_targets", "vision_inside")  # batch entries the model's forward does not take
HEAD_FILE = "vision_aux_head.safetensors"  # beside a training run's model.safetensors; transformers ignores it
DIGIT_HEAD_FILE = "vision_digit_head.safetensors"  # the digit head's, where --vision-digit-weight is on
DIGITS = 2  # the digit head classifies each number's hundreds and tens


def save_head(head: torch.nn.Module, path: Path) -> None:
    """A training-only head's weights to `path` (safetensors), whole or not at all (written aside, then renamed)."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in head.state_dict().items()}
    save_file(tensors, str(path.with_name(path.name + ".tmp")))
    path.with_name(path.name + ".tmp").replace(path)


def load_head(head: torch.nn.Module, path: Path) -> bool:
    """Load `path` into the head, on the head's device, where the file exists; -> whether it did."""
    from safetensors.torch import load_file

    if not path.is_file():
        return False
    device = next(head.parameters()).device
    head.load_state_dict({k: v.to(device) for k, v in load_file(str(path)).items()})
    return True


def box_digits(box: torch.Tensor) -> torch.Tensor:
    """[N, 4] box 0..1 of the image -> [N, 4, DIGITS] int64: the hundreds and tens of round(1000 * v), as a grounding
    reply writes them (1000, the far edge, counts as 999)."""
    number = torch.round(box * 1000).clamp(0, 999).long()
    return torch.stack([number // 100, number // 10 % 10], dim=-1)


def merged_token_centres(grid: tuple[int, int, int], merge: int) -> tuple[np.ndarray, np.ndarray]:
    """-> x, y centres (0..1 of the image) of one frame's merged image tokens, [rows * cols] each, in the tower's
    output order (rows, then columns)."""
    rows, cols = grid[1] // merge, grid[2] // merge
    centre_y, centre_x = np.meshgrid((np.arange(rows) + 0.5) / rows, (np.arange(cols) + 0.5) / cols, indexing="ij")
    return centre_x.ravel(), centre_y.ravel()


def dense_targets(image, grid: tuple[int, int, int], merge: int) -> tuple[np.ndarray, np.ndarray]:
    """-> [tokens, 6] (centre x, y, then the box it lies in, all 0..1 of the image), [tokens] 1.0 where inside a box.
    Tokens in the tower's output order: frames, then rows, then columns of merged patches."""
    centre_x, centre_y = merged_token_centres(grid, merge)
    target = np.zeros((len(centre_x), 6), np.float32)
    inside = np.zeros(len(centre_x), np.float32)
    target[:, 0], target[:, 1] = centre_x, centre_y
    width, height = image.size
    for x1, y1, x2, y2 in image.info.get(BOXES_KEY, ()):
        hit = (centre_x * width >= x1) & (centre_x * width <= x2) & (centre_y * height >= y1) & (centre_y * height <= y2)
        target[hit, 2:] = (x1 / width, y1 / height, x2 / width, y2 / height)
        inside[hit] = 1.0
    return np.tile(target, (grid[0], 1)), np.tile(inside, grid[0])


def batch_targets(cases, examples, merge: int) -> dict[str, torch.Tensor]:
    """The batch's image tokens' targets, in the order collate concatenates images; {} when there are no images.
    `merge`: the tower's spatial merge (vision_config.spatial_merge_size)."""
    parts = [dense_targets(image, grid, merge) for case, example in zip(cases, examples)
             for image, grid in zip(case.images, example.image_grids)]
    if not parts:
        return {}
    return {"vision_targets": torch.from_numpy(np.concatenate([t for t, _ in parts])),
            "vision_inside": torch.from_numpy(np.concatenate([i for _, i in parts]))}


class VisionAux(torch.nn.Module):
    """A linear head on the tower's merged output, normalized first (the trained tower's tokens have norms near 30,
    so an unnormalized head starts at a loss in the hundreds and its first gradients disturb the solved tasks);
    `loss(batch)` after the model's forward on that batch."""

    def __init__(self, model, digit_weight: float = 0.0):
        """`digit_weight` > 0: a second linear head also classifies, for every token inside a shape, the hundreds and
        tens digits of its box's four numbers as the reply writes them (round(1000 * v)), weighted by this."""
        super().__init__()
        hidden = model.config.vision_config.out_hidden_size
        self.head = torch.nn.Sequential(torch.nn.LayerNorm(hidden, elementwise_affine=False),
                                        torch.nn.Linear(hidden, 6)).to(model.device)
        self.digit_weight = digit_weight
        self.digits = torch.nn.Linear(hidden, 4 * DIGITS * 10).to(model.device) if digit_weight > 0 else None
        self._outputs: list[torch.Tensor] = []
        self.parts: dict[str, float] = {}  # the last loss's parts, unweighted, for the training log
        self.hook = model.model.visual.register_forward_hook(self._keep)

    def _keep(self, module, inputs, output) -> None:
        if not torch.is_grad_enabled():  # evaluation between steps (teacher_forced_accuracy): not this loss's input
            return
        # transformers 5.x returns BaseModelOutputWithDeepstackFeatures (merged tokens in pooler_output), 4.57 a tuple
        self._outputs.append(output.pooler_output if hasattr(output, "pooler_output") else output[0])

    def _heads(self) -> dict[str, torch.nn.Module]:
        return {HEAD_FILE: self.head, **({DIGIT_HEAD_FILE: self.digits} if self.digits is not None else {})}

    def save(self, folder: Path) -> None:
        for name, head in self._heads().items():
            save_head(head, folder / name)

    def load_if_saved(self, folder: Path) -> bool:
        """Continue with the heads a run saved in `folder` (a fresh head shakes the solved tasks for ~100 steps:
        docs/training.md); -> whether there was a position head (a digit head is loaded too where one was saved)."""
        if not (folder / HEAD_FILE).is_file():
            return False
        for name, head in self._heads().items():
            load_head(head, folder / name)
        return True

    def loss(self, batch: dict) -> torch.Tensor:
        outputs, self._outputs = self._outputs, []
        if "vision_targets" not in batch:
            return torch.zeros((), device=self.head[1].weight.device)
        target, inside = batch["vision_targets"], batch["vision_inside"]
        tokens = next((o for o in outputs if o.shape[0] == target.shape[0]), None)  # the images' call, not videos'
        if tokens is None:
            raise RuntimeError(f"vision aux loss: expected the tower's output for {target.shape[0]} image tokens, "
                               f"got outputs of {[o.shape[0] for o in outputs]} rows")
        normalized = self.head[0](tokens)
        predicted = self.head[1](normalized)
        centre = ((predicted[:, :2] - target[:, :2]) ** 2).mean()
        box = (((predicted[:, 2:] - target[:, 2:]) ** 2).mean(1) * inside).sum() / inside.sum().clamp(min=1)
        self.parts = {"vision_position": float((centre + box).detach())}
        if self.digits is None:
            return centre + box
        digits = self._digit_loss(normalized, target[:, 2:], inside)
        self.parts["vision_digits"] = float(digits.detach())
        return centre + box + self.digit_weight * digits

    def _digit_loss(self, normalized: torch.Tensor, box: torch.Tensor, inside: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of the digit head over the tokens inside a shape; 0 when none is."""
        rows = inside > 0
        if not rows.any():
            return torch.zeros((), device=normalized.device)
        logits = self.digits(normalized[rows]).reshape(-1, 4, DIGITS, 10)  # [inside tokens, x1 y1 x2 y2, digit, 0-9]
        return torch.nn.functional.cross_entropy(logits.reshape(-1, 10), box_digits(box[rows]).reshape(-1))
