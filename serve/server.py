"""Wiring for `qvl-compile serve`: pipeline, batching engine and app from the command line's settings."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from qvl_compile.errors import QvlError
from qvl_compile.serve.media import MediaLimits

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServerSettings:
    export_dir: Path
    host: str = "127.0.0.1"
    port: int = 8000
    max_batch: int = 8
    context: int = 4096
    max_waiting: int = 64
    threads: int = 0
    api_key: str | None = None
    model_name: str | None = None
    max_body_bytes: int = 32 * 2**20
    limits: MediaLimits = MediaLimits()
    verify_hashes: bool = False  # sha256 of every file before loading (Ray replicas, which may be on another node)


def build_app(settings: ServerSettings):
    """-> (app, engine): the engine is started; the app's shutdown closes it."""
    from qvl_compile.runtime.engine import Engine, EngineConfig
    from qvl_compile.runtime.pipeline import Pipeline
    from qvl_compile.serve.app import ServeOptions, create_app

    if settings.limits.media_dir is not None and not settings.limits.media_dir.is_dir():
        raise QvlError(f"--media-dir: expected a directory, got {str(settings.limits.media_dir)!r}")
    pipe = Pipeline(settings.export_dir, intra_op_threads=settings.threads, verify_hashes=settings.verify_hashes)
    context = min(settings.context, pipe.max_context) if pipe.max_context else settings.context
    engine = Engine(pipe, EngineConfig(max_batch=settings.max_batch, context=context, max_waiting=settings.max_waiting))
    name = settings.model_name or Path(settings.export_dir).resolve().name
    app = create_app(pipe, engine, ServeOptions(name, settings.api_key, settings.max_body_bytes, settings.limits))
    return app, engine.start()


def serve(settings: ServerSettings, announce=print) -> None:
    import uvicorn

    app, engine = build_app(settings)
    if settings.host not in ("127.0.0.1", "localhost", "::1") and settings.api_key is None:
        log.warning("serving on %s without --api-key: anyone who can reach this port can use it", settings.host)
    announce(f"serving {Path(settings.export_dir)} on http://{settings.host}:{settings.port}/v1 "
             f"({engine.config.max_batch} slots x {engine.config.context} tokens, KV pool {engine.kv_bytes / 1e6:.1f} MB)")
    try:
        uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning", timeout_graceful_shutdown=5)
    finally:
        engine.close()
