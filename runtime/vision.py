"""Run the exported vision graph: validate (pixel_values, grid_thw), then one onnxruntime call."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qvl_compile.errors import QvlError
from qvl_compile.manifest import load_artifact
from qvl_compile.runtime.cpu_int8 import warn_if_saturating
from qvl_compile.runtime.session import check_source_stamp, make_session


@dataclass(frozen=True)
class VisionOutput:
    image_embeds: np.ndarray  # [N/4, out_hidden]
    deepstack_embeds: np.ndarray  # [num_deepstack, N/4, out_hidden]


def validate_vision_inputs(pixel_values, grid_thw, patch_dim: int, merge_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Check shapes, dtypes and grid arithmetic; return float32 pixels and an int64 grid.

    An int32 (or other integer) grid is cast to int64; float64 pixels are cast to float32.
    """
    pixels = np.asarray(pixel_values)
    grid = np.asarray(grid_thw)
    if pixels.ndim != 2 or pixels.shape[1] != patch_dim:
        raise QvlError(f"pixel_values: expected shape [num_patches, {patch_dim}], got {list(pixels.shape)}")
    if not np.issubdtype(pixels.dtype, np.floating):
        raise QvlError(f"pixel_values: expected a float32 array, got {pixels.dtype}")
    if grid.ndim != 2 or grid.shape[1] != 3 or grid.shape[0] == 0:
        raise QvlError(f"grid_thw: expected shape [num_grids >= 1, 3], got {list(grid.shape)}")
    if not np.issubdtype(grid.dtype, np.integer):
        raise QvlError(f"grid_thw: expected an int64 (or int32) array, got {grid.dtype}")
    grid = grid.astype(np.int64)
    if (grid <= 0).any():
        row = int(np.argwhere(grid <= 0)[0][0])
        raise QvlError(f"grid_thw: every entry must be positive, row {row} is {grid[row].tolist()}")
    odd = (grid[:, 1:] % merge_size != 0).any(axis=1)
    if odd.any():
        row = int(np.argmax(odd))
        raise QvlError(
            f"grid_thw: h and w must be multiples of the merge size {merge_size}, row {row} is {grid[row].tolist()}"
        )
    total = int(np.prod(grid, axis=1).sum())
    if total != pixels.shape[0]:
        raise QvlError(
            f"grid_thw: products t*h*w add up to {total} patches but pixel_values has {pixels.shape[0]} rows"
        )
    return np.ascontiguousarray(pixels, dtype=np.float32), grid


class VisionEncoder:
    """One vision graph and one onnxruntime session, reused across calls."""

    def __init__(self, graph_path: str | Path, patch_dim: int, merge_size: int, providers: list[str] | None = None,
                 intra_op_threads: int = 0):
        self.patch_dim = int(patch_dim)
        self.merge_size = int(merge_size)
        self.session = make_session(Path(graph_path), providers, intra_op_threads)

    @classmethod
    def from_export(cls, export_dir: str | Path, providers: list[str] | None = None, intra_op_threads: int = 0,
                    verify_hashes: bool = False) -> "VisionEncoder":
        """The `vision.onnx` of an export folder, after checking its files against the manifest."""
        graph, artifact, _ = load_artifact(export_dir, "vision", hashes=verify_hashes)
        encoder = cls(graph, artifact.patch_dim, artifact.spatial_merge_size, providers, intra_op_threads)
        check_source_stamp(encoder.session, artifact, graph)
        warn_if_saturating(artifact.quant.get("weights", ""))  # exports before the choice had 7-bit weights: safe
        return encoder

    def __call__(self, pixel_values, grid_thw) -> VisionOutput:
        pixels, grid = validate_vision_inputs(pixel_values, grid_thw, self.patch_dim, self.merge_size)
        embeds, deepstack = self.session.run(None, {"pixel_values": pixels, "grid_thw": grid})
        return VisionOutput(image_embeds=embeds, deepstack_embeds=deepstack)
