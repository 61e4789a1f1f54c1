"""The decoder's RMSNorm fusion on hand-built graphs: what it fuses, the node order it leaves, its numbers."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from qvl_compile.export.fusion import _sort_nodes, fuse_rms_norm
from qvl_compile.export.ort_schemas import register_onnxruntime_schemas

HIDDEN, EPS = 8, 1e-6


def rms_norm_chain(x: str, weight: str, out: str, tag: str) -> list[onnx.NodeProto]:
    """transformers' RMSNorm as torch.onnx writes it: Pow, ReduceMean, Add, Sqrt, Reciprocal, Mul, Mul."""
    c = helper.make_node
    return [c("Pow", [x, "two"], [f"{tag}.sq"]), c("ReduceMean", [f"{tag}.sq", "axes"], [f"{tag}.mean"], keepdims=1),
            c("Add", [f"{tag}.mean", "eps"], [f"{tag}.var"]), c("Sqrt", [f"{tag}.var"], [f"{tag}.std"]),
            c("Reciprocal", [f"{tag}.std"], [f"{tag}.inv"]), c("Mul", [x, f"{tag}.inv"], [f"{tag}.normed"]),
            c("Mul", [weight, f"{tag}.normed"], [out])]


def residual_block_graph(with_weights: bool) -> onnx.ModelProto:
    """norm(x) -> h; r = x + h; norm(r) -> y; outputs y and r (the residual goes on, as in a decoder layer)."""
    nodes = [*rms_norm_chain("x", "w1", "h", "n1"), helper.make_node("Add", ["x", "h"], ["r"]),
             *rms_norm_chain("r", "w2", "y", "n2")]
    constants = [numpy_helper.from_array(np.array(2.0, np.float32), "two"),
                 numpy_helper.from_array(np.array([-1], np.int64), "axes"),
                 numpy_helper.from_array(np.array(EPS, np.float32), "eps")]
    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.uniform(0.5, 1.5, HIDDEN).astype(np.float32), n) for n in ("w1", "w2")]
    io = lambda name: helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", "seq", HIDDEN])  # noqa: E731
    graph = helper.make_graph(nodes, "block", [io("x")], [io("y"), io("r")],
                              constants + (weights if with_weights else []))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft", 1)])


def test_both_norms_fuse_and_the_residual_is_kept():
    model = residual_block_graph(with_weights=False)  # as in export: the weights are not in the graph yet
    assert fuse_rms_norm(model) == {"SimplifiedLayerNormalization": 1, "SkipSimplifiedLayerNormalization": 1}
    ops = [node.op_type for node in model.graph.node]
    assert ops == ["SimplifiedLayerNormalization", "SkipSimplifiedLayerNormalization"]
    skip = model.graph.node[1]
    assert skip.output[0] == "y" and skip.output[-1] == "r"  # the residual sum still reaches the graph output


def test_fused_graph_computes_what_the_chains_did():
    plain = residual_block_graph(with_weights=True)
    fused = residual_block_graph(with_weights=True)
    fuse_rms_norm(fused)
    register_onnxruntime_schemas()
    onnx.checker.check_model(fused, full_check=True)
    x = np.random.default_rng(1).standard_normal((2, 3, HIDDEN)).astype(np.float32) * 4
    run = lambda m: ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})  # noqa: E731
    for want, got in zip(run(plain), run(fused)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_sort_puts_producers_first_and_refuses_a_cycle():
    c = helper.make_node
    graph = helper.make_graph([c("Relu", ["b"], ["c"]), c("Neg", ["a"], ["b"]), c("Abs", ["weight_not_here"], ["a"])],
                              "g", [], [])
    _sort_nodes(graph)
    assert [node.op_type for node in graph.node] == ["Abs", "Neg", "Relu"]
    cyclic = helper.make_graph([c("Relu", ["b"], ["a"]), c("Neg", ["a"], ["b"])], "g", [], [])
    with pytest.raises(ValueError, match="cycle"):
        _sort_nodes(cyclic)


def test_sort_counts_what_an_if_branch_reads_from_outside():
    """An If whose only input is its condition, but whose branch reads an outer value made later in node order
    (as after a fusion appends nodes), is placed after that value's producer."""
    c = helper.make_node
    branch = helper.make_graph([c("Identity", ["made_late"], ["picked"])], "branch", [],
                               [helper.make_tensor_value_info("picked", TensorProto.FLOAT, None)])
    graph = helper.make_graph([c("If", ["cond"], ["out"], then_branch=branch, else_branch=branch),
                               c("Neg", ["x"], ["made_late"])], "g", [], [])
    _sort_nodes(graph)
    assert [node.op_type for node in graph.node] == ["Neg", "If"]
