"""Join the Ray cluster named by RAY_ADDRESS (Ray's own convention), or start a local Ray bound to loopback."""
from __future__ import annotations

import logging
import os


def connect() -> str:
    """Join the Ray named by RAY_ADDRESS, or start a local one (loopback only); -> a description."""
    import ray

    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS")
        if address:
            ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
        else:
            ray.init(_node_ip_address="127.0.0.1", include_dashboard=False, log_to_driver=False,
                     logging_level=logging.WARNING)
    nodes = [node for node in ray.nodes() if node.get("Alive")]
    cpus = sum(node.get("Resources", {}).get("CPU", 0) for node in nodes)
    return f"Ray at {os.environ.get('RAY_ADDRESS') or 'a local instance'}: {len(nodes)} node(s), {cpus:g} CPUs"
