"""Named export stages: each logs what it did and fails with its name and number."""
from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import resource
import time
from collections.abc import Iterator

from qvl_compile.errors import QvlError

log = logging.getLogger(__name__)


def release_memory() -> None:
    """Collect garbage and hand freed heap pages back to the OS (glibc), so the next stage's peak starts
    from what is really live. Big exports run stage after stage in one process."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass


def _peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # ru_maxrss is in KiB on Linux


class Stages:
    def __init__(self, names: list[str], component: str = ""):
        self.names, self.component = names, component
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def run(self, name: str) -> Iterator[None]:
        number = self.names.index(name) + 1
        label = f"{self.component + ' ' if self.component else ''}step {number}/{len(self.names)}: {name}"
        log.info("%s ...", label)
        start = time.perf_counter()
        try:
            yield
        except QvlError as exc:
            raise QvlError(f"{label} failed: {exc}") from exc
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise QvlError(f"{label} failed: {type(exc).__name__}: {first}") from exc
        self.seconds[name] = round(time.perf_counter() - start, 2)
        log.info("%s done in %.1f s (peak RSS so far %.1f GB)", label, self.seconds[name], _peak_rss_gb())
