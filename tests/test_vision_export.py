"""One export of the tiny model at EXPORT_GRID, checked with ONNX Runtime at every other grid."""
import collections
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from tiny_facts import OUT_HIDDEN, PATCH_DIM, VISION

from qvl_compile.errors import QvlError
from qvl_compile.export.grids import EXPORT_GRID, GRID_MATRIX, random_pixels
from qvl_compile.export.verify import vision_parity
from qvl_compile.manifest import sha256_file
from qvl_compile.registry import family_named
from qvl_compile.runtime.vision import VisionEncoder


@pytest.fixture(scope="module")
def encoder(vision_export):
    return VisionEncoder.from_export(vision_export, verify_hashes=True)


def test_matrix_grids_differ_from_export_grid():
    assert all(set(grid) != set(EXPORT_GRID) for grid in GRID_MATRIX.values())


@pytest.mark.parametrize("grid_dtype", [np.int64, np.int32], ids=["int64 grid", "int32 grid"])
def test_parity_on_grid_matrix(encoder, hf_visual, grid_dtype):
    rows = vision_parity(encoder, hf_visual, GRID_MATRIX, family_named("qwen3_vl"), seed=11, grid_dtype=grid_dtype)
    assert len(rows) == 2 * len(GRID_MATRIX)
    failed = [(r.name, r.output, r.max_rel) for r in rows if not r.passed]
    assert not failed


def test_interface(vision_export):
    path = vision_export / "vision.onnx"
    onnx.checker.check_model(str(path), full_check=True)
    model = onnx.load(str(path))

    def sig(values):
        return {v.name: (v.type.tensor_type.elem_type,
                         [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]) for v in values}

    assert sig(model.graph.input) == {
        "pixel_values": (onnx.TensorProto.FLOAT, ["num_patches", PATCH_DIM]),
        "grid_thw": (onnx.TensorProto.INT64, ["num_grids", 3]),
    }
    outputs = sig(model.graph.output)
    assert outputs["image_embeds"] == (onnx.TensorProto.FLOAT, ["num_merged", OUT_HIDDEN])
    assert outputs["deepstack_embeds"] == (onnx.TensorProto.FLOAT, [VISION.num_deepstack, "num_merged", OUT_HIDDEN])


def _all_nodes(graph):
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _all_nodes(attr.g)


def test_index_math_is_int64_and_attention_is_per_segment(vision_export):
    model = onnx.load(str(vision_export / "vision.onnx"))
    casts_to = {a.i for n in _all_nodes(model.graph) if n.op_type == "Cast" for a in n.attribute if a.name == "to"}
    assert onnx.TensorProto.INT32 not in casts_to
    assert not [i.name for i in model.graph.initializer if i.data_type == onnx.TensorProto.INT32]
    top = collections.Counter(n.op_type for n in model.graph.node)
    # Attention lives only inside one If per block: one batch of frames when every grid entry has the same frame
    # length, else a per-grid Loop; maskless either way.
    assert top["If"] == 4 and top["Loop"] == 0
    assert top["MultiHeadAttention"] == 0 and top["Softmax"] == 0
    for branch_node in (n for n in model.graph.node if n.op_type == "If"):
        branches = {a.name: a.g for a in branch_node.attribute}
        loops = [n for n in branches["else_branch"].node if n.op_type == "Loop"]
        assert len(loops) == 1
        for graph in (branches["then_branch"], loops[0].attribute[0].g):
            attention = [n for n in graph.node if n.op_type == "MultiHeadAttention"]
            assert len(attention) == 1
            assert len([i for i in attention[0].input if i]) == 3  # q, k, v only: no bias, no mask, no past


def test_graph_alone_refuses_int32_grid_with_a_clear_error(vision_export):
    """The graph declares int64; ORT names the mismatch. VisionEncoder casts instead (tested above)."""
    session = ort.InferenceSession(str(vision_export / "vision.onnx"), providers=["CPUExecutionProvider"])
    pixels = random_pixels(((1, 4, 4),), PATCH_DIM, seed=0)
    with pytest.raises(Exception, match=r"tensor\(int32\).*expected.*tensor\(int64\)"):
        session.run(None, {"pixel_values": pixels, "grid_thw": np.array([[1, 4, 4]], dtype=np.int32)})


def test_manifest_records_hashes_and_sources(vision_export, tiny_dir):
    manifest = json.loads((vision_export / "manifest.json").read_text())
    vision = manifest["artifacts"]["vision"]
    for record in vision["files"]:
        assert sha256_file(vision_export / record["path"]) == record["sha256"]
    assert [f["path"] for f in manifest["source"]["files"]] == ["config.json", "model.safetensors"]
    assert manifest["source"]["files"][1]["sha256"] == sha256_file(tiny_dir / "model.safetensors")
    assert {"torch", "transformers", "onnx", "onnxruntime"} <= set(manifest["versions"])
    assert all(check["max_rel"] <= vision["tolerance"] for check in vision["export_check"].values())


@pytest.mark.parametrize(
    "pixels_rows, grid, message",
    [
        (16, [[1, 4, 2]], "add up to 8 patches but pixel_values has 16 rows"),
        (16, [[1, 4, 0]], "must be positive"),
        (12, [[1, 3, 4]], "multiples of the merge size 2"),
        (16, [[1.0, 4.0, 4.0]], "expected an int64"),
        (16, [1, 4, 4], r"expected shape \[num_grids >= 1, 3\]"),
    ],
)
def test_encoder_rejects_bad_inputs_before_onnxruntime(encoder, pixels_rows, grid, message):
    pixels = np.zeros((pixels_rows, PATCH_DIM), dtype=np.float32)
    with pytest.raises(QvlError, match=message):
        encoder(pixels, np.array(grid))


def test_encoder_rejects_wrong_pixel_width(encoder):
    with pytest.raises(QvlError, match=rf"expected shape \[num_patches, {PATCH_DIM}\], got \[16, {PATCH_DIM // 2}\]"):
        encoder(np.zeros((16, PATCH_DIM // 2), np.float32), np.array([[1, 4, 4]]))


def test_truncated_artifact_is_refused(vision_export, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(vision_export, copy)
    with open(copy / "vision.onnx", "r+b") as fh:
        fh.truncate(1000)
    with pytest.raises(QvlError, match="truncated or replaced"):
        VisionEncoder.from_export(copy)


def test_gelu_chains_are_fused(vision_export):
    """Every block's tanh-GELU is one FastGelu, the merger's erf-GELUs are Gelu; no chain is left over."""
    ops = collections.Counter(n.op_type for n in onnx.load(str(vision_export / "vision.onnx")).graph.node)
    assert ops["FastGelu"] == 4 and ops["Gelu"] == 4  # tiny model: 4 blocks; merger + 3 DeepStack mergers
    assert ops["Tanh"] == 0 and ops["Erf"] == 0 and ops["Pow"] == 0
    manifest = json.loads((vision_export / "manifest.json").read_text())
    assert manifest["artifacts"]["vision"]["fused"] == {"FastGelu": 4, "Gelu": 4}
