"""A compact, diff-friendly text summary of an exported ONNX graph.

Inputs and outputs with dtypes and symbolic dims, op-type counts (the main graph, then each Loop/If
body), and initializer bytes by dtype. Committed for the tiny model under `golden/graphs/`, so a
change to the exporter's output shows up in review as a readable diff.
"""
from __future__ import annotations

import collections
from pathlib import Path

import numpy as np
import onnx
from onnx import helper


def _dims(value: onnx.ValueInfoProto) -> str:
    shape = value.type.tensor_type.shape
    return "[" + ", ".join(d.dim_param or str(d.dim_value) for d in shape.dim) + "]"


def _dtype(elem_type: int) -> str:
    return helper.tensor_dtype_to_np_dtype(elem_type).name


def _tensor_bytes(tensor: onnx.TensorProto) -> int:
    count = int(np.prod(tensor.dims, dtype=np.int64)) if tensor.dims else 1
    return count * helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize


def _walk(graph: onnx.GraphProto, where: str, ops: dict[str, collections.Counter],
          weights: collections.Counter, counts: collections.Counter) -> None:
    for tensor in graph.initializer:
        weights[_dtype(tensor.data_type)] += _tensor_bytes(tensor)
        counts[_dtype(tensor.data_type)] += 1
    for node in graph.node:
        op = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
        ops.setdefault(where, collections.Counter())[op] += 1
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                _walk(attr.g, f"{op} {attr.name}", ops, weights, counts)


def summarize(path: str | Path) -> str:
    """The summary text of the graph at `path` (external data is not read: sizes come from dims)."""
    model = onnx.load(str(path), load_external_data=False)
    ops: dict[str, collections.Counter] = {}
    weights: collections.Counter = collections.Counter()
    counts: collections.Counter = collections.Counter()
    _walk(model.graph, "graph", ops, weights, counts)
    opsets = ", ".join(f"{o.domain or 'ai.onnx'} {o.version}" for o in sorted(model.opset_import, key=lambda o: o.domain))
    lines = [f"# {Path(path).name}", f"opsets: {opsets}", "inputs:"]
    lines += [f"  {v.name}: {_dtype(v.type.tensor_type.elem_type)} {_dims(v)}" for v in model.graph.input]
    lines.append("outputs:")
    lines += [f"  {v.name}: {_dtype(v.type.tensor_type.elem_type)} {_dims(v)}" for v in model.graph.output]
    for where in sorted(ops, key=lambda w: (w != "graph", w)):
        total = sum(ops[where].values())
        lines.append(f"ops in {where} ({total} nodes):")
        lines += [f"  {op}: {n}" for op, n in sorted(ops[where].items())]
    lines.append("initializers (bytes by dtype):")
    lines += [f"  {dtype}: {weights[dtype]} in {counts[dtype]} tensors" for dtype in sorted(weights)]
    return "\n".join(lines) + "\n"
