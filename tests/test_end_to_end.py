"""Issue 4's end-to-end parity: the torch-free pipeline vs transformers' generate(), greedy, on the trained
embedded model exported in fp32.

Shapes-suite questions (text only, one image, two images, a video, an image plus a video), so the replies
are answers, not one repeated token. transformers gets its own PIL image processor's pixels; for video (its
processor needs torchvision) it gets the same pixel values as ours, so the model path is compared end to
end. A repetition penalty is checked too.
"""

import numpy as np
import pytest
import torch
from PIL import Image

from qvl_compile.families.qwen3_vl.reference import with_token_types
from qvl_compile.golden.media import MOTION_FPS, motion_frames, suite_images, write_video
from qvl_compile.runtime.pipeline import Pipeline
from qvl_compile.runtime.sampling import SamplingConfig

NEW_TOKENS = 40


@pytest.fixture(scope="module")
def pipeline(fp32_export):
    return Pipeline(fp32_export)


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    folder = tmp_path_factory.mktemp("media")
    paths = {}
    for name, (image, _) in suite_images().items():
        paths[name] = folder / name
        image.save(paths[name])
    paths["video"] = folder / "motion.mkv"
    write_video(paths["video"], motion_frames(), fps=MOTION_FPS)
    return paths


@pytest.fixture(scope="module")
def hf(tiny_dir):
    from transformers import AutoTokenizer

    from qvl_compile.families.qwen3_vl.loaders import load_full_model, load_image_processor

    return load_full_model(tiny_dir), load_image_processor(tiny_dir), AutoTokenizer.from_pretrained(tiny_dir)


CASES = {"text only": ("What shape is this?", [], False),
         "one image": ("Locate the red circle.", ["shapes-three.png"], False),
         "two images": ("Which image shows the purple shape, the first or the second?",
                        ["shapes-orange.png", "shapes-one.png"], False),
         "video": ("Which way does the shape move?", [], True),
         "image + video": ("How many shapes are there?", ["shapes-three.png"], True)}


@pytest.mark.parametrize("penalty", [8.0, 1.0], ids=["penalty 8", "plain greedy"])
@pytest.mark.parametrize("case", list(CASES))
def test_generate_matches_transformers(pipeline, media, hf, case, penalty):
    model, processor, _ = hf
    prompt, names, with_video = CASES[case]
    images = [media[n] for n in names]
    video = media["video"] if with_video else None
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
        # The runtime never generates a media placeholder (`<|vision_end|>` is the trained model's likeliest token
        # at step 26 of the text-only, penalty-8 reply): transformers gets the same rule as bad_words_ids.
        out = model.generate(**kwargs, max_new_tokens=NEW_TOKENS, do_sample=False, repetition_penalty=penalty,
                             bad_words_ids=[[int(i)] for i in pipeline.never_generated])
    reference = out[0, ids.shape[1]:].tolist()
    assert ours.token_ids == reference
    assert len(set(reference)) > 1, f"{case}: the reply is one repeated token {reference[:3]}..."
    assert len(ours.token_ids) == NEW_TOKENS or ours.token_ids[-1] in pipeline.sampling.eos_token_ids
