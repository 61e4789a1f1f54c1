"""Per-frame attention as one opaque op, so the exporter can lower it to ONNX If / Loop control flow.

Replaces the `cu_seqlens` / `torch.split(..., lengths.tolist())` split in transformers'
`Qwen3VLVisionAttention.forward`. Each frame of each grid entry is its own attention segment
(a video attends within each frame only). The op's eager kernel below is the PyTorch meaning;
`qvl_compile.export.onnx_functions.frame_attention_onnx` is its ONNX lowering: maskless attention over
all frames as one batch when every grid entry has the same frame length, else a Loop over grid entries,
each over its `t` frames as one batch; time and memory grow with the sum of squared frame lengths, not
the square of the total patch count.
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


@torch.library.custom_op("qvl_compile::cached_attention", mutates_args=())
def cached_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, past_key: torch.Tensor, past_value: torch.Tensor,
    attention_mask: torch.Tensor, num_heads: int, kv_heads: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Causal grouped-query attention over the valid past keys and the new ones.

    query [B, S, heads*hd], key/value [B, S, kv*hd] (rotary already applied), past [B, kv, P, hd],
    attention_mask [B, T] of ones: T = valid past + S, so the first T - S rows of the past are valid and
    P may be larger (a preallocated buffer). Returns (out [B, S, heads*hd], present_key, present_value
    [B, kv, max(P, T), hd]) with the new keys at rows T-S..T-1. Lowered to onnxruntime's
    `com.microsoft.GroupQueryAttention`, which writes them in place when past and present share a buffer.
    """
    batch, seq, _ = query.shape
    head_dim = past_key.shape[-1]
    total = attention_mask.shape[1]
    valid_past = total - seq
    q = query.view(batch, seq, num_heads, head_dim).transpose(1, 2)  # [B, heads, S, hd]
    k = key.view(batch, seq, kv_heads, head_dim).transpose(1, 2)  # [B, kv, S, hd]
    v = value.view(batch, seq, kv_heads, head_dim).transpose(1, 2)
    presents = []
    for past, new in ((past_key, k), (past_value, v)):
        if past.shape[2] >= total:  # a buffer with room: write the new rows in place (of a copy)
            present = past.clone()
            present[:, :, valid_past:total] = new
        else:
            present = torch.cat([past[:, :, :valid_past], new], dim=2)  # [B, kv, T, hd]
        presents.append(present)
    group = num_heads // kv_heads
    key_rep = presents[0][:, :, :total].repeat_interleave(group, dim=1)  # [B, heads, T, hd]
    value_rep = presents[1][:, :, :total].repeat_interleave(group, dim=1)
    # Query i sits at absolute position T-S+i and sees keys 0..T-S+i.
    allowed = torch.arange(total)[None, :] <= torch.arange(seq)[:, None] + valid_past  # [S, T]
    out = F.scaled_dot_product_attention(q, key_rep, value_rep, attn_mask=allowed)  # [B, heads, S, hd]
    return out.transpose(1, 2).reshape(batch, seq, num_heads * head_dim), presents[0], presents[1]


@cached_attention.register_fake
def _cached_attention_shape(query, key, value, past_key, past_value, attention_mask, num_heads, kv_heads):
    batch, _, _ = query.shape
    _, kv, past, head_dim = past_key.shape
    present = past_key.new_empty(batch, kv, torch.sym_max(past, attention_mask.shape[1]), head_dim)
    return torch.empty_like(query), present, torch.empty_like(present)
