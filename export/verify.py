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
    cosine: float = float("nan")  # cosine similarity with the reference (checked when min_cosine is set)
    min_cosine: float | None = None

    @property
    def passed(self) -> bool:
        if self.min_cosine is not None and not self.cosine >= self.min_cosine:
            return False
        return bool(np.isfinite(self.max_rel)) and self.max_rel <= self.tolerance


def compare(name: str, grid, output: str, got: np.ndarray, ref: np.ndarray, tolerance: float,
            min_cosine: float | None = None) -> ParityRow:
    if got.shape != ref.shape:
        return ParityRow(name, grid, f"{output} shape {list(got.shape)} != {list(ref.shape)}", np.inf, np.inf,
                         tolerance, 0.0, min_cosine)
    got64, ref64 = got.astype(np.float64).ravel(), ref.astype(np.float64).ravel()
    err = float(np.abs(got64 - ref64).max())
    scale = float(np.abs(ref).max()) or 1.0
    cosine = float(got64 @ ref64 / ((np.linalg.norm(got64) * np.linalg.norm(ref64)) or 1.0))
    return ParityRow(name, grid, output, err, err / scale, tolerance, cosine, min_cosine)


def vision_parity(encoder: VisionEncoder, reference: torch.nn.Module, grids: dict, seed: int = 1,
                  tolerance: float = FP32_TOLERANCE, grid_dtype=np.int64,
                  min_cosine: float | None = None) -> list[ParityRow]:
    rows = []
    for offset, (name, grid) in enumerate(grids.items()):
        pixels = random_pixels(grid, encoder.patch_dim, seed + offset)
        got = encoder(pixels, np.asarray(grid, dtype=grid_dtype))
        ref_embeds, ref_deepstack = reference_vision(reference, torch.from_numpy(pixels), torch.tensor(grid))
        rows.append(compare(name, grid, "image_embeds", got.image_embeds, ref_embeds.numpy(), tolerance, min_cosine))
        rows.append(compare(name, grid, "deepstack_embeds", got.deepstack_embeds, ref_deepstack.numpy(), tolerance,
                            min_cosine))
        log.info("%s: %s", name, "pass" if rows[-1].passed and rows[-2].passed else "FAIL")
    return rows


# Decoder cases for `qvl-compile verify`: not the export-time prompt (another layout, sizes and seed).
DECODER_CASES = {
    "decoder: video, 2 images": (("text", 3), ("video", (3, 4, 6)), ("text", 4), ("image", (1, 8, 4)),
                                 ("image", (1, 2, 2)), ("text", 6)),
    "decoder: text only": (("text", 12),),
}
DECODER_STEPS = 16


def decoder_rows(export_dir: Path, model_dir: Path, seed: int) -> list[ParityRow]:
    """fp32: vs transformers. int4: vs transformers with the graph's dequantized weights (fake quant)."""
    from qvl_compile.export.decoder import load_full_model
    from qvl_compile.export.decoder_verify import FP32_TOLERANCE as DEC_FP32, INT4_TOLERANCE
    from qvl_compile.export.decoder_verify import decoder_parity, fake_quant_reference
    from qvl_compile.manifest import read_manifest
    from qvl_compile.runtime.decoder import TextDecoder

    artifact = read_manifest(export_dir)["artifacts"]["decoder"]
    decoder = TextDecoder.from_export(export_dir, verify_hashes=True)
    reference = load_full_model(model_dir)
    if artifact["quant"]["mode"] == "int4":
        reference, tolerance = fake_quant_reference(reference, export_dir / artifact["files"][0]["path"], True), INT4_TOLERANCE
        if artifact["quant"]["accuracy_level"] == 4:
            tolerance = ACCURACY_LEVEL_4_TOLERANCE
    else:
        tolerance = DEC_FP32
    rows = []
    for offset, (name, parts) in enumerate(DECODER_CASES.items()):
        parity = decoder_parity(decoder, reference, DECODER_STEPS, tolerance, seed=seed + offset, parts=parts)
        grid = tuple(value for kind, value in parts if kind != "text")
        rows.append(ParityRow(name, grid, "prefill logits", float("nan"), parity.prefill_max_rel, tolerance))
        rows.append(ParityRow(name, grid, f"{DECODER_STEPS} step logits", float("nan"), max(parity.steps_max_rel), tolerance))
        same = parity.onnx_tokens == parity.reference_tokens
        rows.append(ParityRow(name, grid, "greedy tokens", float("nan"), 0.0 if same else float("inf"), tolerance))
        log.info("%s: %s", name, "pass" if all(r.passed for r in rows[-3:]) else "FAIL")
    return rows


# accuracy_level 4 quantizes activations to int8 inside MatMulNBits: measured 1.2e-2 (prefill) and 2.1e-2
# (decode) relative on the tiny model against its fake-quant reference; 5e-2 bounds that drift.
ACCURACY_LEVEL_4_TOLERANCE = 5e-2


def vision_criteria(artifact: dict) -> tuple[float, float | None]:
    """(max rel tolerance, minimum cosine or None) for a vision artifact: fp32, or int8 weights."""
    from qvl_compile.export.vision_quant import INT8_TOLERANCE, MIN_COSINE

    if artifact.get("quant", {}).get("mode") == "int8":
        return INT8_TOLERANCE, MIN_COSINE
    return FP32_TOLERANCE, None


def verify_export(export_dir: str | Path, model_dir: str | Path, grids: dict | None = None, seed: int = 1) -> list[ParityRow]:
    from qvl_compile.manifest import read_manifest

    export_dir, model_dir = Path(export_dir), Path(model_dir)
    artifacts = read_manifest(export_dir).get("artifacts", {})
    rows: list[ParityRow] = []
    if "vision" in artifacts:
        encoder = VisionEncoder.from_export(export_dir, verify_hashes=True)
        tolerance, min_cosine = vision_criteria(artifacts["vision"])
        rows += vision_parity(encoder, load_vision_model(model_dir), grids or GRID_MATRIX, seed=seed,
                              tolerance=tolerance, min_cosine=min_cosine)
    if "decoder" in artifacts:
        rows += decoder_rows(export_dir, model_dir, seed)
    return rows
