"""Qwen3-VL-MoE through the compiler: the MoE rewrite, its ONNX graphs against transformers, its goldens.

References are transformers' own `Qwen3VLMoeForConditionalGeneration` on the tiny MoE checkpoint (8 experts,
top 2, one dense layer), at prompts and seeds the export's own check never used.
"""
import json

import numpy as np
import pytest
import torch
from test_golden_regeneration import golden_differences

from qvl_compile.config import ModelConfig
from qvl_compile.golden.store import DATA_DIR, read_index
from qvl_compile.manifest import sha256_file
from qvl_compile.registry import family_named

MOE_GOLDENS = DATA_DIR.parent / "moe"
FAMILY = family_named("qwen3_vl_moe")


@pytest.fixture(scope="module")
def moe_model(moe_tiny_dir):
    return FAMILY.load_model(moe_tiny_dir)


def test_gate_up_interleaving_round_trips_and_pairs_rows():
    from qvl_compile.rewrite.moe import deinterleave_gate_up, interleave_gate_up

    fused = torch.arange(2 * 6 * 3, dtype=torch.float32).view(2, 6, 3)  # E=2, I=3: gate rows 0-2, up rows 3-5
    interleaved = interleave_gate_up(fused)
    assert torch.equal(interleaved[1, 0::2], fused[1, :3]) and torch.equal(interleaved[1, 1::2], fused[1, 3:])
    assert torch.equal(deinterleave_gate_up(interleaved), fused)


def test_routing_is_transformers_router(moe_model):
    from qvl_compile.rewrite.moe import route

    router = moe_model.model.language_model.layers[0].mlp.gate
    x = torch.randn(11, router.weight.shape[1], generator=torch.Generator().manual_seed(5))
    out = router(x)
    if not isinstance(out, tuple):
        pytest.skip("transformers 4.57's router is a Linear (logits only); the block test covers its routing")
    ref_weights, ref_experts = out[1], out[2]  # 5.x: (logits, top-k weights, top-k indices)
    weights, experts = route(x @ router.weight.T, 2)
    assert torch.equal(experts, ref_experts) and torch.allclose(weights, ref_weights.float(), atol=1e-6)


def test_rewritten_moe_block_matches_transformers(moe_tiny_dir, moe_model):
    from qvl_compile.rewrite.moe import MoeMlp

    config = ModelConfig.from_dir(moe_tiny_dir).text
    for layer in (0, 2):
        block = moe_model.model.language_model.layers[layer].mlp
        mine = MoeMlp(block, config.num_experts_per_tok, config.moe_intermediate_size)
        h = torch.randn(2, 9, config.hidden_size, generator=torch.Generator().manual_seed(layer))
        with torch.no_grad():
            ref = block(h)
            ref = ref[0] if isinstance(ref, tuple) else ref  # 4.57 also returns the router logits
            assert torch.allclose(mine(h), ref, rtol=1e-5, atol=1e-6)


def test_fp32_decoder_matches_transformers_at_unseen_prompts(moe_fp32_export, moe_model):
    from qvl_compile.export.decoder_verify import decoder_parity
    from qvl_compile.parity import FP32_TOLERANCE
    from qvl_compile.runtime.decoder import TextDecoder

    decoder = TextDecoder.from_export(moe_fp32_export)
    for seed, parts in ((41, [("text", 9)]), (42, [("text", 3), ("image", (1, 4, 6)), ("video", (2, 4, 4)), ("text", 4)])):
        parity = decoder_parity(decoder, moe_model, FAMILY, 12, FP32_TOLERANCE, seed=seed, parts=parts)
        assert parity.passed, f"seed {seed}: max rel {parity.worst:.2e}, tokens {parity.onnx_tokens} vs {parity.reference_tokens}"


def test_int4_experts_match_fake_quant_transformers(moe_int4_export, moe_model):
    """QMoE (accuracy_level 1) against transformers holding the graph's dequantized experts and projections."""
    import onnx

    from qvl_compile.export.decoder_verify import decoder_parity
    from qvl_compile.export.graph_weights import fake_quant_reference
    from qvl_compile.parity import INT4_TOLERANCE
    from qvl_compile.runtime.decoder import TextDecoder

    graph = moe_int4_export / "decoder.onnx"
    proto = onnx.load(str(graph), load_external_data=False)
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("QMoE") == 3 and "MoE" not in ops
    routers = [n for n in proto.graph.node if n.op_type == "MatMul" and "router" in n.input[1]]
    assert len(routers) == 3, "the routers stay float32 MatMuls"
    reference = fake_quant_reference(moe_model, graph, FAMILY)
    experts = reference.model.language_model.layers[0].mlp.experts.gate_up_proj
    assert not torch.equal(experts, moe_model.model.language_model.layers[0].mlp.experts.gate_up_proj)
    parity = decoder_parity(TextDecoder.from_export(moe_int4_export), reference, FAMILY, 12, INT4_TOLERANCE, seed=43)
    assert parity.passed, f"max rel {parity.worst:.2e}"


def test_lossy_int4_export_is_judged_by_next_token_agreement(moe_tiny_dir, tmp_path):
    from qvl_compile.export.pipeline import export_model

    manifest = export_model(moe_tiny_dir, tmp_path / "out", component="decoder")  # accuracy_level 4
    check = manifest.artifacts["decoder"].export_check
    shipped = check["accuracy_level_4_vs_fake_quant"]
    agree, total = shipped["prefill_argmax_agreement"]
    assert shipped["judged_by"].startswith("next-token agreement") and agree >= 0.9 * total
    assert check["accuracy_level_0_vs_fake_quant"]["tokens_identical"]
    # auto keeps the MoE family's output projection at 4 bits (no trained MoE model to measure 8 against)
    assert manifest.artifacts["decoder"].quant["lm_head_bits"] == 4


@pytest.fixture(scope="module")
def regenerated(moe_tiny_dir, moe_fp32_export, moe_int4_export, tmp_path_factory):
    from qvl_compile.golden.generate import Sources, generate_goldens

    out = tmp_path_factory.mktemp("moe-golden") / "moe"
    index = generate_goldens(out, sources=Sources(moe_tiny_dir, moe_fp32_export, moe_int4_export), family=FAMILY.name)
    return out, index


def test_moe_goldens_regenerate(regenerated, moe_tiny_dir):
    out, index = regenerated
    failures = golden_differences(MOE_GOLDENS, out, index)
    assert not failures, ("regenerated MoE goldens differ (regenerate with "
                          "`qvl-compile golden golden/moe --model-type qwen3_vl_moe`):\n" + "\n".join(failures))
    fresh = {p.name: sha256_file(p) for p in sorted(moe_tiny_dir.iterdir()) if p.is_file()}
    assert fresh == read_index(MOE_GOLDENS)["tiny_checkpoint"]["files"]
    for name in index["graphs"]:
        assert (out / "graphs" / name).read_text() == (MOE_GOLDENS / "graphs" / name).read_text(), name


def test_config_reads_both_expert_count_names_and_refuses_square_experts(moe_tiny_dir):
    from qvl_compile.errors import QvlError

    raw = json.loads((moe_tiny_dir / "config.json").read_text())
    raw["text_config"]["num_local_experts"] = raw["text_config"].pop("num_experts")  # as transformers 5.x writes it
    assert ModelConfig.from_dict(raw).text.num_experts == 8
    raw["text_config"]["moe_intermediate_size"] = raw["text_config"]["hidden_size"] // 2
    with pytest.raises(QvlError, match="square"):
        ModelConfig.from_dict(raw)


def test_released_30b_a3b_architecture_sizes():
    """The packaged architecture gives the issue's released figures: 31.07B parameters, 3.35B active per text token
    (the vision tower excluded)."""
    from qvl_compile.families.qwen3_vl_moe.fixtures import arch_dir, parameter_shapes

    raw = json.loads((arch_dir("30b-a3b") / "config.json").read_text())
    shapes = parameter_shapes(raw, vision_only=False)
    total = sum(int(np.prod(s)) for s in shapes.values())
    experts = sum(int(np.prod(s)) for name, s in shapes.items() if ".experts." in name)
    text = raw["text_config"]
    vision = sum(int(np.prod(s)) for name, s in shapes.items() if name.startswith("model.visual."))
    active = total - vision - experts * (1 - text["num_experts_per_tok"] / text["num_experts"])
    assert round(total / 1e9, 2) == 31.07 and round(active / 1e9, 2) == 3.35
    assert shapes["model.language_model.layers.0.mlp.experts.gate_up_proj"] == (128, 2048, 1536)
    assert shapes["model.language_model.layers.0.mlp.experts.down_proj"] == (128, 768, 2048)


def test_random_checkpoint_with_fewer_layers_loads_in_transformers(moe_tiny_dir, tmp_path):
    from qvl_compile.families.qwen3_vl_moe.fixtures import write_random

    out = write_random(str(moe_tiny_dir), tmp_path / "r", seed=1, layers=3)
    assert ModelConfig.from_dir(out).text.num_hidden_layers == 3
    model = FAMILY.load_model(out)
    assert len(model.model.language_model.layers) == 3
    with pytest.raises(Exception, match="at least 3"):
        write_random(str(moe_tiny_dir), tmp_path / "r2", layers=2)


def test_moe_decode_bench_counts_experts_at_top_k_of_e(moe_int4_export):
    """bench/moe_decode.py's bytes per token: every initializer once, the experts at k/E (2 of 8) of theirs."""
    import sys

    import onnx

    sys.path.insert(0, str(DATA_DIR.parents[1] / "bench"))
    try:
        from moe_decode import decode_bytes
    finally:
        sys.path.pop(0)
    proto = onnx.load(str(moe_int4_export / "decoder.onnx"), load_external_data=False)
    size = {t.name: int(np.prod(t.dims)) * onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
            for t in proto.graph.initializer}
    experts = sum(size[name] for node in proto.graph.node if node.op_type == "QMoE" for name in node.input[2:] if name)
    assert experts > 0 and decode_bytes(moe_int4_export, 0) == pytest.approx(sum(size.values()) - experts * 6 / 8)
