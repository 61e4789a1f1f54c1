"""Rotary embeddings as opaque ops, each lowered to one onnxruntime node per rotated tensor.

`mrope_rotate` (decoder): interleaved multimodal RoPE, lowered to `com.microsoft.MRotaryEmbedding`.
`rotate_rows` (vision tower): the 2-D axial rotary, one angle row per patch, lowered to
`com.microsoft.RotaryEmbedding` (the elementwise form is two Slices, Neg, Concat, two Muls and Add per tensor).

The elementwise form (q * cos + rotate_half(q) * sin, with cos/sin picked per frequency from the t, h or w
position row) costs 14 small nodes per decoder layer; `MRotaryEmbedding` does the same in one node per tensor.
It reads `cos_cache[position_ids[axis(i), b, s], i]` for frequency i, where axis(i) follows `mrope_section` and
`mrope_layout` (1: interleaved t h w t h w ..., Qwen3-VL's layout). Rather than a table over every position the
model allows (262,144 rows at 2B size), `mrope_rows` builds one row per (axis, batch, token) of this call, from the
call's own positions, and row indices that point each (axis, b, s) at its row: 3*B*S rows, computed once per
forward and shared by every layer.
"""
from __future__ import annotations

import torch


def mrope_rows(position_ids: torch.Tensor, inv_freq: torch.Tensor, scaling: float):
    """position_ids [3, B, S] -> (row_index [3, B, S] int64, cos_rows, sin_rows [3*B*S, head_dim/2])."""
    rows = position_ids.reshape(-1).to(torch.float32)[:, None] * inv_freq  # [3*B*S, hd/2]
    row_index = torch.arange(rows.shape[0], dtype=torch.int64).view(position_ids.shape)  # [3, B, S]
    return row_index, rows.cos() * scaling, rows.sin() * scaling


def interleaved_axes(mrope_section: list[int], half: int) -> list[int]:
    """Which position row (0=t, 1=h, 2=w) drives each of the `half` frequencies: t h w t h w ... per section."""
    _, h, w = mrope_section
    return [1 if i % 3 == 1 and i < 3 * h else 2 if i % 3 == 2 and i < 3 * w else 0 for i in range(half)]


@torch.library.custom_op("qvl_compile::mrope_rotate", mutates_args=())
def mrope_rotate(x: torch.Tensor, row_index: torch.Tensor, cos_rows: torch.Tensor, sin_rows: torch.Tensor,
                 num_heads: int, mrope_section: list[int]) -> torch.Tensor:
    """Rotate x [B, S, heads*hd] (rotate-half pairs, not interleaved pairs) by the rows `row_index` picks."""
    batch, seq, width = x.shape
    head_dim = width // num_heads
    half = head_dim // 2
    axes = torch.tensor(interleaved_axes(mrope_section, half), dtype=torch.int64)
    picked = row_index[axes]  # [half, B, S]: the row each frequency reads, per token
    frequency = torch.arange(half)[:, None, None].expand_as(picked)
    cos = cos_rows[picked, frequency].permute(1, 2, 0)  # [B, S, half]
    sin = sin_rows[picked, frequency].permute(1, 2, 0)
    cos, sin = (torch.cat([c, c], dim=-1)[:, :, None] for c in (cos, sin))  # [B, S, 1, hd]
    heads = x.view(batch, seq, num_heads, head_dim)
    rotated = torch.cat((-heads[..., half:], heads[..., :half]), dim=-1)
    return (heads * cos + rotated * sin).reshape(batch, seq, width)


@mrope_rotate.register_fake
def _mrope_rotate_shape(x, row_index, cos_rows, sin_rows, num_heads, mrope_section):
    return torch.empty_like(x)


@torch.library.custom_op("qvl_compile::rotate_rows", mutates_args=())
def rotate_rows(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Rotate x [N, heads*hd] (rotate-half pairs) by row n's angles: cos/sin [N, hd/2] -> [N, heads*hd]."""
    rows, width = x.shape
    heads = x.reshape(rows, num_heads, width // num_heads)  # [N, heads, hd]
    half = heads.shape[-1] // 2
    cos, sin = (torch.cat([c, c], dim=-1)[:, None, :] for c in (cos, sin))  # [N, 1, hd]
    rotated = torch.cat((-heads[..., half:], heads[..., :half]), dim=-1)
    return (heads * cos + rotated * sin).reshape(rows, width)


@rotate_rows.register_fake
def _rotate_rows_shape(x, cos, sin, num_heads):
    return torch.empty_like(x)
