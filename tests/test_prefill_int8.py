"""--prefill int8: decoder_prefill.onnx, the decoder with int8 projection weights (export.prefill_int8), reads
prompts; the 4-bit graph decodes from the cache it wrote. The weight conversion is checked against what onnxruntime's
MatMulNBits itself computes; the rewritten graph against the original on one-node graphs; the export against
transformers (its verify step) and on the trained tiny model's tasks; the runtime's choice of graph by rows."""
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from qvl_compile.contract import PREFILL_MIN_ROWS
from qvl_compile.errors import QvlError
from qvl_compile.export.decoder_options import QuantOptions
from qvl_compile.export.graph_weights import GraphWeights, dequantize_matmul_nbits
from qvl_compile.export.prefill_int8 import PREFILL_FILE, int8_columns, prefill_graph

OPSETS = [helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft", 1)]


def nbits_node(rng, x: str, name: str, k: int, n: int, bits: int, block: int, zero_points: bool):
    """A MatMulNBits node with random codes, scales and (optionally) zero points, and its initializers."""
    blocks = -(-k // block)
    codes = rng.integers(0, 256, (n, blocks, block * bits // 8), dtype=np.uint8)
    tensors = [numpy_helper.from_array(codes, name + "_Q4"),
               numpy_helper.from_array(rng.uniform(0.001, 0.02, n * blocks).astype(np.float32), name + "_scales")]
    inputs = [x, name + "_Q4", name + "_scales"]
    if zero_points:
        points = rng.integers(0, 256, (n, -(-blocks * bits // 8)), dtype=np.uint8)
        tensors.append(numpy_helper.from_array(points, name + "_zero_points"))
        inputs.append(name + "_zero_points")
    node = helper.make_node("MatMulNBits", inputs, [name], name=name, domain="com.microsoft", K=k, N=n, bits=bits,
                            block_size=block, accuracy_level=0)
    return node, tensors


def run(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)


@pytest.mark.parametrize(("bits", "k", "zero_points"), [(4, 96, False), (4, 80, True), (8, 64, False), (8, 80, True)])
def test_the_weights_are_those_matmulnbits_computes_with(bits, k, zero_points):
    """Fed the identity, onnxruntime's MatMulNBits (level 0: fp32 activations) returns its own weight [K, N]: the one
    the prefill graph's int8 weights are made from (export.graph_weights, which the fake-quant reference reads too)."""
    rng = np.random.default_rng(bits * k)
    node, tensors = nbits_node(rng, "x", "y", k, 24, bits, 32, zero_points)
    graph = helper.make_graph([node], "one", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [k, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [k, 24])], tensors)
    model = helper.make_model(graph, opset_imports=OPSETS)
    expected = run(model, {"x": np.eye(k, dtype=np.float32)})[0]
    got = dequantize_matmul_nbits(node, GraphWeights(Path("one.onnx"), model)).T
    assert got.shape == (k, 24)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)


def test_int8_columns_round_each_column_to_its_own_scale():
    rng = np.random.default_rng(3)
    weight = rng.standard_normal((64, 5)).astype(np.float32) * np.array([1, 10, 0.01, 3, 0], np.float32)
    codes, scale = int8_columns(weight)
    assert codes.dtype == np.int8 and scale.shape == (5,) and np.abs(codes).max() == 127
    assert np.all(np.abs(codes * scale - weight) <= scale / 2 + 1e-7)
    assert scale[4] == 1 and not codes[:, 4].any()  # an all-zero column: no division by zero


def projections_graph(rng, zero_points: bool = False) -> onnx.ModelProto:
    """q, k, v reading one x [B, S, 64] and an lm_head reading q: the shape of the decoder's projections."""
    nodes, tensors = [], []
    for name, n in (("q", 48), ("k", 16), ("v", 16)):
        node, weights = nbits_node(rng, "x", name, 64, n, 4, 32, zero_points)
        nodes.append(node), tensors.extend(weights)
    head, weights = nbits_node(rng, "q", "logits", 48, 40, 4, 16, False)
    head.input[1], head.input[2] = "lm_head.weight_t_Q4", "lm_head.weight_t_scales"
    weights[0].name, weights[1].name = head.input[1], head.input[2]
    nodes.append(head), tensors.extend(weights)
    value = helper.make_tensor_value_info
    outputs = [value(name, TensorProto.FLOAT, [2, None, n]) for name, n in (("k", 16), ("v", 16), ("logits", 40))]
    graph = helper.make_graph(nodes, "projections", [value("x", TensorProto.FLOAT, [2, None, 64])], outputs, tensors)
    return helper.make_model(graph, opset_imports=OPSETS)


@pytest.mark.parametrize(("zero_points", "opset"), [(False, 18), (True, 18), (False, 17)])
def test_the_prefill_graph_computes_what_the_4_bit_graph_does(zero_points, opset):
    """At opset 17 ReduceMax takes its axes as an attribute, from 18 as an input."""
    rng = np.random.default_rng(11)
    model = projections_graph(rng, zero_points)
    model.opset_import[0].version = opset
    x = rng.standard_normal((2, 9, 64)).astype(np.float32)
    x[1, 4] = 0  # an all-zero row (padding) stays zero, not NaN
    expected = run(model, {"x": x})
    rewritten = onnx.ModelProto()
    rewritten.CopyFrom(model)
    assert prefill_graph(rewritten) == 3
    onnx.checker.check_model(rewritten)
    ops = [node.op_type for node in rewritten.graph.node]
    assert ops.count("MatMulInteger") == 3 and ops.count("ReduceMax") == 1  # x quantized once for q, k and v
    assert ops.count("MatMulNBits") == 1  # the lm_head keeps its 4-bit kernel
    assert not any(t.name.startswith(("q_", "k_", "v_")) for t in rewritten.graph.initializer)  # 4-bit copies dropped
    got = run(rewritten, {"x": x})
    for name, a, b in zip(("k", "v", "logits"), got, expected):
        assert np.all(np.isfinite(a)) and not a[1, 4].any(), name
        rel = np.abs(a - b).max() / np.abs(b).max()
        assert rel < 2e-2, (name, rel)  # int8 weights per column and activations per row, from exact weights


def test_a_graph_without_4_bit_projections_is_refused():
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "none",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    with pytest.raises(QvlError, match="no 4-bit projections"):
        prefill_graph(helper.make_model(graph, opset_imports=OPSETS))


@pytest.mark.parametrize(("options", "message"), [
    (QuantOptions(prefill="int4"), "--prefill: expected none or int8, got 'int4'"),
    (QuantOptions(mode="fp32", prefill="int8"), "--prefill int8: expected --quant int4 .*got --quant fp32"),
])
def test_a_wrong_prefill_option_is_one_clear_error(options, message):
    with pytest.raises(QvlError, match=message):
        options.validate()


def test_the_export_lists_and_checks_its_prefill_graph(prefill_export):
    decoder = json.loads((prefill_export / "manifest.json").read_text())["artifacts"]["decoder"]
    files = [f["path"] for f in decoder["files"]]
    assert files[0] == "decoder.onnx" and PREFILL_FILE in files and PREFILL_FILE + ".data" in files
    record = decoder["prefill"]
    assert record["graph"] == PREFILL_FILE and record["min_rows"] == PREFILL_MIN_ROWS
    layers = decoder["num_layers"]
    assert record["projections"] == 7 * layers  # q, k, v, o, gate, up, down
    check = record["export_check"]
    assert check["prefill_max_rel"] <= check["tolerance"] and check["decode_max_rel"] <= check["tolerance"]
    ops = [node.op_type for node in onnx.load(str(prefill_export / PREFILL_FILE), load_external_data=False).graph.node]
    assert ops.count("MatMulInteger") == 7 * layers and ops.count("MatMulNBits") == 1


def test_verify_reads_the_prompts_with_the_prefill_graph(prefill_export, tiny_dir):
    from qvl_compile.export.verify import verify_export

    rows = [r for r in verify_export(prefill_export, tiny_dir, grids={"one image": ((1, 4, 4),)})
            if r.name.startswith("decoder")]
    assert any("int8 prefill graph" in r.name for r in rows) and any("int4 weights" in r.name for r in rows)
    assert all(r.passed for r in rows if r.required), [(r.name, r.output, r.max_rel) for r in rows if not r.passed]


def test_the_moe_family_is_refused_before_anything_is_written(moe_tiny_dir, tmp_path):
    from qvl_compile.export.pipeline import export_model

    with pytest.raises(QvlError, match="--prefill int8: expected a dense decoder, got the qwen3_vl_moe family"):
        export_model(moe_tiny_dir, tmp_path / "out", component="decoder", quant=QuantOptions(prefill="int8"))
    assert not (tmp_path / "out").exists()


def test_a_prefill_graph_from_another_checkpoint_is_refused(prefill_export, tmp_path):
    import shutil

    from qvl_compile.manifest import SOURCE_KEY
    from qvl_compile.runtime.decoder import TextDecoder

    folder = tmp_path / "swapped"
    shutil.copytree(prefill_export, folder)
    model = onnx.load(str(folder / PREFILL_FILE), load_external_data=False)
    for prop in model.metadata_props:
        if prop.key == SOURCE_KEY:
            prop.value = "0" * 64
    onnx.save_model(model, str(folder / PREFILL_FILE))
    manifest = json.loads((folder / "manifest.json").read_text())
    for record in manifest["artifacts"]["decoder"]["files"]:  # sizes kept true: only the stamp differs
        record["bytes"] = (folder / record["path"]).stat().st_size
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(QvlError, match=f"{PREFILL_FILE}: exported from checkpoint 000000000000"):
        TextDecoder.from_export(folder)
