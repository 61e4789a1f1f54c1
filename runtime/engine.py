"""Continuous batching: many conversations decoded together, joining and leaving the batch between steps.

    engine = Engine(Pipeline("out"), EngineConfig(max_batch=8, context=2048))
    engine.start()
    job = engine.submit(pipe.prepare_messages(messages), max_new_tokens=64, sampling=cfg, seed=0, emit=print)
    ...
    engine.close()

One thread owns the decoder and a KV pool of `max_batch` slots of `context` rows each (allocated once: its
bytes are `kv_bytes`). Between two decode steps it admits waiting jobs into free slots (a prefill each, with
the vision encoder's output taken from a content-hashed LRU cache when the same image was seen before) and
drops finished or cancelled ones. A decode step runs the decoder once over the slots in use, each row at its
own length (the attention mask tells GroupQueryAttention where each row's cache ends).

`emit` is called on the engine thread with an `Update` per token and a last one carrying finish_reason
("stop", "length", "cancelled" or "error"); it must not block.
"""
from __future__ import annotations

import collections
import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from qvl_compile.errors import QvlError
from qvl_compile.runtime.context import check_fits
from qvl_compile.runtime.sampling import SamplingConfig, next_token
from qvl_compile.runtime.stopping import visible_text

log = logging.getLogger(__name__)


class EngineBusy(QvlError):
    """The waiting queue is full; try again later."""


@dataclass(frozen=True)
class EngineConfig:
    max_batch: int = 8  # slots decoded together
    context: int = 4096  # KV rows per slot: prompt + new tokens of one request
    max_waiting: int = 64  # jobs queued for a slot before submit refuses (every job passes the queue: >= 1)
    vision_cache_bytes: int = 256 * 2**20  # image/video embeddings kept by content hash

    def __post_init__(self):
        if self.max_batch < 1 or self.context < 2 or self.max_waiting < 1 or self.vision_cache_bytes < 0:
            raise QvlError(f"engine limits: expected max_batch >= 1, context >= 2, max_waiting >= 1, "
                           f"vision_cache_bytes >= 0, got {self}")


@dataclass(frozen=True)
class Update:
    text: str  # newly visible reply text (may be empty)
    token_id: int | None
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str | None = None  # set on the last update only
    error: str | None = None


@dataclass
class Job:
    prepared: object  # PreparedPrompt
    max_new_tokens: int
    sampling: SamplingConfig
    rng: np.random.Generator
    stop: tuple[str, ...]
    emit: Callable[[Update], None]
    cancelled: threading.Event = field(default_factory=threading.Event)
    slot: int = -1
    filled: int = 0  # KV rows written
    generated: list[int] = field(default_factory=list)
    history: list[int] = field(default_factory=list)
    shown: str = ""
    submitted: float = field(default_factory=time.perf_counter)

    def cancel(self) -> None:
        self.cancelled.set()

    @property
    def prompt_tokens(self) -> int:
        return len(self.prepared.input_ids)


@dataclass
class EngineStats:
    """Counters for /metrics; read without the engine's lock (each value is replaced whole)."""
    requests_finished: collections.Counter = field(default_factory=collections.Counter)  # by finish_reason
    prompt_tokens: int = 0
    generated_tokens: int = 0
    decode_steps: int = 0
    batch_sizes: collections.Counter = field(default_factory=collections.Counter)  # jobs per decode step
    vision_cache_hits: int = 0
    vision_cache_misses: int = 0
    waiting: int = 0
    active: int = 0


class VisionCache:
    """Bounded LRU of (image_embeds, deepstack_embeds) by the sha256 of a medium's pixel rows and grid."""

    def __init__(self, max_bytes: int):
        self.max_bytes, self.bytes = max_bytes, 0
        self.items: collections.OrderedDict[str, tuple[np.ndarray, np.ndarray]] = collections.OrderedDict()

    @staticmethod
    def key(rows: np.ndarray, grid: np.ndarray) -> str:
        digest = hashlib.sha256(np.asarray(grid, np.int64).tobytes())
        digest.update(np.ascontiguousarray(rows).tobytes())
        return digest.hexdigest()

    def get(self, key: str):
        found = self.items.get(key)
        if found is not None:
            self.items.move_to_end(key)
        return found

    def put(self, key: str, value: tuple[np.ndarray, np.ndarray]) -> None:
        size = value[0].nbytes + value[1].nbytes
        if size > self.max_bytes:
            return
        self.items[key] = value
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, (embeds, deepstack) = self.items.popitem(last=False)
            self.bytes -= embeds.nbytes + deepstack.nbytes


class Engine:
    def __init__(self, pipeline, config: EngineConfig = EngineConfig(),
                 on_step: Callable[[str, int, float], None] | None = None):
        """on_step(kind, jobs, seconds) after each "prefill" and "decode" step (for metrics; engine thread)."""
        self.pipe, self.config, self.on_step = pipeline, config, on_step
        decoder = pipeline.decoder
        facts = decoder.facts
        shape = (config.max_batch, facts.num_key_value_heads, config.context, facts.head_dim)  # [slots, kv, rows, hd]
        dtype = decoder.cache_dtype  # float32, or int8 for an export with an int8 KV cache
        self.keys = [np.zeros(shape, dtype) for _ in range(facts.num_layers)]
        self.values = [np.zeros(shape, dtype) for _ in range(facts.num_layers)]
        self.kv_bytes = 2 * facts.num_layers * int(np.prod(shape)) * np.dtype(dtype).itemsize
        self.slots: list[Job | None] = [None] * config.max_batch
        self.waiting: collections.deque[Job] = collections.deque()
        self.vision_cache = VisionCache(config.vision_cache_bytes)
        self.stats = EngineStats()
        self._cond = threading.Condition()
        self._closed = False
        self.failure: str | None = None  # why the engine thread stopped, if it did
        self._thread = threading.Thread(target=self._run, name="qvl-engine", daemon=True)
        log.info("engine: %d slots x %d context rows, KV pool %.1f MB", config.max_batch, config.context,
                 self.kv_bytes / 1e6)

    # -- the caller's side ------------------------------------------------------------------------------
    def start(self) -> "Engine":
        self._thread.start()
        return self

    def close(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def submit(self, prepared, max_new_tokens: int, sampling: SamplingConfig, emit: Callable[[Update], None],
               seed: int | None = None, stop: tuple[str, ...] = ()) -> Job:
        """Queue a prepared prompt. Raises QvlError if it cannot fit a slot, EngineBusy if the queue is full."""
        sampling.validate()
        check_fits(len(prepared.input_ids), max_new_tokens, self.config.context)
        job = Job(prepared, max_new_tokens, sampling, np.random.default_rng(seed), tuple(stop), emit,
                  history=[int(t) for t in prepared.input_ids])
        with self._cond:
            if self._closed or self.failure:
                raise EngineBusy("the engine is shutting down" if self._closed else f"the engine stopped: {self.failure}")
            if len(self.waiting) >= self.config.max_waiting:
                raise EngineBusy(f"{len(self.waiting)} requests already wait for a slot")
            self.waiting.append(job)
            self.stats.waiting = len(self.waiting)
            self._cond.notify_all()
        return job

    def stream(self, prepared, max_new_tokens: int, sampling: SamplingConfig, seed: int | None = None,
               stop: tuple[str, ...] = ()) -> Iterator[Update]:
        """Submit and yield the job's updates on the calling thread (closing the generator cancels it)."""
        import queue

        updates: queue.Queue[Update] = queue.Queue()
        job = self.submit(prepared, max_new_tokens, sampling, updates.put, seed, stop)
        try:
            while True:
                try:
                    update = updates.get(timeout=1.0)
                except queue.Empty:
                    if self.failure:
                        raise QvlError(f"the engine stopped: {self.failure}") from None
                    continue
                yield update
                if update.finish_reason is not None:
                    return
        finally:
            job.cancel()

    # -- the engine thread ------------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # the thread must not die silently: submit and health report it
            log.exception("engine: the engine thread stopped")
            self.failure = f"{type(exc).__name__}: {exc}"
            raise

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._closed and not self.waiting and not any(self.slots):
                    self._cond.wait()
                if self._closed:
                    break
                admitted, dropped = [], [job for job in self.waiting if job.cancelled.is_set()]
                for job in dropped:
                    self.waiting.remove(job)
                while self.waiting and None in self.slots:
                    job = self.waiting.popleft()
                    job.slot = self.slots.index(None)
                    self.slots[job.slot] = job
                    admitted.append(job)
                self.stats.waiting = len(self.waiting)
            for job in dropped:
                self._finish(job, "cancelled")
            for job in admitted:
                self._guarded([job], lambda job=job: self._prefill(job))
            active = [job for job in self.slots if job is not None]
            self.stats.active = len(active)
            if active:
                self._guarded(active, lambda active=active: self._decode_step(active))
        for job in [j for j in self.slots if j is not None] + list(self.waiting):
            self._finish(job, "cancelled", error="the server is shutting down")

    def _guarded(self, jobs: list[Job], work: Callable[[], None]) -> None:
        """A failure ends the jobs it touched with an error; the engine and the other slots go on."""
        try:
            work()
        except Exception as exc:  # one bad request must not stop the engine (logged with its traceback)
            log.exception("engine: a step over %d jobs failed", len(jobs))
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            for job in jobs:
                if self.slots[job.slot] is job:
                    self._finish(job, "error", error=message)

    def _visual(self, prepared) -> tuple[np.ndarray | None, np.ndarray | None]:
        """The prompt's media embeddings in order, each from the cache or one vision run."""
        if prepared.grid_thw is None:
            return None, None
        embeds, deepstacks = [], []
        for rows, grid in zip(prepared.media_rows, prepared.grid_thw):
            key = VisionCache.key(rows, grid)
            found = self.vision_cache.get(key)
            if found is None:
                out = self.pipe.vision(rows, grid[None])
                found = (out.image_embeds, out.deepstack_embeds)
                self.vision_cache.put(key, found)
                self.stats.vision_cache_misses += 1
            else:
                self.stats.vision_cache_hits += 1
            embeds.append(found[0]), deepstacks.append(found[1])
        return np.concatenate(embeds), np.concatenate(deepstacks, axis=1)  # [V, hidden], [D, V, hidden]

    def _prefill(self, job: Job) -> None:
        if job.cancelled.is_set():
            self._finish(job, "cancelled")
            return
        started = time.perf_counter()
        prepared, slot = job.prepared, job.slot
        visual, deepstack = self._visual(prepared)
        seq = len(prepared.input_ids)
        view = slice(slot, slot + 1)
        logits = self.pipe.decoder.forward_rows(
            prepared.input_ids[None], prepared.position_ids[:, None], np.ones((1, seq), np.int64),
            [k[view] for k in self.keys], [v[view] for v in self.values], visual, deepstack)
        job.filled = seq
        self.stats.prompt_tokens += seq
        if self.on_step:
            self.on_step("prefill", 1, time.perf_counter() - started)
        self._advance(job, logits[0, -1])

    def _decode_step(self, jobs: list[Job]) -> None:
        for job in [j for j in jobs if j.cancelled.is_set()]:
            self._finish(job, "cancelled")
        jobs = [j for j in jobs if self.slots[j.slot] is j]
        if not jobs:
            return
        started = time.perf_counter()
        rows = max(job.slot for job in jobs) + 1  # slots 0..rows-1 run; a free one among them decodes a dummy
        input_ids = np.zeros((rows, 1), np.int64)
        positions = np.zeros((3, rows, 1), np.int64)
        lengths = np.zeros(rows, np.int64)
        for job in jobs:
            input_ids[job.slot, 0] = job.generated[-1]
            positions[:, job.slot, 0] = job.prompt_tokens + job.prepared.rope_delta + len(job.generated) - 1
            lengths[job.slot] = job.filled
        mask = (np.arange(lengths.max() + 1)[None, :] <= lengths[:, None]).astype(np.int64)  # [rows, T]: L_b+1 ones
        logits = self.pipe.decoder.forward_rows(input_ids, positions, mask, [k[:rows] for k in self.keys],
                                                [v[:rows] for v in self.values])
        self.stats.decode_steps += 1
        self.stats.batch_sizes[len(jobs)] += 1
        if self.on_step:
            self.on_step("decode", len(jobs), time.perf_counter() - started)
        for job in jobs:
            job.filled += 1
            self._advance(job, logits[job.slot, -1])

    def _advance(self, job: Job, logits: np.ndarray) -> None:
        """Choose the next token from logits [vocab], emit the new text, finish the job when it ends."""
        token = next_token(logits, job.history, job.sampling, job.rng, self.pipe.never_generated)
        job.generated.append(token)
        job.history.append(token)
        self.stats.generated_tokens += 1
        decoded = self.pipe.tokenizer.decode(job.generated, skip_special_tokens=True)
        ended = token in job.sampling.eos_token_ids or len(job.generated) >= job.max_new_tokens
        state = visible_text(decoded, job.stop, ended)
        reason = "stop" if state.finished or token in job.sampling.eos_token_ids else "length" if ended else None
        delta = state.text[len(job.shown):] if state.text.startswith(job.shown) else ""
        job.shown += delta
        self._emit(job, Update(delta, token, job.prompt_tokens, len(job.generated)))
        if reason is not None:
            self._finish(job, reason)

    def _finish(self, job: Job, reason: str, error: str | None = None) -> None:
        with self._cond:
            if 0 <= job.slot < len(self.slots) and self.slots[job.slot] is job:
                self.slots[job.slot] = None
            self.stats.active = sum(j is not None for j in self.slots)
        self.stats.requests_finished[reason] += 1
        self._emit(job, Update("", None, job.prompt_tokens, len(job.generated), reason, error))

    @staticmethod
    def _emit(job: Job, update: Update) -> None:
        """A receiver that fails (its event loop closed, say) cancels its job, never the engine."""
        try:
            job.emit(update)
        except Exception:  # the receiver's failure is logged; the engine goes on
            log.exception("engine: a job's receiver failed; cancelling the job")
            job.cancel()
