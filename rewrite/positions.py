"""Tensor-only vision position code: per-patch coordinates, rotary angles, learned-table interpolation.

Replaces, for both transformers lines:
  * 4.57.x `Qwen3VLVisionModel.rot_pos_emb` / 5.x `vision_utils.get_vision_position_ids`
    (`.item()` for max_hw and total_tokens, a Python loop over `grid_thw`);
  * 4.57.x `Qwen3VLVisionModel.fast_pos_embed_interpolate` / 5.x
    `vision_utils.get_vision_interpolation_indices_and_weights` (`linspace(0, side-1, h)` with a
    data-dependent length, `.tolist()`, a Python loop, `repeat_interleave`).

Every shape here follows from input *shapes* (number of patches N, number of grid rows G); the grid
*values* only feed arithmetic. All index math is int64.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class PatchCoordinates:
    """Per-patch facts, each `[N]` int64, in the patch order of `pixel_values`."""

    row: torch.Tensor  # patch row inside its frame (0 .. h-1)
    col: torch.Tensor  # patch column inside its frame (0 .. w-1)
    height: torch.Tensor  # h of the grid entry the patch belongs to
    width: torch.Tensor  # w of the grid entry the patch belongs to


def patch_coordinates(grid_thw: torch.Tensor, num_patches: int | torch.SymInt, merge_size: int) -> PatchCoordinates:
    """Decode each patch index into (row, col) within its frame, in spatial-merge block order.

    Patches are packed grid entry after grid entry; inside an entry frame after frame; inside a frame
    in blocks of merge x merge patches: (block_row, block_col, in_row, in_col).
    """
    grid = grid_thw.to(torch.int64)
    t, h, w = grid[:, 0], grid[:, 1], grid[:, 2]  # each [G]
    counts = t * h * w  # [G] patches per grid entry
    ends = torch.cumsum(counts, dim=0)  # [G]
    starts = ends - counts  # [G]
    patch = torch.arange(num_patches, dtype=torch.int64, device=grid.device)  # [N]
    # Grid entry of each patch: how many entries end at or before it. [N, G] -> [N]
    entry = (patch[:, None] >= ends[None, :]).to(torch.int64).sum(dim=1)
    height, width = h[entry], w[entry]  # [N]
    within = (patch - starts[entry]) % (height * width)  # position inside the frame, [N]
    merge = merge_size
    blocks_w = width // merge
    in_col = within % merge
    in_row = (within // merge) % merge
    block_col = (within // (merge * merge)) % blocks_w
    block_row = within // (merge * merge * blocks_w)
    return PatchCoordinates(
        row=block_row * merge + in_row,
        col=block_col * merge + in_col,
        height=height,
        width=width,
    )


def rotary_cos_sin(coords: PatchCoordinates, inv_freq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """2-D axial rotary angles: [row * inv_freq, col * inv_freq], duplicated to the head dim.

    Returns cos, sin, each `[N, head_dim]` float32.
    """
    inv_freq = inv_freq.to(torch.float32)
    angles = torch.cat(
        [coords.row.to(torch.float32)[:, None] * inv_freq, coords.col.to(torch.float32)[:, None] * inv_freq],
        dim=-1,
    )  # [N, head_dim / 2]
    angles = torch.cat([angles, angles], dim=-1)  # [N, head_dim]
    return angles.cos(), angles.sin()


def _axis_taps(index: torch.Tensor, size: torch.Tensor, side: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Bilinear taps with align_corners semantics: src = index * (side-1) / (size-1).

    The closed form of `torch.linspace(0, side-1, size)[index]`; floor and floor+1 clamped to side-1.
    Returns (floor, ceil) int64 and the fractional part float32, each `[N]`.
    """
    src = index.to(torch.float32) * float(side - 1) / torch.clamp(size - 1, min=1).to(torch.float32)
    floor = src.to(torch.int64)  # src >= 0, so truncation is floor
    ceil = torch.clamp(floor + 1, max=side - 1)
    return floor, ceil, src - floor.to(torch.float32)


def interpolated_position_embedding(coords: PatchCoordinates, table: torch.Tensor) -> torch.Tensor:
    """Resample the square learned position table `[side*side, D]` to each patch: `[N, D]`.

    Grids larger than the table upsample (the same formula); grids smaller downsample.
    """
    side = int(round(table.shape[0] ** 0.5))
    h0, h1, dh = _axis_taps(coords.row, coords.height, side)
    w0, w1, dw = _axis_taps(coords.col, coords.width, side)
    taps = (
        (h0 * side + w0, (1 - dh) * (1 - dw)),
        (h0 * side + w1, (1 - dh) * dw),
        (h1 * side + w0, dh * (1 - dw)),
        (h1 * side + w1, dh * dw),
    )
    out = None
    for index, weight in taps:  # fixed 4 taps, in transformers' summation order
        term = table[index] * weight[:, None].to(table.dtype)  # [N, D]
        out = term if out is None else out + term
    return out
