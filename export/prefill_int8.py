"""An int8 prefill graph: the decoder with its 4-bit projections re-expressed as int8 GEMMs for long inputs.

onnxruntime runs the 4-bit `MatMulNBits` from its own block kernels, which at prompt size (1,000 rows) are no
faster than PyTorch's fp32 matmul on the CPUs we measured; its 8-bit integer GEMM (`MatMulInteger`, MLAS QGEMM)
uses the CPU's int8 units (VNNI, AMX) and is 6x faster there (bench/decoder_kernels.py --sections prefill). For one
token the 4-bit kernel reads half the bytes and stays ahead, so the runtime feeds prompts to this graph and decodes
with the 4-bit one; both read and write the same KV cache.

The graph is `decoder.onnx` with each projection's `MatMulNBits` (not the lm_head's: it runs on the logit
positions only) replaced by:

    x [.., K] -> per-row scale s_x = max|x| / 127 -> u = round(x / s_x) + 128 (uint8)
    MatMulInteger(u, W8 [K, N], a_zero_point 128) -> int32 [.., N] -> float * s_w [N] * s_x [.., 1]

where W8 = round(W / s_w), s_w = max over K of |W| / 127, and W is the 4-bit weight as the decoder dequantizes it
(so the prefill and decode graphs compute with the same weights up to the int8 rounding). onnxruntime's own dynamic
quantizer was not used: it quantizes activations with one scale per tensor, and it starts from an fp32 graph
(4x the 4-bit weights in memory).
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from qvl_compile.contract import PREFILL_MIN_ROWS
from qvl_compile.errors import QvlError

log = logging.getLogger(__name__)

PREFILL_FILE = "decoder_prefill.onnx"
SKIPPED_PREFIX = "lm_head"  # the output projection keeps its MatMulNBits
INT8_MAX = 127


def _attributes(node: onnx.NodeProto) -> dict:
    return {attr.name: helper.get_attribute_value(attr) for attr in node.attribute}


def dequantize_nbits(node: onnx.NodeProto, tensors: dict[str, np.ndarray]) -> np.ndarray:
    """The float weight [K, N] a MatMulNBits node computes with (bits 4 or 8, optional uint8 zero points)."""
    attrs = _attributes(node)
    k, n, bits, block = attrs["K"], attrs["N"], attrs["bits"], attrs["block_size"]
    if bits not in (4, 8):
        raise QvlError(f"{node.name}: expected a 4- or 8-bit MatMulNBits, got {bits} bits")
    blocks = -(-k // block)
    packed = tensors[node.input[1]].reshape(n, blocks, block * bits // 8)  # [N, K / block, block * bits / 8]
    codes = packed if bits == 8 else np.stack([packed & 15, packed >> 4], axis=-1).reshape(n, blocks, block)
    zero = np.full((n, blocks), 2 ** (bits - 1), np.float32)
    if len(node.input) > 3 and node.input[3]:
        points = tensors[node.input[3]]
        if points.dtype != np.uint8:
            raise QvlError(f"{node.name}: expected uint8 zero points, got {points.dtype}")
        points = points.reshape(n, -1)
        zero = (points if bits == 8 else np.stack([points & 15, points >> 4], -1).reshape(n, -1))[:, :blocks]
    scales = tensors[node.input[2]].reshape(n, blocks)
    weight = (codes.astype(np.float32) - zero[..., None]) * scales[..., None]  # [N, K / block, block]
    return np.ascontiguousarray(weight.reshape(n, blocks * block)[:, :k].T)  # [K, N]


def int8_columns(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """weight [K, N] -> (int8 [K, N], scale [N]) with one symmetric scale per output column."""
    scale = np.abs(weight).max(axis=0) / INT8_MAX
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    return np.clip(np.rint(weight / scale), -INT8_MAX, INT8_MAX).astype(np.int8), scale


class _Rewriter:
    """Builds the replacement nodes; an input read by several projections (q, k, v) is quantized once."""

    def __init__(self, tensors: dict[str, onnx.TensorProto]):
        self.tensors = tensors
        self.quantized: dict[str, tuple[str, str]] = {}  # input -> (uint8 rows, row scales)
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = [
            numpy_helper.from_array(np.array(INT8_MAX, np.float32), "prefill.int8_max"),
            numpy_helper.from_array(np.array(128, np.float32), "prefill.offset"),
            numpy_helper.from_array(np.array(np.finfo(np.float32).tiny, np.float32), "prefill.tiny"),
            numpy_helper.from_array(np.array([-1], np.int64), "prefill.last_axis"),
            numpy_helper.from_array(np.array(128, np.uint8), "prefill.zero_point"),
        ]

    def _quantize_rows(self, x: str) -> tuple[str, str]:
        if x not in self.quantized:
            p = f"prefill.{x}"
            self.nodes += [
                helper.make_node("Abs", [x], [p + ".abs"]),
                helper.make_node("ReduceMax", [p + ".abs", "prefill.last_axis"], [p + ".max"], keepdims=1),  # [.., 1]
                helper.make_node("Div", [p + ".max", "prefill.int8_max"], [p + ".raw_scale"]),
                helper.make_node("Max", [p + ".raw_scale", "prefill.tiny"], [p + ".scale"]),  # an all-zero row
                helper.make_node("Div", [x, p + ".scale"], [p + ".scaled"]),
                helper.make_node("Round", [p + ".scaled"], [p + ".rounded"]),
                helper.make_node("Add", [p + ".rounded", "prefill.offset"], [p + ".shifted"]),
                helper.make_node("Cast", [p + ".shifted"], [p + ".u8"], to=TensorProto.UINT8),
            ]
            self.quantized[x] = (p + ".u8", p + ".scale")
        return self.quantized[x]

    def replace(self, node: onnx.NodeProto) -> list[onnx.NodeProto]:
        """The nodes that compute `node`'s output from int8 weights (after any row quantization they need)."""
        start = len(self.nodes)
        rows, row_scale = self._quantize_rows(node.input[0])
        arrays = {name: numpy_helper.to_array(self.tensors[name]) for name in node.input[1:4] if name}
        weight, column_scale = int8_columns(dequantize_nbits(node, arrays))
        p = f"prefill.{node.output[0]}"  # outputs are unique; node names may be empty
        self.initializers += [numpy_helper.from_array(weight, p + ".weight_int8"),
                              numpy_helper.from_array(column_scale, p + ".column_scale")]
        product = node.output[0] if not _bias(node) else p + ".product"
        self.nodes += [
            helper.make_node("MatMulInteger", [rows, p + ".weight_int8", "prefill.zero_point"], [p + ".int32"]),
            helper.make_node("Cast", [p + ".int32"], [p + ".float"], to=TensorProto.FLOAT),
            helper.make_node("Mul", [p + ".float", p + ".column_scale"], [p + ".columns"]),
            helper.make_node("Mul", [p + ".columns", row_scale], [product]),
        ]
        if _bias(node):
            self.nodes.append(helper.make_node("Add", [product, _bias(node)], [node.output[0]]))
        return self.nodes[start:]


def _bias(node: onnx.NodeProto) -> str:
    return node.input[5] if len(node.input) > 5 else ""


def prefill_graph(model: onnx.ModelProto) -> int:
    """Rewrite `model` (weights loaded) in place into the int8 prefill graph; return the projections replaced."""
    graph = model.graph
    rewriter = _Rewriter({t.name: t for t in graph.initializer})  # read one weight at a time, when replaced
    kept, replaced, dropped = [], 0, set()
    for node in graph.node:
        if node.op_type == "MatMulNBits" and not node.input[1].startswith(SKIPPED_PREFIX):
            if len(node.input) > 4 and node.input[4]:
                raise QvlError(f"{node.name}: MatMulNBits with g_idx (act-order) has no int8 prefill form")
            kept += rewriter.replace(node)  # in the node's place: the graph stays topologically sorted
            dropped.update(name for name in node.input[1:4] if name)
            replaced += 1
        else:
            kept.append(node)
    if not replaced:
        raise QvlError("the decoder graph has no 4-bit projections (MatMulNBits) to give an int8 prefill graph")
    still_read = {name for node in kept for name in node.input}
    initializers = [t for t in graph.initializer if t.name not in dropped or t.name in still_read]
    del graph.node[:]
    graph.node.extend(kept)
    del graph.initializer[:]
    graph.initializer.extend(initializers + rewriter.initializers)
    return replaced


def write_prefill_graph(decoder_path: Path, out_path: Path) -> dict:
    """Write the int8 prefill graph of `decoder_path` to `out_path` (+ `.data`); return its manifest record."""
    model = onnx.load(str(decoder_path))  # with its weights
    replaced = prefill_graph(model)
    onnx.save_model(model, str(out_path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=out_path.name + ".data", size_threshold=1024)
    log.info("int8 prefill graph: %d projections as MatMulInteger, %s", replaced, out_path.name)
    return {"graph": out_path.name, "min_rows": PREFILL_MIN_ROWS, "projections": replaced,
            "weights": "int8, one scale per output column, from the 4-bit weights",
            "activations": "uint8, one scale per row (token)"}
