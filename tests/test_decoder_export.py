"""Decoder export on the tiny model: fp32 vs transformers, INT4 vs its fake-quant reference, DeepStack."""
import collections
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from qvl_compile.export.decoder_options import QuantOptions
from qvl_compile.export.decoder_verify import decoder_parity, next_token_agreement, with_accuracy_level
from qvl_compile.export.graph_weights import GraphWeights, dequantize_matmul_nbits, fake_quant_reference
from qvl_compile.parity import FP32_TOLERANCE, INT4_TOLERANCE, int4_tolerance
from qvl_compile.registry import family_named
from qvl_compile.runtime.decoder import TextDecoder

FAMILY = family_named("qwen3_vl")

# Not the export-time check's prompt: a video first, images of other sizes, another seed.
TEST_PROMPT = (("text", 3), ("video", (3, 4, 6)), ("text", 4), ("image", (1, 8, 4)), ("image", (1, 2, 2)),
               ("text", 6))
STEPS = 16


def projection_count(hf_model) -> int:
    """Linear layers of transformers' own text stack, plus the lm_head: what INT4 must quantize."""
    text = hf_model.model.language_model
    return sum(isinstance(m, torch.nn.Linear) for m in text.layers.modules()) + 1


@pytest.fixture(scope="module")
def hf_model(tiny_dir):
    from qvl_compile.families.qwen3_vl.loaders import load_full_model

    return load_full_model(tiny_dir)


def test_fp32_decoder_matches_transformers(fp32_export, hf_model):
    parity = decoder_parity(TextDecoder.from_export(fp32_export), hf_model, FAMILY, steps=STEPS, seed=21, parts=TEST_PROMPT)
    assert len(parity.steps_max_rel) == STEPS
    assert parity.prefill_max_rel <= FP32_TOLERANCE and max(parity.steps_max_rel) <= FP32_TOLERANCE
    assert parity.onnx_tokens == parity.reference_tokens


def test_int4_decoder_matches_fake_quant_reference(int4_export, hf_model):
    decoder = TextDecoder.from_export(int4_export)
    reference = fake_quant_reference(hf_model, int4_export / "decoder.onnx", FAMILY)
    parity = decoder_parity(decoder, reference, FAMILY, steps=STEPS, seed=21, parts=TEST_PROMPT, tolerance=INT4_TOLERANCE)
    assert parity.prefill_max_rel <= INT4_TOLERANCE and max(parity.steps_max_rel) <= INT4_TOLERANCE
    assert parity.onnx_tokens == parity.reference_tokens
    agree, total = next_token_agreement(decoder, reference, FAMILY, seed=21)
    assert agree == total
    # Quantization itself is visible: the unquantized model differs far beyond the tolerance.
    assert decoder_parity(decoder, hf_model, FAMILY, steps=1, seed=21, parts=TEST_PROMPT).prefill_max_rel > 10 * INT4_TOLERANCE


def test_accuracy_level_4_drifts_within_its_own_bound(int4_export, hf_model, tmp_path):
    """accuracy_level 4 (int8 activations, the default) drifts from the reference far beyond level 1's exactness,
    and within the bound the export check and verify hold it to."""
    fast = tmp_path / "decoder.onnx"
    with_accuracy_level(int4_export / "decoder.onnx", 4, fast)
    facts = TextDecoder.from_export(int4_export).facts
    reference = fake_quant_reference(hf_model, int4_export / "decoder.onnx", FAMILY)
    exact = decoder_parity(TextDecoder.from_export(int4_export), reference, FAMILY, steps=2, seed=21, parts=TEST_PROMPT)
    drift = decoder_parity(TextDecoder(fast, facts), reference, FAMILY, steps=2, seed=21, parts=TEST_PROMPT)
    assert drift.prefill_max_rel > 100 * exact.prefill_max_rel
    assert drift.worst <= int4_tolerance(4), drift.worst


def test_zeroing_deepstack_changes_the_logits(fp32_export, hf_model):
    parity = decoder_parity(TextDecoder.from_export(fp32_export), hf_model, FAMILY, steps=1, seed=21, parts=TEST_PROMPT,
                            zero_deepstack=True)
    assert parity.prefill_max_rel > 100 * FP32_TOLERANCE


def test_dequantizer_reproduces_the_original_weights(int4_export, hf_model):
    """Symmetric int4 rounds to the nearest of -8..7 steps: within half a step, except the clipped +8 side
    of a block (at most one step). A wrong nibble order or scale layout misses by many steps."""
    model = onnx.load(str(int4_export / "decoder.onnx"))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    nodes = [n for n in model.graph.node if n.op_type == "MatMulNBits"]
    assert len(nodes) == projection_count(hf_model)
    node = next(n for n in nodes if n.input[1].startswith("layers.2.up_proj"))
    got = dequantize_matmul_nbits(node, GraphWeights(int4_export / "decoder.onnx"))  # [N, K]
    original = hf_model.model.language_model.layers[2].mlp.up_proj.weight.detach().numpy()
    scales = inits[node.input[2]].reshape(original.shape[0], -1)  # [N, K/block]
    block = next(a.i for a in node.attribute if a.name == "block_size")
    step = np.repeat(scales, block, axis=1)[:, : original.shape[1]]
    assert got.shape == original.shape
    steps_off = np.abs(got - original) / np.abs(step)
    assert steps_off.max() <= 1.0 + 1e-5
    assert (steps_off <= 0.5 + 1e-5).mean() > 0.97


def test_interface_and_counts(int4_export, hf_model):
    model = onnx.load(str(int4_export / "decoder.onnx"))
    names = [i.name for i in model.graph.input]
    assert names[:6] == ["input_ids", "position_ids", "visual_embeds", "deepstack_embeds", "logit_positions",
                         "attention_mask"]
    layers = hf_model.config.text_config.num_hidden_layers
    assert names[6:] == ([f"past_key_values.{i}.key" for i in range(layers)]
                         + [f"past_key_values.{i}.value" for i in range(layers)])
    dims = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in list(model.graph.input) + list(model.graph.output)}
    assert dims["position_ids"] == [3, "batch", "seq"]
    text = hf_model.config.text_config
    kv_dims = [text.num_key_value_heads, text.head_dim]
    assert dims["past_key_values.0.key"] == ["batch", kv_dims[0], "past_seq", kv_dims[1]]
    assert dims["attention_mask"] == ["batch", "total_seq"]
    assert dims[f"present.{layers - 1}.value"] == ["batch", kv_dims[0], "present_seq", kv_dims[1]]
    assert dims["logits"] == ["batch", "num_logits", text.vocab_size]
    ops = collections.Counter(n.op_type for n in model.graph.node)
    assert ops["MatMulNBits"] == projection_count(hf_model)
    # Every RMSNorm (input, post-attention, q, k per layer; the final one) is one fused node, and each one
    # after a residual Add (post-attention, the next layer's input, the final norm) takes that Add in.
    assert ops["Pow"] == ops["ReduceMean"] == ops["Sqrt"] == ops["Reciprocal"] == 0
    assert ops["SimplifiedLayerNormalization"] + ops["SkipSimplifiedLayerNormalization"] == 4 * layers + 1
    assert ops["SkipSimplifiedLayerNormalization"] == 2 * layers


def test_batch_of_two_text_prompts_matches_transformers(fp32_export, hf_model):
    rng = np.random.default_rng(4)
    ids = rng.integers(0, 700, (2, 9))
    with torch.no_grad():
        ref = hf_model(input_ids=torch.from_numpy(ids)).logits.numpy()
    decoder = TextDecoder.from_export(fp32_export)
    positions = np.broadcast_to(np.arange(9), (3, 2, 9))
    logits, cache = decoder.forward(ids, positions, decoder.empty_cache(batch=2), logit_positions=np.arange(9))
    assert np.abs(logits - ref).max() <= FP32_TOLERANCE * np.abs(ref).max()
    text = hf_model.config.text_config
    assert cache.length == 9 and cache.keys[0].shape == (2, text.num_key_value_heads, 9, text.head_dim)


def test_rotary_layout_matches_transformers_interleaved_mrope(hf_model):
    """Per-frequency row choice (t/h/w interleaved) against transformers' rotary embedding."""
    from qvl_compile.config import ModelConfig
    from qvl_compile.rewrite.decoder import RewrittenTextDecoder

    text = hf_model.model.language_model
    cfg = ModelConfig.from_dict(hf_model.config.to_dict())
    ours = RewrittenTextDecoder(hf_model, cfg.text, cfg.image_token_id, cfg.video_token_id, 3)
    positions = torch.from_numpy(np.random.default_rng(0).integers(0, 500, (3, 1, 7)))
    cos, sin = ours.rotary(positions)
    ref_cos, ref_sin = text.rotary_emb(torch.zeros(1, 7, 64), positions)
    torch.testing.assert_close(cos[:, :, 0], ref_cos, rtol=0, atol=1e-6)
    torch.testing.assert_close(sin[:, :, 0], ref_sin, rtol=0, atol=1e-6)


def test_in_place_cache_matches_the_grown_cache(fp32_export):
    """A preallocated cache bound as past and present (IO binding) gives the grown cache's logits."""
    from qvl_compile.errors import QvlError

    decoder = TextDecoder.from_export(fp32_export)
    rng = np.random.default_rng(5)
    ids = rng.integers(0, 500, (1, 11))
    positions = np.broadcast_to(np.arange(11), (3, 1, 11)).copy()
    grown = decoder.empty_cache()
    in_place = decoder.empty_cache(capacity=11 + 6)
    buffer = in_place.keys[0]
    for step in range(7):
        if step == 0:
            a, grown = decoder.forward(ids, positions, grown)
            b, in_place = decoder.forward(ids, positions, in_place)
        else:
            token, position = np.array([[int(a[0, -1].argmax())]]), np.full((3, 1, 1), 10 + step, np.int64)
            a, grown = decoder.forward(token, position, grown)
            b, in_place = decoder.forward(token, position, in_place)
        assert np.abs(a - b).max() <= 1e-5 * np.abs(a).max()
    assert in_place.length == grown.length == 17 and in_place.keys[0] is buffer  # written in place, never copied
    assert np.array_equal(in_place.keys[0], grown.keys[0]) and np.array_equal(in_place.values[3], grown.values[3])
    with pytest.raises(QvlError, match="holds 17 rows; 17 used \\+ 1 new do not fit"):
        decoder.forward(np.array([[1]]), np.full((3, 1, 1), 17, np.int64), in_place)


def test_no_quantize_lm_head_keeps_it_fp32(tiny_dir, hf_model, tmp_path):
    """--no-quantize-lm-head: every projection but the lm_head becomes MatMulNBits; the lm_head stays a MatMul
    on its fp32 [hidden, vocab] weight."""
    from qvl_compile.export.pipeline import export_model

    export_model(tiny_dir, tmp_path / "out", component="decoder", quant=QuantOptions(quantize_lm_head=False))
    model = onnx.load(str(tmp_path / "out" / "decoder.onnx"))
    ops = collections.Counter(n.op_type for n in model.graph.node)
    assert ops["MatMulNBits"] == projection_count(hf_model) - 1
    weights = {t.name: t for t in model.graph.initializer}
    head = [n for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in weights]
    text = hf_model.config.text_config
    assert [list(weights[n.input[1]].dims) for n in head] == [[text.hidden_size, text.vocab_size]]


def test_lm_head_bits_8_keeps_eight_bits_where_the_table_shares_them(tiny_dir, hf_model, tmp_path):
    """--lm-head-bits 8: the output projection is an 8-bit MatMulNBits, the tied table reads the same bytes as 8-bit
    rows, every other projection stays 4-bit; the bytes are the checkpoint's weights to half a step, and the graph
    matches transformers with those weights (the fake-quant reference) token for token."""
    from qvl_compile.export.pipeline import export_model

    out = tmp_path / "out"
    export_model(tiny_dir, out, component="decoder", quant=QuantOptions(lm_head_bits=8, accuracy_level=1, block_size=32))
    model = onnx.load(str(out / "decoder.onnx"))
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    bits = {n.input[1].removesuffix("_Q4"): next(a.i for a in n.attribute if a.name == "bits")
            for n in model.graph.node if n.op_type == "MatMulNBits"}
    head = [name for name in bits if name.startswith("lm_head")]
    assert len(head) == 1 and bits[head[0]] == 8
    assert sorted(set(bits[name] for name in bits if name not in head)) == [4]
    assert len(bits) == projection_count(hf_model)
    (gather,) = [n for n in model.graph.node if n.op_type == "GatherBlockQuantized"]
    assert next(a.i for a in gather.attribute if a.name == "bits") == 8
    assert gather.input[2] == head[0] + "_scales"  # the lm_head's own scales: one set of bytes for both
    # 8-bit rows with zero point 128, dequantized here by the format's definition, not by the exporter's code
    table = hf_model.get_input_embeddings().weight.detach().numpy()  # [vocab, hidden], tied to the lm_head
    packed, scales = weights[head[0] + "_Q4"], weights[head[0] + "_scales"]  # [vocab, blocks, 32], [vocab, blocks]
    assert packed.dtype == np.uint8 and packed.shape == (table.shape[0], table.shape[1] // 32, 32)
    dequantized = ((packed.astype(np.float32) - 128) * scales[:, :, None]).reshape(table.shape)
    steps = np.abs(dequantized - table) / np.abs(scales).repeat(32, axis=1)  # error in quantization steps
    assert steps.max() <= 1.0 + 1e-4 and steps.mean() < 0.3  # rounding (a block's clipped extreme: one step)
    assert np.abs(scales).max() < np.abs(table).max() / 100  # 8 bits' steps (4 bits' are 1/7 of the largest weight)
    assert np.array_equal(weights[gather.input[0]].reshape(packed.shape), packed)
    decoder = TextDecoder.from_export(out)
    reference = fake_quant_reference(hf_model, out / "decoder.onnx", FAMILY)
    parity = decoder_parity(decoder, reference, FAMILY, steps=8, seed=23, parts=TEST_PROMPT, tolerance=INT4_TOLERANCE)
    assert parity.prefill_max_rel <= INT4_TOLERANCE and max(parity.steps_max_rel) <= INT4_TOLERANCE
    assert parity.onnx_tokens == parity.reference_tokens


def test_lm_head_bits_auto_is_8_at_level_4_only(tmp_path):
    """auto (None) resolves by accuracy level: onnxruntime runs 8-bit MatMulNBits fast only at level 4; a choice
    stands at any level; anything but 4 or 8 is refused in one line, from the CLI too."""
    from click.testing import CliRunner

    from qvl_compile.cli import main
    from qvl_compile.errors import QvlError

    assert QuantOptions().head_bits_for(8) == 8 and QuantOptions(accuracy_level=1).head_bits_for(8) == 4
    assert QuantOptions().head_bits_for(4) == 4
    assert QuantOptions(accuracy_level=1, lm_head_bits=8).head_bits_for(4) == 8
    assert QuantOptions(lm_head_bits=4).head_bits_for(8) == 4
    with pytest.raises(QvlError, match="--lm-head-bits: expected 4 or 8, got 6"):
        QuantOptions(lm_head_bits=6).validate()
    result = CliRunner().invoke(main, ["export", str(tmp_path / "none"), str(tmp_path / "out"), "--lm-head-bits", "6"])
    assert result.exit_code != 0 and "'6' is not one of 'auto', '4', '8'" in result.output


def test_block_size_auto_is_the_familys(tiny_dir, tmp_path):
    """auto (None) takes the family's block size for the checkpoint: 128 for Qwen3-VL at every released size (2B, 4B,
    8B), 32 for its tiny model (hidden size 64) and for the MoE family; a choice stands, and the CLI refuses a value
    that is neither auto nor a number in one line."""
    from click.testing import CliRunner

    from qvl_compile.cli import main
    from qvl_compile.config import ModelConfig

    archs = Path(__file__).resolve().parents[1] / "families" / "qwen3_vl" / "archs"
    released = sorted(archs.glob("*/config.json"))
    assert len(released) >= 3
    for config_file in released:
        assert FAMILY.auto_block_size(ModelConfig.from_dir(config_file.parent)) == 128, config_file
    assert FAMILY.auto_block_size(ModelConfig.from_dir(tiny_dir)) == 32
    moe = family_named("qwen3_vl_moe")
    for config_file in sorted((archs.parent.parent / "qwen3_vl_moe" / "archs").glob("*/config.json")):
        assert moe.auto_block_size(ModelConfig.from_dir(config_file.parent)) == 32, config_file
    assert QuantOptions().for_family(128).block_size == 128 and QuantOptions(block_size=32).for_family(128).block_size == 32
    result = CliRunner().invoke(main, ["export", str(tmp_path / "none"), str(tmp_path / "out"), "--block-size", "big"])
    assert result.exit_code != 0 and "--block-size: expected auto or one of 16, 32, 64, 128, 256, got 'big'" in result.output
