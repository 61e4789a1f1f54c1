"""Bad export inputs (tests/bad_inputs.py): one `error:` line and exit 1 from the CLI, QvlError from the API,
and nothing written where the output would have gone."""
import pytest
from bad_inputs import EXPORT_CASES, Context, check_cli

from qvl_compile.errors import QvlError


@pytest.fixture
def ctx(fp32_export, tiny_dir, tmp_path):
    return Context(tmp_path, fp32_export, tiny=tiny_dir)


def _no_partial_output(ctx):
    leftovers = [p.name for p in ctx.tmp.iterdir() if p.name.startswith((".o.", ".out."))]
    assert not leftovers and not (ctx.tmp / "o").exists() and not (ctx.tmp / "out").exists()


@pytest.mark.parametrize("case", EXPORT_CASES, ids=[c.id for c in EXPORT_CASES])
def test_cli(case, ctx):
    check_cli(case, ctx)
    _no_partial_output(ctx)


@pytest.mark.parametrize("case", [c for c in EXPORT_CASES if c.api], ids=[c.id for c in EXPORT_CASES if c.api])
def test_api(case, ctx):
    with pytest.raises(QvlError) as caught:
        case.api(ctx)
    assert case.api_message in str(caught.value) and "\n" not in str(caught.value)
    _no_partial_output(ctx)
