"""Shared fixtures: the embedded tiny model and its exports, built once per session.

Without torch installed (CI's torch-free stage) only the modules marked `pytestmark = pytest.mark.torch_free`
are collected; they read the committed goldens and exports built elsewhere (QVL_GOLDEN_EXPORTS).
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

HAS_TORCH = importlib.util.find_spec("torch") is not None
TORCH_FREE_MARK = "pytestmark = pytest.mark.torch_free"
_ignored: list[str] = []


def pytest_ignore_collect(collection_path, config):
    """Without torch, skip collecting every test module that is not marked torch-free."""
    if HAS_TORCH or collection_path.suffix != ".py" or not collection_path.name.startswith("test_"):
        return None
    if TORCH_FREE_MARK in collection_path.read_text():
        return None
    _ignored.append(collection_path.name)
    return True


def pytest_report_header(config):
    if HAS_TORCH:
        return "torch installed: every tier-selected module runs"
    return "torch NOT installed: only modules marked torch_free are collected (the torch-free stage)"


def pytest_terminal_summary(terminalreporter):
    if _ignored:
        terminalreporter.write_line(f"torch-free environment: {len(_ignored)} modules needing torch were not collected: "
                                    + ", ".join(sorted(_ignored)))


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    from qvl_compile.families.qwen3_vl.fixtures import write_tiny

    return write_tiny(tmp_path_factory.mktemp("tiny") / "model", seed=0)


def _export(tiny_dir, tmp_path_factory, name: str, **options) -> Path:
    from qvl_compile.export.pipeline import export_model

    out = tmp_path_factory.mktemp(name) / "out"
    export_model(tiny_dir, out, **options)
    return out


@pytest.fixture(scope="session")
def vision_export(tiny_dir, tmp_path_factory):
    return _export(tiny_dir, tmp_path_factory, "export", component="vision")


@pytest.fixture(scope="session")
def hf_visual(tiny_dir):
    from qvl_compile.families.qwen3_vl.loaders import load_vision_model

    return load_vision_model(tiny_dir)


# transformers 4.57's tower computes the position-table interpolation weights in float32 (torch.linspace) even
# when the tower runs in float64; 5.x uses the model's dtype. On trained weights that rounding shows: measured
# 2.2e-5 of scale (float64 rewrite vs float64 eager, 56x52) and 1.45e-3 (fp32 graph vs "float64" eager, 3x60x20).
TRANSFORMERS_4 = importlib.util.find_spec("transformers") is not None and \
    importlib.metadata.version("transformers").startswith("4.")
FLOAT64_REFERENCE_SLACK = 10.0 if TRANSFORMERS_4 else 1.0


@pytest.fixture(scope="session")
def hf_visual64(hf_visual):
    """The tower in float64, the exact answer fp32 graphs are held to: trained weights amplify fp32 rounding,
    and eager fp32 itself drifts up to 3.5e-4 of scale from float64 on the trained tiny model at some inputs."""
    import copy

    return copy.deepcopy(hf_visual).double()


@pytest.fixture(scope="session")
def fp32_export(tiny_dir, tmp_path_factory):
    """Vision + fp32 decoder of the tiny model: the export every exact-parity runtime test shares."""
    from qvl_compile.export.decoder_options import QuantOptions

    return _export(tiny_dir, tmp_path_factory, "fp32", component="all", quant=QuantOptions(mode="fp32"))


@pytest.fixture(scope="session")
def int4_export(tiny_dir, tmp_path_factory):
    """The INT4 decoder of the tiny model at accuracy_level 1, the exact INT4 path (fp32 activations; the default,
    level 4, is lossy by design and checked on its own), otherwise the export defaults (block 32, lm_head too)."""
    from qvl_compile.export.decoder_options import QuantOptions

    return _export(tiny_dir, tmp_path_factory, "int4", component="decoder", quant=QuantOptions(accuracy_level=1))


def built_exports(subfolders: dict[str, str], missing_message: str) -> dict[str, Path] | None:
    """{name: QVL_GOLDEN_EXPORTS/subfolder} when that variable is set (as .ci/run builds them; each must hold a
    manifest); None where torch is installed, so the caller exports them here; else the test is skipped (failed
    under CI) with `missing_message`."""
    root = os.environ.get("QVL_GOLDEN_EXPORTS")
    if root:
        folders = {name: Path(root) / subfolder for name, subfolder in subfolders.items()}
        missing = [str(f / "manifest.json") for f in folders.values() if not (f / "manifest.json").is_file()]
        if missing:
            pytest.fail(f"QVL_GOLDEN_EXPORTS={root}: expected exports with {', '.join(missing)}")
        return folders
    if HAS_TORCH:
        return None
    if os.environ.get("CI"):
        pytest.fail(missing_message)
    pytest.skip(missing_message)


@pytest.fixture(scope="session")
def golden_exports(request) -> dict[str, Path]:
    """{"fp32": vision + fp32 decoder export, "int4": INT4 decoder export} of the tiny model.

    From QVL_GOLDEN_EXPORTS (a folder with fp32/ and int4/, as .ci/run builds it) when set, else
    exported here (needs torch).
    """
    built = built_exports({"fp32": "fp32", "int4": "int4"},
                          "no exports to test: set QVL_GOLDEN_EXPORTS to a folder holding fp32/ and int4/ exports of the "
                          "tiny model (built with torch; see .ci/run)")
    return built or {"fp32": request.getfixturevalue("fp32_export"), "int4": request.getfixturevalue("int4_export")}


def write_random_video(path, frames: int, height: int, width: int, fps: int, seed: int = 0):
    """An mpeg4 file of `frames` random frames (each differs from the next), written with PyAV."""
    import av
    import numpy as np

    rng = np.random.default_rng(seed)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for _ in range(frames):
            frame = av.VideoFrame.from_ndarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


# --- the MoE family's tiny model (families/qwen3_vl_moe) ---------------------------------------------------

@pytest.fixture(scope="session")
def moe_tiny_dir(tmp_path_factory):
    from qvl_compile.registry import family_named

    return family_named("qwen3_vl_moe").write_tiny(tmp_path_factory.mktemp("moe-tiny") / "model", seed=0)


@pytest.fixture(scope="session")
def moe_fp32_export(moe_tiny_dir, tmp_path_factory):
    from qvl_compile.export.decoder_options import QuantOptions

    return _export(moe_tiny_dir, tmp_path_factory, "moe-fp32", component="all", quant=QuantOptions(mode="fp32"))


@pytest.fixture(scope="session")
def moe_int4_export(moe_tiny_dir, tmp_path_factory):
    """QMoE experts at accuracy_level 1: the exact INT4 path, as the dense int4_export."""
    from qvl_compile.export.decoder_options import QuantOptions

    return _export(moe_tiny_dir, tmp_path_factory, "moe-int4", component="decoder", quant=QuantOptions(accuracy_level=1))


@pytest.fixture(scope="session")
def moe_golden_exports(request) -> dict[str, Path]:
    """{"fp32": ..., "int4": ...} exports of the tiny MoE: QVL_GOLDEN_EXPORTS/moe-fp32 and moe-int4 when set, else
    exported here (needs torch)."""
    built = built_exports({"fp32": "moe-fp32", "int4": "moe-int4"},
                          "no MoE exports to test: set QVL_GOLDEN_EXPORTS (built with torch; see .ci/run)")
    return built or {"fp32": request.getfixturevalue("moe_fp32_export"),
                     "int4": request.getfixturevalue("moe_int4_export")}


@pytest.fixture(scope="session")
def prefill_export(request, tmp_path_factory) -> Path:
    """The tiny model's default export with `--prefill int8` (vision + decoder + decoder_prefill.onnx):
    QVL_GOLDEN_EXPORTS/int4-prefill when set (as .ci/run builds it), else exported here (needs torch)."""
    built = built_exports({"prefill": "int4-prefill"},
                          "no prefill export to test: set QVL_GOLDEN_EXPORTS (built with torch; see .ci/run)")
    if built:
        return built["prefill"]
    from qvl_compile.export.decoder_options import QuantOptions

    return _export(request.getfixturevalue("tiny_dir"), tmp_path_factory, "prefill-int8", component="all",
                   quant=QuantOptions(prefill="int8"))
