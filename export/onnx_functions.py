"""ONNX lowerings of the rewrite's opaque ops, written in onnxscript.

`frame_attention_onnx` lowers `qvl_compile::frame_attention` to ONNX Runtime's maskless
`com.microsoft.MultiHeadAttention` over frames: an If on whether every grid entry has the same frame length
h*w. If so (one image, one video, same-size images) all rows are one batch of sum(t) frames; if not, an ONNX
Loop over the grid entries (trip count = num_grids, a shape) slices each entry's `t*h*w` rows as a batch of
`t` frames `[t, h*w, hidden]`. No mask is ever built: cost is the sum over frames of (h*w)^2.
`rotate_rows_onnx` lowers the vision tower's `qvl_compile::rotate_rows` to `com.microsoft.RotaryEmbedding`.
`vision_translation_table()` is the vision tower's whole table (the export and `analyze --rewritten` share it).
"""
from __future__ import annotations

from collections.abc import Sequence

import onnxscript
from onnxscript import FLOAT, INT64
from onnxscript import opset18 as op

OPSET = 18
msft = onnxscript.values.Opset("com.microsoft", 1)


@onnxscript.script(default_opset=op)
def frame_attention_onnx(query: FLOAT, key: FLOAT, value: FLOAT, grid_thw: INT64, num_heads: int) -> FLOAT:
    axis0 = op.Constant(value_ints=[0])
    one = op.Constant(value_ints=[1])
    hidden = op.Shape(query, start=1, end=2)  # [1]
    flat_shape = op.Concat(op.Constant(value_ints=[-1]), hidden, axis=0)  # [-1, hidden]
    grid = op.Cast(grid_thw, to=7)  # int64 whatever the caller fed the exporter
    counts = op.ReduceProd(grid, one, keepdims=0)  # [G] patches per entry
    ends = op.CumSum(counts, op.Constant(value_int=0))  # [G]
    starts = op.Sub(ends, counts)  # [G]
    num_grids = op.Squeeze(op.Shape(grid, start=0, end=1))
    frame_lens = op.ReduceProd(op.Slice(grid, one, op.Constant(value_ints=[3]), one), one, keepdims=0)  # [G] h*w
    frame_len = op.ReduceMax(frame_lens, keepdims=1)  # [1]
    one_length = op.Equal(op.ReduceMin(frame_lens, keepdims=0), op.ReduceMax(frame_lens, keepdims=0))
    # Rows that the grid does not account for go to the Loop, whose slices and reshapes refuse them as before.
    rows_match = op.Equal(op.ReduceSum(counts, keepdims=0), op.Squeeze(op.Shape(query, start=0, end=1)))
    if op.And(one_length, rows_match):
        # One frame length throughout (one image, one video, same-size images): all sum(t) frames in one batch,
        # no slicing and no concatenation.
        batch_shape = op.Concat(op.Constant(value_ints=[-1]), frame_len, hidden, axis=0)  # [sum t, h*w, hidden]
        attn = msft.MultiHeadAttention(op.Reshape(query, batch_shape), op.Reshape(key, batch_shape),
                                       op.Reshape(value, batch_shape), num_heads=num_heads)  # [sum t, h*w, hidden]
        out = op.Reshape(attn, flat_shape)
    else:
        out = op.Slice(query, axis0, axis0, axis0)  # [0, hidden], grows by one entry per iteration
        for i in range(num_grids):
            index = op.Reshape(i, one)  # [1]
            start = op.Gather(starts, index)
            stop = op.Gather(ends, index)
            thw = op.Squeeze(op.Gather(grid, index, axis=0), axis0)  # [3]
            frames = op.Slice(thw, axis0, one)  # [1] = t
            entry_len = op.ReduceProd(op.Slice(thw, one, op.Constant(value_ints=[3])), keepdims=1)  # [1] = h*w
            entry_shape = op.Concat(frames, entry_len, hidden, axis=0)  # [t, h*w, hidden]
            q = op.Reshape(op.Slice(query, start, stop, axis0), entry_shape)
            k = op.Reshape(op.Slice(key, start, stop, axis0), entry_shape)
            v = op.Reshape(op.Slice(value, start, stop, axis0), entry_shape)
            entry = msft.MultiHeadAttention(q, k, v, num_heads=num_heads)  # [t, h*w, hidden]
            out = op.Concat(out, op.Reshape(entry, flat_shape), axis=0)
    return out


@onnxscript.script(default_opset=op)
def rotate_rows_onnx(x: FLOAT, cos: FLOAT, sin: FLOAT, num_heads: int) -> FLOAT:
    """`qvl_compile::rotate_rows` as onnxruntime's RotaryEmbedding over one batch of N rows: position_ids [1] = 0
    is the offset of row 0, so row n reads cos/sin row n (cos/sin [N, hd/2]); rotate-half pairs (interleaved=0)."""
    axis0 = op.Constant(value_ints=[0])
    batch = op.Unsqueeze(x, axis0)  # [1, N, heads*hd]
    rotated = msft.RotaryEmbedding(batch, op.Constant(value_ints=[0]), cos, sin, num_heads=num_heads, interleaved=0)
    return op.Squeeze(rotated, axis0)  # [N, heads*hd]


def vision_translation_table() -> dict:
    """The vision tower's opaque ops -> their ONNX lowerings, for torch.onnx's custom_translation_table."""
    import torch

    from qvl_compile.rewrite import attention, rotary  # noqa: F401 - registers torch.ops.qvl_compile

    return {torch.ops.qvl_compile.frame_attention.default: frame_attention_onnx,
            torch.ops.qvl_compile.rotate_rows.default: rotate_rows_onnx}


@onnxscript.script(default_opset=op)
def cached_attention_onnx(query: FLOAT, key: FLOAT, value: FLOAT, past_key: FLOAT, past_value: FLOAT,
                          attention_mask: INT64, num_heads: int, kv_heads: int) -> tuple[FLOAT, FLOAT, FLOAT]:
    """`qvl_compile::cached_attention` as onnxruntime's GroupQueryAttention (causal, no rotary inside).

    seqlens_k = mask row sums - 1, total_sequence_length = mask length: the past may be a larger
    preallocated buffer, which GroupQueryAttention fills in place when present is bound to it.
    """
    mask = op.Cast(attention_mask, to=7)
    seqlens_k = op.Cast(op.Sub(op.ReduceSum(mask, op.Constant(value_ints=[1]), keepdims=0),
                               op.Constant(value_int=1)), to=6)  # [B] int32
    total_length = op.Cast(op.Squeeze(op.Shape(mask, start=1, end=2), op.Constant(value_ints=[0])), to=6)
    out, present_key, present_value = msft.GroupQueryAttention(
        query, key, value, past_key, past_value, seqlens_k, total_length, num_heads=num_heads, kv_num_heads=kv_heads)
    return out, present_key, present_value


@onnxscript.script(default_opset=op)
def mrope_rotate_onnx(x: FLOAT, row_index: INT64, cos_rows: FLOAT, sin_rows: FLOAT, num_heads: int,
                      mrope_section: Sequence[int]) -> FLOAT:
    """`qvl_compile::mrope_rotate` as onnxruntime's MRotaryEmbedding, interleaved sections (mrope_layout 1),
    rotate-half pairs (interleaved=0); `row_index` indexes the per-call rows (rewrite/rotary.py)."""
    return msft.MRotaryEmbedding(x, row_index, cos_rows, sin_rows, num_heads=num_heads, mrope_section=mrope_section,
                                 mrope_layout=1, interleaved=0)


@onnxscript.script(default_opset=op)
def moe_onnx(x: FLOAT, router_logits: FLOAT, fc1: FLOAT, fc2: FLOAT, k: int) -> FLOAT:
    """`qvl_compile::moe` as onnxruntime's MoE: the router's logits as `router_probs` (the op takes the softmax
    over all experts, the top k, and with normalize_routing_weights=1 renormalises them, as transformers does);
    SwiGLU silu(gate) * up with gate/up rows interleaved in fc1 (swiglu_fusion=1), no biases, no clamp."""
    return msft.MoE(x, router_logits, fc1, None, fc2, k=k, normalize_routing_weights=1, activation_type="swiglu",
                    swiglu_fusion=1, activation_alpha=1.0, activation_beta=0.0)
