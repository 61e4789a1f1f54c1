"""Export the vision tower: checkpoint -> rewrite -> capture -> translate -> check -> verify -> write.

One graph for every input: `pixel_values [num_patches, patch_dim]`, `grid_thw [num_grids, 3]` int64,
outputs `image_embeds [num_patches/4, out_hidden]` and `deepstack_embeds [D, num_patches/4, out_hidden]`.
"""
from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import onnx
import torch

from qvl_compile.config import ModelConfig
from qvl_compile.errors import QvlError
from qvl_compile.export.fusion import fuse_gelu
from qvl_compile.export.graph_names import name_dims
from qvl_compile.export.grids import EXPORT_GRID, GRID_MATRIX, random_pixels
from qvl_compile.export.onnx_functions import OPSET, frame_attention_onnx
from qvl_compile.export.stages import Stages
from qvl_compile.export.verify import FP32_TOLERANCE, vision_parity
from qvl_compile.export.vision_quant import INT8_TOLERANCE, MIN_COSINE, VisionQuantOptions, quantize_vision
from qvl_compile.golden.reference import load_vision_model
from qvl_compile.manifest import file_record
from qvl_compile.rewrite.vision import RewrittenVisionTower
from qvl_compile.runtime.vision import VisionEncoder

log = logging.getLogger(__name__)

VISION_FILE = "vision.onnx"
# Above this many weight bytes the graph keeps its weights in an external file (protobuf caps at 2 GiB).
EXTERNAL_DATA_BYTES = 1 << 30
# Checked inside every export, at grids other than the export grid.
EXPORT_CHECK_GRIDS = {k: GRID_MATRIX[k] for k in ("three mixed images", "image + video")}

STAGES = [
    "load checkpoint",
    "rewrite",
    "capture (torch.export)",
    "translate to ONNX",
    "fuse GELU (onnxruntime.transformers)",
    "check (onnx.checker, onnxruntime load)",
    "verify against eager PyTorch at other grids",
]
INT8_STAGES = ["quantize to int8 (onnxruntime dynamic quantization)", "verify int8 against eager PyTorch"]


def io_record(model: onnx.ModelProto) -> dict[str, list[dict[str, Any]]]:
    def describe(value: onnx.ValueInfoProto) -> dict[str, Any]:
        tensor = value.type.tensor_type
        dims = [d.dim_param if d.dim_param else d.dim_value for d in tensor.shape.dim]
        return {"name": value.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name, "shape": dims}

    return {"inputs": [describe(v) for v in model.graph.input], "outputs": [describe(v) for v in model.graph.output]}


def _raise_on_failure(rows) -> None:
    failed = [r for r in rows if not r.passed]
    if failed:
        worst = max(failed, key=lambda r: r.max_rel)
        cosine = f", cosine {worst.cosine:.5f} (min {worst.min_cosine})" if worst.min_cosine is not None else ""
        raise QvlError(
            f"parity failure at grid {worst.name} {list(worst.grid)} on {worst.output}: "
            f"max rel error {worst.max_rel:.2e} (tolerance {worst.tolerance:.0e}){cosine}"
        )


def export_vision(model_dir: Path, work_dir: Path, quant: VisionQuantOptions | None = None) -> dict[str, Any]:
    """Write `vision.onnx` (and its external data) into `work_dir`; return its manifest entry."""
    quant = quant or VisionQuantOptions()
    quant.validate()
    stages = Stages(STAGES + (INT8_STAGES if quant.mode == "int8" else []))
    with stages.run("load checkpoint"):
        config = ModelConfig.from_dir(model_dir).vision
        hf_visual = load_vision_model(model_dir)
        weight_bytes = sum(p.numel() * p.element_size() for p in hf_visual.parameters())
        log.info("vision tower: %d blocks, hidden %d, %.1f M parameters", config.depth, config.hidden_size,
                 weight_bytes / 4e6)

    with stages.run("rewrite"):
        tower = RewrittenVisionTower(hf_visual).eval()

    grid = torch.tensor(EXPORT_GRID, dtype=torch.int64)
    pixels = torch.from_numpy(random_pixels(EXPORT_GRID, config.patch_dim, seed=0))
    with stages.run("capture (torch.export)"):
        num_merged = torch.export.Dim("num_merged", min=1)
        num_grids = torch.export.Dim("num_grids", min=1)
        dynamic_shapes = {"pixel_values": {0: num_merged * config.merge_unit}, "grid_thw": {0: num_grids}}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            program = torch.export.export(tower, (pixels, grid), dynamic_shapes=dynamic_shapes, strict=False)

    path = work_dir / VISION_FILE
    with stages.run("translate to ONNX"), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch's own LeafSpec deprecation notice
        onnx_program = torch.onnx.export(
            program,
            (pixels, grid),
            input_names=["pixel_values", "grid_thw"],
            output_names=["image_embeds", "deepstack_embeds"],
            opset_version=OPSET,
            custom_translation_table={torch.ops.qvl_compile.frame_attention.default: frame_attention_onnx},
            dynamo=True,
            optimize=True,
            verbose=False,
        )
        name_dims(onnx_program.model, {
            "pixel_values": ["num_patches", None], "grid_thw": ["num_grids", None],
            "image_embeds": ["num_merged", None], "deepstack_embeds": [None, "num_merged", None]})
        onnx_program.save(str(path), external_data=weight_bytes > EXTERNAL_DATA_BYTES)
    del onnx_program

    with stages.run("fuse GELU (onnxruntime.transformers)"):
        fused = fuse_gelu(path, external=weight_bytes > EXTERNAL_DATA_BYTES)

    with stages.run("check (onnx.checker, onnxruntime load)"):
        onnx.checker.check_model(str(path), full_check=True)
        encoder = VisionEncoder(path, config.patch_dim, config.spatial_merge_size)

    with stages.run("verify against eager PyTorch at other grids"):
        rows = vision_parity(encoder, hf_visual, EXPORT_CHECK_GRIDS, seed=100)
        _raise_on_failure(rows)
    tolerance, op_counts = FP32_TOLERANCE, None
    if quant.mode == "int8":
        fp32_files = [p for p in work_dir.iterdir() if p.name == VISION_FILE or p.name.startswith(VISION_FILE + ".")]
        with stages.run("quantize to int8 (onnxruntime dynamic quantization)"):
            staged = work_dir / "vision.fp32-staging"
            staged.mkdir()
            for file in fp32_files:
                file.rename(staged / file.name)
            del encoder
            op_counts = quantize_vision(staged / VISION_FILE, path)
            for file in staged.iterdir():
                file.unlink()
            staged.rmdir()
        with stages.run("verify int8 against eager PyTorch"):
            encoder = VisionEncoder(path, config.patch_dim, config.spatial_merge_size)
            rows = vision_parity(encoder, hf_visual, EXPORT_CHECK_GRIDS, seed=100, tolerance=INT8_TOLERANCE,
                                 min_cosine=MIN_COSINE)
            _raise_on_failure(rows)
        tolerance = INT8_TOLERANCE

    model = onnx.load(str(path), load_external_data=False)
    files = [VISION_FILE] + sorted(p.name for p in work_dir.iterdir() if p.name.startswith(VISION_FILE + "."))
    return {
        "files": [file_record(work_dir, name) for name in files],
        "opset": OPSET,
        **io_record(model),
        "patch_dim": config.patch_dim,
        "spatial_merge_size": config.spatial_merge_size,
        "out_hidden_size": config.out_hidden_size,
        "num_deepstack": len(config.deepstack_visual_indexes),
        "dtype": "float32",  # inputs and outputs; quant.mode says how the weights are stored
        "quant": quant.describe() | ({"op_counts": op_counts} if op_counts else {}),
        "fused": fused,
        "export_grid": [list(g) for g in EXPORT_GRID],
        "export_check": {
            r.name + " / " + r.output: {"grid": [list(g) for g in r.grid], "max_abs": r.max_abs, "max_rel": r.max_rel,
                                        "cosine": r.cosine}
            for r in rows
        },
        "tolerance": tolerance,
        "stage_seconds": stages.seconds,
    }


__all__ = ["export_vision", "VISION_FILE"]
