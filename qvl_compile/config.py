"""What the compiler knows of a checkpoint's config, as frozen dataclasses (torch-free).

The model family (`qvl_compile.registry`) parses config.json into these once; nothing else touches
the raw dict. `lookup` is the one helper for config keys: its error names every key it tried.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qvl_compile.errors import QvlError
from qvl_compile.jsonfile import read_folder_json


def lookup(raw: dict[str, Any], *keys: str, where: str, default: Any = ...) -> Any:
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

    @property
    def num_deepstack(self) -> int:
        return len(self.deepstack_visual_indexes)


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


@dataclass(frozen=True)
class ModelConfig:
    vision: VisionConfig
    text: TextConfig
    image_token_id: int
    video_token_id: int
    vision_start_token_id: int
    vision_end_token_id: int
    model_type: str = "qwen3_vl"
    max_position_embeddings: int = 0  # the text model's context; 0 when the config gives none

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "config.json") -> "ModelConfig":
        """Parsed by the family registered for raw["model_type"] (unknown types are refused by name)."""
        from qvl_compile.registry import family_for_config

        return family_for_config(raw, source).parse_config(raw, source)

    @classmethod
    def from_dir(cls, model_dir: str | Path) -> "ModelConfig":
        path, raw = read_folder_json(model_dir, "config.json", "checkpoint")
        return cls.from_dict(raw, source=str(path))
