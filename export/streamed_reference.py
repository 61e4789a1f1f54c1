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

Source = Callable[[str], torch.Tensor]  # parameter name (in the hooked model) -> float32 values


def checkpoint_source(model: nn.Module, reader: CheckpointReader, prefix: str = "") -> Source:
    """Values from the checkpoint: a tied parameter reads whichever of its names the checkpoint holds. Every
    parameter's tensor is checked now (present, same shape), from the files' headers."""
    keys: dict[str, str] = {}
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters(remove_duplicate=False)}
    for names in parameter_names(model).values():
        stored = [prefix + n for n in names if prefix + n in reader]
        if not stored:
            raise QvlError(f"{reader.model_dir}: the checkpoint has no tensor {prefix + names[0]} "
                           f"(expected shape {list(shapes[names[0]])})")
        reader.check_shape(stored[0], shapes[names[0]])
        keys.update({n: stored[0] for n in names})

    def read(name: str) -> torch.Tensor:
        return reader.read(keys[name])
    return read


def with_overrides(base: Source, overrides: dict[str, Callable[[], torch.Tensor]]) -> Source:
    """`base`, except the named parameters, whose values come from their own loaders."""
    def read(name: str) -> torch.Tensor:
        return overrides[name]() if name in overrides else base(name)
    return read


@contextlib.contextmanager
def stream_parameters(model: nn.Module, source: Source) -> Iterator[nn.Module]:
    """Within the block, each module of `model` holds its own parameters only during its forward."""
    handles = []
    for module_name, module in model.named_modules():
        own = [(f"{module_name}.{n}" if module_name else n, p) for n, p in module._parameters.items() if p is not None]
        if own:
            handles.append(module.register_forward_pre_hook(_loader(own, source)))
            handles.append(module.register_forward_hook(_unloader(own)))
    try:
        yield model
    finally:
        for handle in handles:
            handle.remove()


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
