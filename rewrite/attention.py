"""Per-frame attention as one opaque op, so the exporter can lower it to an ONNX Loop.

Replaces the `cu_seqlens` / `torch.split(..., lengths.tolist())` split in transformers'
`Qwen3VLVisionAttention.forward`. Each frame of each grid entry is its own attention segment
(a video attends within each frame only). The op's eager kernel below is the PyTorch meaning;
`qvl_compile.export.onnx_functions.frame_attention_onnx` is its ONNX lowering: a Loop over grid
entries, each running maskless attention over its `t` frames as one batch, so time and memory grow
with the sum of squared frame lengths, not the square of the total patch count.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.library.custom_op("qvl_compile::frame_attention", mutates_args=())
def frame_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, grid_thw: torch.Tensor, num_heads: int
) -> torch.Tensor:
    """Attention within each frame. query/key/value `[N, hidden]`, grid_thw `[G, 3]` -> `[N, hidden]`."""
    num_patches, hidden = query.shape
    head_dim = hidden // num_heads
    out = torch.empty_like(query)
    start = 0
    for t, h, w in grid_thw.to(torch.int64).tolist():  # eager kernel only; never traced
        frame = h * w
        stop = start + t * frame
        q, k, v = (
            x[start:stop].reshape(t, frame, num_heads, head_dim).transpose(1, 2)  # [t, heads, frame, head_dim]
            for x in (query, key, value)
        )
        o = F.scaled_dot_product_attention(q, k, v)  # [t, heads, frame, head_dim]
        out[start:stop] = o.transpose(1, 2).reshape(t * frame, hidden)
        start = stop
    if start != num_patches:
        raise ValueError(f"grid_thw covers {start} patches but the input has {num_patches} rows")
    return out


@frame_attention.register_fake
def _frame_attention_shape(query, key, value, grid_thw, num_heads):
    return torch.empty_like(query)
