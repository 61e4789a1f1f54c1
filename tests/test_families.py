"""Meta-tests over the family registry: every registered family is complete.

A family that lacks a hook, a tiny checkpoint, goldens or a working export -> verify -> generate round
trip fails here, so a new family cannot land half-wired.
"""
import importlib.util
import inspect
from pathlib import Path

import pytest

from qvl_compile.registry import Family, families

pytestmark = pytest.mark.torch_free  # the round trip skips itself where torch is absent
ROOT = Path(__file__).resolve().parents[1]
HAS_TORCH = importlib.util.find_spec("torch") is not None
REGISTERED = sorted({family.name: family for family in families().values()}.items())
GOLDEN_KINDS = {"vision", "positions", "decoder", "preprocess", "generate"}


def test_qwen3_vl_is_registered():
    assert "qwen3_vl" in families() and families()["qwen3_vl"].name == "qwen3_vl"


@pytest.mark.parametrize("item", REGISTERED, ids=[name for name, _ in REGISTERED])
def test_family_overrides_every_hook(item):
    _, family = item
    hooks = [name for name, value in inspect.getmembers(Family, inspect.isfunction) if not name.startswith("_")]
    missing = [name for name in hooks if getattr(type(family), name) is getattr(Family, name)]
    assert not missing, f"{family.name} does not implement {missing}"
    assert family.model_types and family.architectures and family.golden_folder and family.display_name


@pytest.mark.parametrize("item", REGISTERED, ids=[name for name, _ in REGISTERED])
def test_family_has_goldens_of_every_kind(item):
    from qvl_compile.golden.store import load_cases, read_index

    _, family = item
    folder = ROOT / "golden" / family.golden_folder
    read_index(folder)
    kinds = {case.kind for case in load_cases(root=folder)}
    assert GOLDEN_KINDS <= kinds, f"{family.name}: goldens lack {sorted(GOLDEN_KINDS - kinds)}"


@pytest.mark.skipif(not HAS_TORCH, reason="exporting needs torch")
@pytest.mark.parametrize("item", REGISTERED, ids=[name for name, _ in REGISTERED])
def test_family_round_trip_tiny_export_verify_generate(item, tmp_path):
    """tiny checkpoint -> export (vision + fp32 decoder) -> verify at two grids -> generate, torch-free runtime."""
    from qvl_compile.config import ModelConfig
    from qvl_compile.export.decoder_options import QuantOptions
    from qvl_compile.export.grids import GRID_MATRIX
    from qvl_compile.export.pipeline import export_model
    from qvl_compile.export.verify import verify_export
    from qvl_compile.runtime.pipeline import Pipeline

    _, family = item
    model_dir = family.write_tiny(tmp_path / "tiny", seed=3)
    assert ModelConfig.from_dir(model_dir).model_type in family.model_types
    out = tmp_path / "out"
    manifest = export_model(model_dir, out, quant=QuantOptions(mode="fp32"))
    assert manifest.family == family.name and set(manifest.artifacts) == {"vision", "decoder"}
    grids = {name: GRID_MATRIX[name] for name in ("wide 4x22", "image + video")}
    rows = verify_export(out, model_dir, grids)
    assert rows and all(row.passed for row in rows), [row for row in rows if not row.passed]
    result = Pipeline(out).generate("Describe it.", images=[ROOT / "runtime" / "samples" / "red-house.png"],
                                    max_new_tokens=4, greedy=True)
    assert 1 <= len(result.token_ids) <= 4
