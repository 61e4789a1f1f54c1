"""Qwen3-VL-MoE's config.json -> the compiler's dataclasses: Qwen3-VL's, plus the text stack's expert fields."""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from qvl_compile.config import ModelConfig, TextConfig, lookup
from qvl_compile.errors import QvlError
from qvl_compile.families.qwen3_vl.config import parse_config as parse_dense_config


@dataclass(frozen=True)
class MoeTextConfig(TextConfig):
    num_experts: int = 0
    num_experts_per_tok: int = 0
    moe_intermediate_size: int = 0
    decoder_sparse_step: int = 1
    mlp_only_layers: tuple[int, ...] = ()

    def is_sparse(self, layer: int) -> bool:
        """transformers' rule: a layer is MoE unless listed in mlp_only_layers or off the sparse step."""
        return layer not in self.mlp_only_layers and self.num_experts > 0 and (layer + 1) % self.decoder_sparse_step == 0

    @property
    def sparse_layers(self) -> int:
        return sum(self.is_sparse(i) for i in range(self.num_hidden_layers))


def parse_moe_text(raw: dict[str, Any], dense: TextConfig) -> MoeTextConfig:
    where = "text_config"
    text = MoeTextConfig(
        **{f.name: getattr(dense, f.name) for f in fields(TextConfig)},
        # transformers 5.x writes num_local_experts (its attribute_map), 4.57 and released checkpoints num_experts
        num_experts=int(lookup(raw, "num_experts", "num_local_experts", where=where)),
        num_experts_per_tok=int(lookup(raw, "num_experts_per_tok", where=where)),
        moe_intermediate_size=int(lookup(raw, "moe_intermediate_size", where=where)),
        decoder_sparse_step=int(lookup(raw, "decoder_sparse_step", where=where, default=1)),
        mlp_only_layers=tuple(int(i) for i in (raw.get("mlp_only_layers") or ())),
    )
    if not 0 < text.num_experts_per_tok <= text.num_experts:
        raise QvlError(f"{where}: num_experts_per_tok must lie in 1..num_experts ({text.num_experts}), "
                       f"got {text.num_experts_per_tok}")
    if text.decoder_sparse_step < 1:
        raise QvlError(f"{where}: decoder_sparse_step must be at least 1, got {text.decoder_sparse_step}")
    if 2 * text.moe_intermediate_size == text.hidden_size or text.moe_intermediate_size == text.hidden_size:
        raise QvlError(f"{where}: moe_intermediate_size {text.moe_intermediate_size} with hidden_size {text.hidden_size} "
                       "makes an expert tensor square, so its stored layout ([E, in, out] or [E, out, in]) is ambiguous")
    return text


def parse_config(raw: dict[str, Any], source: str) -> ModelConfig:
    dense = parse_dense_config(raw, source)
    return ModelConfig(**{**{f.name: getattr(dense, f.name) for f in fields(ModelConfig)},
                          "text": parse_moe_text(raw["text_config"], dense.text)})
