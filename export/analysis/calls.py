"""Realistic inputs for every submodule: record what each one receives during a forward pass of the whole
model (forward pre-hooks), at two input shapes, and flatten those inputs to tensors for the exporters."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class Slot:
    """Where a flattened tensor goes back into an argument structure."""
    index: int


@dataclass
class Call:
    args: tuple
    kwargs: dict[str, Any]


def _clone(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if isinstance(obj, (tuple, list)):
        return type(obj)(_clone(o) for o in obj)
    if isinstance(obj, dict):
        return {k: _clone(v) for k, v in obj.items()}
    return obj


def record_calls(model: nn.Module, inputs: tuple) -> dict[str, Call]:
    """{module name: its first call's (args, kwargs)} over one forward of `model` ("" is the model itself)."""
    calls: dict[str, Call] = {}
    handles = []
    for name, module in model.named_modules():
        def hook(mod, args, kwargs, name=name):
            calls.setdefault(name, Call(_clone(args), _clone(kwargs)))
        handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))
    try:
        with torch.no_grad():
            model(*inputs)
    finally:
        for handle in handles:
            handle.remove()
    return calls


def flatten(obj: Any, leaves: list[torch.Tensor]) -> Any:
    """`obj` with each tensor replaced by a Slot into `leaves` (appended in order)."""
    if isinstance(obj, torch.Tensor):
        leaves.append(obj)
        return Slot(len(leaves) - 1)
    if isinstance(obj, (tuple, list)):
        return type(obj)(flatten(o, leaves) for o in obj)
    if isinstance(obj, dict):
        return {k: flatten(v, leaves) for k, v in obj.items()}
    return obj


def fill(template: Any, tensors) -> Any:
    if isinstance(template, Slot):
        return tensors[template.index]
    if isinstance(template, (tuple, list)):
        return type(template)(fill(t, tensors) for t in template)
    if isinstance(template, dict):
        return {k: fill(v, tensors) for k, v in template.items()}
    return template


def output_tensors(out: Any) -> list[torch.Tensor]:
    """Every tensor of a module's output, in order (tuples, lists, ModelOutput/dicts; None skipped)."""
    leaves: list[torch.Tensor] = []
    flatten(dict(out) if isinstance(out, dict) else out, leaves)
    return leaves


def tensorize_varying_ints(first: Any, second: Any) -> tuple[Any, Any, list[str]]:
    """Python ints that differ between the two calls become 0-d int64 tensors (as a traced caller would pass
    them); returns both structures and where that happened. Ints equal in both stay constants."""
    changed: list[str] = []

    def walk(a, b, path):
        if isinstance(a, bool) or isinstance(b, bool):
            return a, b
        if isinstance(a, int) and isinstance(b, int) and a != b:
            changed.append(f"{path}: {a} -> {b}")
            return torch.tensor(a), torch.tensor(b)
        if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)) and len(a) == len(b):
            pairs = [walk(x, y, f"{path}[{i}]") for i, (x, y) in enumerate(zip(a, b))]
            return type(a)(p[0] for p in pairs), type(b)(p[1] for p in pairs)
        if isinstance(a, dict) and isinstance(b, dict) and a.keys() == b.keys():
            pairs = {k: walk(a[k], b[k], f"{path}.{k}") for k in a}
            return {k: p[0] for k, p in pairs.items()}, {k: p[1] for k, p in pairs.items()}
        return a, b

    a, b = walk(first, second, "args")
    return a, b, changed


class FlatModule(nn.Module):
    """`module` called as forward(*tensors) -> tuple of output tensors: what exporters handle best."""

    def __init__(self, module: nn.Module, template: tuple):
        super().__init__()
        self.module = module
        self.template = template  # (args template, kwargs template)

    def forward(self, *tensors):
        args, kwargs = fill(self.template, tensors)
        return tuple(output_tensors(self.module(*args, **kwargs)))
