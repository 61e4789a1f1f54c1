"""The checkpoint's weight files: which they are (single or sharded), that they are whole, and reading them."""
from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from qvl_compile.errors import QvlError

INDEX_NAME = "model.safetensors.index.json"


def weight_files(model_dir: Path) -> list[Path]:
    index = model_dir / INDEX_NAME
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



# safetensors' dtype names (the header's "dtype" field).
SAFETENSORS_DTYPES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16"}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def plan_shards(specs: list[TensorSpec], max_shard_bytes: int) -> list[list[TensorSpec]]:
    """Tensors in order, cut into shards of at most `max_shard_bytes` (a larger tensor gets its own shard)."""
    shards: list[list[TensorSpec]] = [[]]
    size = 0
    for spec in specs:
        if shards[-1] and size + spec.nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(spec)
        size += spec.nbytes
    return shards


def _header(shard: list[TensorSpec], metadata: dict[str, str]) -> bytes:
    """The safetensors header: JSON with each tensor's dtype, shape and byte range, padded to 8 bytes."""
    entries: dict[str, Any] = {"__metadata__": metadata}
    offset = 0
    for spec in shard:
        entries[spec.name] = {"dtype": SAFETENSORS_DTYPES[spec.dtype], "shape": list(spec.shape),
                              "data_offsets": [offset, offset + spec.nbytes]}
        offset += spec.nbytes
    text = json.dumps(entries, separators=(",", ":")).encode()
    return text + b" " * (-len(text) % 8)


def _write_shard(path: Path, shard: list[TensorSpec], make: Callable[[TensorSpec], torch.Tensor],
                 metadata: dict[str, str]) -> None:
    """One shard, tensor by tensor: each is made, checked and its bytes written before the next is made."""
    header = _header(shard, metadata)
    with open(path, "wb") as fh:
        fh.write(len(header).to_bytes(8, "little"))
        fh.write(header)
        for spec in shard:
            tensor = make(spec).contiguous()
            if tuple(tensor.shape) != spec.shape or tensor.dtype != spec.dtype:
                raise ValueError(f"{spec.name}: made {tuple(tensor.shape)} {tensor.dtype}, planned {spec.shape} {spec.dtype}")
            fh.write(memoryview(tensor.view(torch.uint8).numpy()))  # the tensor's own bytes, no copy
            del tensor


def write_sharded(folder: Path, specs: list[TensorSpec], make: Callable[[TensorSpec], torch.Tensor],
                  max_shard_bytes: int, metadata: dict[str, str] | None = None) -> list[Path]:
    """Write a checkpoint as released ones are laid out: `model-0000i-of-0000N.safetensors` shards of at most
    `max_shard_bytes` plus `model.safetensors.index.json`, or a single `model.safetensors` when it fits.

    Tensors are made one at a time by `make` and streamed to disk (safetensors' own writer needs every tensor
    of a file in memory at once, plus a copy while serializing), so memory holds one tensor, whatever the size.
    """
    shards = plan_shards(specs, max_shard_bytes)
    count = len(shards)
    names = ["model.safetensors"] if count == 1 else [f"model-{i + 1:05d}-of-{count:05d}.safetensors"
                                                     for i in range(count)]
    for name, shard in zip(names, shards):
        _write_shard(folder / name, shard, make, metadata or {"format": "pt"})
    if count > 1:
        weight_map = {spec.name: name for name, shard in zip(names, shards) for spec in shard}
        index = {"metadata": {"total_size": sum(spec.nbytes for spec in specs)},
                 "weight_map": dict(sorted(weight_map.items()))}
        (folder / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
    return [folder / name for name in names]
