"""`qvl-compile serve --ray`: the same OpenAI-compatible app, one copy per Ray Serve replica.

    serve_on_ray(ServerSettings("out"), replicas=2)   # blocks until interrupted

Each replica builds what `qvl-compile serve` builds (pipeline, batching engine, Starlette app; the manifest's
hashes checked first, since a replica may run on another node) and Ray Serve's HTTP proxy spreads requests over
the replicas. A replica that dies is replaced by Serve's controller; requests in flight on the other replicas
complete, and the ones the dead replica held fail with a 5xx that OpenAI clients retry. A replica whose engine
stopped reports unhealthy and is replaced the same way. /metrics and /health describe the replica that answers.
"""
from __future__ import annotations

import logging
import time
from dataclasses import replace

from ray import serve

from qvl_compile.serve.server import ServerSettings, build_app

log = logging.getLogger(__name__)

APP_NAME = "qvl-compile"


class ChatReplica:
    """One Serve replica: the app is built on the replica, after Serve starts it (see `serve.ingress`)."""

    def __init__(self, settings: ServerSettings):
        self.settings, self.engine = settings, None

    def __serve_build_asgi_app__(self):
        app, self.engine = build_app(self.settings)
        return app

    def check_health(self) -> None:
        """Called by Serve's controller; raising makes it replace this replica."""
        if self.engine is not None and self.engine.failure:
            raise RuntimeError(f"the engine stopped: {self.engine.failure}")


def deployment(settings: ServerSettings, replicas: int, cpus_per_replica: float):
    """The bound Serve application: `replicas` copies, each admitting as many requests as its engine queues."""
    ingress = serve.ingress()(ChatReplica)
    options = serve.deployment(
        name="ChatReplica", num_replicas=replicas, ray_actor_options={"num_cpus": cpus_per_replica},
        max_ongoing_requests=settings.max_batch + settings.max_waiting, health_check_period_s=5,
        graceful_shutdown_timeout_s=10)
    # Replicas start in Ray's own working folder: every path absolute.
    media_dir = settings.limits.media_dir and settings.limits.media_dir.resolve()
    placed = replace(settings, export_dir=settings.export_dir.resolve(), verify_hashes=True,
                     limits=replace(settings.limits, media_dir=media_dir))
    return options(ingress).bind(placed)


def serve_on_ray(settings: ServerSettings, replicas: int, announce=print) -> None:
    """Deploy, then block until Ctrl-C or SIGTERM; the app is deleted on the way out. Serve itself is shut down only
    on a local Ray started here: on a shared cluster other applications may be using it."""
    import os

    from qvl_compile.cluster.connect import connect

    local = not os.environ.get("RAY_ADDRESS")
    announce(connect())
    settings = replace(settings, threads=settings.threads or 1)  # a replica reserves as many CPUs as it uses
    logging.getLogger("ray.serve").setLevel(logging.WARNING)
    serve.start(http_options={"host": settings.host, "port": settings.port})
    try:
        serve.run(deployment(settings, replicas, float(settings.threads)), name=APP_NAME, route_prefix="/")
        announce(f"serving {settings.export_dir} on http://{settings.host}:{settings.port}/v1 with {replicas} "
                 f"Ray Serve replicas ({settings.threads} CPU and thread(s) each)")
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        serve.delete(APP_NAME)
        if local:
            serve.shutdown()
