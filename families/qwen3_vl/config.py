"""Qwen3-VL's config.json -> the compiler's frozen dataclasses, with the checks Qwen3-VL's graphs rely on."""
from __future__ import annotations

from typing import Any

from qvl_compile.config import ModelConfig, TextConfig, VisionConfig, lookup
from qvl_compile.errors import QvlError


def parse_vision(raw: dict[str, Any]) -> VisionConfig:
    where = "vision_config"
    cfg = VisionConfig(
        depth=int(lookup(raw, "depth", "num_hidden_layers", where=where)),
        hidden_size=int(lookup(raw, "hidden_size", where=where)),
        num_heads=int(lookup(raw, "num_heads", "num_attention_heads", where=where)),
        intermediate_size=int(lookup(raw, "intermediate_size", where=where)),
        out_hidden_size=int(lookup(raw, "out_hidden_size", where=where)),
        in_channels=int(lookup(raw, "in_channels", where=where, default=3)),
        patch_size=int(lookup(raw, "patch_size", where=where)),
        temporal_patch_size=int(lookup(raw, "temporal_patch_size", where=where)),
        spatial_merge_size=int(lookup(raw, "spatial_merge_size", where=where)),
        num_position_embeddings=int(lookup(raw, "num_position_embeddings", where=where)),
        deepstack_visual_indexes=tuple(int(i) for i in lookup(raw, "deepstack_visual_indexes", where=where)),
        hidden_act=str(lookup(raw, "hidden_act", where=where)),
    )
    validate_vision(cfg)
    return cfg


def validate_vision(cfg: VisionConfig) -> None:
    if cfg.spatial_merge_size != 2:
        raise QvlError(f"only spatial_merge_size 2 is supported, got {cfg.spatial_merge_size}")
    if cfg.temporal_patch_size != 2:
        raise QvlError(f"only temporal_patch_size 2 is supported, got {cfg.temporal_patch_size}")
    if cfg.num_grid_per_side**2 != cfg.num_position_embeddings:
        raise QvlError(
            f"num_position_embeddings must be a square (the learned position grid), got {cfg.num_position_embeddings}"
        )
    if cfg.hidden_size % cfg.num_heads or cfg.head_dim % 4:
        raise QvlError(
            f"vision hidden_size/num_heads must give a head_dim divisible by 4, got {cfg.hidden_size}/{cfg.num_heads}"
        )
    if not cfg.deepstack_visual_indexes:
        raise QvlError("vision_config.deepstack_visual_indexes is empty; Qwen3-VL needs at least one DeepStack tap")
    bad = [i for i in cfg.deepstack_visual_indexes if not 0 <= i < cfg.depth]
    if bad:
        raise QvlError(f"deepstack_visual_indexes must lie in 0..{cfg.depth - 1}, got {list(cfg.deepstack_visual_indexes)}")


def parse_text(raw: dict[str, Any], tie_word_embeddings: bool) -> TextConfig:
    where = "text_config"
    rope = raw.get("rope_scaling") or raw.get("rope_parameters") or {}
    heads = int(lookup(raw, "num_attention_heads", where=where))
    hidden = int(lookup(raw, "hidden_size", where=where))
    return TextConfig(
        vocab_size=int(lookup(raw, "vocab_size", where=where)),
        hidden_size=hidden,
        num_hidden_layers=int(lookup(raw, "num_hidden_layers", where=where)),
        num_attention_heads=heads,
        num_key_value_heads=int(lookup(raw, "num_key_value_heads", where=where, default=heads)),
        head_dim=int(lookup(raw, "head_dim", where=where, default=hidden // heads)),
        intermediate_size=int(lookup(raw, "intermediate_size", where=where)),
        rms_norm_eps=float(lookup(raw, "rms_norm_eps", where=where, default=1e-6)),
        rope_theta=float(raw.get("rope_theta", rope.get("rope_theta", 5_000_000.0))),
        mrope_section=tuple(int(i) for i in lookup(rope, "mrope_section", where=f"{where}.rope_scaling")),
        mrope_interleaved=bool(rope.get("mrope_interleaved", False)),
        tie_word_embeddings=tie_word_embeddings,
    )


def parse_config(raw: dict[str, Any], source: str) -> ModelConfig:
    for key in ("vision_config", "text_config"):
        if not isinstance(raw.get(key), dict):
            raise QvlError(f"{source}: missing {key}")
    tie = bool(raw.get("tie_word_embeddings", raw["text_config"].get("tie_word_embeddings", False)))
    return ModelConfig(
        vision=parse_vision(raw["vision_config"]),
        text=parse_text(raw["text_config"], tie_word_embeddings=tie),
        image_token_id=int(lookup(raw, "image_token_id", where=source)),
        video_token_id=int(lookup(raw, "video_token_id", where=source)),
        vision_start_token_id=int(lookup(raw, "vision_start_token_id", where=source)),
        vision_end_token_id=int(lookup(raw, "vision_end_token_id", where=source)),
        model_type=str(raw["model_type"]),
        max_position_embeddings=int(raw["text_config"].get("max_position_embeddings", 0)),
    )
