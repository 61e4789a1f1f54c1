"""Export one module with one exporter, then ask ONNX Runtime to load and run it at both recorded shapes."""
from __future__ import annotations

import contextlib
import io
import os
import re
import sys
import tempfile
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from qvl_compile.export.analysis.calls import Call, FlatModule, flatten, output_tensors, tensorize_varying_ints
from qvl_compile.export.onnx_functions import OPSET, vision_translation_table
from qvl_compile.parity import FP32_TOLERANCE, max_rel

EXPORTERS = ("torchscript", "dynamo")
TOLERANCE = FP32_TOLERANCE  # max |onnx - torch| / max |torch|, as `qvl-compile verify` uses for fp32


@dataclass
class Probe:
    module: str  # dotted name ("" for the whole model)
    type: str
    exporter: str
    exported: bool = False
    error: str | None = None  # "ErrorClass: first line" of the first failing step
    failed_step: str | None = None  # export | load | run | match
    tracer_warnings: list[str] = field(default_factory=list)  # "file:line: message"
    loads: bool = False
    runs: bool = False
    matches_first: bool = False
    matches_second: bool | None = None  # None: the second shape could not be fed (see note)
    max_rel_second: float | None = None
    note: str | None = None

    @property
    def outcome(self) -> str:
        """export failed | load failed | run failed | wrong at first shape | baked-in shape | ok."""
        if not self.exported:
            return "export failed"
        if not self.loads:
            return "load failed"
        if not self.runs:
            return "run failed"
        if not self.matches_first:
            return "wrong at first shape"
        if self.matches_second is False:
            return "baked-in shape"
        return "ok"


def _first_line(exc: BaseException) -> str:
    """'Class: first line' of the innermost cause, with the deepest frame in transformers/our code."""
    inner = exc
    while inner.__cause__ is not None and inner.__cause__ is not inner:
        inner = inner.__cause__
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(inner)).strip()
    line = next((row.strip() for row in text.splitlines() if row.strip()), "")
    frames = [f for f in traceback.extract_tb(inner.__traceback__)
              if ("transformers" in f.filename or "qvl_compile" in f.filename or "/rewrite/" in f.filename)
              and "analysis" not in f.filename]
    where = f" (at {source_location(frames[-1].filename, frames[-1].lineno)})" if frames else ""
    return f"{type(inner).__name__}: {line[:300]}{where}"


def source_location(filename: str, lineno: int) -> str:
    parts = Path(filename).parts
    for anchor in ("site-packages", "qvl_compile", "main"):
        if anchor in parts:
            parts = parts[parts.index(anchor) + 1:]
            break
    return f"{'/'.join(parts)}:{lineno}"


def _dynamic_dims(first: list[torch.Tensor], second: list[torch.Tensor] | None) -> list[list[int]]:
    if second is None:
        return [[] for _ in first]
    return [[d for d in range(a.dim()) if a.shape[d] != b.shape[d]] for a, b in zip(first, second)]


@contextlib.contextmanager
def _silenced_fds():
    """The exporters print graphs and progress from C++ too: send file descriptors 1 and 2 to /dev/null."""
    sys.stdout.flush(), sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1), os.dup2(devnull, 2)
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        os.dup2(saved[0], 1), os.dup2(saved[1], 2)
        for fd in (*saved, devnull):
            os.close(fd)


def _export(flat: FlatModule, leaves: list[torch.Tensor], dims: list[list[int]], exporter: str, path: Path,
            names: list[str]) -> list[str]:
    """Write `path`; return the TracerWarnings raised while exporting."""
    with warnings.catch_warnings(record=True) as caught, _silenced_fds():
        warnings.simplefilter("always")
        if exporter == "torchscript":
            dynamic_axes = {n: {d: f"{n}_{d}" for d in ds} for n, ds in zip(names, dims) if ds}
            torch.onnx.export(flat, tuple(leaves), str(path), dynamo=False, input_names=names,
                              dynamic_axes=dynamic_axes, opset_version=OPSET)
        else:
            auto = torch.export.Dim.AUTO
            shapes = tuple({d: auto for d in ds} for ds in dims)
            # Our rewrite's opaque ops translate as export/vision.py translates them; stock code never calls them.
            table = vision_translation_table()
            torch.onnx.export(flat, tuple(leaves), str(path), dynamo=True, input_names=names, opset_version=OPSET,
                              dynamic_shapes={"tensors": shapes}, custom_translation_table=table, verbose=False,
                              optimize=False)
    found = []
    for w in caught:
        if w.category.__name__ == "TracerWarning":
            entry = f"{source_location(w.filename, w.lineno)}: {str(w.message).splitlines()[0][:160]}"
            if entry not in found:
                found.append(entry)
    return found


def _matches(got: list[np.ndarray], ref: list[torch.Tensor]) -> tuple[bool, float]:
    if len(got) != len(ref):
        return False, float("inf")
    worst = 0.0
    for g, r in zip(got, ref):
        r = r.detach().numpy()
        if g.shape != r.shape:
            return False, float("inf")
        if r.size == 0:
            continue
        if not np.issubdtype(r.dtype, np.floating):
            if not np.array_equal(g, r):
                return False, float("inf")
            continue
        worst = max(worst, max_rel(g, r))
    return worst <= TOLERANCE, worst


def _leaves(first: Call, second: Call | None, result: Probe):
    """(structure template, tensors of the first call, of the second or None); varying ints become tensors."""
    structure_a = (first.args, first.kwargs)
    structure_b = (second.args, second.kwargs) if second is not None else None
    changed = []
    if structure_b is not None:
        structure_a, structure_b, changed = tensorize_varying_ints(structure_a, structure_b)
    leaves_a: list[torch.Tensor] = []
    template = flatten(structure_a, leaves_a)
    leaves_b: list[torch.Tensor] | None = None
    if structure_b is not None:
        leaves_b = []
        if flatten(structure_b, leaves_b) != template or len(leaves_b) != len(leaves_a):
            leaves_b, result.note = None, "the second call's arguments have another structure"
    if changed:
        result.note = "Python ints that vary with the input, passed as tensors: " + "; ".join(changed)
    return template, leaves_a, leaves_b


def probe_module(name: str, module: torch.nn.Module, first: Call, second: Call | None, exporter: str) -> Probe:
    import onnxruntime as ort

    result = Probe(name, type(module).__name__, exporter)
    template, leaves_a, leaves_b = _leaves(first, second, result)
    flat = FlatModule(module, template).eval()
    names = [f"input_{i}" for i in range(len(leaves_a))]
    with torch.no_grad():
        try:
            ref_a = output_tensors(flat(*leaves_a))
            ref_b = output_tensors(flat(*leaves_b)) if leaves_b is not None else None
        except Exception as exc:  # noqa: BLE001 - e.g. a module that cannot take tensors where it took ints
            result.error, result.failed_step = _first_line(exc), "eager with tensor inputs"
            return result
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "module.onnx"
        try:
            result.tracer_warnings = _export(flat, leaves_a, _dynamic_dims(leaves_a, leaves_b), exporter, path, names)
            result.exported = path.is_file()
        except Exception as exc:  # noqa: BLE001 - the report records every exporter failure
            result.error, result.failed_step = _first_line(exc), "export"
            return result
        try:
            options = ort.SessionOptions()
            options.log_severity_level = 4
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            result.loads = True
        except Exception as exc:  # noqa: BLE001
            result.error, result.failed_step = _first_line(exc), "load"
            return result
        wanted = {i.name for i in session.get_inputs()}
        try:
            got_a = session.run(None, {n: t.numpy() for n, t in zip(names, leaves_a) if n in wanted})
            result.runs = True
            result.matches_first, _ = _matches(got_a, ref_a)
            if leaves_b is not None:
                got_b = session.run(None, {n: t.numpy() for n, t in zip(names, leaves_b) if n in wanted})
                result.matches_second, result.max_rel_second = _matches(got_b, ref_b)
        except Exception as exc:  # noqa: BLE001
            step = "run" if not result.runs else "run at the second shape"
            result.error, result.failed_step = _first_line(exc), step
            if result.runs:
                result.matches_second = False
    if result.runs and not result.matches_first:
        result.failed_step = result.failed_step or "match"
    elif result.matches_second is False and result.failed_step is None:
        result.failed_step = "match at the second shape"
    return result


_BUILT_REGISTRIES: dict = {}  # per process, kept across probes


@contextlib.contextmanager
def shared_torchlib_registry():
    """Build torch.onnx's op registry once for a whole walk instead of once per export.

    `torch.onnx.export(dynamo=True)` rebuilds the registry from onnxscript's torchlib on every call:
    1.6 of the 2.7 s a small module took here (cProfile). This patches the private classmethod for the
    duration of the walk and restores it; on a torch without it, nothing changes.
    """
    try:
        from torch.onnx._internal.exporter import _registration

        original = _registration.ONNXRegistry.__dict__["from_torchlib"]
    except (ImportError, AttributeError, KeyError):
        yield
        return

    def from_torchlib(cls, *args, **kwargs):
        key = repr((args, sorted(kwargs.items())))
        if key not in _BUILT_REGISTRIES:
            _BUILT_REGISTRIES[key] = original.__func__(cls, *args, **kwargs)
        return _BUILT_REGISTRIES[key]

    _registration.ONNXRegistry.from_torchlib = classmethod(from_torchlib)
    try:
        yield
    finally:
        _registration.ONNXRegistry.from_torchlib = original


def quiet_exporters() -> None:
    import logging

    for noisy in ("torch.onnx", "torch.export", "torch._dynamo", "torch.fx", "onnxscript"):
        logging.getLogger(noisy).setLevel(logging.CRITICAL)
