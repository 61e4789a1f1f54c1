"""The vision tower as a component spec: one graph for every input.

`pixel_values [num_patches, patch_dim]`, `grid_thw [num_grids, 3]` int64 -> `image_embeds
[num_patches/4, out_hidden]` and `deepstack_embeds [D, num_patches/4, out_hidden]`. Exported at
`EXPORT_GRID`, verified at `EXPORT_CHECK_GRIDS` (others), optionally quantized to int8 and verified again.
"""
from __future__ import annotations

import logging
from typing import Any

from qvl_compile.errors import QvlError
from qvl_compile.export.component import CHECK_STAGE, ComponentSpec, ExportContext, Step, check_graph, export_component, set_aside
from qvl_compile.export.fusion import fuse_gelu
from qvl_compile.export.grids import EXPORT_GRID, GRID_MATRIX
from qvl_compile.export.verify import streamed_vision, vision_parity
from qvl_compile.export.vision_quant import VisionQuantOptions, quantize_vision
from qvl_compile.parity import FP32, INT8_VISION, Criteria
from qvl_compile.runtime.vision import VisionEncoder

log = logging.getLogger(__name__)

VISION_FILE = "vision.onnx"
# Checked inside every export, at grids other than the export grid.
# Mixed frame lengths run the attention's per-grid Loop; one video runs its one-batch branch (export/onnx_functions.py).
EXPORT_CHECK_GRIDS = {k: GRID_MATRIX[k] for k in ("three mixed images", "image + video", "video t=3")}
EXPORT_CHECK_SEED = 100


def _raise_on_failure(rows) -> None:
    failed = [r for r in rows if not r.passed]
    if failed:
        worst = max(failed, key=lambda r: r.max_rel)
        cosine = f", cosine {worst.cosine:.5f} (min {worst.min_cosine})" if worst.min_cosine is not None else ""
        raise QvlError(
            f"parity failure at grid {worst.name} {list(worst.grid)} on {worst.output}: "
            f"max rel error {worst.max_rel:.2e} (tolerance {worst.tolerance:.0e}){cosine}"
        )


def _load(ctx: ExportContext):
    """The full model as a skeleton (export.skeleton): the vision weights stream in when written."""
    return ctx.family.load_skeleton(ctx.model_dir)


def _rewrite(ctx: ExportContext, hf_model):
    vision, hf_visual = ctx.config.vision, hf_model.get_submodule(ctx.family.vision_module)
    ctx.weight_bytes = sum(p.numel() * 4 for p in hf_visual.parameters())  # as float32
    log.info("vision tower: %d blocks, hidden %d, %.1f M parameters", vision.depth, vision.hidden_size,
             ctx.weight_bytes / 4e6)
    return ctx.family.vision_tower(hf_visual)


def _example_inputs(ctx: ExportContext) -> tuple:
    import torch

    from qvl_compile.parity import random_pixels

    pixels = torch.from_numpy(random_pixels(EXPORT_GRID, ctx.config.vision.patch_dim, seed=0))
    return pixels, torch.tensor(EXPORT_GRID, dtype=torch.int64)


def _dynamic_shapes(ctx: ExportContext) -> dict:
    import torch

    num_merged = torch.export.Dim("num_merged", min=1)
    num_grids = torch.export.Dim("num_grids", min=1)
    return {"pixel_values": {0: num_merged * ctx.config.vision.merge_unit}, "grid_thw": {0: num_grids}}


def _translation_table() -> dict:
    from qvl_compile.export.onnx_functions import vision_translation_table

    return vision_translation_table()


def _fuse(ctx: ExportContext) -> None:
    ctx.record["fused"] = fuse_gelu(ctx.path, external=ctx.external)


def _verifier(criteria: Criteria):
    def verify(ctx: ExportContext) -> None:
        vision = ctx.config.vision
        encoder = VisionEncoder(ctx.path, vision.patch_dim, vision.spatial_merge_size, [ctx.target.execution_provider])
        with streamed_vision(ctx.reference, ctx.reader, ctx.family) as reference:
            rows = vision_parity(encoder, reference, EXPORT_CHECK_GRIDS, ctx.family, seed=EXPORT_CHECK_SEED,
                                 criteria=criteria)
        _raise_on_failure(rows)
        ctx.record["export_check"] = {
            r.name + " / " + r.output: {"grid": [list(g) for g in r.grid], "max_abs": r.max_abs, "max_rel": r.max_rel,
                                        "cosine": r.cosine}
            for r in rows
        }
        ctx.record["tolerance"] = criteria.tolerance
    return verify


def _int8_quantizer(quant: VisionQuantOptions):
    def quantize(ctx: ExportContext) -> None:
        with set_aside(ctx.work_dir, VISION_FILE) as staged:
            ctx.record["op_counts"] = quantize_vision(staged / VISION_FILE, ctx.path, quant.resolved_weights())
    return quantize


def _describe(quant: VisionQuantOptions):
    def describe(ctx: ExportContext) -> dict[str, Any]:
        vision, record = ctx.config.vision, ctx.record
        op_counts = record.get("op_counts")
        return {
            "patch_dim": vision.patch_dim,
            "spatial_merge_size": vision.spatial_merge_size,
            "out_hidden_size": vision.out_hidden_size,
            "num_deepstack": vision.num_deepstack,
            "quant": quant.describe() | ({"op_counts": op_counts} if op_counts else {}),
            "fused": record["fused"],
            "export_grid": [list(g) for g in EXPORT_GRID],
            "export_check": record["export_check"],
            "tolerance": record["tolerance"],
        }
    return describe


def vision_spec(quant: VisionQuantOptions | None = None) -> ComponentSpec:
    quant = quant or VisionQuantOptions()
    quant.validate()
    steps = [Step("fuse GELU (onnxruntime.transformers)", _fuse), Step(CHECK_STAGE, check_graph),
             Step("verify against eager PyTorch at other grids", _verifier(FP32))]
    if quant.mode == "int8":
        steps += [Step("quantize to int8 (onnxruntime dynamic quantization)", _int8_quantizer(quant)),
                  Step("verify int8 against eager PyTorch", _verifier(INT8_VISION))]
    return ComponentSpec(
        name="vision", file_name=VISION_FILE, load=_load, rewrite=_rewrite, streamed=True,
        example_inputs=_example_inputs, dynamic_shapes=_dynamic_shapes,
        input_names=("pixel_values", "grid_thw"), output_names=("image_embeds", "deepstack_embeds"),
        dim_names={"pixel_values": ["num_patches", None], "grid_thw": ["num_grids", None],
                   "image_embeds": ["num_merged", None], "deepstack_embeds": [None, "num_merged", None]},
        translation_table=_translation_table, steps=tuple(steps), describe=_describe(quant),
    )


def export_vision(ctx: ExportContext, quant: VisionQuantOptions | None = None) -> dict[str, Any]:
    """Write `vision.onnx` (and its external data) into ctx.work_dir; return its artifact fields."""
    return export_component(vision_spec(quant), ctx)


__all__ = ["export_vision", "vision_spec", "VISION_FILE", "EXPORT_CHECK_GRIDS"]
