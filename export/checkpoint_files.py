"""The checkpoint's weight files: which they are (single or sharded), that they are whole, and reading them."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from qvl_compile.errors import QvlError


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
