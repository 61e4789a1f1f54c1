"""An exported graph's INT4 weights, dequantized one tensor at a time for the fake-quant PyTorch reference.

`quantized_weights(model, graph_path, family)` maps each transformers parameter that the graph stores
quantized (MatMulNBits projections, the GatherBlockQuantized embedding table) to a loader of its
dequantized float32 values. The streamed reference calls a loader just before the parameter's module
runs; `fake_quant_reference` (in-memory models) calls each once.
"""
from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from qvl_compile.errors import QvlError
from qvl_compile.registry import Family


class GraphWeights:
    """The graph's initializers by name, each read from its external data only when asked for."""

    def __init__(self, path: Path, proto: onnx.ModelProto | None = None):
        """`proto`: the graph at `path`, already loaded (its external data, if any, beside `path`)."""
        self.path = Path(path)
        self.proto = proto if proto is not None else onnx.load(str(path), load_external_data=False)
        self._tensors = {t.name: t for t in self.proto.graph.initializer}

    def nodes(self, op_type: str) -> list[onnx.NodeProto]:
        return [node for node in self.proto.graph.node if node.op_type == op_type]

    def array(self, name: str, rows: tuple[int, int] | None = None) -> np.ndarray:
        """A fresh read of the initializer, or of rows [start, stop) of its first axis (external data is read at
        those rows' offset only)."""
        entry = self._tensors[name]
        if entry.data_location != onnx.TensorProto.EXTERNAL:
            array = numpy_helper.to_array(entry)
            return array if rows is None else array[rows[0]:rows[1]]
        info = {e.key: e.value for e in entry.external_data}
        dtype = onnx.helper.tensor_dtype_to_np_dtype(entry.data_type)
        shape = list(entry.dims)
        offset = int(info.get("offset", 0))
        if rows is not None:
            row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
            offset, shape[0] = offset + rows[0] * row_bytes, rows[1] - rows[0]
        count = int(np.prod(shape, dtype=np.int64))
        return np.fromfile(self.path.parent / info["location"], dtype=dtype, count=count, offset=offset).reshape(shape)


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def dequantize_int4_rows(packed: np.ndarray, scales: np.ndarray, block: int, k: int,
                         zero_points: np.ndarray | None = None) -> np.ndarray:
    """W [N, k] float32 from 4-bit rows: packed [N, blocks, block/2] uint8 (low nibble first), scales [N, blocks],
    optional packed zero points (default 8, the symmetric zero point)."""
    n, blocks = packed.shape[0], packed.shape[1]
    weights = np.empty((n, blocks, block // 2, 2), np.float32)  # element 2j is the low nibble, 2j+1 the high
    weights[..., 0] = packed & 0x0F
    weights[..., 1] = packed >> 4
    weights = weights.reshape(n, blocks, block)
    if zero_points is not None:
        zp_packed = zero_points.reshape(n, -1)
        zero_point = np.stack([zp_packed & 0x0F, zp_packed >> 4], axis=-1).reshape(n, -1)[:, :blocks]
        weights -= zero_point.astype(np.float32)[:, :, None]
    else:
        weights -= 8.0
    weights *= scales.reshape(n, blocks, 1)  # in place: the lm_head alone is 1.2 GB at 2B size
    return weights.reshape(n, blocks * block)[:, :k]


def dequantize_int8_rows(packed: np.ndarray, scales: np.ndarray, block: int, k: int,
                         zero_points: np.ndarray | None = None) -> np.ndarray:
    """W [N, k] float32 from 8-bit rows: packed [N, blocks, block] uint8, scales [N, blocks], optional zero points
    [N, blocks] (default 128, the symmetric zero point)."""
    n, blocks = packed.shape[0], packed.shape[1]
    weights = packed.reshape(n, blocks, block).astype(np.float32)
    zero_point = zero_points.reshape(n, -1)[:, :blocks, None].astype(np.float32) if zero_points is not None else 128.0
    weights -= zero_point
    weights *= scales.reshape(n, blocks, 1)
    return weights.reshape(n, blocks * block)[:, :k]


def _dequantize_rows(name: str, bits: int, packed: np.ndarray, scales: np.ndarray, block: int, k: int,
                     zero_points: np.ndarray | None = None) -> np.ndarray:
    if bits == 4:
        return dequantize_int4_rows(packed.reshape(packed.shape[0], -1, block // 2), scales, block, k, zero_points)
    if bits == 8:
        return dequantize_int8_rows(packed.reshape(packed.shape[0], -1, block), scales, block, k, zero_points)
    raise QvlError(f"{name}: expected 4- or 8-bit weights, got {bits} bits")


def dequantize_matmul_nbits(node: onnx.NodeProto, graph: GraphWeights, rows: tuple[int, int] | None = None) -> np.ndarray:
    """W [N, K] of a MatMulNBits node (or rows [start, stop) of it)."""
    attrs = _attrs(node)
    zero_points = graph.array(node.input[3], rows) if len(node.input) > 3 and node.input[3] else None
    return _dequantize_rows(node.name, attrs["bits"], graph.array(node.input[1], rows), graph.array(node.input[2], rows),
                            attrs["block_size"], attrs["K"], zero_points)


def dequantize_gather(node: onnx.NodeProto, graph: GraphWeights, rows: tuple[int, int] | None = None) -> np.ndarray:
    """The table [rows, columns] of a GatherBlockQuantized node (uint8 data holding 4-bit pairs or 8-bit values,
    axis 0 gathered)."""
    attrs = _attrs(node)
    bits = attrs.get("bits", 4)
    if bits not in (4, 8) or attrs.get("gather_axis", 0) != 0 or attrs.get("quantize_axis", 1) != 1:
        raise QvlError(f"{node.name}: expected 4- or 8-bit rows gathered on axis 0, got attributes {attrs}")
    if len(node.input) > 3 and node.input[3]:
        raise QvlError(f"{node.name}: zero points on a GatherBlockQuantized table are not supported")
    packed = graph.array(node.input[0], rows)
    columns = packed.shape[1] * 8 // bits
    return _dequantize_rows(node.name, bits, packed, graph.array(node.input[2], rows), attrs["block_size"], columns)


def quantized_weights(model: torch.nn.Module, graph_path: Path, family: Family) -> dict[str, Callable[..., torch.Tensor]]:
    """transformers parameter name (as its module calls it) -> loader of the graph's dequantized values
    (`loader(rows=None)`; rows (start, stop) of the first axis)."""
    graph = GraphWeights(graph_path)
    module_names = {id(m): name for name, m in model.named_modules()}
    loaders: dict[str, Callable[..., torch.Tensor]] = {}
    for node, weight_name, dequantize in [*((n, n.input[1], dequantize_matmul_nbits) for n in graph.nodes("MatMulNBits")),
                                          *((n, n.input[0], dequantize_gather) for n in graph.nodes("GatherBlockQuantized"))]:
        module = family.projection_module(model, weight_name)
        loaders[module_names[id(module)] + ".weight"] = functools.partial(_as_tensor, dequantize, node, graph)
    for node in graph.nodes("QMoE"):
        experts = family.projection_module(model, node.input[2])
        name = module_names[id(experts)]
        loaders[name + ".gate_up_proj"] = functools.partial(_experts_tensor, node, graph, 1, experts.gate_up_proj.shape)
        loaders[name + ".down_proj"] = functools.partial(_experts_tensor, node, graph, 2, experts.down_proj.shape)
    if not loaders:
        raise QvlError(f"{graph_path}: no quantized weights to build a fake-quant reference from")
    return loaders


def _experts_tensor(node: onnx.NodeProto, graph: GraphWeights, fc: int, shape: torch.Size,
                    rows: tuple[int, int] | None = None) -> torch.Tensor:
    """A QMoE node's fc1 (as transformers' fused gate_up_proj: gate rows, then up rows) or fc2 (down_proj), in the
    layout of the transformers module it replaces: [E, out, in] on 5.x, [E, in, out] on 4.57."""
    from qvl_compile.export.moe_weights import dequantize_qmoe
    from qvl_compile.rewrite.moe import deinterleave_gate_up

    values = torch.from_numpy(dequantize_qmoe(node, graph, fc))  # [E, N, K]
    if fc == 1:
        values = deinterleave_gate_up(values)
    if tuple(values.shape) != tuple(shape):
        values = values.transpose(1, 2)
    values = values.contiguous()
    return values if rows is None else values[rows[0]:rows[1]]


def _as_tensor(dequantize, node: onnx.NodeProto, graph: GraphWeights, rows: tuple[int, int] | None = None) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(dequantize(node, graph, rows)))


def fake_quant_reference(hf_model, graph_path, family: Family, in_place: bool = False) -> torch.nn.Module:
    """`hf_model` (a copy unless `in_place`) whose quantized weights hold the graph's dequantized values."""
    ref = hf_model if in_place else copy.deepcopy(hf_model)
    for name, load in quantized_weights(ref, Path(graph_path), family).items():
        module_name, _, param = name.rpartition(".")
        setattr(ref.get_submodule(module_name), param, torch.nn.Parameter(load(), requires_grad=False))  # unties
    return ref.eval()
