"""`--vision-quant int8`: Gemm -> MatMul + Add keeps the fp32 numbers; the int8 graph keeps cosine >= MIN_COSINE
with the weights this machine suits (s8 with VNNI or AMX, u8 without: runtime.cpu_int8), and with u8 anywhere."""
import collections

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from tiny_facts import PATCH_DIM

from qvl_compile.export.grids import GRID_MATRIX, random_pixels
from qvl_compile.export.verify import verify_export
from qvl_compile.export.vision_quant import MIN_COSINE, gemm_to_matmul


def test_gemm_to_matmul_keeps_the_graph_exact(vision_export, tmp_path):
    model = onnx.load(str(vision_export / "vision.onnx"))
    gemms = sum(n.op_type == "Gemm" for n in model.graph.node)
    assert gemm_to_matmul(model) == gemms > 0
    assert not any(n.op_type == "Gemm" for n in model.graph.node)
    onnx.save(model, str(tmp_path / "matmul.onnx"))
    grid = np.array(GRID_MATRIX["image + video"], np.int64)
    feeds = {"pixel_values": random_pixels(grid, PATCH_DIM, seed=3), "grid_thw": grid}
    before = ort.InferenceSession(str(vision_export / "vision.onnx")).run(None, feeds)
    after = ort.InferenceSession(str(tmp_path / "matmul.onnx")).run(None, feeds)
    for a, b in zip(before, after):
        assert np.abs(a - b).max() <= 1e-5 * np.abs(a).max()


@pytest.fixture(scope="module")
def int8_export(tiny_dir, tmp_path_factory):
    from qvl_compile.export.pipeline import export_model
    from qvl_compile.export.vision_quant import VisionQuantOptions

    out = tmp_path_factory.mktemp("int8") / "out"
    export_model(tiny_dir, out, component="vision", vision_quant=VisionQuantOptions(mode="int8"))
    return out


def test_int8_vision_keeps_cosine_on_the_grid_matrix(int8_export, tiny_dir):
    import json

    from qvl_compile.runtime.cpu_int8 import s8_weights_exact

    ops = collections.Counter(n.op_type for n in onnx.load(str(int8_export / "vision.onnx")).graph.node)
    assert ops["MatMulInteger"] > 0 and ops["Gemm"] == 0
    quant = json.loads((int8_export / "manifest.json").read_text())["artifacts"]["vision"]["quant"]
    assert quant["weights"] == ("s8" if s8_weights_exact() else "u8")  # auto: what this machine multiplies exactly
    rows = verify_export(int8_export, tiny_dir, GRID_MATRIX, seed=7)
    assert len(rows) == 2 * len(GRID_MATRIX)
    assert all(r.passed and r.cosine >= MIN_COSINE for r in rows), [(r.name, r.output, r.cosine) for r in rows]
    # It is quantized: visibly off the fp32 reference, yet pointing the same way.
    assert max(r.max_rel for r in rows) > 1e-3


def test_u8_weights_keep_cosine_on_any_cpu(tiny_dir, tmp_path):
    """u8 x u8 products never saturate: the portable choice passes wherever it runs."""
    import json

    from qvl_compile.export.pipeline import export_model
    from qvl_compile.export.vision_quant import VisionQuantOptions

    out = tmp_path / "u8"
    export_model(tiny_dir, out, component="vision", vision_quant=VisionQuantOptions(mode="int8", weights="u8"))
    assert json.loads((out / "manifest.json").read_text())["artifacts"]["vision"]["quant"]["weights"] == "u8"
    weights = [t for t in onnx.load(str(out / "vision.onnx")).graph.initializer if t.name.endswith("_quantized")]
    assert weights and {t.data_type for t in weights} == {onnx.TensorProto.UINT8}
    grids = {name: GRID_MATRIX[name] for name in ("image + video", "three mixed images")}
    rows = verify_export(out, tiny_dir, grids, seed=11)
    assert all(r.passed and r.cosine >= MIN_COSINE for r in rows), [(r.name, r.output, r.cosine) for r in rows]
