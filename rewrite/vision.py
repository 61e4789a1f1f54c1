"""The rewritten Qwen3-VL vision tower: transformers' own weights, tensor-only control flow.

`RewrittenVisionTower(hf_visual)` wraps a `Qwen3VLVisionModel` of either transformers line and reuses
its parameters unchanged (patch embedding, learned position table, blocks, mergers). Only the
data-dependent parts are replaced: positions (`rewrite.positions`) and the per-frame attention split
(`rewrite.attention`). Its output matches the eager model and it captures with `torch.export` at
symbolic `num_patches` and `num_grids`.
"""
from __future__ import annotations

import torch
from torch import nn

from qvl_compile.rewrite.attention import frame_attention
from qvl_compile.rewrite.positions import interpolated_position_embedding, patch_coordinates, rotary_cos_sin
from qvl_compile.rewrite.rotary import rotate_rows


class RewrittenVisionBlock(nn.Module):
    """One `Qwen3VLVisionBlock`: its attention split replaced by `frame_attention`, its rotary by `rotate_rows`."""

    def __init__(self, hf_block: nn.Module, num_heads: int):
        super().__init__()
        self.norm1, self.norm2, self.mlp = hf_block.norm1, hf_block.norm2, hf_block.mlp
        self.qkv, self.proj = hf_block.attn.qkv, hf_block.attn.proj
        self.num_heads = num_heads

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
        """x [N, hidden]; cos/sin [N, head_dim/2], the angles of each patch's rotary pairs."""
        num_patches, hidden = x.shape
        q, k, v = self.qkv(self.norm1(x)).reshape(num_patches, 3, hidden).unbind(1)  # each [N, hidden]
        q = rotate_rows(q, cos, sin, self.num_heads)
        k = rotate_rows(k, cos, sin, self.num_heads)
        attn = frame_attention(q, k, v, grid_thw, self.num_heads)  # [N, hidden]
        x = x + self.proj(attn)
        return x + self.mlp(self.norm2(x))


class RewrittenVisionTower(nn.Module):
    """(pixel_values [N, C*T*P*P], grid_thw [G, 3]) -> (image_embeds [N/4, out], deepstack [D, N/4, out])."""

    def __init__(self, hf_visual: nn.Module):
        super().__init__()
        config = hf_visual.config
        self.merge_size = int(config.spatial_merge_size)
        num_heads = int(config.num_heads)
        conv = hf_visual.patch_embed.proj  # Conv3d with kernel == stride: one MatMul over flattened patches
        self.patch_weight = conv.weight  # [hidden, C, T, P, P], the checkpoint's tensor unchanged
        self.patch_bias = conv.bias
        self.pos_table = hf_visual.pos_embed.weight  # [side*side, hidden]
        self.register_buffer("inv_freq", hf_visual.rotary_pos_emb.inv_freq.detach().clone(), persistent=False)
        self.blocks = nn.ModuleList(RewrittenVisionBlock(b, num_heads) for b in hf_visual.blocks)
        self.deepstack_indexes = tuple(int(i) for i in config.deepstack_visual_indexes)
        self.deepstack_mergers = hf_visual.deepstack_merger_list
        self.merger = hf_visual.merger

    def forward(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        grid_thw = grid_thw.to(torch.int64)
        weight = self.patch_weight.reshape(self.patch_weight.shape[0], -1)  # [hidden, C*T*P*P]
        x = pixel_values.to(weight.dtype) @ weight.T + self.patch_bias  # [N, hidden]

        coords = patch_coordinates(grid_thw, x.shape[0], self.merge_size)
        x = x + interpolated_position_embedding(coords, self.pos_table).to(x.dtype)
        cos, sin = rotary_cos_sin(coords, self.inv_freq)  # [N, head_dim] each: the half angles twice
        half = cos.shape[-1] // 2
        cos, sin = cos[:, :half], sin[:, :half]  # [N, head_dim/2]

        deepstack = []
        for index, block in enumerate(self.blocks):
            x = block(x, cos, sin, grid_thw)
            if index in self.deepstack_indexes:
                deepstack.append(self.deepstack_mergers[self.deepstack_indexes.index(index)](x))  # [N/4, out]
        return self.merger(x), torch.stack(deepstack, dim=0)  # [N/4, out], [D, N/4, out]
