"""Parity of an exported vision graph against the eager PyTorch model, on the named grid matrix."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from qvl_compile.export.grids import GRID_MATRIX, random_pixels
from qvl_compile.golden.reference import load_vision_model, reference_vision
from qvl_compile.runtime.vision import VisionEncoder

log = logging.getLogger(__name__)

# fp32 graph vs fp32 eager: the only differences are summation order (MatMul vs Conv3d patch
# embedding, fused attention kernels). 1e-4 of the output's scale leaves two orders of margin.
FP32_TOLERANCE = 1e-4


@dataclass(frozen=True)
class ParityRow:
    name: str
    grid: tuple[tuple[int, int, int], ...]
    output: str
    max_abs: float
    max_rel: float  # max abs error / max |reference|: error relative to the output's scale
    tolerance: float

    @property
    def passed(self) -> bool:
        return bool(np.isfinite(self.max_rel)) and self.max_rel <= self.tolerance


def compare(name: str, grid, output: str, got: np.ndarray, ref: np.ndarray, tolerance: float) -> ParityRow:
    if got.shape != ref.shape:
        return ParityRow(name, grid, f"{output} shape {list(got.shape)} != {list(ref.shape)}", np.inf, np.inf, tolerance)
    err = float(np.abs(got.astype(np.float64) - ref.astype(np.float64)).max())
    scale = float(np.abs(ref).max()) or 1.0
    return ParityRow(name, grid, output, err, err / scale, tolerance)


def vision_parity(encoder: VisionEncoder, reference: torch.nn.Module, grids: dict, seed: int = 1,
                  tolerance: float = FP32_TOLERANCE, grid_dtype=np.int64) -> list[ParityRow]:
    rows = []
    for offset, (name, grid) in enumerate(grids.items()):
        pixels = random_pixels(grid, encoder.patch_dim, seed + offset)
        got = encoder(pixels, np.asarray(grid, dtype=grid_dtype))
        ref_embeds, ref_deepstack = reference_vision(reference, torch.from_numpy(pixels), torch.tensor(grid))
        rows.append(compare(name, grid, "image_embeds", got.image_embeds, ref_embeds.numpy(), tolerance))
        rows.append(compare(name, grid, "deepstack_embeds", got.deepstack_embeds, ref_deepstack.numpy(), tolerance))
        log.info("%s: %s", name, "pass" if rows[-1].passed and rows[-2].passed else "FAIL")
    return rows


def verify_export(export_dir: str | Path, model_dir: str | Path, grids: dict | None = None, seed: int = 1) -> list[ParityRow]:
    encoder = VisionEncoder.from_export(export_dir, verify_hashes=True)
    reference = load_vision_model(model_dir)
    return vision_parity(encoder, reference, grids or GRID_MATRIX, seed=seed)
