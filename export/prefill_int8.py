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
from qvl_compile.export.graph_weights import GraphWeights, dequantize_matmul_nbits
from qvl_compile.export.weight_writer import TensorWriter

log = logging.getLogger(__name__)

PREFILL_FILE = "decoder_prefill.onnx"
SKIPPED_PREFIX = "lm_head"  # the output projection keeps its MatMulNBits
INT8_MAX = 127


def int8_columns(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """weight [K, N] -> (int8 [K, N], scale [N]) with one symmetric scale per output column."""
    scale = np.abs(weight).max(axis=0) / INT8_MAX
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    return np.clip(np.rint(weight / scale), -INT8_MAX, INT8_MAX).astype(np.int8), scale


class _Rewriter:
    """Builds the replacement nodes; an input read by several projections (q, k, v) is quantized once."""

    def __init__(self, weights: GraphWeights, writer: TensorWriter, opset: int):
        self.weights, self.writer, self.opset = weights, writer, opset
        self.quantized: dict[str, tuple[str, str]] = {}  # input -> (uint8 rows, row scales)
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = [
            numpy_helper.from_array(np.array(INT8_MAX, np.float32), "prefill.int8_max"),
            numpy_helper.from_array(np.array(128, np.float32), "prefill.offset"),
            numpy_helper.from_array(np.array(np.finfo(np.float32).tiny, np.float32), "prefill.tiny"),
            numpy_helper.from_array(np.array(128, np.uint8), "prefill.zero_point"),
        ]

    def _quantize_rows(self, x: str) -> tuple[str, str]:
        if x not in self.quantized:
            p = f"prefill.{x}"
            self.nodes += [
                helper.make_node("Abs", [x], [p + ".abs"]),
                self._row_max(p + ".abs", p + ".max"),  # [.., 1]
                helper.make_node("Div", [p + ".max", "prefill.int8_max"], [p + ".raw_scale"]),
                helper.make_node("Max", [p + ".raw_scale", "prefill.tiny"], [p + ".scale"]),  # an all-zero row
                helper.make_node("Div", [x, p + ".scale"], [p + ".scaled"]),
                helper.make_node("Round", [p + ".scaled"], [p + ".rounded"]),
                helper.make_node("Add", [p + ".rounded", "prefill.offset"], [p + ".shifted"]),
                helper.make_node("Cast", [p + ".shifted"], [p + ".u8"], to=TensorProto.UINT8),
            ]
            self.quantized[x] = (p + ".u8", p + ".scale")
        return self.quantized[x]

    def _row_max(self, x: str, out: str) -> onnx.NodeProto:
        """ReduceMax over the last axis, keeping it: axes as an input from opset 18, an attribute before."""
        if self.opset >= 18:
            if not any(t.name == "prefill.last_axis" for t in self.initializers):
                self.initializers.append(numpy_helper.from_array(np.array([-1], np.int64), "prefill.last_axis"))
            return helper.make_node("ReduceMax", [x, "prefill.last_axis"], [out], keepdims=1)
        return helper.make_node("ReduceMax", [x], [out], axes=[-1], keepdims=1)

    def replace(self, node: onnx.NodeProto) -> list[onnx.NodeProto]:
        """The nodes that compute `node`'s output from int8 weights (after any row quantization they need)."""
        start = len(self.nodes)
        rows, row_scale = self._quantize_rows(node.input[0])
        weight, column_scale = int8_columns(dequantize_matmul_nbits(node, self.weights).T)  # [K, N], [N]
        p = f"prefill.{node.output[0]}"  # outputs are unique; node names may be empty
        self.initializers += [self.writer.add(p + ".weight_int8", weight),
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


def prefill_graph(model: onnx.ModelProto, weights: GraphWeights | None = None, writer: TensorWriter | None = None) -> int:
    """Rewrite `model` in place into the int8 prefill graph; return the projections replaced.

    `weights` reads the 4-bit tensors (external data where the graph keeps them there; default: the model's own
    inline tensors), `writer` takes the int8 weights (default: inline). The tensors kept are not copied: an external
    one still points at the decoder's data file."""
    graph = model.graph
    weights = weights or GraphWeights(Path("inline.onnx"), model)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 18)
    rewriter = _Rewriter(weights, writer or TensorWriter(None), opset)
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
    """Write the int8 prefill graph of `decoder_path` to `out_path` (its int8 weights in `out_path`.data, the tensors
    it keeps read from the decoder's own files); return its manifest record. One weight in memory at a time."""
    weights = GraphWeights(decoder_path)
    writer = TensorWriter(out_path.with_name(out_path.name + ".data"))
    try:
        replaced = prefill_graph(weights.proto, weights, writer)
    finally:
        writer.close()
    onnx.save_model(weights.proto, str(out_path))
    log.info("int8 prefill graph: %d projections as MatMulInteger, %s", replaced, out_path.name)
    return {"graph": out_path.name, "min_rows": PREFILL_MIN_ROWS, "projections": replaced,
            "weights": "int8, one scale per output column, from the 4-bit weights",
            "activations": "uint8, one scale per row (token)"}
