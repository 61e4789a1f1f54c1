"""Bad runtime inputs (tests/bad_inputs.py): one `error:` line and exit 1 from the CLI, QvlError from the API.

Torch-free: runs on the tiny model's fp32 export (built here with torch, or QVL_GOLDEN_EXPORTS).
"""
import pytest
from bad_inputs import RUNTIME_CASES, Context, check_cli

from qvl_compile.errors import QvlError

pytestmark = pytest.mark.torch_free


@pytest.fixture
def ctx(golden_exports, tmp_path, request):
    other = None
    if "other_vision_export" in request.node.callspec.params["case"].needs:
        other = request.getfixturevalue("other_vision_export")
    return Context(tmp_path, golden_exports["fp32"], other_vision_export=other)


@pytest.fixture
def other_vision_export(tmp_path_factory):
    pytest.importorskip("torch", reason="exporting another checkpoint needs torch")
    from qvl_compile.export.pipeline import export_model
    from qvl_compile.families.qwen3_vl.fixtures import write_tiny_untrained

    root = tmp_path_factory.mktemp("other")
    model = write_tiny_untrained(root / "model", seed=5)  # the trained architecture, other weights
    export_model(model, root / "out", component="vision")
    return root / "out"


@pytest.mark.parametrize("case", RUNTIME_CASES, ids=[c.id for c in RUNTIME_CASES])
def test_cli(case, ctx):
    check_cli(case, ctx)


@pytest.mark.parametrize("case", [c for c in RUNTIME_CASES if c.api], ids=[c.id for c in RUNTIME_CASES if c.api])
def test_api(case, ctx):
    if case.exit_code == 0:
        result = case.api(ctx)
        assert len(result.token_ids) >= 1
        return
    with pytest.raises(QvlError) as caught:
        case.api(ctx)
    assert case.api_message in str(caught.value)
    assert "\n" not in str(caught.value)
