"""Readable names for the symbolic dims torch.export leaves as s0, s1, ... on graph inputs and outputs."""
from __future__ import annotations

from onnx_ir import Shape


def name_dims(model, wanted: dict[str, list[str | None]]) -> None:
    """wanted: value name -> per-axis dim name (None keeps the axis as it is). Static axes stay static."""
    for value in list(model.graph.inputs) + list(model.graph.outputs):
        names = wanted.get(value.name)
        if names is None or value.shape is None:
            continue
        dims = list(value.shape.dims)
        for axis, name in enumerate(names):
            if name is not None and axis < len(dims) and not isinstance(dims[axis], int):
                dims[axis] = name
        value.shape = Shape(dims)
