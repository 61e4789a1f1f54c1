"""An int8 KV cache: GroupQueryAttention keeps keys and values as int8, one calibrated scale per channel.

onnxruntime's GroupQueryAttention (k_quant_type / v_quant_type PER_CHANNEL, kv_cache_bit_width 8) writes each
new key and value row into the cache as `clip(round(x / scale), -127, 127)` with one scale per kv head and head
dimension, and dequantizes inside attention; it reads a quarter of an fp32 cache's bytes per token. Its scales
are static inputs, so the export calibrates them: `calibrate` runs the graph with its fp32 cache on a prompt of
text, images and a video (a seed the parity checks do not use) and takes each channel's largest magnitude, with
`HEADROOM` for inputs that reach further. Keys are rotated after the cache's projection: rotary mixes channel d
with d + head_dim/2 by a position-dependent angle, so both take the largest norm of their pair, which no rotation
changes. Values are not rotated and take their own largest magnitude.

The rewrite is undone exactly by `fp32_kv_cache` (the checks' reference copy of the graph).
"""
from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from qvl_compile.errors import QvlError

log = logging.getLogger(__name__)

KV_CACHE_DTYPES = ("fp32", "int8")
ATTENTION = "GroupQueryAttention"
# Inputs 7..11 (cos/sin caches, position_ids, attention_bias, head_sink) stay empty; 12 and 13 are the scales.
K_SCALE_INPUT, V_SCALE_INPUT = 12, 13
QUANT_ATTRIBUTES = {"k_quant_type": "PER_CHANNEL", "v_quant_type": "PER_CHANNEL", "kv_cache_bit_width": 8}
# Calibrated magnitude x 1.25 maps to 127: values a quarter larger than any seen in calibration still fit, at the
# cost of 0.3 bits of resolution.
HEADROOM = 1.25
INT8_MAX = 127


def _attention_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    nodes = [node for node in model.graph.node if node.op_type == ATTENTION]
    if not nodes:
        raise QvlError(f"the decoder graph has no {ATTENTION} node: it cannot hold an int8 KV cache")
    return nodes


def _cache_values(model: onnx.ModelProto, nodes: list[onnx.NodeProto]) -> list[onnx.ValueInfoProto]:
    """The graph inputs and outputs that are the attention nodes' past and present tensors."""
    names = {name for node in nodes for name in (*node.input[3:5], *node.output[1:3])}
    return [value for value in (*model.graph.input, *model.graph.output) if value.name in names]


def cache_dtype(model: onnx.ModelProto) -> str:
    """"int8" or "fp32": how the graph's attention stores its cache."""
    types = {value.type.tensor_type.elem_type for value in _cache_values(model, _attention_nodes(model))}
    return "int8" if types == {TensorProto.INT8} else "fp32"


def channel_scales(keys: list[np.ndarray], values: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Per layer keys/values [B, kv, rows, head_dim] (rotated keys, as cached) -> (key scales, value scales),
    each [layers, kv, 1, head_dim]."""
    key_scales, value_scales = [], []
    for key, value in zip(keys, values):
        half = key.shape[-1] // 2
        pair_norm = np.sqrt(key[..., :half] ** 2 + key[..., half:] ** 2).max(axis=(0, 2))  # [kv, half]
        key_scales.append(np.concatenate([pair_norm, pair_norm], axis=-1)[:, None, :])  # [kv, 1, hd]
        value_scales.append(np.abs(value).max(axis=(0, 2))[:, None, :])  # [kv, 1, hd]
    return tuple(_to_scale(np.stack(s)) for s in (key_scales, value_scales))


def _to_scale(magnitude: np.ndarray) -> np.ndarray:
    floor = max(float(magnitude.max()), 1e-12) * 1e-6  # a channel that stayed at zero still gets a usable scale
    return (np.maximum(magnitude, floor) * HEADROOM / INT8_MAX).astype(np.float32)


def quantize_kv_cache(model: onnx.ModelProto, key_scales: np.ndarray, value_scales: np.ndarray) -> None:
    """Rewrite `model` in place: every attention node's cache int8, with the scales as initializers
    (key_scales/value_scales [layers, kv, 1, head_dim], in the nodes' order)."""
    nodes = _attention_nodes(model)
    if cache_dtype(model) == "int8":
        raise QvlError("the decoder graph's KV cache is int8 already")
    if len(nodes) != len(key_scales) or len(nodes) != len(value_scales):
        raise QvlError(f"{len(nodes)} attention nodes but scales for {len(key_scales)} layers")
    for layer, node in enumerate(nodes):
        inputs = list(node.input) + [""] * (K_SCALE_INPUT - len(node.input))
        names = (f"kv_cache.{layer}.key_scale", f"kv_cache.{layer}.value_scale")
        del node.input[:]
        node.input.extend([*inputs[:K_SCALE_INPUT], *names])
        model.graph.initializer.extend([numpy_helper.from_array(key_scales[layer], names[0]),
                                        numpy_helper.from_array(value_scales[layer], names[1])])
        node.attribute.extend(onnx.helper.make_attribute(k, v) for k, v in QUANT_ATTRIBUTES.items())
    for value in _cache_values(model, nodes):
        value.type.tensor_type.elem_type = TensorProto.INT8


def fp32_kv_cache(model: onnx.ModelProto) -> None:
    """Undo `quantize_kv_cache` in place: fp32 cache, no scales."""
    nodes = _attention_nodes(model)
    scale_names = set()
    for node in nodes:
        scale_names.update(node.input[K_SCALE_INPUT:])
        kept = list(node.input[:K_SCALE_INPUT])
        while kept and not kept[-1]:
            kept.pop()
        del node.input[:]
        node.input.extend(kept)
        attributes = [a for a in node.attribute if a.name not in QUANT_ATTRIBUTES]
        del node.attribute[:]
        node.attribute.extend(attributes)
    initializers = [i for i in model.graph.initializer if i.name not in scale_names]
    del model.graph.initializer[:]
    model.graph.initializer.extend(initializers)
    for value in _cache_values(model, nodes):
        value.type.tensor_type.elem_type = TensorProto.FLOAT


def scale_summary(key_scales: np.ndarray, value_scales: np.ndarray) -> dict:
    """The calibrated range (scale x 127) per kind, for the manifest and the log."""
    return {kind: {"min": round(float(s.min() * INT8_MAX), 4), "max": round(float(s.max() * INT8_MAX), 4)}
            for kind, s in (("key_range", key_scales), ("value_range", value_scales))}
