"""Property-based tests (hypothesis): the exported vision graph against eager PyTorch over random grid sets,
and the runtime's M-RoPE position ids against transformers' get_rope_index over random prompts.

Examples per property: QVL_HYPOTHESIS_EXAMPLES (default 25). Under CI the search is derandomized, so a
run is reproducible; locally each run explores new examples and a failure prints its grid set.
"""
import inspect
import os

import numpy as np
import pytest
import torch
from conftest import FLOAT64_REFERENCE_SLACK
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tiny_facts import PATCH_DIM

from qvl_compile.families.qwen3_vl.loaders import reference_vision
from qvl_compile.families.qwen3_vl.reference import build_prompt
from qvl_compile.golden.store import pixels_from_seed
from qvl_compile.parity import VISION_FP32_TOLERANCE, max_rel
from qvl_compile.runtime.rope_index import mrope_position_ids
from qvl_compile.runtime.vision import VisionEncoder

EXAMPLES = int(os.environ.get("QVL_HYPOTHESIS_EXAMPLES", "25"))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, derandomize=bool(os.environ.get("CI")), database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

even = st.integers(1, 32).map(lambda n: 2 * n)  # 2..64
grid_entry = st.tuples(st.integers(1, 3), even, even)  # (t, h, w)
grid_sets = st.lists(grid_entry, min_size=1, max_size=4)


@pytest.fixture(scope="module")
def encoder(vision_export):
    return VisionEncoder.from_export(vision_export)


@SETTINGS
@given(grids=grid_sets, seed=st.integers(0, 2**16))
def test_vision_graph_matches_pytorch_on_random_grid_sets(encoder, hf_visual64, grids, seed):
    grid = np.asarray(grids, np.int64)  # [num_grids, 3]
    pixels = pixels_from_seed(int(np.prod(grid, axis=1).sum()), PATCH_DIM, seed)  # [num_patches, PATCH_DIM]
    got = encoder(pixels, grid)
    with torch.no_grad():  # the float64 tower: the exact answer (conftest)
        ref_embeds, ref_deepstack = reference_vision(hf_visual64, torch.from_numpy(pixels).double(),
                                                     torch.from_numpy(grid))
    assert got.image_embeds.shape == tuple(ref_embeds.shape)
    assert max_rel(got.image_embeds, ref_embeds.numpy()) <= FLOAT64_REFERENCE_SLACK * VISION_FP32_TOLERANCE, grids
    assert max_rel(got.deepstack_embeds, ref_deepstack.numpy()) <= FLOAT64_REFERENCE_SLACK * VISION_FP32_TOLERANCE, grids


@pytest.fixture(scope="module")
def hf_model(tiny_dir):
    from qvl_compile.families.qwen3_vl.loaders import load_full_model

    return load_full_model(tiny_dir)


def transformers_positions(model, prompt):
    kwargs = dict(input_ids=prompt.input_ids, image_grid_thw=prompt.image_grid_thw,
                  video_grid_thw=prompt.video_grid_thw, attention_mask=torch.ones_like(prompt.input_ids))
    if "mm_token_type_ids" in inspect.signature(model.model.get_rope_index).parameters:  # transformers 5.x
        ids, config = prompt.input_ids, model.config
        kwargs["mm_token_type_ids"] = (ids == config.image_token_id).int() + 2 * (ids == config.video_token_id).int()
    positions, deltas = model.model.get_rope_index(**kwargs)
    return positions[:, 0].numpy(), int(deltas.reshape(-1)[0])


small_even = st.integers(1, 8).map(lambda n: 2 * n)  # 2..16: positions depend on the grid, not on pixels
part = st.one_of(
    st.tuples(st.just("text"), st.integers(1, 12)),
    st.tuples(st.just("image"), st.tuples(st.just(1), small_even, small_even)),
    st.tuples(st.just("video"), st.tuples(st.integers(1, 3), small_even, small_even)),
)


@SETTINGS
@given(parts=st.lists(part, min_size=1, max_size=6), seed=st.integers(0, 2**16))
def test_positions_match_transformers_on_random_prompts(hf_model, parts, seed):
    config = hf_model.config
    prompt = build_prompt(config, parts, seed=seed)
    images = [grid for kind, grid in parts if kind == "image"]
    videos = [grid for kind, grid in parts if kind == "video"]
    ours, delta = mrope_position_ids(prompt.input_ids[0].numpy(), config.image_token_id, config.video_token_id,
                                     images, videos)
    theirs, their_delta = transformers_positions(hf_model, prompt)
    np.testing.assert_array_equal(ours, theirs, err_msg=str(parts))
    assert delta == their_delta, parts
