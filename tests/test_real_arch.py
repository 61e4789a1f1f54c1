"""Slow tier: the real Qwen3-VL-2B vision architecture with random weights (pytest -m slow)."""
import pytest

from qvl_compile.export.grids import GRID_MATRIX

pytestmark = pytest.mark.slow


def test_2b_vision_exports_and_matches_eager(tmp_path):
    from qvl_compile.export.pipeline import export_model
    from qvl_compile.export.verify import verify_export
    from qvl_compile.families.qwen3_vl.fixtures import arch_dir, write_random

    model = write_random(arch_dir("2b"), tmp_path / "model", seed=0, vision_only=True)
    out = tmp_path / "out"
    export_model(model, out, component="vision")
    assert (out / "vision.onnx.data").is_file()  # 1.6 GB of weights go beside the graph
    grids = {k: GRID_MATRIX[k] for k in ("smallest (2x2 patches)", "larger than table 56x52", "image + video")}
    rows = verify_export(out, model, grids)
    assert all(r.passed for r in rows), [(r.name, r.output, r.max_rel) for r in rows if not r.passed]


def test_2b_int4_decoder_matches_its_fake_quant_reference(tmp_path):
    """Export about 4 minutes on 2 cores; see the stage log for peak RSS (about 20 GB or more)."""
    import json

    from qvl_compile.export.pipeline import export_model
    from qvl_compile.families.qwen3_vl.fixtures import arch_dir, write_random

    model = write_random(arch_dir("2b"), tmp_path / "model", seed=0)
    out = tmp_path / "out"
    export_model(model, out, component="decoder")  # raises on a parity failure
    check = json.loads((out / "manifest.json").read_text())["artifacts"]["decoder"]["export_check"]
    assert check["accuracy_level_1_vs_fake_quant"]["tokens_identical"]
