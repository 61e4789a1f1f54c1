"""Vision speed, side by side in one run: PyTorch eager (sdpa) vs our vision graphs (fp32, 8-bit weights).

    python bench/vision_speed.py --torch MODEL_DIR --ours OUT_DIR [--ours OUT_DIR_INT8 ...]
        [--repeats 3] [--threads 2] [--markdown results.md] [--plot latency.png]

Each competitor lives in its own worker process (loaded once), so its peak resident memory is its own;
rounds are interleaved (every competitor runs every workload once per round). Workloads, in patches of
the 2B/4B/8B architecture (patch 16, merge 2): one 448x448 image, one 672x672, one 896x896, four mixed
images in one call, an 8-frame 448x448 video (4 temporal patches). Inputs are seeded random pixels.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import sys
from pathlib import Path

from machine import summary as machine_summary  # bench scripts share helpers by path

WORKLOADS = {
    "image 448x448": ((1, 28, 28),),
    "image 672x672": ((1, 42, 42),),
    "image 896x896": ((1, 56, 56),),
    "4 mixed images": ((1, 28, 28), (1, 20, 36), (1, 32, 24), (1, 16, 16)),
    "video 8 frames 448x448": ((4, 28, 28),),
}
IMAGE_SIDES = {"image 448x448": 448, "image 672x672": 672, "image 896x896": 896}


def _worker(kind: str, path: str, threads: int, conn) -> None:
    """Load one competitor, then answer workload requests with seconds; "stop" answers peak RSS (MiB)."""
    import resource
    import time

    import numpy as np

    from qvl_compile.golden.store import pixels_from_seed

    if kind == "torch":
        import torch

        from qvl_compile.families.qwen3_vl.loaders import load_vision_model, reference_vision

        torch.set_num_threads(threads)
        model = load_vision_model(path)

        def run(pixels, grid):
            reference_vision(model, torch.from_numpy(pixels), torch.from_numpy(grid))
    else:
        from qvl_compile.runtime.vision import VisionEncoder

        encoder = VisionEncoder.from_export(path, intra_op_threads=threads)

        def run(pixels, grid):
            encoder(pixels, grid)
    conn.send("ready")
    while True:
        request = conn.recv()
        if request == "stop":
            conn.send(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
            return
        grid = np.asarray(request, np.int64)
        pixels = pixels_from_seed(int(grid.prod(axis=1).sum()), 1536, seed=0)
        start = time.perf_counter()
        run(pixels, grid)
        conn.send(time.perf_counter() - start)


class Competitor:
    def __init__(self, name: str, kind: str, path: Path, threads: int):
        self.name = name
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_worker, args=(kind, str(path), threads, child), daemon=True)
        self.process.start()
        if self.conn.recv() != "ready":
            raise RuntimeError(f"{name}: worker failed to start")

    def time(self, grid) -> float:
        self.conn.send([list(g) for g in grid])
        return self.conn.recv()

    def stop(self) -> float:
        self.conn.send("stop")
        peak = self.conn.recv()
        self.process.join()
        return peak


def _cell(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def run(competitors: list[Competitor], workloads: dict, repeats: int) -> dict[str, dict[str, list[float]]]:
    times = {c.name: {w: [] for w in workloads} for c in competitors}
    for c in competitors:  # warm-up: first-run allocations and thread pools, not counted
        c.time(((1, 8, 8),))
    for repeat in range(repeats):
        for workload, grid in workloads.items():
            for c in competitors:
                times[c.name][workload].append(c.time(grid))
                print(f"round {repeat + 1}: {workload}: {c.name}: {times[c.name][workload][-1]:.2f} s",
                      file=sys.stderr, flush=True)
    return times


def markdown(times, peaks, baseline: str, repeats: int, threads: int) -> str:
    names = list(times)
    lines = ["| workload | " + " | ".join(f"{n} (s)" for n in names) + " | "
             + " | ".join(f"{n} / {baseline}" for n in names if n != baseline) + " |",
             "|---" * (1 + 2 * len(names) - 1) + "|"]
    for workload in next(iter(times.values())):
        medians = {n: statistics.median(times[n][workload]) for n in names}
        lines.append(f"| {workload} | " + " | ".join(_cell(times[n][workload]) for n in names) + " | "
                     + " | ".join(f"{medians[n] / medians[baseline]:.2f}" for n in names if n != baseline) + " |")
    lines.append("| peak RSS (MiB) | " + " | ".join(f"{peaks[n]:.0f}" for n in names) + " |"
                 + " |" * (len(names) - 1))
    lines.append(f"\nmedian (min-max) of {repeats} interleaved rounds, {threads} threads, one worker process per "
                 "runner (peak RSS includes loading)")
    lines.append(machine_summary())
    return "\n".join(lines) + "\n"


def plot(times, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, per_workload in times.items():
        sides = [IMAGE_SIDES[w] for w in IMAGE_SIDES if w in per_workload]
        medians = [statistics.median(per_workload[w]) for w in IMAGE_SIDES if w in per_workload]
        ax.plot(sides, medians, marker="o", label=name)
    ax.set_xlabel("image side (pixels, square)")
    ax.set_ylabel("latency (s, median)")
    ax.set_title("Qwen3-VL-2B vision tower, one image")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--torch", type=Path, help="checkpoint folder for PyTorch eager (sdpa)")
    parser.add_argument("--ours", type=Path, action="append", default=[], help="export folder (repeatable)")
    parser.add_argument("--names", nargs="*", help="display names for --ours, in order")
    parser.add_argument("--workload", action="append", choices=list(WORKLOADS), help="only these (repeatable)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--markdown", type=Path)
    parser.add_argument("--plot", type=Path)
    args = parser.parse_args()

    workloads = {k: WORKLOADS[k] for k in (args.workload or WORKLOADS)}
    names = args.names or [f"ours {p.name}" for p in args.ours]
    competitors = []
    if args.torch:
        competitors.append(Competitor("PyTorch eager sdpa", "torch", args.torch, args.threads))
    competitors += [Competitor(n, "ours", p, args.threads) for n, p in zip(names, args.ours)]
    times = run(competitors, workloads, args.repeats)
    peaks = {c.name: c.stop() for c in competitors}
    table = markdown(times, peaks, competitors[0].name, args.repeats, args.threads)
    print(table)
    if args.markdown:
        args.markdown.write_text(table)
    if args.plot:
        plot(times, args.plot)


if __name__ == "__main__":
    main()
