"""The vision tower's rotary as one op (rewrite/rotary.py `rotate_rows`), lowered to onnxruntime's RotaryEmbedding:
checked against transformers' own `apply_rotary_pos_emb_vision`, and the lowering against the op at row counts and
head counts the export never saw."""
import collections

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnxscript import FLOAT, script
from onnxscript import opset18 as op

from qvl_compile.export.onnx_functions import rotate_rows_onnx
from qvl_compile.rewrite.rotary import rotate_rows


def _angles(rows: int, head_dim: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(rows, head_dim // 2, generator=generator) * 60.0  # [N, hd/2], positions up to ~60 rows


@pytest.mark.parametrize("rows,heads,head_dim", [(7, 3, 8), (64, 16, 64)])
def test_op_rotates_as_transformers_does(rows, heads, head_dim):
    from transformers.models.qwen3_vl.modeling_qwen3_vl import apply_rotary_pos_emb_vision

    generator = torch.Generator().manual_seed(rows)
    q = torch.randn(rows, heads, head_dim, generator=generator)
    k = torch.randn(rows, heads, head_dim, generator=generator)
    half = _angles(rows, head_dim, seed=1)
    emb = torch.cat([half, half], dim=-1)  # [N, hd], as the vision tower's rotary_pos_emb builds it
    want_q, want_k = apply_rotary_pos_emb_vision(q, k, emb.cos(), emb.sin())
    for x, want in ((q, want_q), (k, want_k)):
        got = rotate_rows(x.reshape(rows, -1), half.cos(), half.sin(), heads)
        torch.testing.assert_close(got, want.reshape(rows, -1), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("rows,heads,head_dim", [(1, 2, 4), (50, 4, 16), (333, 16, 64)])
def test_lowering_matches_the_op(rows, heads, head_dim):
    @script(default_opset=op)
    def graph(x: FLOAT, cos: FLOAT, sin: FLOAT) -> FLOAT:
        return rotate_rows_onnx(x, cos, sin, num_heads=heads)

    model = graph.to_model_proto()
    nodes = list(model.graph.node) + [n for f in model.functions for n in f.node]  # the lowering may be a local function
    assert collections.Counter(n.op_type for n in nodes)["RotaryEmbedding"] == 1
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = torch.randn(rows, heads * head_dim, generator=torch.Generator().manual_seed(2))
    half = _angles(rows, head_dim, seed=3)
    got = session.run(None, {"x": x.numpy(), "cos": half.cos().numpy(), "sin": half.sin().numpy()})[0]
    want = rotate_rows(x, half.cos(), half.sin(), heads).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_vision_graph_rotates_with_one_node_per_tensor(vision_export):
    """Every block rotates q and k with one RotaryEmbedding each; no rotate-half chain (Neg) is left."""
    ops = collections.Counter(n.op_type for n in onnx.load(str(vision_export / "vision.onnx")).graph.node)
    assert ops["RotaryEmbedding"] == 2 * 4 and ops["Neg"] == 0  # tiny model: 4 blocks
