"""Read a Qwen3-VL config.json once, into frozen dataclasses. Nothing else touches the raw dict.

Torch-free: the runtime reads the same dataclasses.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qvl_compile.errors import QvlError
from qvl_compile.jsonfile import read_folder_json

SUPPORTED_ARCHITECTURES = ("Qwen3VLForConditionalGeneration",)
SUPPORTED_MODEL_TYPES = ("qwen3_vl",)


def _lookup(raw: dict[str, Any], *keys: str, where: str, default: Any = ...) -> Any:
    """First present key of `keys` in `raw`; the error names every key tried."""
    for key in keys:
        if key in raw:
            return raw[key]
    if default is not ...:
        return default
    raise QvlError(f"{where}: missing config key (tried {', '.join(keys)})")


@dataclass(frozen=True)
class VisionConfig:
    depth: int
    hidden_size: int
    num_heads: int
    intermediate_size: int
    out_hidden_size: int
    in_channels: int
    patch_size: int
    temporal_patch_size: int
    spatial_merge_size: int
    num_position_embeddings: int
    deepstack_visual_indexes: tuple[int, ...]
    hidden_act: str

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def patch_dim(self) -> int:
        """Row length of `pixel_values`: C * temporal_patch * patch * patch."""
        return self.in_channels * self.temporal_patch_size * self.patch_size * self.patch_size

    @property
    def merge_unit(self) -> int:
        return self.spatial_merge_size**2

    @property
    def num_grid_per_side(self) -> int:
        return math.isqrt(self.num_position_embeddings)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "VisionConfig":
        where = "vision_config"
        cfg = cls(
            depth=int(_lookup(raw, "depth", "num_hidden_layers", where=where)),
            hidden_size=int(_lookup(raw, "hidden_size", where=where)),
            num_heads=int(_lookup(raw, "num_heads", "num_attention_heads", where=where)),
            intermediate_size=int(_lookup(raw, "intermediate_size", where=where)),
            out_hidden_size=int(_lookup(raw, "out_hidden_size", where=where)),
            in_channels=int(_lookup(raw, "in_channels", where=where, default=3)),
            patch_size=int(_lookup(raw, "patch_size", where=where)),
            temporal_patch_size=int(_lookup(raw, "temporal_patch_size", where=where)),
            spatial_merge_size=int(_lookup(raw, "spatial_merge_size", where=where)),
            num_position_embeddings=int(_lookup(raw, "num_position_embeddings", where=where)),
            deepstack_visual_indexes=tuple(int(i) for i in _lookup(raw, "deepstack_visual_indexes", where=where)),
            hidden_act=str(_lookup(raw, "hidden_act", where=where)),
        )
        cfg.validate()
        return cfg

    def validate(self) -> None:
        if self.spatial_merge_size != 2:
            raise QvlError(f"only spatial_merge_size 2 is supported, got {self.spatial_merge_size}")
        if self.temporal_patch_size != 2:
            raise QvlError(f"only temporal_patch_size 2 is supported, got {self.temporal_patch_size}")
        if self.num_grid_per_side**2 != self.num_position_embeddings:
            raise QvlError(
                f"num_position_embeddings must be a square (the learned position grid), got {self.num_position_embeddings}"
            )
        if self.hidden_size % self.num_heads or self.head_dim % 4:
            raise QvlError(
                f"vision hidden_size/num_heads must give a head_dim divisible by 4, "
                f"got {self.hidden_size}/{self.num_heads}"
            )
        if not self.deepstack_visual_indexes:
            raise QvlError("vision_config.deepstack_visual_indexes is empty; Qwen3-VL needs at least one DeepStack tap")
        bad = [i for i in self.deepstack_visual_indexes if not 0 <= i < self.depth]
        if bad:
            raise QvlError(f"deepstack_visual_indexes must lie in 0..{self.depth - 1}, got {list(self.deepstack_visual_indexes)}")


@dataclass(frozen=True)
class TextConfig:
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    intermediate_size: int
    rms_norm_eps: float
    rope_theta: float
    mrope_section: tuple[int, ...]
    mrope_interleaved: bool
    tie_word_embeddings: bool

    @classmethod
    def from_dict(cls, raw: dict[str, Any], tie_word_embeddings: bool) -> "TextConfig":
        where = "text_config"
        rope = raw.get("rope_scaling") or raw.get("rope_parameters") or {}
        heads = int(_lookup(raw, "num_attention_heads", where=where))
        hidden = int(_lookup(raw, "hidden_size", where=where))
        return cls(
            vocab_size=int(_lookup(raw, "vocab_size", where=where)),
            hidden_size=hidden,
            num_hidden_layers=int(_lookup(raw, "num_hidden_layers", where=where)),
            num_attention_heads=heads,
            num_key_value_heads=int(_lookup(raw, "num_key_value_heads", where=where, default=heads)),
            head_dim=int(_lookup(raw, "head_dim", where=where, default=hidden // heads)),
            intermediate_size=int(_lookup(raw, "intermediate_size", where=where)),
            rms_norm_eps=float(_lookup(raw, "rms_norm_eps", where=where, default=1e-6)),
            rope_theta=float(raw.get("rope_theta", rope.get("rope_theta", 5_000_000.0))),
            mrope_section=tuple(int(i) for i in _lookup(rope, "mrope_section", where=f"{where}.rope_scaling")),
            mrope_interleaved=bool(rope.get("mrope_interleaved", False)),
            tie_word_embeddings=tie_word_embeddings,
        )


@dataclass(frozen=True)
class ModelConfig:
    vision: VisionConfig
    text: TextConfig
    image_token_id: int
    video_token_id: int
    vision_start_token_id: int
    vision_end_token_id: int

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "config.json") -> "ModelConfig":
        archs = raw.get("architectures") or []
        model_type = raw.get("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise QvlError(
                f"{source}: model_type {model_type!r} (architectures {archs}) is not supported; "
                f"expected one of {', '.join(SUPPORTED_MODEL_TYPES)} ({', '.join(SUPPORTED_ARCHITECTURES)})"
            )
        for key in ("vision_config", "text_config"):
            if not isinstance(raw.get(key), dict):
                raise QvlError(f"{source}: missing {key}")
        tie = bool(raw.get("tie_word_embeddings", raw["text_config"].get("tie_word_embeddings", False)))
        return cls(
            vision=VisionConfig.from_dict(raw["vision_config"]),
            text=TextConfig.from_dict(raw["text_config"], tie_word_embeddings=tie),
            image_token_id=int(_lookup(raw, "image_token_id", where=source)),
            video_token_id=int(_lookup(raw, "video_token_id", where=source)),
            vision_start_token_id=int(_lookup(raw, "vision_start_token_id", where=source)),
            vision_end_token_id=int(_lookup(raw, "vision_end_token_id", where=source)),
        )

    @classmethod
    def from_dir(cls, model_dir: str | Path) -> "ModelConfig":
        path, raw = read_folder_json(model_dir, "config.json", "checkpoint")
        return cls.from_dict(raw, source=str(path))
