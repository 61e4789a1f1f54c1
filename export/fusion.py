"""Fusions by onnxruntime's own transformer optimizer passes (`onnxruntime.transformers`).

- Vision: torch.onnx writes `gelu(approximate="tanh")` as eight elementwise nodes (Pow, Mul, Add, Tanh, ...)
  and the merger's erf GELU as five; `FusionFastGelu` / `FusionGelu` turn them into one `FastGelu` / `Gelu`
  contrib node each. Attention is left alone (our per-frame If / Loop already runs MultiHeadAttention).
- Decoder: transformers' RMSNorm becomes Pow, ReduceMean, Add, Sqrt, Reciprocal, Mul, Mul (17 chains for 4
  layers: input, post-attention, q and k norms per layer, and the final norm);
  `FusionSimplifiedLayerNormalization` makes each one `SimplifiedLayerNormalization`, and
  `FusionSkipLayerNormalization` (the base of onnxruntime's skip-simplified pass, run with shape inference off
  because our graph has symbolic sequence lengths) folds the residual Add before a norm into
  `SkipSimplifiedLayerNormalization`, which also returns the sum for the next residual. The decoder pass runs
  on the graph before its weights are written, so it never holds them.
"""
from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

import onnx

from qvl_compile.export.int4_weights import count_ops

log = logging.getLogger(__name__)

RMS_NORM_OPS = ("SimplifiedLayerNormalization", "SkipSimplifiedLayerNormalization")


@contextlib.contextmanager
def _quiet_fusion_log() -> Iterator[None]:
    """onnxruntime.transformers logs its own "Fused X: n" lines; ours follow the pass."""
    fusion_log = logging.getLogger("fusion_base")
    level = fusion_log.level
    fusion_log.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        fusion_log.setLevel(level)


def _counts(graph: onnx.GraphProto, ops: tuple[str, ...]) -> dict[str, int]:
    found = count_ops(graph)
    return {op: found.get(op, 0) for op in ops}


def fuse_gelu(path: Path, external: bool) -> dict[str, int]:
    """Rewrite the graph at `path` in place; returns the counts of the fused ops."""
    from onnxruntime.transformers.fusion_fastgelu import FusionFastGelu
    from onnxruntime.transformers.fusion_gelu import FusionGelu
    from onnxruntime.transformers.onnx_model import OnnxModel

    model = OnnxModel(onnx.load(str(path)))
    with _quiet_fusion_log():
        FusionFastGelu(model).apply()
        FusionGelu(model).apply()
    _sort_nodes(model.model.graph)  # fused nodes are appended at the end
    counts = _counts(model.model.graph, ("FastGelu", "Gelu"))
    for stale in [path, path.with_name(path.name + ".data")]:
        stale.unlink(missing_ok=True)
    onnx.save_model(model.model, str(path), save_as_external_data=external, all_tensors_to_one_file=True,
                    location=path.name + ".data", size_threshold=1024)
    log.info("vision: fused %d FastGelu and %d Gelu", counts["FastGelu"], counts["Gelu"])
    return counts


def _reads(node: onnx.NodeProto) -> list[str]:
    """The names a node reads: its inputs, and those its subgraphs (If branches, Loop bodies) read from outside."""
    names = list(node.input)
    for attribute in node.attribute:
        for subgraph in [attribute.g] if attribute.type == onnx.AttributeProto.GRAPH else list(attribute.graphs):
            for inner in subgraph.node:
                names += _reads(inner)  # names made inside are never produced outside (no shadowing in ONNX)
    return names


def _sort_nodes(graph: onnx.GraphProto) -> None:
    """Order the nodes so each follows the producers of what it reads (stable otherwise). Unlike
    onnxruntime's `OnnxModel.topological_sort`, an input nothing produces counts as available (in a
    weightless graph the weights are neither initializers nor graph inputs yet), and what an If or Loop's
    subgraphs read from the outer graph counts as read by the node."""
    producer = {name: index for index, node in enumerate(graph.node) for name in node.output if name}
    order: list[int] = []
    state: dict[int, bool] = {}  # False: being visited, True: placed

    def visit(index: int) -> None:
        stack = [(index, iter(_reads(graph.node[index])))]
        state[index] = False
        while stack:
            current, inputs = stack[-1]
            for name in inputs:
                parent = producer.get(name)
                if parent is not None and parent not in state:
                    state[parent] = False
                    stack.append((parent, iter(_reads(graph.node[parent]))))
                    break
                if parent is not None and state[parent] is False:
                    raise ValueError(f"the graph has a cycle through node {graph.node[parent].name!r}")
            else:
                stack.pop()
                state[current] = True
                order.append(current)

    for index in range(len(graph.node)):
        if index not in state:
            visit(index)
    nodes = [graph.node[i] for i in order]
    del graph.node[:]
    graph.node.extend(nodes)


def fuse_rms_norm(proto: onnx.ModelProto) -> dict[str, int]:
    """Fuse the decoder's RMSNorm chains in `proto` (in place, weights not needed); returns the fused counts.

    The skip fusion runs without symbolic shape inference (the weights are not in the graph yet): every residual
    Add in this decoder joins two [B, S, hidden] tensors, which is the kernel's unbroadcast case.
    """
    from onnxruntime.transformers.fusion_simplified_layernorm import FusionSimplifiedLayerNormalization
    from onnxruntime.transformers.fusion_skiplayernorm import FusionSkipLayerNormalization
    from onnxruntime.transformers.onnx_model import OnnxModel

    model = OnnxModel(proto)
    with _quiet_fusion_log():
        FusionSimplifiedLayerNormalization(model).apply()
        # onnxruntime's FusionSkipSimplifiedLayerNormalization is this pass with shape inference switched on
        FusionSkipLayerNormalization(model, "SkipSimplifiedLayerNormalization", "SimplifiedLayerNormalization",
                                     shape_infer=False).apply()
    _sort_nodes(proto.graph)  # fused nodes are appended at the end
    counts = _counts(proto.graph, RMS_NORM_OPS)
    log.info("decoder: fused %d SimplifiedLayerNormalization and %d SkipSimplifiedLayerNormalization",
             counts["SimplifiedLayerNormalization"], counts["SkipSimplifiedLayerNormalization"])
    return counts
