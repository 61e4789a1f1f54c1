"""INT4 experts: each `MoE` node of the decoder becomes onnxruntime's `QMoE`, its expert weights packed by
onnxruntime's own block quantizer one expert at a time.

QMoE (com.microsoft, CPU) takes per expert the same bytes MatMulNBits takes per weight: 4-bit values of each
output row in blocks along the input axis, element 2j in the low nibble, symmetric (zero point 8), one
float32 scale per block. So fc1 [E, N, K] is packed expert by expert with `DefaultWeightOnlyQuantizer`
(its [K, N] input is the expert's transpose) into fc1_Q4 [E, N, K/2] and fc1_scales [E, N, K/block]. The
fake-quant reference dequantizes the same bytes (`dequantize_qmoe`).
"""
from __future__ import annotations

import numpy as np
import onnx

from qvl_compile.errors import QvlError
from qvl_compile.export.checkpoint_files import CheckpointReader
from qvl_compile.export.decoder_options import QuantOptions
from qvl_compile.export.weight_writer import WeightSource

MS_DOMAIN = "com.microsoft"
ROUTING_ATTRIBUTES = ("k", "normalize_routing_weights", "activation_type", "swiglu_fusion", "activation_alpha",
                      "activation_beta", "use_sparse_mixer")


def expert_weights(proto: onnx.ModelProto) -> set[str]:
    """The fc1 and fc2 initializer names of every MoE node."""
    return {name for node in proto.graph.node if node.op_type == "MoE" for name in (node.input[2], node.input[4])}


def qmoe_node(node: onnx.NodeProto, options: QuantOptions) -> onnx.NodeProto:
    """The QMoE node replacing an `MoE` node (x, router logits, fc1, -, fc2): same routing, 4-bit experts."""
    if len(node.input) > 5 or (len(node.input) > 3 and node.input[3]):
        raise QvlError(f"{node.name}: INT4 experts take an MoE node without biases or fc3, got inputs {list(node.input)}")
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute if a.name in ROUTING_ATTRIBUTES}
    fc1, fc2 = node.input[2], node.input[4]
    level = {"accuracy_level": options.accuracy_level} if options.accuracy_level else {}
    return onnx.helper.make_node(
        "QMoE", [node.input[0], node.input[1], fc1 + "_Q4", fc1 + "_scales", "", fc2 + "_Q4", fc2 + "_scales"],
        list(node.output), name=(node.name or "moe") + "_Q4", domain=MS_DOMAIN, expert_weight_bits=4,
        block_size=options.block_size, **attrs, **level)


def pack_experts(source: WeightSource, reader: CheckpointReader, quantizer) -> tuple[np.ndarray, np.ndarray]:
    """(packed [E, N, K/2] uint8, scales [E, N, K/block] float32) of a [E, N, K] expert tensor, read and packed one
    expert at a time (a 30B-A3B fc1 is 1.6 GB in float32; one expert 12 MB)."""
    experts, n, k = source.shape
    packed, scales = np.empty((experts, n, k // 2), np.uint8), None
    for expert in range(experts):
        weight = source.read(reader, rows=(expert, expert + 1))[0]  # [N, K]
        q, s, _ = quantizer.qbits_block_quant(np.ascontiguousarray(weight.T))  # [N, K/block, block/2], [N, K/block]
        packed[expert] = q.reshape(n, k // 2)
        if scales is None:
            scales = np.empty((experts, *s.reshape(n, -1).shape), np.float32)
        scales[expert] = s.reshape(n, -1)
    return packed, scales


def dequantize_qmoe(node: onnx.NodeProto, graph, fc: int) -> np.ndarray:
    """fc1 (`fc`=1) or fc2 (2) of a QMoE node as float32 [E, N, K], from the graph's packed bytes."""
    from qvl_compile.export.graph_weights import dequantize_int4_rows

    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    weights, scales = (node.input[2], node.input[3]) if fc == 1 else (node.input[5], node.input[6])
    packed, scale = graph.array(weights), graph.array(scales)
    experts, n, half = packed.shape
    block = attrs["block_size"]
    return np.stack([dequantize_int4_rows(packed[e].reshape(n, -1, block // 2), scale[e], block, half * 2)
                     for e in range(experts)])
