"""The checkpoint's weight files: which they are (single or sharded), that they are whole, and reading them."""
from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from qvl_compile.errors import QvlError

INDEX_NAME = "model.safetensors.index.json"


def weight_files(model_dir: Path) -> list[Path]:
    index = model_dir / INDEX_NAME
    weight_map: dict[str, str] = {}
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (ValueError, KeyError, TypeError) as exc:
            raise QvlError(f"{index}: not a readable safetensors index ({exc})") from None
        files = [model_dir / n for n in sorted(set(weight_map.values()))]
    else:
        files = [model_dir / "model.safetensors"]
    missing = [f for f in files if not f.is_file()]
    if missing:
        held = sorted(t for t, name in weight_map.items() if model_dir / name == missing[0])
        holds = f" (the index puts {len(held)} tensors there, e.g. {held[0]})" if held else ""
        raise QvlError(f"{model_dir}: missing weight file(s) {', '.join(map(str, missing))}{holds}")
    for path in files:
        check_safetensors_size(path)
    return files


def read_header(path: Path) -> tuple[int, dict[str, Any]]:
    """(where the tensors' bytes start, the JSON header without its metadata) of a safetensors file whose length
    matches its header (8-byte header length, JSON header, then the tensors' bytes)."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as fh:
            header_len = int.from_bytes(fh.read(8), "little")
            if size < 8 or 8 + header_len > size:
                raise ValueError(f"header of {header_len} bytes")
            header = json.loads(fh.read(header_len))
        header.pop("__metadata__", None)
        ends = {k: t["data_offsets"][1] for k, t in header.items()}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise QvlError(f"{path}: not a readable safetensors file ({size} bytes; {exc}); truncated or corrupt") from None
    data_end = max(ends.values(), default=0)
    if 8 + header_len + data_end != size:
        cut = sorted((end, name) for name, end in ends.items() if 8 + header_len + end > size)
        where = f"; tensor {cut[0][1]} ends past the end of the file" if cut else ""
        raise QvlError(f"{path}: its header describes {8 + header_len + data_end} bytes, the file has {size} "
                       f"(truncated or corrupt{where})")
    return 8 + header_len, header


def check_safetensors_size(path: Path) -> None:
    read_header(path)


READABLE_DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32}


@dataclass(frozen=True)
class StoredTensor:
    path: Path
    dtype: str  # safetensors' name: BF16, F16, F32
    shape: tuple[int, ...]
    start: int  # byte offset in the file
    length: int


class CheckpointReader:
    """The checkpoint's tensors by name, read one at a time as float32.

    Opening it checks what can be checked without reading weights: every file named is there and as long
    as its header says, the index names only tensors its files hold, and every tensor is bf16, fp16 or fp32.
    Tensors are read with plain file reads, not memory maps, so a read tensor's bytes are the process's
    memory only until the tensor is dropped.
    """

    def __init__(self, model_dir: Path):
        self.model_dir = Path(model_dir)
        self.stored: dict[str, StoredTensor] = {}
        for path in weight_files(self.model_dir):
            data_start, header = read_header(path)
            for name, entry in header.items():
                begin, end = entry["data_offsets"]
                self.stored[name] = StoredTensor(path, entry["dtype"], tuple(entry["shape"]), data_start + begin,
                                                 end - begin)
                if entry["dtype"] not in READABLE_DTYPES:
                    raise QvlError(f"{path}: tensor {name} is {entry['dtype']}, expected one of "
                                   f"{', '.join(READABLE_DTYPES)}")
        self._check_index()

    @property
    def header(self) -> dict[str, tuple[str, tuple[int, ...]]]:
        """name -> (safetensors dtype, shape)."""
        return {name: (t.dtype, t.shape) for name, t in self.stored.items()}

    def _check_index(self) -> None:
        index = self.model_dir / INDEX_NAME
        if not index.is_file():
            return
        for name, file_name in json.loads(index.read_text())["weight_map"].items():
            if name not in self.stored or self.stored[name].path != self.model_dir / file_name:
                raise QvlError(f"{index}: names tensor {name} in {file_name}, which does not hold it")

    def __contains__(self, name: str) -> bool:
        return name in self.stored

    def check_shape(self, name: str, shape: tuple[int, ...]) -> None:
        if name not in self.stored:
            raise QvlError(f"{self.model_dir}: the checkpoint has no tensor {name} (expected shape {list(shape)})")
        if self.stored[name].shape != tuple(shape):
            raise QvlError(f"{self.stored[name].path}: tensor {name} has shape {list(self.stored[name].shape)}, "
                           f"the config expects {list(shape)}")

    def stores_swapped(self, name: str, shape: tuple[int, ...]) -> bool:
        """True when a 3-D tensor expected as [E, out, in] is stored [E, in, out]: fused MoE experts as released
        checkpoints and transformers 4.57 store them (transformers 5.x transposes them on load, told by shape)."""
        stored = self.stored[name].shape if name in self.stored else None
        return len(shape) == 3 and stored != tuple(shape) and stored == (shape[0], shape[2], shape[1])

    def read_stored(self, name: str, rows: tuple[int, int] | None = None) -> torch.Tensor:
        """The tensor in its stored dtype; `rows` (start, stop) reads only those rows of its first axis."""
        if name not in self.stored:
            raise QvlError(f"{self.model_dir}: the checkpoint has no tensor {name}")
        stored = self.stored[name]
        shape, start, length = stored.shape, stored.start, stored.length
        if rows is not None:
            row_bytes = length // shape[0]
            shape, start, length = (rows[1] - rows[0], *shape[1:]), start + rows[0] * row_bytes, (rows[1] - rows[0]) * row_bytes
        tensor = torch.empty(shape, dtype=READABLE_DTYPES[stored.dtype])  # torch's aligned allocation
        try:
            with open(stored.path, "rb") as fh:
                fh.seek(start)
                if length and fh.readinto(memoryview(tensor.view(-1).view(torch.uint8).numpy())) != length:
                    raise OSError("short read")
        except OSError as exc:
            raise QvlError(f"{stored.path}: cannot read tensor {name} ({exc})") from None
        return tensor

    def read(self, name: str, rows: tuple[int, int] | None = None) -> torch.Tensor:
        """The tensor (or rows of it) as float32."""
        return self.read_stored(name, rows).to(torch.float32)


def load_tensors(model_dir: Path, prefix: str) -> dict[str, torch.Tensor]:
    """The tensors whose names start with `prefix` (prefix removed), in their stored dtype."""
    reader = CheckpointReader(model_dir)
    return {name[len(prefix):]: reader.read_stored(name) for name in reader.stored if name.startswith(prefix)}


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
