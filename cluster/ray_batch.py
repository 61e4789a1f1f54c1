"""`qvl-compile batch --ray`: the cases on Ray Data, answered by an actor pool of loaded pipelines.

    run_on_ray(export_dir, cases, log, workers=4, threads=1, defaults=BatchOptions(), on_result=print)

Ray is the one `connect()` joined: the cluster named by `RAY_ADDRESS` (a head started with `ray start --head`), or a
local Ray when it is unset. Every actor loads `export_dir` from its own node, checking the manifest's hashes first, so the folder
must be at the same path on every node (a shared filesystem, or a copy synced beforehand); so must the cases'
media. Rows travel as JSON strings (one column), which keeps Arrow from guessing types for optional fields.

Exactly once: the driver (this process) alone writes OUTPUT, through the `ResultLog` (a duplicate id is
dropped). An actor that dies is restarted by Ray, which runs the case it held again, up to `MAX_ATTEMPTS` times in
all; a case still unanswered after the run becomes an error line.
"""
from __future__ import annotations

import json
import logging
import re
import warnings
from collections.abc import Callable
from pathlib import Path

from qvl_compile.errors import QvlError
from qvl_compile.runtime.batch import BatchOptions, ResultLog, error_line, run_case

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 3  # tries of one case (Ray's task retries after an actor died)
MAX_BLOCKS = 10_000  # one case per block up to this many: an actor's death redoes little work


class CaseActor:
    """One Ray Data actor: a pipeline loaded once, answering a batch of cases (JSON strings) per call."""

    def __init__(self, export_dir: str, threads: int, defaults: BatchOptions):
        from qvl_compile.runtime.pipeline import Pipeline

        self.pipe = Pipeline(export_dir, intra_op_threads=threads, verify_hashes=True)
        self.defaults = defaults

    def __call__(self, batch: dict) -> dict:
        return {"line": [json.dumps(run_case(self.pipe, json.loads(case), self.defaults)) for case in batch["case"]]}


def _failure(exc: Exception) -> str:
    """One line for a Ray job that stopped: the actor's own QvlError (a bad export on its node) when there is one."""
    ours = re.findall(r"QvlError: (.+)", str(exc))
    if ours:
        return f"a Ray actor could not load the export: {ours[-1].strip()}"
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"the Ray job stopped: {type(exc).__name__}: {first}"


def _restarts() -> dict:
    """A killed actor comes back (reloading its pipeline) and runs the case it held again."""
    return {"max_restarts": -1, "max_task_retries": MAX_ATTEMPTS - 1}


def run_on_ray(export_dir: str | Path, cases: list[dict], result_log: ResultLog, workers: int, threads: int,
               defaults: BatchOptions, on_result: Callable[[dict], None] = lambda line: None) -> None:
    """Answer every case with `workers` actors of `threads` CPUs each; results written once by this process."""
    import ray.data

    if not cases:
        return

    cpus = ray.cluster_resources().get("CPU", 0)
    if cpus < workers * threads:  # an autoscaling cluster may still grow; a fixed one would wait forever
        log.warning("%d workers x %d threads need %d CPUs; the Ray cluster has %g now", workers, threads,
                    workers * threads, cpus)
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # its INFO lines would break the CLI's progress bar
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # the CLI draws its own
    context.max_errored_blocks = -1  # a case that exhausts its retries is reported below, not fatal
    rows = ray.data.from_items([{"case": json.dumps(case)} for case in cases], override_num_blocks=min(len(cases), MAX_BLOCKS))
    with warnings.catch_warnings():  # Ray 2.60 deprecates these arguments and has no other way to bound retries
        warnings.simplefilter("ignore", DeprecationWarning)
        answers = rows.map_batches(
            CaseActor, fn_constructor_args=(str(Path(export_dir).resolve()), threads, defaults), batch_size=1,
            batch_format="numpy", num_cpus=threads, **_restarts(),
            # One case per actor at a time: Ray retries a task on the same (restarted) actor, so a case queued
            # behind one that kills its actor would spend its own retries.
            compute=ray.data.ActorPoolStrategy(size=workers, max_tasks_in_flight_per_actor=1))
    try:
        for row in answers.iter_rows():
            line = json.loads(row["line"])
            if result_log.write(line):
                on_result(line)
    except Exception as exc:  # Ray wraps the actor's own error in its traceback text
        raise QvlError(_failure(exc)) from exc
    for case in result_log.pending(cases):
        line = error_line(case["id"], f"no answer after {MAX_ATTEMPTS} tries: the Ray task running it failed "
                                      "each time (see Ray's logs)")
        if result_log.write(line):
            on_result(line)
