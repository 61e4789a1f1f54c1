"""Models without their weights: every parameter a placeholder of the right shape that costs 4 bytes.

A placeholder is one NaN broadcast to the parameter's shape (stride 0), on the CPU, so module code
that reads a weight's dtype, device or shape runs as usual, `torch.export` captures the graph as with
real weights, and any value computed from a placeholder is NaN: a weight that leaks into a folded
constant, or a reference run that reads a weight it did not load, shows up instead of passing silently.

The streaming exporter captures such a skeleton, then reads each weight from the checkpoint when it
writes it (`export.weight_writer`); the streamed reference loads a module's weights only around its
forward call (`export.streamed_reference`).
"""
from __future__ import annotations

import itertools

import torch
from torch import nn

_payloads = itertools.count(1)


def placeholder(shape: tuple[int, ...] | torch.Size) -> torch.Tensor:
    """A float32 NaN broadcast to `shape`. Each placeholder's NaN carries its own payload bits, so no two are
    equal byte for byte (the ONNX optimizer merges initializers with equal bytes)."""
    bits = 0x7FC00000 | (next(_payloads) & 0x3FFFFF)  # a quiet NaN with a 22-bit payload
    one = torch.tensor([bits], dtype=torch.int32).view(torch.float32)
    return one.expand(*shape) if len(shape) else one.reshape(())


def is_placeholder(tensor: torch.Tensor) -> bool:
    if tensor.numel() > 1:
        return all(s == 0 for s in tensor.stride())
    return bool(torch.isnan(tensor).all())


def storage_key(tensor: torch.Tensor) -> int:
    """One key per placeholder, shared by its views (a transposed copy of a placeholder keeps it)."""
    return tensor.untyped_storage().data_ptr()


def fill_with_placeholders(model: nn.Module) -> nn.Module:
    """Replace every parameter (meta or real) by a float32 placeholder; tied parameters stay tied."""
    made: dict[int, nn.Parameter] = {}
    for module in model.modules():
        for name, param in list(module._parameters.items()):
            if param is None:
                continue
            if id(param) not in made:
                made[id(param)] = nn.Parameter(placeholder(param.shape), requires_grad=False)
            module._parameters[name] = made[id(param)]
    return model


def parameter_names(model: nn.Module) -> dict[int, list[str]]:
    """Every name of every parameter, keyed by its placeholder's storage (tied parameters have two names)."""
    names: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        names.setdefault(storage_key(param), []).append(name)
    return names


def meta_tensors(model: nn.Module) -> list[str]:
    """Parameters and buffers still on the meta device (each must be a placeholder or real by now)."""
    return [name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
