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


@pytest.fixture(scope="session")
def fp32_export(tiny_dir, tmp_path_factory):
    """Vision + fp32 decoder of the tiny model: the export every exact-parity runtime test shares."""
    from qvl_compile.export.decoder_options import QuantOptions
    from qvl_compile.export.pipeline import export_model

    out = tmp_path_factory.mktemp("fp32") / "out"
    export_model(tiny_dir, out, component="all", quant=QuantOptions(mode="fp32"))
    return out


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
