"""A transformers model that holds one module's weights at a time: the parity reference at any size.

`stream_parameters(model, source)` hooks every module that owns parameters: just before its forward
the module's parameters receive their values from `source` (the checkpoint, or the exported graph's
dequantized weights), and just after it they go back to placeholders. Run on a skeleton
(`export.skeleton`), a forward pass of an 8B model holds its activations and its largest tensor, not
the model. A parameter read outside its module's forward stays a NaN placeholder, so the parity check
fails loudly rather than comparing against a wrong reference.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import nn

from qvl_compile.errors import QvlError
from qvl_compile.export.checkpoint_files import CheckpointReader
from qvl_compile.export.skeleton import parameter_names, placeholder

# (parameter name in the hooked model, rows (start, stop) of its first axis or None for all) -> float32 values
Source = Callable[..., torch.Tensor]
# A linear or embedding whose weight is larger than this runs in row chunks (the lm_head and the table: 1.2 GB
# each at 2B size, 2.5 GB at 8B), so no weight that size is ever whole in memory.
CHUNKED_BYTES = 256 << 20
CHUNK_BYTES = 64 << 20


def checkpoint_source(model: nn.Module, reader: CheckpointReader, prefix: str = "") -> Source:
    """Values from the checkpoint: a tied parameter reads whichever of its names the checkpoint holds. Every
    parameter's tensor is checked now (present, same shape), from the files' headers."""
    keys: dict[str, str] = {}
    swapped: set[str] = set()  # 3-D experts stored [E, in, out] for a model holding [E, out, in]
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters(remove_duplicate=False)}
    for names in parameter_names(model).values():
        stored = [prefix + n for n in names if prefix + n in reader]
        shape = shapes[names[0]]
        if not stored:
            raise QvlError(f"{reader.model_dir}: the checkpoint has no tensor {prefix + names[0]} "
                           f"(expected shape {list(shape)})")
        if reader.stores_swapped(stored[0], shape):
            swapped.update(names)
        else:
            reader.check_shape(stored[0], shape)
        keys.update({n: stored[0] for n in names})

    def read(name: str, rows: tuple[int, int] | None = None) -> torch.Tensor:
        values = reader.read(keys[name], rows)
        return values.transpose(1, 2).contiguous() if name in swapped else values
    return read


def with_overrides(base: Source, overrides: dict[str, Callable[..., torch.Tensor]]) -> Source:
    """`base`, except the named parameters, whose values come from their own loaders (`loader(rows)`)."""
    def read(name: str, rows: tuple[int, int] | None = None) -> torch.Tensor:
        return overrides[name](rows) if name in overrides else base(name, rows)
    return read


@contextlib.contextmanager
def stream_parameters(model: nn.Module, source: Source) -> Iterator[nn.Module]:
    """Within the block, each module of `model` holds its own parameters only during its forward; a linear
    or embedding over CHUNKED_BYTES never holds its weight: its forward reads the weight in row chunks."""
    handles, chunked = [], []
    for module_name, module in model.named_modules():
        own = [(f"{module_name}.{n}" if module_name else n, p) for n, p in module._parameters.items() if p is not None]
        if _is_chunked(module):
            module.forward = _chunked_forward(module, own[0][0].rpartition(".")[0], source)  # an instance attribute
            chunked.append(module)
        elif own:
            handles.append(module.register_forward_pre_hook(_loader(own, source)))
            handles.append(module.register_forward_hook(_unloader(own)))
    try:
        yield model
    finally:
        for handle in handles:
            handle.remove()
        for module in chunked:
            del module.forward  # back to the class's forward


def _is_chunked(module: nn.Module) -> bool:
    return isinstance(module, (nn.Linear, nn.Embedding)) and module.weight.numel() * 4 > CHUNKED_BYTES


def _row_chunks(weight: torch.Tensor) -> list[tuple[int, int]]:
    step = max(1, CHUNK_BYTES // (weight.shape[1] * 4))
    return [(start, min(start + step, weight.shape[0])) for start in range(0, weight.shape[0], step)]


def _chunked_forward(module: nn.Module, name: str, source: Source):
    """The module's forward, computed from its weight's row chunks as `source` reads them."""
    weight_name = f"{name}.weight" if name else "weight"
    if isinstance(module, nn.Embedding):
        if module.max_norm is not None:
            raise QvlError(f"{name}: an embedding with max_norm cannot be streamed in chunks")

        def embed(ids: torch.Tensor) -> torch.Tensor:
            flat = ids.reshape(-1)
            out = torch.empty(flat.numel(), module.weight.shape[1])
            for start, stop in _row_chunks(module.weight):
                hit = (flat >= start) & (flat < stop)
                if hit.any():
                    out[hit] = source(weight_name, (start, stop))[flat[hit] - start]
            return out.view(*ids.shape, -1)
        return embed
    bias_name = f"{name}.bias" if name else "bias"

    def linear(x: torch.Tensor) -> torch.Tensor:
        bias = None if module.bias is None else source(bias_name)
        return torch.cat([nn.functional.linear(x, source(weight_name, rows), None if bias is None else bias[slice(*rows)])
                          for rows in _row_chunks(module.weight)], dim=-1)
    return linear


def _loader(own: list[tuple[str, nn.Parameter]], source: Source):
    def load(module, args):
        for name, param in own:
            values = source(name)
            if values.shape != param.shape:
                raise QvlError(f"reference weight {name}: got shape {list(values.shape)}, expected {list(param.shape)}")
            param.data = values
    return load


def _unloader(own: list[tuple[str, nn.Parameter]]):
    def unload(module, args, output):
        for _, param in own:
            param.data = placeholder(param.shape)
    return unload
