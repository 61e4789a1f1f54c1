"""transformers' Qwen3-VL-MoE classes, through Qwen3-VL's loaders (the same layout and both transformers lines).

The one place this family's transformers classes are named.
"""
from __future__ import annotations

from pathlib import Path

import torch

from qvl_compile.families.qwen3_vl import loaders as dense
from qvl_compile.rewrite.moe import FC1, FC2


def _model_class():
    from transformers import Qwen3VLMoeForConditionalGeneration

    return Qwen3VLMoeForConditionalGeneration


def load_full_model(model_dir: Path):
    return dense.load_full_model(model_dir, model_class=_model_class())


def skeleton_full_model(model_dir: Path):
    return dense.skeleton_full_model(model_dir, model_class=_model_class())


def load_vision_model(model_dir: Path, attention: str = "sdpa"):
    from transformers.models.qwen3_vl_moe.modeling_qwen3_vl_moe import Qwen3VLMoeVisionModel

    return dense.load_vision_model(model_dir, attention=attention, vision_class=Qwen3VLMoeVisionModel)


def projection_module(model, initializer_name: str) -> torch.nn.Module:
    """The module an exported quantized weight came from: Qwen3-VL's names, plus 'layers.3.sparse_mlp.experts_fc1_Q4'
    -> the layer's experts module (transformers' `mlp.experts`, holding gate_up_proj and down_proj) and
    'layers.3.sparse_mlp.router...' -> its router (`mlp.gate`)."""
    parts = initializer_name.split(".")
    if len(parts) >= 4 and parts[2] == "sparse_mlp":
        mlp = model.model.language_model.layers[int(parts[1])].mlp
        if parts[3].startswith((FC1, FC2)):
            return mlp.experts
        return mlp.gate
    return dense.projection_module(model, initializer_name)
