"""The torch-free runtime against the MoE family's committed PyTorch goldens (golden/moe).

The same checks as tests/test_golden_runtime.py for the dense family, on the tiny Qwen3-VL-MoE: its vision
graph, its decoder (router, top-k and experts in onnxruntime's MoE/QMoE) at prefill and cached steps, and
whole generations against transformers' `generate`. No MoE-specific runtime code is involved: the runtime
reads the artifact contract only. CI's torch-free stage runs it on exports built by the full stage.
"""
import json
from pathlib import Path

import numpy as np
import pytest

from qvl_compile.golden.store import array_digest, load_cases, media_path, read_index
from qvl_compile.runtime.decoder import TextDecoder
from qvl_compile.runtime.pipeline import Pipeline
from qvl_compile.runtime.sampling import SamplingConfig
from qvl_compile.runtime.vision import VisionEncoder

pytestmark = pytest.mark.torch_free
ROOT = Path(__file__).resolve().parents[1] / "golden" / "moe"


def _cases(kind):
    cases = load_cases(kind, root=ROOT)
    return pytest.mark.parametrize("case", cases, ids=[c.name for c in cases])


def test_moe_goldens_are_complete_and_untouched():
    index = read_index(ROOT)
    on_disk = sorted(str(p.parent.relative_to(ROOT / "cases")) for p in (ROOT / "cases").rglob("case.json"))
    assert on_disk == sorted(index["cases"]), "golden/moe/cases and index.json list different cases"
    assert not index["generator"]["skipped"], f"committed goldens must hold every kind: {index['generator']['skipped']}"
    assert "--model-type qwen3_vl_moe" in index["generator"]["command"]
    for case in load_cases(root=ROOT):
        case.check_integrity()


def test_moe_exports_hold_experts_nodes(moe_golden_exports):
    """The manifests' op counts (onnx itself is not installed in the torch-free stage)."""
    for name, op in (("fp32", "MoE"), ("int4", "QMoE")):
        counts = json.loads((moe_golden_exports[name] / "manifest.json").read_text())["artifacts"]["decoder"]["quant"]
        count = counts["op_counts"].get(op, 0)
        assert count == 3, f"{name}: expected 3 {op} nodes (4 layers, one dense), got {count}"


@_cases("vision")
def test_moe_vision_graph_matches_golden(moe_golden_exports, case):
    out = VisionEncoder.from_export(moe_golden_exports["fp32"])(case.input("pixel_values"), case.input("grid_thw"))
    case.check("image_embeds", out.image_embeds)
    case.check("deepstack_embeds", out.deepstack_embeds)


@_cases("decoder")
def test_moe_decoder_graph_matches_golden(moe_golden_exports, case):
    decoder = TextDecoder.from_export(moe_golden_exports[case.name.split("/")[1]])
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


@pytest.fixture(scope="module")
def moe_pipeline(moe_golden_exports):
    return Pipeline(moe_golden_exports["fp32"])


@_cases("generate")
def test_moe_generation_matches_transformers_generate(moe_pipeline, case):
    p = case.params
    images = [media_path(n, root=ROOT) for n in p["images"]]
    video = media_path(p["video"], root=ROOT) if p["video"] else None
    prepared = moe_pipeline.prepare(p["prompt"], images=images, video=video)
    assert np.array_equal(prepared.input_ids, case.input("input_ids")), f"{case.name}: prompt tokens differ"
    if video is not None:
        rows = int(np.prod(prepared.grid_thw[-1]))
        assert array_digest(prepared.pixel_values[-rows:]) == p["video_pixels_sha256"], f"{case.name}: video pixels"
    sampling = SamplingConfig(repetition_penalty=p["repetition_penalty"],
                              eos_token_ids=moe_pipeline.sampling.eos_token_ids)
    result = moe_pipeline.generate(p["prompt"], images=images, video=video, max_new_tokens=p["max_new_tokens"],
                                   sampling=sampling)
    case.check("token_ids", np.asarray(result.token_ids, np.int64))
