"""Model families, keyed by config.json's `model_type`: the one seam a new family plugs into.

A family is a `Family` subclass in its own module under `qvl_compile.families` (source: families/),
registered with `@register`. It owns what differs between families: config parsing, the transformers
classes it loads, the rewrite factories, the runtime's prompt and position strategies and its
fixtures. Everything else (the exporter, the runtime, verification) asks the registry and stays
family-agnostic. Importing a family module loads no torch: torch-side work is imported inside methods.

The core package knows no family by name: `families()` imports the `qvl_compile.families` package by
name the first time it is asked (plugin discovery, as entry points would), and the families register.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qvl_compile.errors import QvlError

if TYPE_CHECKING:
    from qvl_compile.config import ModelConfig

FAMILIES_PACKAGE = "qvl_compile.families"
_registry: dict[str, "Family"] = {}


class Family:
    """The per-family hooks. Subclasses set the class attributes and override every method."""

    name: str = ""  # the folder/module name, e.g. "qwen3_vl"
    display_name: str = ""  # for people, e.g. "Qwen3-VL"
    model_types: tuple[str, ...] = ()  # config.json model_type values this family reads
    architectures: tuple[str, ...] = ()  # config.json architectures, for messages
    random_architectures: tuple[str, ...] = ()  # names `qvl-compile random` takes (released sizes)
    golden_folder: str = ""  # its tiny model's goldens, relative to the golden package (golden/)
    vision_module: str = ""  # the vision tower's path in the full transformers model, e.g. "model.visual"
    ships_trained_tiny: bool = True  # write_tiny(trained=True) gives a trained model (else seeded random weights)
    float32_weights: tuple[str, ...] = ()  # suffixes of decoder MatMul weights that --quant int4 leaves float32
    # --lm-head-bits auto at accuracy level 4: 8 where a trained model's task accuracy chose it (README, accuracy table)
    auto_lm_head_bits: int = 8

    def auto_block_size(self, config: "ModelConfig") -> int:
        """--block-size auto: the INT4 block size for this checkpoint."""
        raise NotImplementedError

    # --- config (torch-free) ---
    def parse_config(self, raw: dict[str, Any], source: str) -> "ModelConfig":
        raise NotImplementedError

    # --- runtime strategies (torch-free) ---
    def expand_prompt(self, text: str, image_grids, video_grids, video_timestamps, merge_size: int) -> str:
        """The chat-template text with each media placeholder expanded to its tokens."""
        raise NotImplementedError

    def position_ids(self, input_ids, image_token_id: int, video_token_id: int, image_grids, video_grids,
                     merge_size: int):
        """(position_ids [3, S] int64, rope delta) of a prompt."""
        raise NotImplementedError

    # --- transformers and rewrites (export side: torch) ---
    def load_model(self, model_dir: Path):
        raise NotImplementedError

    def load_skeleton(self, model_dir: Path):
        """The full transformers model with placeholder parameters (export.skeleton) and real buffers."""
        raise NotImplementedError

    def load_vision(self, model_dir: Path, attention: str = "sdpa"):
        raise NotImplementedError

    def vision_tower(self, hf_visual):
        raise NotImplementedError

    def text_decoder(self, hf_model, config: "ModelConfig", consume: bool = False, fused_rotary: bool = False):
        raise NotImplementedError

    def decoder_projections(self, config: "ModelConfig") -> int:
        """How many projection MatMuls the decoder graph holds besides the lm_head (what INT4 quantizes)."""
        raise NotImplementedError

    def decoder_experts(self, config: "ModelConfig") -> int:
        """How many mixture-of-experts nodes (onnxruntime MoE, QMoE under INT4) the decoder graph holds."""
        raise NotImplementedError

    def decoder_rms_norms(self, config: "ModelConfig") -> int:
        """How many RMSNorms the decoder graph holds (what the RMSNorm fusion must find)."""
        raise NotImplementedError

    # --- PyTorch references (export side: torch) ---
    def reference_vision(self, hf_visual, pixel_values, grid_thw):
        """Eager (image_embeds, deepstack_embeds) of the transformers vision model."""
        raise NotImplementedError

    def projection_module(self, hf_model, initializer_name: str):
        """The linear layer of the transformers model an exported projection weight came from (fake quant)."""
        raise NotImplementedError

    def build_prompt(self, hf_config, parts, seed: int = 0):
        """A multimodal prompt of random text and media parts, laid out as the processor lays it out."""
        raise NotImplementedError

    def run_reference(self, hf_model, prompt, next_tokens):
        """(logits per call, recorded text-stack inputs): prefill, then teacher-forced cached steps."""
        raise NotImplementedError

    # --- fixtures ---
    def write_tiny(self, out_dir: Path, seed: int = 0, force: bool = False, trained: bool = True) -> Path:
        """The family's embedded default (`trained`: a checkpoint trained on the shapes suite, where the family
        ships one; otherwise seeded random weights)."""
        raise NotImplementedError

    def write_random(self, arch: str, out_dir: Path, seed: int = 0, vision_only: bool = False,
                     force: bool = False, layers: int | None = None) -> Path:
        """A released architecture with random weights (`layers`: that many decoder layers, real width)."""
        raise NotImplementedError


def register(cls: type[Family]) -> type[Family]:
    """Class decorator: register one instance of a Family subclass under each of its model types."""
    family = cls()
    for model_type in cls.model_types:
        if model_type in _registry and type(_registry[model_type]) is not cls:
            raise ValueError(f"model_type {model_type!r} is registered twice ({_registry[model_type].name}, {cls.name})")
        _registry[model_type] = family
    return cls


def families() -> dict[str, Family]:
    """model_type -> family, every registered one."""
    if not _registry:
        importlib.import_module(FAMILIES_PACKAGE)
    return dict(_registry)


def family_named(name: str) -> Family:
    for family in families().values():
        if family.name == name or name in family.model_types:
            return family
    known = sorted({f.name for f in families().values()})
    raise QvlError(f"model family {name!r} is not supported; expected one of {', '.join(known)}")


def family_for_config(raw: dict[str, Any], source: str) -> Family:
    """The family of a parsed config.json; an unknown model_type is refused in one line."""
    registered = families()
    model_type = raw.get("model_type")
    if model_type in registered:
        return registered[model_type]
    archs = raw.get("architectures") or []
    unique = list({id(f): f for f in registered.values()}.values())
    expected = ", ".join(f"{t} ({', '.join(f.architectures)})" for f in unique for t in f.model_types)
    raise QvlError(f"{source}: model_type {model_type!r} (architectures {archs}) is not supported; "
                   f"expected one of {expected}")
