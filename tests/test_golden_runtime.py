"""The runtime against the committed PyTorch goldens (golden/data), with no torch needed.

CI runs this module twice: in the full environment on exports built by the test session, and in the
torch-free stage (QVL_TORCH_FREE_STAGE=1) on exports built by the full stage (QVL_GOLDEN_EXPORTS).
Every mismatch names the golden case and the output.
"""
import importlib.util
import json
import os

import numpy as np
import pytest

from qvl_compile.golden.store import DATA_DIR, array_digest, decoded_digest, load_cases, media_path, read_index
from qvl_compile.manifest import read_manifest
from qvl_compile.runtime.decoder import TextDecoder
from qvl_compile.runtime.pipeline import Pipeline
from qvl_compile.runtime.preprocess import ImageProcessorConfig, load_image, preprocess_image
from qvl_compile.runtime.rope_index import mrope_position_ids
from qvl_compile.runtime.sampling import SamplingConfig
from qvl_compile.runtime.vision import VisionEncoder

pytestmark = pytest.mark.torch_free

KINDS = ("vision", "positions", "decoder", "preprocess", "generate")


def _cases(kind):
    cases = load_cases(kind)
    return pytest.mark.parametrize("case", cases, ids=[c.name for c in cases])


def test_torch_free_stage_really_has_no_torch():
    if os.environ.get("QVL_TORCH_FREE_STAGE") != "1":
        pytest.skip("only in CI's torch-free stage (QVL_TORCH_FREE_STAGE=1)")
    importable = [name for name in ("torch", "transformers") if importlib.util.find_spec(name) is not None]
    assert not importable, f"the torch-free stage can import {importable}"


def test_golden_files_are_complete_and_untouched():
    index = read_index()
    on_disk = sorted(str(p.parent.relative_to(DATA_DIR / "cases")) for p in (DATA_DIR / "cases").rglob("case.json"))
    assert on_disk == sorted(index["cases"]), "golden/data/cases and index.json list different cases"
    assert not index["generator"]["skipped"], f"committed goldens must hold every kind: {index['generator']['skipped']}"
    assert {c.kind for c in load_cases()} == set(KINDS)
    for case in load_cases():
        case.check_integrity()
    for name, record in index["media"].items():
        assert decoded_digest(media_path(name)) == record["pixels_sha256"], f"golden media {name} decodes to other pixels"


@pytest.fixture(scope="module")
def vision(golden_exports):
    return VisionEncoder.from_export(golden_exports["fp32"])


@_cases("vision")
def test_vision_graph_matches_golden(vision, case):
    out = vision(case.input("pixel_values"), case.input("grid_thw"))
    case.check("image_embeds", out.image_embeds)
    case.check("deepstack_embeds", out.deepstack_embeds)


@_cases("positions")
def test_mrope_positions_match_golden(golden_exports, case):
    model = read_manifest(golden_exports["fp32"]).model
    positions, delta = mrope_position_ids(case.input("input_ids"), model["image_token_id"], model["video_token_id"],
                                          case.input("image_grid_thw").tolist(), case.input("video_grid_thw").tolist(),
                                          model["vision"]["spatial_merge_size"])
    case.check("position_ids", positions)
    case.check("rope_delta", np.asarray([delta], np.int64))


@_cases("decoder")
def test_decoder_graph_matches_golden(golden_exports, case):
    decoder = TextDecoder.from_export(golden_exports[case.name.split("/")[1]])
    input_ids = case.input("input_ids")
    logits, cache = decoder.forward(input_ids, case.input("position_ids"), decoder.empty_cache(),
                                    case.input("visual_embeds"), case.input("deepstack_embeds"),
                                    logit_positions=np.arange(input_ids.shape[1]))
    case.check("prefill_logits", logits)
    steps = []
    for token, position in zip(case.input("step_tokens").tolist(), case.input("step_positions").tolist()):
        logits, cache = decoder.forward(np.array([[token]]), np.full((3, 1, 1), position, np.int64), cache)
        steps.append(logits[0, -1])
    case.check("step_logits", np.stack(steps))


@_cases("preprocess")
def test_image_preprocessing_matches_golden(golden_exports, case):
    pixels, grid = preprocess_image(load_image(media_path(case.params["image"])),
                                    ImageProcessorConfig.from_dir(golden_exports["fp32"]))
    case.check("grid_thw", np.asarray([grid], np.int64))
    case.check("pixel_values", pixels)


@pytest.fixture(scope="module")
def pipeline(golden_exports):
    return Pipeline(golden_exports["fp32"])


@_cases("generate")
def test_generation_matches_golden(pipeline, case):
    p = case.params
    images = [media_path(n) for n in p["images"]]
    video = media_path(p["video"]) if p["video"] else None
    prepared = pipeline.prepare(p["prompt"], images=images, video=video)
    assert np.array_equal(prepared.input_ids, case.input("input_ids")), \
        f"golden case {case.name!r}: the runtime's prompt tokens differ from the ones the golden was generated from"
    if video is not None:
        rows = int(np.prod(prepared.grid_thw[-1]))
        assert array_digest(prepared.pixel_values[-rows:]) == p["video_pixels_sha256"], \
            f"golden case {case.name!r}: the runtime's video pixels differ from the golden's"
    sampling = SamplingConfig(repetition_penalty=p["repetition_penalty"], eos_token_ids=pipeline.sampling.eos_token_ids)
    result = pipeline.generate(p["prompt"], images=images, video=video, max_new_tokens=p["max_new_tokens"],
                               sampling=sampling)
    case.check("token_ids", np.asarray(result.token_ids, np.int64))


def test_a_hand_edit_is_caught_and_named(tmp_path):
    """Editing an output without the generator fails integrity; a mismatch names the case and output."""
    import shutil

    from qvl_compile.golden.store import GoldenMismatch

    shutil.copytree(DATA_DIR, tmp_path / "data")
    case = load_cases("decoder", root=tmp_path / "data")[0]
    with np.load(case.folder / "arrays.npz") as data:
        arrays = {k: data[k] for k in data.files}
    arrays["output.step_logits"][0, 0] += 1.0
    np.savez_compressed(case.folder / "arrays.npz", **arrays)
    with pytest.raises(GoldenMismatch, match=r"'decoder/fp32', output 'step_logits'.*edited by hand"):
        case.check_integrity()
    original = load_cases("decoder")[0]
    with pytest.raises(GoldenMismatch, match=r"golden case 'decoder/fp32', output 'step_logits': max_rel .* exceeds"):
        original.check("step_logits", arrays["output.step_logits"])
    record = json.loads((case.folder / "case.json").read_text())
    assert record["outputs"]["step_logits"]["tolerance"]["reason"]
