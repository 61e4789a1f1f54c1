"""`qvl-compile batch` on this machine: worker processes, each holding one loaded pipeline.

    run_local(export_dir, cases, log, workers=2, threads=1, defaults=BatchOptions(), on_result=print)

The driver (this process) hands one case at a time to each idle worker and writes every result through the
`ResultLog`, so OUTPUT has one writer. A worker that dies (killed, out of memory) is replaced; the case it held
goes back to the queue, and after `MAX_ATTEMPTS` deaths on the same case that case becomes an error line.
"""
from __future__ import annotations

import collections
import logging
import multiprocessing
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from pathlib import Path

from qvl_compile.errors import QvlError
from qvl_compile.runtime.batch import BatchOptions, ResultLog, error_line, run_case

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 3  # deaths of a worker while it held the same case
MAX_LOAD_FAILURES = 3  # workers in a row that died before they were ready
CLOSE_SECONDS = 5.0  # for idle workers to leave on their own at the end (or on Ctrl-C) before they are killed


def _worker(export_dir: str, threads: int, defaults: BatchOptions, conn) -> None:
    """A worker process: load the pipeline, then answer cases until the driver sends None."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the driver decides, then stops us
    from qvl_compile.runtime.pipeline import Pipeline

    try:
        pipe = Pipeline(export_dir, intra_op_threads=threads)
    except Exception as exc:  # noqa: BLE001 - reported to the driver as one line
        conn.send(("failed", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ready", None))
    while (case := conn.recv()) is not None:
        conn.send(("result", run_case(pipe, case, defaults)))


@dataclass
class _Worker:
    process: multiprocessing.Process
    conn: object  # the driver's end of the pipe
    ready: bool = False
    case: dict | None = None


@dataclass
class LocalPool:
    export_dir: Path
    workers: int
    threads: int
    defaults: BatchOptions
    context: object = field(default_factory=lambda: multiprocessing.get_context("spawn"))
    running: list[_Worker] = field(default_factory=list)
    load_failures: int = 0

    def start_worker(self) -> None:
        ours, theirs = self.context.Pipe()
        process = self.context.Process(target=_worker, args=(str(self.export_dir), self.threads, self.defaults, theirs),
                                       daemon=True, name=f"qvl-batch-worker-{len(self.running)}")
        process.start()
        theirs.close()
        self.running.append(_Worker(process, ours))

    def close(self) -> None:
        """Ask every worker to stop; whatever still runs after CLOSE_SECONDS in all is killed."""
        for worker in self.running:
            try:
                worker.conn.send(None)
            except OSError:
                pass
        deadline = time.monotonic() + CLOSE_SECONDS
        for worker in self.running:
            worker.process.join(timeout=max(0.0, deadline - time.monotonic()))
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join()
        self.running.clear()


def _on_death(pool: LocalPool, worker: _Worker, queue: collections.deque, attempts: collections.Counter,
              write: Callable[[dict], None]) -> None:
    """Its case goes back to the queue (an error line after MAX_ATTEMPTS); a replacement starts if work is left."""
    pool.running.remove(worker)
    code = worker.process.exitcode
    held = worker.case["id"] if worker.case is not None else None
    log.warning("worker %s died (exit code %s) holding %s", worker.process.name, code,
                "no case" if held is None else f"case {held!r}")
    if not worker.ready:
        pool.load_failures += 1
        if pool.load_failures >= MAX_LOAD_FAILURES:
            raise QvlError(f"{MAX_LOAD_FAILURES} batch workers in a row died while loading {pool.export_dir} "
                           f"(last exit code {code})")
    if held is not None:
        attempts[held] += 1
        if attempts[held] >= MAX_ATTEMPTS:
            write(error_line(held, f"the worker died {MAX_ATTEMPTS} times while running this case "
                                   f"(last exit code {code})"))
        else:
            queue.appendleft(worker.case)
    if queue:
        pool.start_worker()


def _on_message(pool: LocalPool, worker: _Worker, queue: collections.deque, write: Callable[[dict], None]) -> None:
    kind, payload = worker.conn.recv()
    if kind == "failed":
        raise QvlError(f"a batch worker could not load {pool.export_dir}: {payload}")
    if kind == "ready":
        worker.ready, pool.load_failures = True, 0
    elif kind == "result":
        write(payload)
        worker.case = None
    if worker.case is None and queue:
        case = queue.popleft()
        try:
            worker.conn.send(case)
            worker.case = case
        except OSError:  # it died after its last message: the case never reached it; its sentinel reports the death
            queue.appendleft(case)


def run_local(export_dir: str | Path, cases: list[dict], result_log: ResultLog, workers: int, threads: int,
              defaults: BatchOptions, on_result: Callable[[dict], None] = lambda line: None) -> None:
    """Answer every case with `workers` processes; each result goes through `result_log` exactly once."""
    queue, attempts = collections.deque(cases), collections.Counter()

    def write(line: dict) -> None:
        if result_log.write(line):
            on_result(line)

    pool = LocalPool(Path(export_dir), workers, threads, defaults)
    try:
        for _ in range(min(workers, len(cases))):
            pool.start_worker()
        while queue or any(w.case is not None for w in pool.running):
            by_handle = {w.conn: w for w in pool.running} | {w.process.sentinel: w for w in pool.running}
            for handle in wait(list(by_handle)):
                worker = by_handle[handle]
                if worker not in pool.running:
                    continue
                if handle is worker.conn and worker.conn.poll():
                    try:
                        _on_message(pool, worker, queue, write)
                        continue
                    except (EOFError, OSError):
                        pass  # died mid-message: handled as a death below
                if not worker.process.is_alive() or handle is not worker.conn:
                    worker.process.join()
                    _on_death(pool, worker, queue, attempts, write)
    finally:
        pool.close()
