"""Slow tier: long videos on the tiny model (pytest -m slow)."""

import numpy as np
import pytest
import torch
from conftest import write_random_video
from tiny_facts import PATCH_DIM

from qvl_compile.families.qwen3_vl.reference import with_token_types
from qvl_compile.golden.store import pixels_from_seed
from qvl_compile.runtime.pipeline import Pipeline
from qvl_compile.runtime.sampling import SamplingConfig
from qvl_compile.runtime.vision import VisionEncoder

pytestmark = pytest.mark.slow


def test_long_video_grid_matches_eager(vision_export, hf_visual):
    """48 frames (24 temporal patches) of 32x32 patches: 24,576 patch rows in one call."""
    from qvl_compile.families.qwen3_vl.loaders import reference_vision
    from qvl_compile.parity import VISION_FP32_TOLERANCE

    grid = np.array([[24, 32, 32]], np.int64)
    pixels = pixels_from_seed(int(grid.prod()), PATCH_DIM, seed=5)
    out = VisionEncoder.from_export(vision_export)(pixels, grid)
    merged, deepstack = reference_vision(hf_visual, torch.from_numpy(pixels), torch.from_numpy(grid))
    for got, ref in ((out.image_embeds, merged.numpy()), (out.deepstack_embeds, deepstack.numpy())):
        assert np.abs(got - ref).max() / np.abs(ref).max() <= VISION_FP32_TOLERANCE


def test_one_minute_video_generates_as_transformers(fp32_export, tiny_dir, tmp_path):
    """60 s at 10 fps: 120 frames sampled (fps 2), 60 temporal patches, one timestamp each."""
    from qvl_compile.families.qwen3_vl.loaders import load_full_model

    clip = write_random_video(tmp_path / "long.mp4", frames=600, height=64, width=96, fps=10, seed=3)
    pipe = Pipeline(fp32_export)
    prepared = pipe.prepare("What happens?", video=clip)
    assert prepared.grid_thw.tolist()[0][0] == 60
    config = SamplingConfig(repetition_penalty=8.0, eos_token_ids=pipe.sampling.eos_token_ids)
    ours = pipe.generate("What happens?", video=clip, max_new_tokens=8, sampling=config)
    model = load_full_model(tiny_dir)
    ids = torch.from_numpy(prepared.input_ids[None])
    kwargs = dict(input_ids=ids, pixel_values_videos=torch.from_numpy(prepared.pixel_values),
                  video_grid_thw=torch.from_numpy(prepared.grid_thw))
    with_token_types(model, kwargs)
    with torch.no_grad():
        reference = model.generate(**kwargs, max_new_tokens=8, do_sample=False, repetition_penalty=8.0)
    assert ours.token_ids == reference[0, ids.shape[1]:].tolist()
