"""Import a script from bench/ as a module: bench scripts share helpers by path (`from machine import ...`), not as
a package, so bench/ is put on sys.path for the import only."""
import importlib
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"


def bench_module(name: str):
    sys.path.insert(0, str(BENCH))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.pop(0)
