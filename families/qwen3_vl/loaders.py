"""transformers' Qwen3-VL classes as the parity oracle, on either transformers line (4.57.x and 5.x).

Loads only what a component needs (the vision tower reads only `model.visual.*` tensors) and hides
the differences between the two lines. The one place Qwen3-VL's transformers classes are named.
"""
from __future__ import annotations

from pathlib import Path

import torch

from qvl_compile.config import ModelConfig
from qvl_compile.errors import QvlError
from qvl_compile.export.checkpoint_files import load_tensors

VISION_PREFIX = "model.visual."
ATTENTION_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_PROJECTIONS = ("gate_proj", "up_proj", "down_proj")


def _conditional_generation_class():
    from transformers import Qwen3VLForConditionalGeneration

    return Qwen3VLForConditionalGeneration


def load_full_model(model_dir: Path, model_class=None):
    """`Qwen3VLForConditionalGeneration` (or a sibling family's `model_class`) in fp32, eval mode."""
    model_class = model_class or _conditional_generation_class()
    try:
        model = model_class.from_pretrained(model_dir, dtype=torch.float32)
    except TypeError:  # 4.57.x spells it torch_dtype
        model = model_class.from_pretrained(model_dir, torch_dtype=torch.float32)
    return model.eval()


def skeleton_full_model(model_dir: Path, model_class=None):
    """`Qwen3VLForConditionalGeneration` (or `model_class`) with placeholder parameters (export.skeleton) and real
    rotary buffers: the export captures it and the streamed reference fills it, at any size, in a few megabytes."""
    from transformers import AutoConfig

    from qvl_compile.export.skeleton import fill_with_placeholders, meta_tensors

    ModelConfig.from_dir(model_dir)  # clear errors for a wrong folder or unsupported config
    config = AutoConfig.from_pretrained(model_dir)
    with torch.device("meta"):
        model = (model_class or _conditional_generation_class())._from_config(config)
    fill_with_placeholders(model)
    _rebuild_rotary(model.model.visual.rotary_pos_emb, config.vision_config)
    text_rotary = model.model.language_model.rotary_emb
    _copy_inv_freq(text_rotary, type(text_rotary)(config=config.text_config))
    left = meta_tensors(model)
    if left:
        raise QvlError(f"{model_dir}: tensors left on the meta device after building the skeleton: {left[:5]}")
    return model.eval()


def _copy_inv_freq(rotary: torch.nn.Module, fresh: torch.nn.Module) -> None:
    rotary.inv_freq = fresh.inv_freq
    if hasattr(rotary, "original_inv_freq"):
        rotary.original_inv_freq = fresh.original_inv_freq


def _rebuild_rotary(rotary: torch.nn.Module, config) -> None:
    """Non-persistent buffers (rotary inv_freq) are not in the checkpoint: rebuild them on the CPU."""
    head = config.hidden_size // config.num_heads
    _copy_inv_freq(rotary, type(rotary)(config) if _is_5x_rotary(rotary) else type(rotary)(head // 2))


def projection_module(model, initializer_name: str) -> torch.nn.Module:
    """The module an exported quantized weight came from: 'layers.3.q_proj.weight_t_Q4' ->
    model.model.language_model.layers[3].self_attn.q_proj; 'lm_head...' -> model.lm_head; 'embed_tokens_Q4' ->
    the embedding table."""
    name = initializer_name.split(".weight_t")[0]
    if name.startswith("embed_tokens"):  # the quantized table, 'embed_tokens_Q4'
        return model.model.language_model.embed_tokens
    if name == "lm_head":
        return model.lm_head
    _, index, proj = name.split(".")
    layer = model.model.language_model.layers[int(index)]
    return getattr(layer.self_attn if proj in ATTENTION_PROJECTIONS else layer.mlp, proj)


def load_vision_model(model_dir: str | Path, dtype: torch.dtype = torch.float32,
                      attention: str = "sdpa", vision_class=None) -> torch.nn.Module:
    """transformers' `Qwen3VLVisionModel` (or a sibling family's `vision_class`) with the checkpoint's vision
    weights, eval mode, `dtype`."""
    from transformers import AutoConfig
    from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLVisionModel

    model_dir = Path(model_dir)
    ModelConfig.from_dir(model_dir)  # clear errors for a wrong folder or unsupported config
    config = AutoConfig.from_pretrained(model_dir).vision_config
    config._attn_implementation = attention  # "sdpa" (the reference) or "eager"
    with torch.device("meta"):
        model = (vision_class or Qwen3VLVisionModel)._from_config(config)
    state = load_tensors(model_dir, VISION_PREFIX)
    expected = set(model.state_dict().keys())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise QvlError(
            f"{model_dir}: vision weights do not match the config: missing {missing[:5]}"
            f"{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
        )
    model.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=True, assign=True)
    _rebuild_rotary(model.rotary_pos_emb, config)
    return model.eval()


def load_image_processor(model_dir: str | Path):
    """transformers' PIL-based Qwen2-VL image processor (5.x), or 4.57's slow one (also PIL/numpy)."""
    try:
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil as Processor
    except ImportError:  # 4.57.x
        from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor as Processor
    return Processor.from_pretrained(model_dir)


def _is_5x_rotary(rotary: torch.nn.Module) -> bool:
    return hasattr(rotary, "compute_axial_rope_parameters")


@torch.no_grad()
def reference_vision(model: torch.nn.Module, pixel_values: torch.Tensor, grid_thw: torch.Tensor):
    """Eager (image_embeds [N/4, out], deepstack [D, N/4, out]) on either transformers line."""
    out = model(pixel_values, grid_thw=grid_thw.to(torch.int64))
    if isinstance(out, tuple):  # 4.57.x: (merged, [deepstack...])
        merged, deepstack = out
    else:  # 5.x: BaseModelOutputWithDeepstackFeatures
        merged, deepstack = out.pooler_output, out.deepstack_features
    return merged, torch.stack(list(deepstack), dim=0)
