"""The Qwen3-VL text decoder as one export-friendly module: feature merge, DeepStack, M-RoPE, KV cache.

`RewrittenTextDecoder(hf_model)` reuses transformers' own modules (norms, projections, MLP) of a
`Qwen3VLForConditionalGeneration` and reproduces its text path:

  * token embeddings, with `visual_embeds` written at image/video placeholder positions (prompt order);
  * DeepStack: `deepstack_embeds[i]` added at the visual positions after decoder layer i;
  * interleaved multimodal RoPE from 3-row position ids `[3, B, S]` (`mrope_section`,
    `mrope_interleaved` from the config);
  * grouped-query attention over the valid past and the current keys, returning the grown cache;
    `attention_mask [B, T]` (ones) gives T = valid past + S, so the past may be a preallocated buffer
    that onnxruntime fills in place;
  * q/k RMSNorm, tied or untied lm_head; logits only at `logit_positions` (shape-driven, so a prefill
    can ask for the last position only).

Every shape follows from input shapes; the visual feature count V may be 0 (decode steps).
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from qvl_compile.config import TextConfig
from qvl_compile.rewrite.attention import cached_attention
from qvl_compile.rewrite.rotary import interleaved_axes, mrope_rotate, mrope_rows

# (transformers' MLP module of one layer, consume) -> the module replacing it, or None to keep the dense MLP
MlpRewrite = Callable[[nn.Module, bool], "nn.Module | None"]


class TransposedLinear(nn.Module):
    """`x @ W.T (+ b)` with `W.T` stored as the initializer: ONNX MatMul with a constant [in, out] B,
    the form onnxruntime's MatMulNBits quantizer rewrites."""

    def __init__(self, linear: nn.Module, consume: bool = False):
        super().__init__()
        # A contiguous [in, out] copy: what the ONNX initializer holds. With `consume` the source module
        # drops its own tensor at once, so a 2B export never holds both layouts of every weight. A weight
        # without storage of its own (stride 0: the streaming exporter's placeholder) stays a view.
        weight_t = linear.weight.detach().T  # [in, out]
        stored = weight_t if all(s == 0 for s in weight_t.stride()) else weight_t.contiguous()
        self.weight_t = nn.Parameter(stored, requires_grad=False)
        if consume:
            linear.weight = None
        bias = getattr(linear, "bias", None)
        self.bias = None if bias is None else nn.Parameter(bias.detach(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x @ self.weight_t
        return y if self.bias is None else y + self.bias


def mrope_axis_of_frequency(config: TextConfig) -> list[int]:
    """Which position row (0=t, 1=h, 2=w) drives each of the head_dim/2 rotary frequencies."""
    half = config.head_dim // 2
    t, h, w = config.mrope_section
    if sum(config.mrope_section) != half:
        raise ValueError(f"mrope_section {list(config.mrope_section)} must sum to head_dim/2 = {half}")
    if not config.mrope_interleaved:  # blocks: [t..., h..., w...]
        return [0] * t + [1] * h + [2] * w
    return interleaved_axes(list(config.mrope_section), half)  # t h w t h w ... while each section lasts


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class RewrittenDecoderLayer(nn.Module):
    def __init__(self, hf_layer: nn.Module, config: TextConfig, consume: bool = False, fused_rotary: bool = False,
                 mlp_rewrite: MlpRewrite | None = None):
        super().__init__()
        attn, mlp = hf_layer.self_attn, hf_layer.mlp
        self.input_layernorm, self.post_attention_layernorm = hf_layer.input_layernorm, hf_layer.post_attention_layernorm
        self.q_norm, self.k_norm = attn.q_norm, attn.k_norm
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = (
            TransposedLinear(getattr(attn, name), consume) for name in ("q_proj", "k_proj", "v_proj", "o_proj"))
        # A family's own MLP (a mixture of experts) where its rewrite takes this layer's; else the dense SwiGLU MLP.
        self.sparse_mlp = mlp_rewrite(mlp, consume) if mlp_rewrite is not None else None
        if self.sparse_mlp is None:
            self.gate_proj, self.up_proj, self.down_proj = (
                TransposedLinear(getattr(mlp, name), consume) for name in ("gate_proj", "up_proj", "down_proj"))
            self.act = mlp.act_fn
        self.heads, self.kv_heads, self.head_dim = config.num_attention_heads, config.num_key_value_heads, config.head_dim
        self.fused_rotary, self.mrope_section = fused_rotary, list(config.mrope_section)

    def _rotate(self, x: torch.Tensor, heads: int, rotary: tuple) -> torch.Tensor:
        """x [B, S, heads, hd] -> rotated [B, S, heads*hd]: one MRotaryEmbedding op, or the elementwise form."""
        batch, seq = x.shape[:2]
        flat = x.reshape(batch, seq, heads * self.head_dim)
        if self.fused_rotary:
            return mrope_rotate(flat, *rotary, heads, self.mrope_section)
        cos, sin = rotary
        return (x * cos + _rotate_half(x) * sin).reshape(batch, seq, heads * self.head_dim)

    def forward(self, x, rotary, past_key, past_value, attention_mask):
        """rotary: (cos, sin) [B, S, 1, hd], or with fused_rotary (row_index, cos_rows, sin_rows) (`mrope_rows`)."""
        batch, seq, _ = x.shape
        h = self.input_layernorm(x)
        q = self.q_norm(self.q_proj(h).view(batch, seq, self.heads, self.head_dim))  # [B, S, heads, hd]
        k = self.k_norm(self.k_proj(h).view(batch, seq, self.kv_heads, self.head_dim))  # [B, S, kv, hd]
        attn, key, value = cached_attention(
            self._rotate(q, self.heads, rotary), self._rotate(k, self.kv_heads, rotary),
            self.v_proj(h), past_key, past_value, attention_mask, self.heads, self.kv_heads,
        )  # [B, S, heads*hd], present [B, kv, max(P, T), hd] x2
        x = x + self.o_proj(attn)
        h = self.post_attention_layernorm(x)
        if self.sparse_mlp is not None:
            return x + self.sparse_mlp(h), key, value
        x = x + self.down_proj(self.act(self.gate_proj(h)) * self.up_proj(h))
        return x, key, value


class RewrittenTextDecoder(nn.Module):
    def __init__(self, hf_model: nn.Module, config: TextConfig, image_token_id: int, video_token_id: int,
                 num_deepstack: int, consume: bool = False, fused_rotary: bool = False,
                 mlp_rewrite: MlpRewrite | None = None):
        """`consume=True` moves the projection weights out of `hf_model` (unusable afterwards): export only.
        `fused_rotary`: rotary as one `qvl_compile::mrope_rotate` op per tensor (onnxruntime's MRotaryEmbedding);
        interleaved sections only (Qwen3-VL's), otherwise the elementwise form is kept.
        `mlp_rewrite(hf_mlp, consume)`: a family's module for an MLP it rewrites itself (None: the dense MLP)."""
        super().__init__()
        text = hf_model.model.language_model
        self.embed_tokens = text.embed_tokens.weight  # [vocab, H]
        self.fused_rotary = fused_rotary and config.mrope_interleaved
        self.layers = nn.ModuleList(RewrittenDecoderLayer(layer, config, consume, self.fused_rotary, mlp_rewrite)
                                    for layer in text.layers)
        self.norm = text.norm
        # A tied lm_head gets its own [H, vocab] copy, so it can be quantized apart from the embedding table.
        self.lm_head = TransposedLinear(hf_model.lm_head, consume)
        rotary = text.rotary_emb
        self.register_buffer("inv_freq", rotary.inv_freq.detach().clone().float(), persistent=False)
        self.attention_scaling = float(getattr(rotary, "attention_scaling", 1.0))
        axes = torch.tensor(mrope_axis_of_frequency(config), dtype=torch.int64)
        self.register_buffer("mrope_axes", axes, persistent=False)  # [head_dim/2]
        self.image_token_id, self.video_token_id = int(image_token_id), int(video_token_id)
        self.hidden = config.hidden_size
        self.num_deepstack = int(num_deepstack)

    def rotary(self, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """position_ids [3, B, S] -> cos, sin [B, S, 1, head_dim] (broadcast over heads)."""
        freqs = position_ids.to(torch.float32)[..., None] * self.inv_freq  # [3, B, S, hd/2]
        index = self.mrope_axes.view(1, 1, 1, -1).expand(1, freqs.shape[1], freqs.shape[2], -1)
        freqs = torch.gather(freqs, 0, index)[0]  # [B, S, hd/2], row chosen per frequency
        emb = torch.cat([freqs, freqs], dim=-1)  # [B, S, hd]
        return (emb.cos() * self.attention_scaling)[:, :, None], (emb.sin() * self.attention_scaling)[:, :, None]

    def forward(self, input_ids, position_ids, visual_embeds, deepstack_embeds, logit_positions, attention_mask,
                past_keys, past_values):
        batch, seq = input_ids.shape
        x = nn.functional.embedding(input_ids, self.embed_tokens)  # [B, S, H]: an ONNX Gather on the table
        visual = ((input_ids == self.image_token_id) | (input_ids == self.video_token_id)).reshape(-1)  # [B*S]
        # Row of each visual position in visual_embeds, 1-based; 0 picks a zero row for text positions.
        row = torch.cumsum(visual.to(torch.int64), dim=0) * visual.to(torch.int64)  # [B*S]
        zero = visual_embeds.new_zeros(1, self.hidden)
        merged = torch.cat([zero, visual_embeds], dim=0)[row].view(batch, seq, self.hidden)  # [B, S, H]
        x = torch.where(visual.view(batch, seq, 1), merged, x)
        if self.fused_rotary:
            rotary = mrope_rows(position_ids, self.inv_freq, self.attention_scaling)  # once, for every layer
        else:
            rotary = self.rotary(position_ids)
        presents_k, presents_v = [], []
        for index, layer in enumerate(self.layers):
            x, key, value = layer(x, rotary, past_keys[index], past_values[index], attention_mask)
            presents_k.append(key)
            presents_v.append(value)
            if index < self.num_deepstack:
                zero_ds = deepstack_embeds.new_zeros(1, self.hidden)
                x = x + torch.cat([zero_ds, deepstack_embeds[index]], dim=0)[row].view(batch, seq, self.hidden)
        x = self.norm(x)
        logits = self.lm_head(x.index_select(1, logit_positions))  # [B, K, vocab]
        return logits, presents_k, presents_v
