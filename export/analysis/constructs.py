"""Find the Python constructs that do not survive graph capture, in the source of the modules that run.

Scans the methods of every submodule's class and, two calls deep, the functions they call by name
(transformers 5.x moved the position code to `transformers.vision_utils`). Reported kinds:
`.item()` and `.tolist()` (tensor values turned into Python constants), Python loops over grid values
(the iteration count is fixed at capture), `torch.arange`/`torch.linspace` sized by a variable (a
data-dependent length), and int32 index tensors (mixed with int64 grids, ORT refuses the Concat).
"""
from __future__ import annotations

import ast
import inspect
import re
import sys
import textwrap
from dataclasses import dataclass
from types import FunctionType

from torch import nn

from qvl_compile.export.analysis.probe import source_location

LOOP_HINTS = ("grid", "cu_seqlens", "lengths", "tolist", "split")


@dataclass(frozen=True)
class Construct:
    kind: str
    where: str  # file:line
    function: str
    code: str


def _source_text(node: ast.AST, lines: list[str]) -> str:
    return lines[node.lineno - 1].strip()[:120]


VALUE_CALLS = ("item", "tolist", "sum", "max", "min", "prod")


def _value_names(tree: ast.AST) -> set[str]:
    """Names holding Python values read out of tensors: targets of loops over grid values and of
    assignments from `.item()`, `.tolist()` or `int(...)`."""
    names: set[str] = set()
    for node in ast.walk(tree):
        source = None
        if isinstance(node, (ast.For, ast.comprehension)) and any(h in ast.unparse(node.iter) for h in LOOP_HINTS):
            source = node.target
        elif isinstance(node, ast.Assign) and re.search(r"\.(item|tolist)\(\)|\bint\(", ast.unparse(node.value)):
            source = node.targets[0]
        if source is not None:
            names |= {n.id for n in ast.walk(source) if isinstance(n, ast.Name)}
    return names


def _depends_on_values(size: ast.AST, value_names: set[str]) -> bool:
    """A size read from tensor values (a tainted name, or `.sum()`/`.max()`/`.item()` on a tensor); sizes
    from `.shape` or config attributes are symbolic or constant, which graph capture handles."""
    for node in ast.walk(size):
        if isinstance(node, ast.Name) and node.id in value_names:
            return True
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in VALUE_CALLS:
            return True
    return False


def _scan_function(fn, found: dict, visited: set, depth: int) -> None:
    fn = inspect.unwrap(fn)
    if not isinstance(fn, FunctionType) or fn.__code__ in visited:
        return
    visited.add(fn.__code__)
    try:
        source_lines, start = inspect.getsourcelines(fn)
        filename = inspect.getsourcefile(fn)
    except (OSError, TypeError):
        return
    tree = ast.parse(textwrap.dedent("".join(source_lines)))
    lines = source_lines
    name = fn.__qualname__
    value_names = _value_names(tree)

    def add(kind: str, node: ast.AST) -> None:
        line = start + node.lineno - 1
        key = (kind, filename, line)
        if key not in found:
            found[key] = Construct(kind, source_location(filename, line), name, _source_text(node, lines))

    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            attr = node.func.attr
            if attr == "item" and not node.args:
                add(".item(): tensor value becomes a Python constant", node)
            elif attr == "tolist" and not node.args:
                add(".tolist(): tensor values become Python constants", node)
            elif attr in ("arange", "linspace") and isinstance(node.func.value, ast.Name) \
                    and node.func.value.id == "torch":
                sizes = node.args[:1] if attr == "arange" else node.args[2:3]
                sizes += [k.value for k in node.keywords if k.arg in ("end", "steps")]
                if any(_depends_on_values(size, value_names) for size in sizes):
                    add(f"torch.{attr} sized by a runtime value (data-dependent length)", node)
        if isinstance(node, ast.keyword) and node.arg == "dtype" and any(
                isinstance(n, ast.Attribute) and n.attr == "int32" for n in ast.walk(node.value)):
            add("int32 index tensor (mixed with int64 grid_thw)", node.value)
        if isinstance(node, (ast.For, ast.comprehension)):
            iterable = ast.unparse(node.iter)
            if any(hint in iterable for hint in LOOP_HINTS):
                add("Python loop over grid values (iteration count fixed at capture)", node.iter)
    if depth <= 0:
        return
    module_globals = sys.modules[fn.__module__].__dict__ if fn.__module__ in sys.modules else {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            callee = module_globals.get(node.func.id)
            if isinstance(callee, FunctionType) and callee.__module__.startswith(("transformers", "qvl_compile")):
                _scan_function(callee, found, visited, depth - 1)


def find_constructs(model: nn.Module) -> list[Construct]:
    """Data-dependent constructs in the code that `model` and its submodules run."""
    found: dict = {}
    visited: set = set()
    classes = {type(m) for m in model.modules()}
    for cls in sorted(classes, key=lambda c: c.__name__):
        if not cls.__module__.startswith(("transformers", "qvl_compile")):
            continue  # torch.nn layers: graph-friendly by construction
        for attr in vars(cls).values():
            if isinstance(attr, FunctionType) or isinstance(inspect.unwrap(attr) if callable(attr) else None,
                                                              FunctionType):
                _scan_function(attr, found, visited, depth=2)
    return sorted(found.values(), key=lambda c: c.where)
