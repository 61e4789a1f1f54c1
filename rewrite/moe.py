"""A mixture-of-experts MLP as one opaque op, lowered to onnxruntime's `com.microsoft.MoE`.

transformers' sparse MoE block (Qwen3-VL-MoE's `Qwen3VLMoeTextSparseMoeBlock`) routes each token with a
data-dependent loop over experts (`nonzero`, `index_add_`), which a traced graph cannot keep. Here the
router stays an ordinary MatMul (its logits [T, E]) and the experts are one `qvl_compile::moe` op:

  softmax over all E logits -> top k -> renormalise the k weights -> sum_k w_k * down_k(silu(gate_k x) * up_k x)

which is transformers' routing exactly (it renormalises unconditionally). The op's eager kernel below is its
PyTorch meaning; `export.onnx_functions.moe_onnx` lowers it to onnxruntime's MoE (router logits as
`router_probs`, `normalize_routing_weights=1`, SwiGLU with gate and up rows interleaved, the only fused
layout onnxruntime's CPU kernel takes), which computes only the selected experts' rows. The INT4 export
turns that node into `QMoE` (`export.int4_weights`).

Expert tensors in the graph use transformers 5.x's [E, out, in] layout: fc1 [E, 2I, H] with gate row j
at 2j and up row j at 2j+1, fc2 [E, H, I]. transformers 4.57 (and released checkpoints) store the
[E, in, out] transpose; the rewrite and the weight reader take either (`experts_in_graph_layout`).
"""
from __future__ import annotations

import torch
from torch import nn

FC1 = "experts_fc1"  # the rewritten module's parameter names: the weight writer recognises them by these
FC2 = "experts_fc2"


def interleave_gate_up(fused: torch.Tensor) -> torch.Tensor:
    """[E, 2I, H] with gate rows then up rows -> [E, 2I, H] with gate_j at row 2j and up_j at 2j+1 (a view
    when the input has no storage of its own: the streaming exporter's placeholders)."""
    experts, rows, hidden = fused.shape
    return fused.reshape(experts, 2, rows // 2, hidden).transpose(1, 2).reshape(experts, rows, hidden)


def deinterleave_gate_up(interleaved: torch.Tensor) -> torch.Tensor:
    """The inverse of `interleave_gate_up`: gate rows, then up rows."""
    experts, rows, hidden = interleaved.shape
    return interleaved.reshape(experts, rows // 2, 2, hidden).transpose(1, 2).reshape(experts, rows, hidden)


def experts_in_graph_layout(tensor: torch.Tensor, out_features: int) -> torch.Tensor:
    """A 3-D expert tensor in [E, out, in]: transposed when it is stored [E, in, out] (4.57's layout), told apart
    by `out_features` (2I for gate_up, H for down). The two layouts are ambiguous only when in == out."""
    if tensor.shape[1] == out_features:
        return tensor
    if tensor.shape[2] == out_features:
        return tensor.transpose(1, 2)
    raise ValueError(f"expert tensor {list(tensor.shape)} has no axis of {out_features} output features")


def route(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(weights [T, k], experts [T, k]): softmax over all experts in float32, top k, renormalised."""
    probs = torch.softmax(logits.float(), dim=-1)
    weights, experts = torch.topk(probs, k, dim=-1)
    return weights / weights.sum(dim=-1, keepdim=True), experts


@torch.library.custom_op("qvl_compile::moe", mutates_args=())
def moe(x: torch.Tensor, router_logits: torch.Tensor, fc1: torch.Tensor, fc2: torch.Tensor, k: int) -> torch.Tensor:
    """x [T, H], router_logits [T, E], fc1 [E, 2I, H] (gate/up interleaved), fc2 [E, H, I] -> [T, H]."""
    weights, experts = route(router_logits, k)
    out = torch.zeros_like(x)
    for expert in experts.unique().tolist():  # eager kernel only; never traced
        rows, slot = torch.nonzero(experts == expert, as_tuple=True)
        hidden = x[rows] @ fc1[expert].T  # [n, 2I] interleaved
        act = nn.functional.silu(hidden[:, 0::2]) * hidden[:, 1::2]  # [n, I]
        out.index_add_(0, rows, (act @ fc2[expert].T) * weights[rows, slot, None].to(x.dtype))
    return out


@moe.register_fake
def _moe_shape(x, router_logits, fc1, fc2, k):
    return torch.empty_like(x)


def _graph_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """A contiguous copy, except for a placeholder (stride 0), which stays a view so the weight writer can trace
    it back to its checkpoint tensor."""
    return tensor if all(s == 0 for s in tensor.stride()) else tensor.contiguous()


class MoeMlp(nn.Module):
    """A sparse MoE block (router `gate` with weight [E, H]; `experts` with gate_up_proj and down_proj, either
    transformers layout) as a router MatMul and one `qvl_compile::moe` op."""

    def __init__(self, block: nn.Module, top_k: int, intermediate: int, consume: bool = False):
        super().__init__()
        from qvl_compile.rewrite.decoder import TransposedLinear

        experts = block.experts
        hidden = experts.down_proj.shape[1] if experts.down_proj.shape[2] == intermediate else experts.down_proj.shape[2]
        self.router = TransposedLinear(block.gate, consume)  # weight_t [H, E]
        gate_up = experts_in_graph_layout(experts.gate_up_proj.detach(), 2 * intermediate)  # [E, 2I, H]
        down = experts_in_graph_layout(experts.down_proj.detach(), hidden)  # [E, H, I]
        setattr(self, FC1, nn.Parameter(_graph_tensor(interleave_gate_up(gate_up)), requires_grad=False))
        setattr(self, FC2, nn.Parameter(_graph_tensor(down), requires_grad=False))
        if consume:
            experts.gate_up_proj, experts.down_proj = None, None
        self.top_k = int(top_k)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """h [B, S, H] -> [B, S, H]."""
        batch, seq, hidden = h.shape
        flat = h.reshape(batch * seq, hidden)  # [T, H]
        out = moe(flat, self.router(flat), getattr(self, FC1), getattr(self, FC2), self.top_k)
        return out.view(batch, seq, hidden)
