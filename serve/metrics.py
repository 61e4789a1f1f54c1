"""Prometheus metrics: requests, tokens, queue depth, batch size and latency histograms (prometheus_client)."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class ServerMetrics:
    """One registry per app (tests start several in one process)."""

    def __init__(self, engine, max_batch: int):
        self.registry = registry = CollectorRegistry()
        self.requests = Counter("qvl_requests", "Chat completion requests by HTTP status.", ["status"],
                                registry=registry)
        self.finished = Counter("qvl_requests_finished", "Generations ended, by finish reason.", ["reason"],
                                registry=registry)
        self.prompt_tokens = Counter("qvl_prompt_tokens", "Prompt tokens prefilled.", registry=registry)
        self.generated_tokens = Counter("qvl_generated_tokens", "Tokens generated.", registry=registry)
        self.batch_size = Histogram("qvl_decode_batch_size", "Requests decoded together per step.",
                                    buckets=tuple(range(1, max_batch + 1)), registry=registry)
        self.step_seconds = Histogram("qvl_step_seconds", "Engine step time.", ["kind"], buckets=LATENCY_BUCKETS,
                                      registry=registry)
        self.latency = Histogram("qvl_request_latency_seconds", "Request time, arrival to last token.",
                                 buckets=LATENCY_BUCKETS, registry=registry)
        self.first_token = Histogram("qvl_time_to_first_token_seconds", "Arrival to first token.",
                                     buckets=LATENCY_BUCKETS, registry=registry)
        registry.register(EngineCollector(engine))

    def on_step(self, kind: str, jobs: int, seconds: float) -> None:
        """Engine callback (engine thread)."""
        self.step_seconds.labels(kind).observe(seconds)
        if kind == "decode":
            self.batch_size.observe(jobs)

    def on_finished(self, reason: str, prompt_tokens: int, generated: int) -> None:
        self.finished.labels(reason).inc()
        self.prompt_tokens.inc(prompt_tokens)
        self.generated_tokens.inc(generated)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class EngineCollector:
    """The engine's own counts, read at scrape time."""

    def __init__(self, engine):
        self.engine = engine

    def collect(self):
        stats = self.engine.stats
        yield GaugeMetricFamily("qvl_queue_depth", "Requests waiting for a slot.", value=stats.waiting)
        yield GaugeMetricFamily("qvl_active_requests", "Requests holding a decode slot.", value=stats.active)
        yield GaugeMetricFamily("qvl_kv_pool_bytes", "Bytes of the preallocated KV cache pool.",
                                value=self.engine.kv_bytes)
        lookups = CounterMetricFamily("qvl_vision_cache_lookups", "Vision encoder cache lookups.", labels=["result"])
        lookups.add_metric(["hit"], stats.vision_cache_hits)
        lookups.add_metric(["miss"], stats.vision_cache_misses)
        yield lookups
