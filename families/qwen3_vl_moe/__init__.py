"""Qwen3-VL-MoE (30B-A3B): Qwen3-VL's vision tower, DeepStack and M-RoPE with a mixture-of-experts text MLP.

Everything but the text MLP is Qwen3-VL's, so the family extends that one: the prompt and position strategies,
the vision rewrite and the references are inherited; what it owns is its config (expert fields), its
transformers classes, the MoE rewrite of each sparse layer's MLP (rewrite/moe.py) and its fixtures.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from qvl_compile.config import ModelConfig
from qvl_compile.families.qwen3_vl import Qwen3VL
from qvl_compile.families.qwen3_vl_moe.config import parse_config
from qvl_compile.registry import register


@register
class Qwen3VLMoe(Qwen3VL):
    name = "qwen3_vl_moe"
    display_name = "Qwen3-VL-MoE"
    model_types = ("qwen3_vl_moe",)
    architectures = ("Qwen3VLMoeForConditionalGeneration",)
    random_architectures = ("30b-a3b",)
    golden_folder = "moe"
    ships_trained_tiny = False
    # The router's [H, E] MatMul stays float32 under --quant int4: quantization noise there changes which
    # experts a token reaches (llama.cpp keeps its ffn_gate_inp unquantized for the same reason).
    float32_weights = ("sparse_mlp.router.weight_t",)
    # No trained MoE model measures what 8 bits buy, and on the random tiny MoE an 8-bit head's level-4 graph agreed
    # with its fake-quant reference on 46 of 52 next tokens (a 4-bit one: 49), under the 90% the export check asks
    auto_lm_head_bits = 4

    def parse_config(self, raw: dict[str, Any], source: str) -> ModelConfig:
        return parse_config(raw, source)

    def auto_block_size(self, config: ModelConfig) -> int:
        """32 at every size: no trained MoE model measures block 128 (and QMoE's experts share the block size)."""
        return 32

    def load_model(self, model_dir: Path):
        from qvl_compile.families.qwen3_vl_moe.loaders import load_full_model

        return load_full_model(model_dir)

    def load_skeleton(self, model_dir: Path):
        from qvl_compile.families.qwen3_vl_moe.loaders import skeleton_full_model

        return skeleton_full_model(model_dir)

    def load_vision(self, model_dir: Path, attention: str = "sdpa"):
        from qvl_compile.families.qwen3_vl_moe.loaders import load_vision_model

        return load_vision_model(model_dir, attention=attention)

    def text_decoder(self, hf_model, config: ModelConfig, consume: bool = False, fused_rotary: bool = False):
        """The rewritten decoder with each sparse layer's MLP as a router MatMul and one MoE op."""
        from qvl_compile.rewrite.decoder import RewrittenTextDecoder
        from qvl_compile.rewrite.moe import MoeMlp

        text = config.text

        def sparse_mlp(hf_mlp, consume_weights: bool):
            if not hasattr(hf_mlp, "experts"):  # a dense layer (mlp_only_layers, decoder_sparse_step)
                return None
            return MoeMlp(hf_mlp, text.num_experts_per_tok, text.moe_intermediate_size, consume_weights)

        decoder = RewrittenTextDecoder(hf_model, text, config.image_token_id, config.video_token_id,
                                       config.vision.num_deepstack, consume=consume, fused_rotary=fused_rotary,
                                       mlp_rewrite=sparse_mlp).eval()
        if consume:
            hf_model.model.visual = None
        return decoder

    def decoder_projections(self, config: ModelConfig) -> int:
        """MatMulNBits besides the lm_head: q k v o per layer, gate up down per dense layer (experts are QMoE)."""
        text = config.text
        return 4 * text.num_hidden_layers + 3 * (text.num_hidden_layers - text.sparse_layers)

    def decoder_experts(self, config: ModelConfig) -> int:
        return config.text.sparse_layers

    def projection_module(self, hf_model, initializer_name: str):
        from qvl_compile.families.qwen3_vl_moe.loaders import projection_module

        return projection_module(hf_model, initializer_name)

    def write_tiny(self, out_dir: Path, seed: int = 0, force: bool = False, trained: bool = True) -> Path:
        """Seeded random weights always: this family ships no trained tiny model (`trained` is ignored)."""
        from qvl_compile.families.qwen3_vl_moe.fixtures import write_tiny

        return write_tiny(out_dir, seed=seed, force=force)

    def write_random(self, arch: str, out_dir: Path, seed: int = 0, vision_only: bool = False,
                     force: bool = False, layers: int | None = None) -> Path:
        from qvl_compile.families.qwen3_vl_moe.fixtures import write_random

        return write_random(arch, out_dir, seed=seed, vision_only=vision_only, force=force, layers=layers)
