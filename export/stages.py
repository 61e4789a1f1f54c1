"""Named export stages: each logs what it did and fails with its name and number."""
from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator

from qvl_compile.errors import QvlError

log = logging.getLogger(__name__)


class Stages:
    def __init__(self, names: list[str]):
        self.names = names
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def run(self, name: str) -> Iterator[None]:
        number = self.names.index(name) + 1
        label = f"step {number}/{len(self.names)}: {name}"
        log.info("%s ...", label)
        start = time.perf_counter()
        try:
            yield
        except QvlError as exc:
            raise QvlError(f"{label} failed: {exc}") from exc
        except Exception as exc:  # noqa: BLE001 - any library failure becomes a named stage failure
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise QvlError(f"{label} failed: {type(exc).__name__}: {first}") from exc
        self.seconds[name] = round(time.perf_counter() - start, 2)
        log.info("%s done in %.1f s", label, self.seconds[name])
