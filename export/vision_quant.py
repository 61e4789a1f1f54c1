"""Optional 8-bit vision graph: onnxruntime's dynamic quantization on every linear layer.

Weights become per-channel int8 and activations are quantized to uint8 at run time (`DynamicQuantizeMatMul` /
`MatMulInteger`), which runs on MLAS's integer kernels. Which int8 weights (`VisionQuantOptions.weights`):

- s8, full range (symmetric): u8 x s8 products, exact and fastest where the CPU has VNNI or AMX (and on ARM);
  on x86 without them MLAS uses VPMADDUBSW, whose int16 pair sums saturate (tiny tower, AVX2-only EPYC: min
  cosine 0.9948 against the fp32 graph over the grid matrix);
- u8, full range (asymmetric): u8 x u8 products, which no kernel saturates; slower where VNNI would serve s8.
- auto (the default): s8 where this machine multiplies u8 x s8 exactly (`runtime.cpu_int8`), u8 elsewhere, so the
  export's own check measures the graph on kernels that run it as they will on a machine like this one. The
  runtime warns when an s8 graph is loaded on a CPU that saturates.

Measured on the Qwen3-VL-2B tower (`bench/vision_int8_weights.py`, AMD EPYC with AVX-512 VNNI, 2 threads): cosine
against the fp32 graph 0.99931 (s8) and 0.99935 (u8) at the export check's mixed grid, at 0.64 and 1.09 s per
448x448 image (fp32 1.62 s). The 7-bit s8 weights (`reduce_range`) used before gave 0.99810, under the export
check's floor on that tower. MatMulNBits with 8-bit weights was measured too and gave no speed-up on an AVX2 machine
(3.5 s against 3.4 s fp32 at 448): dequantize-then-fp32 is what runs there.

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


WEIGHT_FORMATS = ("auto", "s8", "u8")


@dataclass(frozen=True)
class VisionQuantOptions:
    mode: str = "fp32"  # "fp32" or "int8"
    weights: str = "auto"  # int8 weights: "s8", "u8", or "auto" (s8 where this CPU multiplies u8 x s8 exactly)

    def validate(self) -> None:
        if self.mode not in ("fp32", "int8"):
            raise QvlError(f"--vision-quant: expected fp32 or int8, got {self.mode!r}")
        if self.weights not in WEIGHT_FORMATS:
            raise QvlError(f"--vision-int8-weights: expected one of {', '.join(WEIGHT_FORMATS)}, got {self.weights!r}")

    def resolved_weights(self) -> str:
        """"s8" or "u8": what `auto` means on this machine."""
        from qvl_compile.runtime.cpu_int8 import s8_weights_exact

        if self.weights != "auto":
            return self.weights
        return "s8" if s8_weights_exact() else "u8"

    def describe(self) -> dict:
        if self.mode == "fp32":
            return {"mode": "fp32"}
        weights = self.resolved_weights()
        kind = "symmetric s8" if weights == "s8" else "asymmetric u8"
        return {"mode": "int8", "weights": weights, "min_cosine": MIN_COSINE,
                "method": f"onnxruntime quantize_dynamic: per-channel {kind} weights (full range), uint8 activations "
                          "quantized at run time"}


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


def quantize_vision(fp32_path: Path, out_path: Path, weights: str = "s8") -> dict[str, int]:
    """Write the 8-bit copy of the fp32 vision graph at `out_path` (weights inline, `weights` "s8" or "u8");
    returns its matmul op counts."""
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
            quantize_dynamic(str(staged), str(out_path), per_channel=True, reduce_range=False,
                             weight_type=QuantType.QInt8 if weights == "s8" else QuantType.QUInt8,
                             op_types_to_quantize=["MatMul"])
        finally:
            root.removeFilter(_no_preprocessing_advice)
    counts: dict[str, int] = {}
    for node in onnx.load(str(out_path), load_external_data=False).graph.node:
        if node.op_type in ("DynamicQuantizeLinear", "MatMulInteger", "MatMul", "Gemm"):
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts
