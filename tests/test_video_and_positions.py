"""Video input (PyAV decode, frame sampling, temporal grouping, timestamps) and M-RoPE positions.

transformers' Qwen3-VL video processor needs torchvision, which cannot import beside this machine's CPU
torch; its sampling rule (n = int(total / video_fps * fps) clamped to [min_frames, max_frames] and to the
frame count, indices = round(linspace(0, total-1, n))) is checked here on a generated file, and the model
path of a video prompt is compared with transformers' own generate().
"""

import numpy as np
import pytest
import torch
from conftest import write_random_video
from tiny_facts import PATCH_DIM

from qvl_compile.families.qwen3_vl.reference import build_prompt, run_reference, with_token_types
from qvl_compile.runtime.pipeline import Pipeline
from qvl_compile.runtime.rope_index import mrope_position_ids
from qvl_compile.runtime.sampling import SamplingConfig
from qvl_compile.runtime.video import VideoProcessorConfig, preprocess_video, read_video


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """3 s at 10 fps, 96x128, frames that differ from each other."""
    return write_random_video(tmp_path_factory.mktemp("video") / "clip.mp4", frames=30, height=96, width=128, fps=10)


def test_sampling_grouping_and_timestamps(clip, tiny_dir):
    cfg = VideoProcessorConfig.from_dir(tiny_dir)  # fps 2, min_frames 4
    video = read_video(clip, cfg)
    assert video.fps == 10 and video.indices == [0, 6, 12, 17, 23, 29]  # int(30 / 10 * 2) = 6 frames
    pixels, grid, stamps = preprocess_video(video, cfg)
    assert grid[0] == 3 and pixels.shape == (grid[0] * grid[1] * grid[2], PATCH_DIM)
    # Each temporal patch: mean time of its two frames.
    assert stamps == pytest.approx([0.3, 1.45, 2.6])


def test_bad_video_files(tmp_path, tiny_dir):
    from qvl_compile.errors import QvlError

    cfg = VideoProcessorConfig.from_dir(tiny_dir)
    bogus = tmp_path / "clip.mp4"
    bogus.write_text("not a video")
    with pytest.raises(QvlError, match="cannot decode video"):
        read_video(bogus, cfg)
    with pytest.raises(QvlError, match="does not exist or is empty"):
        read_video(tmp_path / "missing.mp4", cfg)


PROMPTS = [
    (("text", 7),),
    (("text", 3), ("image", (1, 4, 6)), ("text", 2)),
    (("text", 3), ("image", (1, 4, 6)), ("image", (1, 8, 2)), ("text", 2)),
    (("text", 2), ("video", (3, 4, 6)), ("text", 2)),
    (("video", (2, 6, 4)), ("text", 1), ("image", (1, 2, 2)), ("text", 3), ("video", (1, 4, 4))),
]


@pytest.fixture(scope="module")
def hf_model(tiny_dir):
    from qvl_compile.families.qwen3_vl.loaders import load_full_model

    return load_full_model(tiny_dir)


@pytest.mark.parametrize("parts", PROMPTS, ids=["text", "image", "two images", "video", "mixed"])
def test_mrope_positions_equal_transformers(hf_model, parts):
    config = hf_model.config
    prompt = build_prompt(config, list(parts), seed=2)
    _, calls = run_reference(hf_model, prompt, [])
    images = [g for kind, g in parts if kind == "image"]
    videos = [g for kind, g in parts if kind == "video"]
    ours, delta = mrope_position_ids(prompt.input_ids[0].numpy(), config.image_token_id, config.video_token_id,
                                     images, videos)
    assert np.array_equal(ours, calls[0].position_ids[:, 0].numpy())
    assert delta == int(ours.max()) + 1 - ours.shape[1]


def test_video_prompt_generates_as_transformers(clip, hf_model, fp32_export):
    pipe = Pipeline(fp32_export)
    prepared = pipe.prepare("What happens?", video=clip)
    text = pipe.tokenizer.decode(prepared.input_ids.tolist(), skip_special_tokens=False)
    assert "<0.3 seconds><|vision_start|>" in text and "<2.6 seconds><|vision_start|>" in text
    config = SamplingConfig(repetition_penalty=8.0, eos_token_ids=pipe.sampling.eos_token_ids)
    ours = pipe.generate("What happens?", video=clip, max_new_tokens=12, sampling=config)
    ids = torch.from_numpy(prepared.input_ids[None])
    kwargs = dict(input_ids=ids, pixel_values_videos=torch.from_numpy(prepared.pixel_values),
                  video_grid_thw=torch.from_numpy(prepared.grid_thw))
    with_token_types(hf_model, kwargs)
    hf_model.model.rope_deltas = None
    with torch.no_grad():
        reference = hf_model.generate(**kwargs, max_new_tokens=12, do_sample=False, repetition_penalty=8.0)
    assert ours.token_ids == reference[0, ids.shape[1]:].tolist()
