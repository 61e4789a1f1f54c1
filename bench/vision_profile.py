"""Where a vision graph spends its time: onnxruntime's own profiler, one run per grid after a warm-up, time summed
by operator type (subgraph nodes included: the per-frame attention runs inside an If branch, and for mixed frame
lengths inside a Loop within it).

    python bench/vision_profile.py OUT_DIR [OUT_DIR ...] [--grid 1,28,28] [--grid 1,56,56] [--threads 2]

Grids are in patches (1,28,28 is one 448x448 image). Inputs are seeded random pixels, as bench/vision_speed.py's.
"""
from __future__ import annotations

import argparse
import collections
import json
import tempfile
from pathlib import Path

import numpy as np
from machine import summary as machine_summary  # bench scripts share helpers by path

from qvl_compile.golden.store import pixels_from_seed
from qvl_compile.runtime.session import make_session


def profile(graph: Path, grid: tuple[int, int, int], threads: int) -> tuple[float, dict[str, float]]:
    """-> (wall ms of the profiled run, op type -> summed kernel ms)."""
    with tempfile.TemporaryDirectory() as scratch:  # the runtime's own session options, profiling on
        session = make_session(graph, intra_op_threads=threads, profile_prefix=str(Path(scratch) / "vision"))
        grid_array = np.asarray([grid], np.int64)
        feeds = {"pixel_values": pixels_from_seed(int(np.prod(grid)), 1536, seed=0), "grid_thw": grid_array}
        session.run(None, feeds)  # warm-up: its events come first in the file
        session.run(None, feeds)
        events = json.loads(Path(session.end_profiling()).read_text())
    return last_run_by_op(events)


def last_run_by_op(events: list[dict]) -> tuple[float, dict[str, float]]:
    """onnxruntime profile events -> (wall ms of the last run, op type -> summed kernel ms within it)."""
    runs = [e for e in events if e.get("name") == "model_run"]
    last = runs[-1]
    start, end = last["ts"], last["ts"] + last["dur"]
    by_op: dict[str, float] = collections.Counter()
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time") and start <= event["ts"] <= end:
            by_op[event["args"]["op_name"]] += event["dur"] / 1000
    return last["dur"] / 1000, dict(by_op)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("exports", nargs="+", type=Path)
    parser.add_argument("--grid", action="append", help="t,h,w in patches (repeatable); default 1,28,28 and 1,56,56")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--top", type=int, default=8)
    args = parser.parse_args()
    grids = [tuple(int(v) for v in g.split(",")) for g in (args.grid or ["1,28,28", "1,56,56"])]
    for export in args.exports:
        for grid in grids:
            wall, by_op = profile(export / "vision.onnx", grid, args.threads)
            kernels = sum(by_op.values())
            print(f"\n{export} grid {grid}: run {wall:.0f} ms, kernels {kernels:.0f} ms "
                  "(If and Loop count their subgraphs' time again)")
            print("| op | ms | share of run |\n|---|---:|---:|")
            for op, ms in sorted(by_op.items(), key=lambda kv: -kv[1])[:args.top]:
                print(f"| {op} | {ms:.0f} | {ms / wall:.0%} |")
    print(f"\n{args.threads} threads; {machine_summary()}")


if __name__ == "__main__":
    main()
