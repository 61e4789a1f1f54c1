"""The eager PyTorch model of the installed transformers, as the parity oracle.

Loads only what a component needs (the vision tower reads only `model.visual.*` tensors) and hides
the differences between transformers 4.57.x and 5.x.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from qvl_compile.config import ModelConfig
from qvl_compile.errors import QvlError

log = logging.getLogger(__name__)
VISION_PREFIX = "model.visual."


def weight_files(model_dir: Path) -> list[Path]:
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        files = [model_dir / n for n in names]
    else:
        files = [model_dir / "model.safetensors"]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise QvlError(f"{model_dir}: missing weight file(s) {', '.join(missing)}")
    for path in files:
        check_safetensors_size(path)
    return files


def check_safetensors_size(path: Path) -> None:
    """The file is as long as its header says (8-byte header length, JSON header, then the tensors' bytes)."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as fh:
            header_len = int.from_bytes(fh.read(8), "little")
            if size < 8 or 8 + header_len > size:
                raise ValueError(f"header of {header_len} bytes")
            header = json.loads(fh.read(header_len))
        data_end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    except (ValueError, KeyError, TypeError) as exc:
        raise QvlError(f"{path}: not a readable safetensors file ({size} bytes; {exc}); truncated or corrupt") from None
    if 8 + header_len + data_end != size:
        raise QvlError(f"{path}: its header describes {8 + header_len + data_end} bytes, the file has {size} "
                       "(truncated or corrupt)")


def load_tensors(model_dir: Path, prefix: str) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for path in weight_files(model_dir):
        try:
            loaded = load_file(str(path))
        except (SafetensorError, OSError) as exc:
            raise QvlError(f"{path}: cannot read weights ({exc}); the file may be truncated") from None
        tensors.update({k[len(prefix):]: v for k, v in loaded.items() if k.startswith(prefix)})
    return tensors


def load_vision_model(model_dir: str | Path, dtype: torch.dtype = torch.float32,
                      attention: str = "sdpa") -> torch.nn.Module:
    """transformers' `Qwen3VLVisionModel` with the checkpoint's vision weights, eval mode, `dtype`."""
    from transformers import AutoConfig
    from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLVisionModel

    model_dir = Path(model_dir)
    ModelConfig.from_dir(model_dir)  # clear errors for a wrong folder or unsupported config
    config = AutoConfig.from_pretrained(model_dir).vision_config
    config._attn_implementation = attention  # "sdpa" (the reference) or "eager"
    with torch.device("meta"):
        model = Qwen3VLVisionModel._from_config(config)
    state = load_tensors(model_dir, VISION_PREFIX)
    expected = set(model.state_dict().keys())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise QvlError(
            f"{model_dir}: vision weights do not match the config: missing {missing[:5]}"
            f"{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
        )
    model.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=True, assign=True)
    # Non-persistent buffers (rotary inv_freq) are not in the checkpoint: rebuild them on CPU.
    rotary = model.rotary_pos_emb
    fresh = type(rotary)(config) if _is_5x_rotary(rotary) else type(rotary)(config.hidden_size // config.num_heads // 2)
    rotary.inv_freq = fresh.inv_freq
    if hasattr(rotary, "original_inv_freq"):
        rotary.original_inv_freq = fresh.original_inv_freq
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
