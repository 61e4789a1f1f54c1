"""The torch-free pipeline end to end against transformers: prompt ids, pixels, positions, generated tokens."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from qvl_compile.families.qwen3_vl.reference import with_token_types
from qvl_compile.runtime.pipeline import Pipeline
from qvl_compile.runtime.sampling import SamplingConfig, apply_repetition_penalty, next_token


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(3)
    paths = []
    # Both within transformers 4.57's slow-processor pixel bounds (it ignores the config's `size`), and
    # without alpha (4.57 drops it, 5.x composites over white; tests/test_preprocess.py covers modes on 5.x).
    # And within the trained model's bounds (9,216..36,864 pixels) in multiples of 32: no resize on any line.
    for i, (h, w, mode) in enumerate([(160, 192, "RGB"), (192, 128, "L")]):
        image = Image.fromarray(rng.integers(0, 255, (h, w, 4), dtype=np.uint8), "RGBA").convert(mode)
        paths.append(folder / f"img{i}.png")
        image.save(paths[-1])
    return paths


def _hf_inputs(tiny_dir, prompt, image_paths):
    from transformers import AutoTokenizer

    try:
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil as Processor
    except ImportError:
        from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor as Processor
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    content = [{"type": "image"} for _ in image_paths] + [{"type": "text", "text": prompt}]
    text = tok.apply_chat_template([{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True)
    pixels = Processor.from_pretrained(tiny_dir)(images=[Image.open(p) for p in image_paths], return_tensors="np")
    pieces = text.split("<|image_pad|>")  # expansion as Qwen3VLProcessor.replace_image_token does it
    text = pieces[0] + "".join("<|image_pad|>" * int(g.prod() // 4) + rest
                               for g, rest in zip(pixels["image_grid_thw"], pieces[1:]))
    ids = tok(text, return_tensors="pt").input_ids
    return ids, pixels


def test_prompt_pixels_and_positions_match_transformers(fp32_export, tiny_dir, images):
    pipe = Pipeline(fp32_export)
    prepared = pipe.prepare("What differs between them?", images=images)
    ids, pixels = _hf_inputs(tiny_dir, "What differs between them?", images)
    assert prepared.input_ids.tolist() == ids[0].tolist()
    assert prepared.grid_thw.tolist() == pixels["image_grid_thw"].tolist()
    # One float32 ulp: transformers rescales and normalises in another order.
    assert np.abs(prepared.pixel_values - pixels["pixel_values"]).max() <= 1e-6


def test_greedy_generation_matches_transformers_generate(fp32_export, tiny_dir, images):
    """Greedy with a repetition penalty (so the tiny model does not repeat one token) vs model.generate."""
    from transformers import Qwen3VLForConditionalGeneration

    pipe = Pipeline(fp32_export)
    config = SamplingConfig(do_sample=False, repetition_penalty=8.0, eos_token_ids=pipe.sampling.eos_token_ids)
    ours = pipe.generate("Describe both images.", images=images, max_new_tokens=16, sampling=config)
    model = Qwen3VLForConditionalGeneration.from_pretrained(tiny_dir).eval()
    ids, pixels = _hf_inputs(tiny_dir, "Describe both images.", images)
    kwargs = dict(input_ids=ids, pixel_values=torch.from_numpy(pixels["pixel_values"]),
                  image_grid_thw=torch.from_numpy(pixels["image_grid_thw"]))
    with_token_types(model, kwargs)
    with torch.no_grad():
        out = model.generate(**kwargs, max_new_tokens=16, do_sample=False, repetition_penalty=8.0)
    reference = out[0, ids.shape[1]:].tolist()
    assert ours.token_ids == reference
    assert len(set(reference)) > 1


def test_cli_generate_json(fp32_export, images):
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "qvl_compile.cli", "generate", str(fp32_export),
                             "--prompt", "Hi", "--image", str(images[0]), "--max-new-tokens", "5", "--greedy",
                             "--json"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    ids = payload["token_ids"]
    assert isinstance(payload["text"], str) and 1 <= len(ids) <= 5
    im_end = Pipeline(fp32_export).tokenizer.token_to_id("<|im_end|>")
    assert len(ids) == 5 or ids[-1] == im_end  # the trained model stops at the end of its answer


def test_sampling_steps():
    logits = np.array([2.0, -1.0, 0.5, 1.9])
    penalised = apply_repetition_penalty(logits, [0, 1], 2.0)
    assert penalised.tolist() == [1.0, -2.0, 0.5, 1.9]
    rng = np.random.default_rng(0)
    top1 = SamplingConfig(do_sample=True, top_k=1)
    assert {next_token(logits, [], top1, rng) for _ in range(20)} == {0}
    nucleus = SamplingConfig(do_sample=True, top_p=0.5)  # p(0) ~ 0.49, p(3) ~ 0.44: both needed for 0.5
    assert {next_token(logits, [], nucleus, rng) for _ in range(200)} == {0, 3}
    assert next_token(logits, [0], SamplingConfig(repetition_penalty=3.0), rng) == 3


def test_tokens_never_generated_are_removed_before_top_k_and_top_p():
    # The most likely token is one the runtime never generates (a media placeholder): top-k 1 and a tight top-p
    # must then choose among the others, as transformers' bad_words_ids does, not leave nothing (NaN probabilities).
    logits = np.array([9.0, 1.0, 2.0, 0.5])
    never = np.array([0])
    rng = np.random.default_rng(0)
    for cfg in (SamplingConfig(do_sample=True, top_k=1), SamplingConfig(do_sample=True, top_p=0.1),
                SamplingConfig(do_sample=True, temperature=0.9, top_k=20, top_p=0.9, repetition_penalty=8.0)):
        chosen = {next_token(logits, [], cfg, rng, never) for _ in range(50)}
        assert 0 not in chosen and chosen <= {1, 2, 3}, (cfg, chosen)
    assert {next_token(logits, [], SamplingConfig(do_sample=True, top_k=1), rng, never) for _ in range(10)} == {2}
    assert logits.tolist() == [9.0, 1.0, 2.0, 0.5]  # the caller's array is not modified


@pytest.mark.parametrize("temperature, top_k, top_p, penalty", [(0.7, 20, 0.8, 1.0), (1.3, 0, 0.5, 1.2),
                                                                 (1.0, 5, 1.0, 2.0), (0.5, 0, 0.95, 1.0)])
def test_filters_match_transformers_warpers(temperature, top_k, top_p, penalty):
    from transformers.generation.logits_process import (
        LogitsProcessorList,
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    from qvl_compile.runtime.sampling import filtered_logits

    rng = np.random.default_rng(int(temperature * 100) + top_k)
    logits = rng.normal(0, 3, 500).astype(np.float32)
    history = rng.integers(0, 500, 40)
    steps = [RepetitionPenaltyLogitsProcessor(penalty), TemperatureLogitsWarper(temperature)]
    steps += [TopKLogitsWarper(top_k)] if top_k else []
    steps += [TopPLogitsWarper(top_p)] if top_p < 1 else []
    ref = LogitsProcessorList(steps)(torch.from_numpy(history[None]), torch.from_numpy(logits[None].copy()))[0]
    ours = filtered_logits(logits, history, SamplingConfig(True, temperature, top_k, top_p, penalty))
    assert np.array_equal(np.isinf(ours), torch.isinf(ref).numpy())
    kept = ~np.isinf(ours)
    assert np.allclose(ours[kept], ref.numpy()[kept], rtol=1e-5, atol=1e-5)


def test_empty_prompt_without_media_is_refused(fp32_export):
    from qvl_compile.errors import QvlError

    with pytest.raises(QvlError, match="nothing to answer"):
        Pipeline(fp32_export).generate("  ")
