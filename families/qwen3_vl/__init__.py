"""Qwen3-VL (2B, 4B, 8B, 32B dense): the first registered family.

Everything the rest of qvl-compile needs to know about Qwen3-VL goes through this class. Torch-side
modules (transformers classes, rewrites, fixtures) are imported inside the methods, so the torch-free
runtime can look the family up and use its prompt and position strategies.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from qvl_compile.config import ModelConfig
from qvl_compile.families.qwen3_vl.config import parse_config
from qvl_compile.registry import Family, register
from qvl_compile.runtime.prompt import expand_placeholders
from qvl_compile.runtime.rope_index import mrope_position_ids


@register
class Qwen3VL(Family):
    name = "qwen3_vl"
    display_name = "Qwen3-VL"
    model_types = ("qwen3_vl",)
    architectures = ("Qwen3VLForConditionalGeneration",)
    random_architectures = ("2b", "4b", "8b")
    golden_folder = "data"
    vision_module = "model.visual"

    def parse_config(self, raw: dict[str, Any], source: str) -> ModelConfig:
        return parse_config(raw, source)

    def auto_block_size(self, config: ModelConfig) -> int:
        """128 where a row of the decoder's weights holds at least 8 such blocks (hidden size >= 1024: every released
        size), else 32. At 2B size 128 decodes 1.13x faster than 32 with the same task accuracy (README, Performance);
        in a narrower model a block of 128 spans whole rows, and accuracy level 4 quantizes the activations per block
        too (the tiny model's shipped graph then missed verify's 5e-2 bound)."""
        return 128 if config.text.hidden_size >= 8 * 128 else 32

    def expand_prompt(self, text, image_grids, video_grids, video_timestamps, merge_size):
        return expand_placeholders(text, image_grids, video_grids, video_timestamps, merge_size)

    def position_ids(self, input_ids, image_token_id, video_token_id, image_grids, video_grids, merge_size):
        return mrope_position_ids(input_ids, image_token_id, video_token_id, image_grids, video_grids, merge_size)

    def load_model(self, model_dir: Path):
        from qvl_compile.families.qwen3_vl.loaders import load_full_model

        return load_full_model(model_dir)

    def load_skeleton(self, model_dir: Path):
        from qvl_compile.families.qwen3_vl.loaders import skeleton_full_model

        return skeleton_full_model(model_dir)

    def load_vision(self, model_dir: Path, attention: str = "sdpa"):
        from qvl_compile.families.qwen3_vl.loaders import load_vision_model

        return load_vision_model(model_dir, attention=attention)

    def vision_tower(self, hf_visual):
        from qvl_compile.rewrite.vision import RewrittenVisionTower

        return RewrittenVisionTower(hf_visual).eval()

    def text_decoder(self, hf_model, config: ModelConfig, consume: bool = False, fused_rotary: bool = False):
        """The rewritten decoder; with `consume` the projections move out of `hf_model`, and the vision
        tower (0.4B parameters at 2B size, not needed by the decoder graph) is dropped."""
        from qvl_compile.rewrite.decoder import RewrittenTextDecoder

        decoder = RewrittenTextDecoder(hf_model, config.text, config.image_token_id, config.video_token_id,
                                       config.vision.num_deepstack, consume=consume,
                                       fused_rotary=fused_rotary).eval()
        if consume:
            hf_model.model.visual = None
        return decoder

    def decoder_projections(self, config: ModelConfig) -> int:
        """Projection MatMuls the decoder graph holds besides the lm_head: q k v o gate up down per layer."""
        return 7 * config.text.num_hidden_layers

    def decoder_experts(self, config: ModelConfig) -> int:
        return 0  # a dense MLP in every layer

    def decoder_rms_norms(self, config: ModelConfig) -> int:
        """RMSNorms in the decoder graph: input, post-attention, q and k norms per layer, and the final norm."""
        return 4 * config.text.num_hidden_layers + 1

    def reference_vision(self, hf_visual, pixel_values, grid_thw):
        """Eager (image_embeds [N/4, out], deepstack [D, N/4, out]) torch tensors."""
        from qvl_compile.families.qwen3_vl.loaders import reference_vision

        return reference_vision(hf_visual, pixel_values, grid_thw)

    def projection_module(self, hf_model, initializer_name: str):
        """The linear of `hf_model` an exported projection weight (by initializer name) came from."""
        from qvl_compile.families.qwen3_vl.loaders import projection_module

        return projection_module(hf_model, initializer_name)

    def build_prompt(self, hf_config, parts, seed: int = 0):
        """A multimodal prompt laid out as the processor lays it out (see reference.build_prompt)."""
        from qvl_compile.families.qwen3_vl.reference import build_prompt

        return build_prompt(hf_config, parts, seed=seed)

    def run_reference(self, hf_model, prompt, next_tokens):
        """(logits per call, recorded text-stack inputs): prefill, then teacher-forced cached steps."""
        from qvl_compile.families.qwen3_vl.reference import run_reference

        return run_reference(hf_model, prompt, next_tokens)

    def write_tiny(self, out_dir: Path, seed: int = 0, force: bool = False, trained: bool = True) -> Path:
        from qvl_compile.families.qwen3_vl.fixtures import write_tiny

        return write_tiny(out_dir, seed=seed, force=force, trained=trained)

    def write_random(self, arch: str, out_dir: Path, seed: int = 0, vision_only: bool = False,
                     force: bool = False, layers: int | None = None) -> Path:
        from qvl_compile.families.qwen3_vl.fixtures import arch_dir, write_random

        return write_random(arch_dir(arch), out_dir, seed=seed, vision_only=vision_only, force=force, layers=layers)

