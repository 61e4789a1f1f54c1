"""Shared fixtures: the embedded tiny model and one vision export of it, built once per session."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    from qvl_compile.export.tiny.checkpoint import write_tiny

    return write_tiny(tmp_path_factory.mktemp("tiny") / "model", seed=0)


@pytest.fixture(scope="session")
def vision_export(tiny_dir, tmp_path_factory):
    from qvl_compile.export.pipeline import export_model

    out = tmp_path_factory.mktemp("export") / "out"
    export_model(tiny_dir, out, component="vision")
    return out


@pytest.fixture(scope="session")
def hf_visual(tiny_dir):
    from qvl_compile.golden.reference import load_vision_model

    return load_vision_model(tiny_dir)
