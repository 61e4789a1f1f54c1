"""Seeded random Qwen3-VL-MoE checkpoints in the released layout: the tiny default and released architectures.

The writers are Qwen3-VL's (families/qwen3_vl/fixtures.py); what differs is the tensor list: transformers'
MoE model on the meta device, with the fused expert tensors in the layout released checkpoints (and
transformers 4.57) store, [E, H, 2I] gate_up and [E, I, H] down, whichever transformers line writes them.
transformers 5.x reads that layout by transposing on load.
"""
from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from qvl_compile.errors import QvlError
from qvl_compile.export.atomic import atomic_output_dir
from qvl_compile.families.qwen3_vl import fixtures as dense
from qvl_compile.families.qwen3_vl.tiny.tokenizer import build_tokenizer

ARCHITECTURES = ("30b-a3b",)


def parameter_shapes(raw_config: dict, vision_only: bool) -> dict[str, tuple[int, ...]]:
    from transformers import Qwen3VLMoeConfig, Qwen3VLMoeForConditionalGeneration

    shapes = dense.model_parameter_shapes(Qwen3VLMoeConfig, Qwen3VLMoeForConditionalGeneration, raw_config, vision_only)
    text = raw_config["text_config"]
    experts, hidden, inter = int(text["num_experts"]), int(text["hidden_size"]), int(text["moe_intermediate_size"])
    released = {"experts.gate_up_proj": (experts, hidden, 2 * inter), "experts.down_proj": (experts, inter, hidden)}
    for name in shapes:
        for suffix, shape in released.items():
            if name.endswith(suffix):
                shapes[name] = shape
    return shapes


def _tiny_raw(tok) -> dict:
    raw = json.loads(resources.files("qvl_compile.families.qwen3_vl_moe.tiny").joinpath("config.json").read_text())
    return dense.with_tokenizer_ids(raw, tok)


def write_tiny(out_dir: str | Path, seed: int = 0, force: bool = False) -> Path:
    """The tiny seeded random MoE (8 experts, top 2, one dense layer), with the trained dense tiny model's
    tokenizer, chat template and processor sizes (small images; both transformers lines agree on their grids);
    its weights are a pure function of `seed`."""
    tok = build_tokenizer()
    raw = _tiny_raw(tok)
    with atomic_output_dir(out_dir, force=force, marker="config.json") as tmp:
        dense.write_tiny_layout(tmp, tok, raw, dense.TRAINED)
        dense.write_weights(raw, tmp, seed, vision_only=False, parameter_shapes=parameter_shapes)
    return Path(out_dir)


def arch_dir(arch: str) -> Path:
    """'30b-a3b' (shipped with the package) or a folder path."""
    packaged = resources.files("qvl_compile.families.qwen3_vl_moe.archs").joinpath(f"qwen3-vl-{arch.lower()}")
    if packaged.is_dir():
        return Path(str(packaged))
    if Path(arch).is_dir():
        return Path(arch)
    raise QvlError(f"architecture {arch!r}: expected {', '.join(ARCHITECTURES)} or a folder with config.json")


def write_random(arch: str, out_dir: str | Path, seed: int = 0, vision_only: bool = False, force: bool = False,
                 layers: int | None = None) -> Path:
    return dense.write_random(arch_dir(arch), out_dir, seed=seed, vision_only=vision_only, force=force, layers=layers,
                              parameter_shapes=parameter_shapes)
