"""bench/bandwidth.py's decode bound: an embedding table only the lookup reads (one row per token) is left out of
the bytes every token reads, whether gathered plainly or through GatherBlockQuantized; a table tied to the lm_head
(the same bytes, read whole by MatMulNBits every token) stays in."""
import json

import onnx
import pytest
from bench_scripts import bench_module
from onnx import TensorProto, helper

VOCAB, HIDDEN, BLOCK = 40, 16, 8


@pytest.fixture(scope="module")
def bandwidth():
    return bench_module("bandwidth")


def _graph(tied: bool) -> onnx.ModelProto:
    """An 8-bit GatherBlockQuantized table with its scales; tied: an lm_head MatMulNBits reads the same tensors."""
    table = helper.make_tensor("table", TensorProto.UINT8, [VOCAB, HIDDEN], bytes(VOCAB * HIDDEN), raw=True)
    scales = helper.make_tensor("scales", TensorProto.FLOAT, [VOCAB, HIDDEN // BLOCK], [1.0] * (VOCAB * HIDDEN // BLOCK))
    other = helper.make_tensor("other", TensorProto.FLOAT, [VOCAB, 3], [0.0] * (VOCAB * 3))  # vocab rows, not gathered
    nodes = [helper.make_node("GatherBlockQuantized", ["table", "ids", "scales"], ["embeds"], domain="com.microsoft",
                              block_size=BLOCK, bits=8)]
    if tied:
        nodes.append(helper.make_node("MatMulNBits", ["embeds", "table", "scales"], ["logits"], domain="com.microsoft",
                                      K=HIDDEN, N=VOCAB, bits=8, block_size=BLOCK))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("ids", TensorProto.INT64, [1])],
                              [helper.make_tensor_value_info(nodes[-1].output[0], TensorProto.FLOAT, None)],
                              initializer=[table, scales, other])
    return helper.make_model(graph)


def test_untied_quantized_table_with_its_scales_is_left_out(bandwidth):
    assert bandwidth.embedding_table_bytes(_graph(tied=False), VOCAB) == VOCAB * HIDDEN + VOCAB * (HIDDEN // BLOCK) * 4
    assert bandwidth.embedding_table_bytes(_graph(tied=False), VOCAB + 1) == 0  # no table of that many rows


def test_table_tied_to_the_lm_head_stays_in(bandwidth):
    assert bandwidth.embedding_table_bytes(_graph(tied=True), VOCAB) == 0


def test_tiny_int4_export_leaves_out_only_what_the_head_does_not_read(bandwidth, int4_export):
    """The tiny export keeps its weights in decoder.onnx itself: the tied table's data is its own tensor there (only
    row-read), while its scales are the lm_head's own scales tensor (read whole every token)."""
    decoder = json.loads((int4_export / "manifest.json").read_text())["artifacts"]["decoder"]
    model = onnx.load(str(int4_export / "decoder.onnx"), load_external_data=False)
    lookup = next(n for n in model.graph.node if n.op_type == "GatherBlockQuantized")
    head_inputs = {name for n in model.graph.node if n.op_type == "MatMulNBits" for name in n.input}
    sizes = {t.name: len(t.raw_data) for t in model.graph.initializer}
    expected = sum(sizes[name] for name in (lookup.input[0], *lookup.input[2:]) if name in sizes and name not in head_inputs)
    assert lookup.input[2] in head_inputs and lookup.input[0] not in head_inputs  # tied scales, separate data
    counted = bandwidth.bytes_per_token(int4_export, context=10)
    files = sum(f["bytes"] for f in decoder["files"])
    kv = 2 * decoder["num_layers"] * decoder["num_key_value_heads"] * decoder["head_dim"] * 4 * 10
    assert counted["embedding_table"] == expected > 0
    assert counted["weights"] == files - counted["embedding_table"]
    assert counted["per_token"] == counted["weights"] + kv
