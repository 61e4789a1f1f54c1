"""Issue 4's end-to-end parity: the torch-free pipeline vs transformers' generate(), 24 greedy tokens.

Text, one image, two images of different sizes, a video, and an image plus a video, on the tiny model
exported in fp32. transformers gets its own PIL image processor's pixels; for video (its processor needs
torchvision) it gets the same pixel values as ours, so the model path is compared end to end. A repetition
penalty keeps the random tiny model from repeating one token (plain greedy is checked too).
"""

import numpy as np
import pytest
import torch
from conftest import write_random_video
from PIL import Image

from qvl_compile.families.qwen3_vl.reference import with_token_types
from qvl_compile.runtime.pipeline import Pipeline
from qvl_compile.runtime.sampling import SamplingConfig

NEW_TOKENS = 24


@pytest.fixture(scope="module")
def pipeline(fp32_export):
    return Pipeline(fp32_export)


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    folder = tmp_path_factory.mktemp("media")
    rng = np.random.default_rng(11)
    paths = {}
    for name, (h, w) in {"wide": (280, 460), "tall": (400, 260)}.items():
        paths[name] = folder / f"{name}.png"
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(paths[name])
    paths["video"] = write_random_video(folder / "clip.mp4", frames=16, height=128, width=160, fps=8, seed=12)
    return paths


@pytest.fixture(scope="module")
def hf(tiny_dir):
    from transformers import AutoTokenizer

    from qvl_compile.families.qwen3_vl.loaders import load_full_model, load_image_processor

    return load_full_model(tiny_dir), load_image_processor(tiny_dir), AutoTokenizer.from_pretrained(tiny_dir)


CASES = {"text only": ([], False), "one image": (["wide"], False), "two images": (["wide", "tall"], False),
         "video": ([], True), "image + video": (["tall"], True)}


@pytest.mark.parametrize("penalty", [8.0, 1.0], ids=["penalty 8", "plain greedy"])
@pytest.mark.parametrize("case", list(CASES))
def test_generate_matches_transformers(pipeline, media, hf, case, penalty):
    model, processor, _ = hf
    names, with_video = CASES[case]
    images = [media[n] for n in names]
    video = media["video"] if with_video else None
    prompt = "Describe what you see in detail."
    prepared = pipeline.prepare(prompt, images=images, video=video)
    config = SamplingConfig(repetition_penalty=penalty, eos_token_ids=pipeline.sampling.eos_token_ids)
    ours = pipeline.generate(prompt, images=images, video=video, max_new_tokens=NEW_TOKENS, sampling=config)

    ids = torch.from_numpy(prepared.input_ids[None])
    kwargs = {"input_ids": ids}
    if images:
        pixels = processor(images=[Image.open(p) for p in images], return_tensors="np")
        kwargs["pixel_values"] = torch.from_numpy(pixels["pixel_values"])
        kwargs["image_grid_thw"] = torch.from_numpy(pixels["image_grid_thw"])
        assert pixels["image_grid_thw"].tolist() == prepared.grid_thw[: len(images)].tolist()
    if with_video:
        rows = int(np.prod(prepared.grid_thw[-1]))
        kwargs["pixel_values_videos"] = torch.from_numpy(prepared.pixel_values[-rows:])
        kwargs["video_grid_thw"] = torch.from_numpy(prepared.grid_thw[-1:])
    with_token_types(model, kwargs)
    model.model.rope_deltas = None
    with torch.no_grad():
        out = model.generate(**kwargs, max_new_tokens=NEW_TOKENS, do_sample=False, repetition_penalty=penalty)
    reference = out[0, ids.shape[1]:].tolist()
    assert ours.token_ids == reference
    assert len(ours.token_ids) == NEW_TOKENS or ours.token_ids[-1] in pipeline.sampling.eos_token_ids
