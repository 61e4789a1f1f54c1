"""--fused-rotary: interleaved M-RoPE as onnxruntime's MRotaryEmbedding (rewrite/rotary.py), checked against
transformers and against the elementwise form it replaces."""
import collections

import numpy as np
import onnx
import pytest
import torch

from qvl_compile.export.decoder_options import QuantOptions
from qvl_compile.export.decoder_verify import decoder_parity
from qvl_compile.parity import FP32_TOLERANCE
from qvl_compile.registry import family_named
from qvl_compile.rewrite.decoder import _rotate_half, mrope_axis_of_frequency
from qvl_compile.rewrite.rotary import interleaved_axes, mrope_rotate, mrope_rows
from qvl_compile.runtime.decoder import TextDecoder

FAMILY = family_named("qwen3_vl")
# A video, then images of other sizes than the export check's: positions differ on all three rows.
PROMPT = (("text", 2), ("video", (2, 4, 6)), ("text", 3), ("image", (1, 6, 4)), ("text", 5))


@pytest.mark.parametrize("section", [(12, 10, 10), (24, 20, 20)])
def test_the_op_rotates_as_the_elementwise_form(section):
    """The op's own kernel against q*cos + rotate_half(q)*sin with cos/sin picked per frequency from t/h/w."""
    from types import SimpleNamespace

    head_dim, heads = 2 * sum(section), 3
    config = SimpleNamespace(head_dim=head_dim, mrope_section=section, mrope_interleaved=True)
    assert mrope_axis_of_frequency(config) == interleaved_axes(list(section), head_dim // 2)  # one map for both paths
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(2, 5, heads * head_dim, generator=generator)
    positions = torch.randint(0, 300, (3, 2, 5), generator=generator)
    inv_freq = 1.0 / 5e6 ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    freqs = positions.float()[..., None] * inv_freq  # [3, B, S, hd/2]
    axes = torch.tensor(interleaved_axes(list(section), head_dim // 2))
    picked = torch.gather(freqs, 0, axes.view(1, 1, 1, -1).expand(1, 2, 5, -1))[0]
    emb = torch.cat([picked, picked], dim=-1)[:, :, None]  # [B, S, 1, hd]
    q = x.view(2, 5, heads, head_dim)
    expected = (q * emb.cos() + _rotate_half(q) * emb.sin()).reshape(2, 5, -1)
    got = mrope_rotate(x, *mrope_rows(positions, inv_freq, 1.0), heads, list(section))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_interleaved_axes_cycle_t_h_w_while_each_section_lasts():
    """Qwen3-VL's interleaved layout, written out by hand: frequency i reads row i % 3 (t, h, w) until the h or w
    section runs out (3 * section frequencies), then t."""
    assert interleaved_axes([2, 1, 1], 4) == [0, 1, 2, 0]
    assert interleaved_axes([3, 2, 1], 6) == [0, 1, 2, 0, 1, 0]
    assert interleaved_axes([24, 20, 20], 64)[57:] == [0, 1, 2, 0, 0, 0, 0]  # h and w end at 60, t fills the rest


@pytest.fixture(scope="module")
def fused_export(tiny_dir, tmp_path_factory):
    from qvl_compile.export.pipeline import export_model

    out = tmp_path_factory.mktemp("fused_rotary") / "out"
    export_model(tiny_dir, out, component="decoder", quant=QuantOptions(mode="fp32", fused_rotary=True))
    return out


def test_fused_rotary_decoder_matches_transformers(fused_export, tiny_dir):
    from qvl_compile.families.qwen3_vl.loaders import load_full_model

    model = onnx.load(str(fused_export / "decoder.onnx"), load_external_data=False)
    ops = collections.Counter(n.op_type for n in model.graph.node)
    layers = load_full_model(tiny_dir).config.text_config.num_hidden_layers
    assert ops["MRotaryEmbedding"] == 2 * layers and ops["Neg"] == 0  # q and k per layer; no rotate-half chain
    parity = decoder_parity(TextDecoder.from_export(fused_export), load_full_model(tiny_dir), FAMILY, steps=8, seed=5,
                            parts=PROMPT)
    assert parity.prefill_max_rel <= FP32_TOLERANCE and max(parity.steps_max_rel) <= FP32_TOLERANCE, parity.worst
    assert parity.onnx_tokens == parity.reference_tokens
    assert np.isfinite(parity.worst)
