"""Walk every submodule of the vision tower (stock or rewritten) through each exporter; collect the report."""
from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import os
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from qvl_compile.config import ModelConfig
from qvl_compile.errors import QvlError
from qvl_compile.export.analysis.calls import record_calls
from qvl_compile.export.analysis.constructs import find_constructs
from qvl_compile.export.analysis.probe import EXPORTERS, Probe, probe_module, quiet_exporters, shared_torchlib_registry
from qvl_compile.export.grids import random_pixels
from qvl_compile.registry import family_named

log = logging.getLogger(__name__)
# The whole model runs at FIRST_GRID to record every submodule's inputs, then again at SECOND_GRID (other
# sizes, two images): a graph that baked the first shape in fails there.
FIRST_GRID = ((1, 6, 8),)
SECOND_GRID = ((1, 4, 10), (1, 6, 6))
ATTENTIONS = ("sdpa", "eager")


def _versions() -> dict[str, str]:
    return {name: metadata.version(name) for name in ("torch", "transformers", "onnx", "onnxruntime", "onnxscript")}


def _inputs(grid, patch_dim: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(random_pixels(grid, patch_dim, seed=seed)), torch.tensor(grid, dtype=torch.int64)


def analyze(model_dir: str | Path, rewritten: bool = False, exporters: tuple[str, ...] = EXPORTERS,
            modules: bool = True, progress: Callable[[int, int, str], None] | None = None,
            jobs: int | None = None, attention: str = "sdpa") -> dict[str, Any]:
    """The report as a dict (see report.py for its renderings). `jobs` worker processes share the probes
    (default: one per core, at most 2); each loads the model and records the same inputs itself.
    `attention` is transformers' attention implementation for the stock tower ("sdpa" or "eager")."""
    start = time.perf_counter()
    unknown = set(exporters) - set(EXPORTERS)
    if unknown:
        raise QvlError(f"--exporter: expected {' or '.join(EXPORTERS)}, got {', '.join(sorted(unknown))}")
    jobs = jobs or min(2, os.cpu_count() or 1)
    if jobs < 1:
        raise QvlError(f"--jobs: expected at least 1, got {jobs}")
    if attention not in ATTENTIONS:
        raise QvlError(f"--attention: expected {' or '.join(ATTENTIONS)}, got {attention!r}")
    model, hf_visual, first, second = _prepare(model_dir, rewritten, attention)
    named = [(n, m) for n, m in model.named_modules() if n] if modules else []
    named.append(("", model))  # the whole model last
    skipped = [{"module": n, "type": type(m).__name__, "reason": "container, never called (its children are probed)"}
               for n, m in named if n not in first]
    tasks = [(n, e) for n, _ in named if n in first for e in exporters]
    if jobs == 1 or len(tasks) < 2 * jobs:
        _init_worker(model_dir, rewritten, attention, prepared=(model, hf_visual, first, second))
        results = []
        for done, task in enumerate(tasks):
            if progress:
                progress(done, len(tasks), f"{task[1]} {task[0] or '(whole model)'}")
            results.append(_probe_task(task))
    else:
        results = _probe_in_workers(model_dir, rewritten, attention, tasks, jobs, progress)
    rows = [dataclasses.asdict(p) | {"outcome": p.outcome} for p in results]
    return {
        "model_dir": str(Path(model_dir).absolute()),
        "model": "rewritten (qvl_compile.rewrite.vision.RewrittenVisionTower)" if rewritten
        else f"stock ({type(hf_visual).__module__}.{type(hf_visual).__name__})",
        "rewritten": rewritten,
        "attention": attention,
        "versions": _versions(),
        "grids": {"first": [list(g) for g in FIRST_GRID], "second": [list(g) for g in SECOND_GRID]},
        "exporters": list(exporters),
        "probes": rows,
        "skipped": skipped,
        "summary": summarize(rows),
        "constructs": [dataclasses.asdict(c) for c in find_constructs(model)],
        "seconds": round(time.perf_counter() - start, 1),
        "jobs": jobs,
    }


def _prepare(model_dir, rewritten: bool, attention: str):
    """(model to walk, stock tower, calls at the first grid, calls at the second grid)."""
    config = ModelConfig.from_dir(model_dir)
    family = family_named(config.model_type)
    hf_visual = family.load_vision(model_dir, attention=attention)
    model = family.vision_tower(hf_visual) if rewritten else hf_visual
    patch_dim = config.vision.patch_dim
    first = record_calls(model, _inputs(FIRST_GRID, patch_dim, seed=0))
    second = record_calls(model, _inputs(SECOND_GRID, patch_dim, seed=1))
    return model, hf_visual, first, second


_WORKER: dict[str, Any] = {}  # per process: the model, its modules and recorded calls


def _init_worker(model_dir, rewritten: bool, attention: str, prepared=None, threads: int | None = None) -> None:
    quiet_exporters()
    if threads:
        torch.set_num_threads(threads)
    model, _, first, second = prepared or _prepare(model_dir, rewritten, attention)
    _WORKER.update(modules=dict(model.named_modules()), first=first, second=second)


def _probe_task(task: tuple[str, str]) -> Probe:
    name, exporter = task
    with shared_torchlib_registry():
        probe = probe_module(name, _WORKER["modules"][name], _WORKER["first"][name], _WORKER["second"].get(name),
                             exporter)
    log.debug("%s %s: %s", exporter, name or "(whole model)", probe.outcome)
    return probe


def _probe_in_workers(model_dir, rewritten: bool, attention: str, tasks, jobs: int, progress) -> list[Probe]:
    """Spawned workers (fork is unsafe once torch's thread pools exist); results back in task order."""
    threads = max(1, (os.cpu_count() or 1) // jobs)
    context = multiprocessing.get_context("spawn")
    results: dict[int, Probe] = {}
    with ProcessPoolExecutor(jobs, mp_context=context, initializer=_init_worker,
                             initargs=(str(model_dir), rewritten, attention, None, threads)) as pool:
        futures = {pool.submit(_probe_task, task): i for i, task in enumerate(tasks)}
        for done, future in enumerate(as_completed(futures)):
            index = futures[future]
            results[index] = future.result()
            if progress:
                name, exporter = tasks[index]
                progress(done + 1, len(tasks), f"{exporter} {name or '(whole model)'}")
    return [results[i] for i in range(len(tasks))]


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
