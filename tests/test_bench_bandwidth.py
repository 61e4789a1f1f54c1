"""bench/bandwidth.py's decode bound: the embedding table (one row read per token) is left out of the bytes every
token reads, whether the export gathers it plainly or through GatherBlockQuantized."""
import json
import sys
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bandwidth():
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import bandwidth
    finally:
        sys.path.pop(0)
    return bandwidth


def test_quantized_table_with_its_scales_is_found(bandwidth):
    vocab, hidden, block = 40, 16, 8
    table = helper.make_tensor("table", TensorProto.UINT8, [vocab, hidden], bytes(vocab * hidden), raw=True)
    scales = helper.make_tensor("scales", TensorProto.FLOAT, [vocab, hidden // block], [1.0] * (vocab * hidden // block))
    other = helper.make_tensor("other", TensorProto.FLOAT, [vocab, 3], [0.0] * (vocab * 3))  # vocab rows, not gathered
    node = helper.make_node("GatherBlockQuantized", ["table", "ids", "scales"], ["embeds"], domain="com.microsoft",
                            block_size=block, bits=8)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("ids", TensorProto.INT64, [1])],
                              [helper.make_tensor_value_info("embeds", TensorProto.FLOAT, None)],
                              initializer=[table, scales, other])
    assert bandwidth.embedding_table_bytes(helper.make_model(graph), vocab) == vocab * hidden + vocab * 2 * 4
    assert bandwidth.embedding_table_bytes(helper.make_model(graph), vocab + 1) == 0  # no table of that many rows


def test_int4_export_bound_leaves_the_table_out(bandwidth, int4_export):
    decoder = json.loads((int4_export / "manifest.json").read_text())["artifacts"]["decoder"]
    model = onnx.load(str(int4_export / "decoder.onnx"), load_external_data=False)
    assert any(n.op_type == "GatherBlockQuantized" for n in model.graph.node)
    counted = bandwidth.bytes_per_token(int4_export, context=10)
    files = sum(f["bytes"] for f in decoder["files"])
    assert 0 < counted["embedding_table"] < files
    assert counted["weights"] == files - counted["embedding_table"]
    kv = 2 * decoder["num_layers"] * decoder["num_key_value_heads"] * decoder["head_dim"] * 4 * 10
    assert counted["per_token"] == counted["weights"] + kv
