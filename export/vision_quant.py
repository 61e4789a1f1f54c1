"""Optional 8-bit vision graph: onnxruntime's dynamic quantization on every linear layer.

Weights become per-channel symmetric int8 with a 7-bit range (`reduce_range`) and activations are quantized to
uint8 at run time (`DynamicQuantizeMatMul` / `MatMulInteger`), which runs on MLAS's integer kernels.
Why 7 bits: on x86 without VNNI (AVX2-only, AVX-512 without VNNI) MLAS multiplies u8 x s8 with VPMADDUBSW,
whose int16 pair sums saturate at full 8-bit range. Measured on the tiny tower, AVX2-only EPYC, min cosine
against the fp32 graph over the grid matrix: 0.9948 at full range, 0.99967 with reduce_range (u8 x u8: 0.99971).
The graph runs wherever the user deploys it, so it is made safe for the machines that saturate. Measured on the
Qwen3-VL-2B tower at 448x448, 2 threads: 1.5 s against 3.4 s for fp32. MatMulNBits with 8-bit weights
was measured too and gave no speed-up here (3.5 s at accuracy_level 4): this AVX2 machine has no int8
path for it, so dequantize-then-fp32 is what runs.

torch.onnx writes the tower's linears as Gemm (weight transposed, bias fused); the dynamic quantizer
takes MatMul, so each Gemm with a constant weight first becomes MatMul + Add over the same numbers.
Attention, norms and the position table stay fp32.
"""
from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from qvl_compile.errors import QvlError
from qvl_compile.parity import INT8_MIN_COSINE

log = logging.getLogger(__name__)

MIN_COSINE = INT8_MIN_COSINE  # int8 vs eager PyTorch; qvl_compile.parity says what was measured
INT8_TOLERANCE = 0.1  # max rel error bound; the cosine is the criterion that matters


@dataclass(frozen=True)
class VisionQuantOptions:
    mode: str = "fp32"  # "fp32" or "int8"

    def validate(self) -> None:
        if self.mode not in ("fp32", "int8"):
            raise QvlError(f"--vision-quant: expected fp32 or int8, got {self.mode!r}")

    def describe(self) -> dict:
        if self.mode == "fp32":
            return {"mode": "fp32"}
        return {"mode": "int8", "method": "onnxruntime quantize_dynamic: per-channel symmetric int8 weights (7-bit "
                                          "range), uint8 activations quantized at run time", "min_cosine": MIN_COSINE}


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def gemm_to_matmul(model: onnx.ModelProto) -> int:
    """Rewrite every Gemm(A, W, bias) with a constant W into MatMul(A, W') + bias, in place; returns the count."""
    graph = model.graph
    weights = {t.name: t for t in graph.initializer}
    nodes, replaced, transposed = [], 0, set()
    for node in graph.node:
        attrs = _attrs(node) if node.op_type == "Gemm" else {}
        if (node.op_type != "Gemm" or node.input[1] not in weights or attrs.get("transA", 0)
                or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0):
            nodes.append(node)
            continue
        weight = numpy_helper.to_array(weights[node.input[1]])
        if attrs.get("transB", 0):
            weight = weight.T  # [out, in] -> [in, out]
        name = f"{node.input[1]}_matmul"
        transposed.add(node.input[1])
        graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(weight), name))
        product = f"{node.output[0]}_matmul"
        nodes.append(helper.make_node("MatMul", [node.input[0], name], [product], name=f"{node.name}_MatMul"))
        if len(node.input) > 2 and node.input[2]:
            nodes.append(helper.make_node("Add", [product, node.input[2]], [node.output[0]], name=f"{node.name}_Add"))
        else:
            nodes.append(helper.make_node("Identity", [product], [node.output[0]], name=f"{node.name}_Identity"))
        replaced += 1
    still_read = {i for n in nodes for i in n.input}  # Loop bodies read other initializers: keep those
    kept = [t for t in graph.initializer if t.name not in transposed or t.name in still_read]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    del graph.node[:]
    graph.node.extend(nodes)
    return replaced


def _no_preprocessing_advice(record: logging.LogRecord) -> bool:
    """The quantizer advises its static-quantization pre-processing on the root logger; not for us."""
    return not record.getMessage().startswith("Please consider to run pre-processing")


def quantize_vision(fp32_path: Path, out_path: Path) -> dict[str, int]:
    """Write the 8-bit copy of the fp32 vision graph at `out_path` (weights inline); returns its matmul op counts."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = onnx.load(str(fp32_path))
    converted = gemm_to_matmul(model)
    log.info("vision int8: %d Gemm nodes became MatMul + Add", converted)
    with tempfile.TemporaryDirectory(dir=out_path.parent) as scratch:
        staged = Path(scratch) / "vision.matmul.onnx"
        onnx.save_model(model, str(staged), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=staged.name + ".data")
        del model
        root = logging.getLogger()
        root.addFilter(_no_preprocessing_advice)
        try:
            quantize_dynamic(str(staged), str(out_path), weight_type=QuantType.QInt8, per_channel=True,
                             reduce_range=True, op_types_to_quantize=["MatMul"])
        finally:
            root.removeFilter(_no_preprocessing_advice)
    counts: dict[str, int] = {}
    for node in onnx.load(str(out_path), load_external_data=False).graph.node:
        if node.op_type in ("DynamicQuantizeLinear", "MatMulInteger", "MatMul", "Gemm"):
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts
