"""A readout loss on the pointer head's output, for training only: at every position that predicts a grounding
reply's token, a linear head on what the pointer head read (its context vector, before the layer's output
projection) classifies the hundreds and tens of the boxed shape's four numbers.

Why (docs/training.md, "Reading the digits"): the pointer head attends to the named shape (median mass 1.00, wrong
replies included) and the tower's tokens of that shape carry each number's hundreds digit (a linear head reads it
right ~90% of the time), yet in images of two or three shapes about half of the wrong replies take both x
numbers nearer another shape's. What the head carries out of the shape's tokens is unsupervised; this loss asks it
to carry the box, through the head's value projection and the layers below it. The model's weights and
architecture are unchanged; the readout head is saved beside the training checkpoint, like the vision aux heads.
"""
from __future__ import annotations

from pathlib import Path

import torch

from qvl_compile.training.pointer import TARGET_KEY as POINTER_TARGET
from qvl_compile.training.pointer import predicting_reply
from qvl_compile.training.vision_aux import DIGITS, box_digits, load_head, save_head

BOX_KEY = "pointer_box"  # batch entry: [B, 4] the boxed shape's box, 0..1 of the image (zeros where no box)
HEAD_FILE = "pointer_readout_head.safetensors"  # beside a training run's model.safetensors; transformers ignores it


class PointerReadout(torch.nn.Module):
    """Keeps one attention head's context vectors during the forward (the input of the layer's o_proj), and scores a
    linear digit classifier on them; `loss(batch)` after the model's forward on that batch."""

    def __init__(self, model, layer: int, head: int):
        super().__init__()
        text = model.model.language_model
        self.head_dim = text.config.head_dim
        self.head = head
        self.classify = torch.nn.Sequential(torch.nn.LayerNorm(self.head_dim, elementwise_affine=False),
                                            torch.nn.Linear(self.head_dim, 4 * DIGITS * 10)).to(model.device)
        self._contexts: list[torch.Tensor] = []
        self.parts: dict[str, float] = {}
        self.hook = text.layers[layer].self_attn.o_proj.register_forward_pre_hook(self._keep)

    def _keep(self, module, inputs) -> None:
        if torch.is_grad_enabled():  # not the evaluations between steps
            # [B, S, heads * head_dim] -> this head's [B, S, head_dim]
            self._contexts.append(inputs[0][..., self.head * self.head_dim:(self.head + 1) * self.head_dim])

    def loss(self, batch: dict) -> torch.Tensor:
        """Cross-entropy per digit, averaged over the positions predicting a reply token of rows that box a shape;
        0 when the batch has none."""
        contexts, self._contexts = self._contexts, []
        target, box = batch.get(POINTER_TARGET), batch.get(BOX_KEY)
        device = self.classify[1].weight.device
        if target is None or box is None or not contexts or float(target.sum()) == 0:
            return torch.zeros((), device=device)
        predicting = predicting_reply(batch["labels"]) & (target.sum(1, keepdim=True) > 0)  # [B, S]
        rows = predicting.nonzero()[:, 0]  # the batch row of each predicting position
        logits = self.classify(contexts[-1][predicting]).reshape(-1, 4, DIGITS, 10)  # [positions, x1 y1 x2 y2, digit, 0-9]
        digits = box_digits(box.to(device))[rows]  # [positions, 4, DIGITS]
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 10), digits.reshape(-1))
        self.parts = {"pointer_digits": float(loss.detach())}
        return loss

    def save(self, folder: Path) -> None:
        save_head(self.classify, folder / HEAD_FILE)

    def load_if_saved(self, folder: Path) -> bool:
        """Continue with the head a run saved in `folder`; -> whether there was one."""
        return load_head(self.classify, folder / HEAD_FILE)
