"""Walk every submodule of the vision tower (stock or rewritten) through each exporter; collect the report."""
from __future__ import annotations

import dataclasses
import logging
import time
from collections import Counter
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from qvl_compile.export.analysis.calls import record_calls
from qvl_compile.export.analysis.constructs import find_constructs
from qvl_compile.export.analysis.probe import EXPORTERS, probe_module, quiet_exporters
from qvl_compile.export.grids import random_pixels
from qvl_compile.golden.reference import load_vision_model

log = logging.getLogger(__name__)
# The whole model runs at FIRST_GRID to record every submodule's inputs, then again at SECOND_GRID (other
# sizes, two images): a graph that baked the first shape in fails there.
FIRST_GRID = ((1, 6, 8),)
SECOND_GRID = ((1, 4, 10), (1, 6, 6))


def _versions() -> dict[str, str]:
    return {name: metadata.version(name) for name in ("torch", "transformers", "onnx", "onnxruntime", "onnxscript")}


def _inputs(grid, patch_dim: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(random_pixels(grid, patch_dim, seed=seed)), torch.tensor(grid, dtype=torch.int64)


def analyze(model_dir: str | Path, rewritten: bool = False, exporters: tuple[str, ...] = EXPORTERS,
            modules: bool = True, progress: Callable[[int, int, str], None] | None = None) -> dict[str, Any]:
    """The report as a dict (see report.py for its renderings)."""
    from qvl_compile.rewrite.vision import RewrittenVisionTower

    start = time.perf_counter()
    quiet_exporters()
    unknown = set(exporters) - set(EXPORTERS)
    if unknown:
        from qvl_compile.errors import QvlError

        raise QvlError(f"--exporter: expected {' or '.join(EXPORTERS)}, got {', '.join(sorted(unknown))}")
    hf_visual = load_vision_model(model_dir)
    model = RewrittenVisionTower(hf_visual).eval() if rewritten else hf_visual
    patch_dim = int(hf_visual.config.in_channels * hf_visual.config.temporal_patch_size
                    * hf_visual.config.patch_size ** 2)
    first = record_calls(model, _inputs(FIRST_GRID, patch_dim, seed=0))
    second = record_calls(model, _inputs(SECOND_GRID, patch_dim, seed=1))
    named = [(n, m) for n, m in model.named_modules() if n] if modules else []
    named.append(("", model))  # the whole model last
    total = len(named) * len(exporters)
    probes, skipped = [], []
    for name, module in named:
        if name not in first:
            skipped.append({"module": name, "type": type(module).__name__,
                            "reason": "container, never called (its children are probed)"})
            continue
        for exporter in exporters:
            if progress:
                progress(len(probes) + len(skipped) * len(exporters), total, f"{exporter} {name or '(whole model)'}")
            probe = probe_module(name, module, first[name], second.get(name), exporter)
            log.debug("%s %s: %s", exporter, name or "(whole model)", probe.outcome)
            probes.append(probe)
    rows = [dataclasses.asdict(p) | {"outcome": p.outcome} for p in probes]
    return {
        "model_dir": str(Path(model_dir).absolute()),
        "model": "rewritten (qvl_compile.rewrite.vision.RewrittenVisionTower)" if rewritten
        else f"stock ({type(hf_visual).__module__}.{type(hf_visual).__name__})",
        "rewritten": rewritten,
        "versions": _versions(),
        "grids": {"first": [list(g) for g in FIRST_GRID], "second": [list(g) for g in SECOND_GRID]},
        "exporters": list(exporters),
        "probes": rows,
        "skipped": skipped,
        "summary": summarize(rows),
        "constructs": [dataclasses.asdict(c) for c in find_constructs(model)],
        "seconds": round(time.perf_counter() - start, 1),
    }


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts per module type and exporter (the whole model apart), and per outcome."""
    by_type: dict[str, dict[str, Counter]] = {}
    for row in rows:
        if row["module"] == "":
            continue
        counter = by_type.setdefault(row["type"], {}).setdefault(row["exporter"], Counter())
        counter["modules"] += 1
        counter["exported"] += row["exported"]
        counter["runs"] += row["runs"]
        counter["ok"] += row["outcome"] == "ok"
    outcomes: dict[str, Counter] = {}
    for row in rows:
        if row["module"] != "":
            outcomes.setdefault(row["exporter"], Counter())[row["outcome"]] += 1
    return {"by_type": {t: {e: dict(c) for e, c in ex.items()} for t, ex in sorted(by_type.items())},
            "outcomes": {e: dict(c) for e, c in outcomes.items()},
            "whole_model": {r["exporter"]: r["outcome"] for r in rows if r["module"] == ""}}
