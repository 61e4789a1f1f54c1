"""Join the Ray cluster named by RAY_ADDRESS (Ray's own convention), or start a local Ray (no dashboard).

Ray's token authentication applies as Ray documents it: a cluster started with RAY_AUTH_MODE=token needs the same
mode and token (RAY_AUTH_TOKEN, or ~/.ray/auth_token) in the environment of `qvl-compile`.
"""
from __future__ import annotations

import logging
import os


def connect() -> str:
    """Join the Ray named by RAY_ADDRESS, or start a local one; -> a description of what it joined."""
    import ray

    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS")
        if address:
            ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
        else:
            ray.init(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    nodes = [node for node in ray.nodes() if node.get("Alive")]
    cpus = sum(node.get("Resources", {}).get("CPU", 0) for node in nodes)
    return f"Ray at {os.environ.get('RAY_ADDRESS') or 'a local instance'}: {len(nodes)} node(s), {cpus:g} CPUs"
