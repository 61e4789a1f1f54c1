"""`qvl-compile batch` throughput: images per minute, locally and on Ray, for each worker count.

    python bench/batch_throughput.py EXPORT_DIR [--cases 16] [--size 448] [--tokens 24] [--workers 1,2]
                                     [--threads 1] [--modes local,ray] [--rounds 1] [--json FILE]

Writes --cases random RGB images of --size x --size pixels and one case each ("Describe the image.", greedy,
--tokens new tokens; a random-weight checkpoint does not stop early, so every case decodes all of them), then
runs the real command for each (mode, workers) pair, in interleaved rounds, on a fresh OUTPUT each time. Ray runs
a local Ray that the command starts itself (RAY_ADDRESS unset), so its start-up is part of the figure.
Per run: wall time of the command, time to the first result line (start-up: interpreter, Ray, pipeline loads,
hash checks on Ray), images per minute over the whole run, and images per minute between the first and the last
result (the steady rate that scales with nodes). OUTPUT's lines are timestamped by polling every 50 ms.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import summary as machine_summary  # bench scripts share helpers by path

POLL_SECONDS = 0.05


def write_inputs(folder: Path, cases: int, size: int, tokens: int) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    lines = []
    for index in range(cases):
        path = folder / f"image-{index:03d}.png"
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
        lines.append({"id": f"image-{index:03d}", "prompt": "Describe the image.", "images": [path.name],
                      "max_new_tokens": tokens})
    cases_file = folder / "cases.jsonl"
    cases_file.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return cases_file


def timed_run(export: Path, cases_file: Path, output: Path, mode: str, workers: int, threads: int) -> dict:
    """Run the command; -> wall, first-result and last-result seconds and the result count."""
    command = [sys.executable, "-m", "qvl_compile.cli", "batch", str(export), str(cases_file), str(output),
               "--workers", str(workers), "--threads", str(threads)] + (["--ray"] if mode == "ray" else [])
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"RAY_USAGE_STATS_ENABLED": "0"}
    arrivals: list[float] = []
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    while process.poll() is None:
        lines = output.read_text().count("\n") if output.exists() else 0
        arrivals += [time.perf_counter() - started] * (lines - len(arrivals))
        time.sleep(POLL_SECONDS)
    wall = time.perf_counter() - started
    err = process.stderr.read()
    if process.returncode != 0:
        raise SystemExit(f"{mode} x{workers} failed:\n{err}")
    lines = [json.loads(line) for line in output.read_text().splitlines()]
    arrivals += [wall] * (len(lines) - len(arrivals))
    errors = [line for line in lines if "error" in line]
    if errors:
        raise SystemExit(f"{mode} x{workers}: {len(errors)} cases failed, e.g. {errors[0]}")
    return {"mode": mode, "workers": workers, "threads": threads, "cases": len(lines), "wall_s": round(wall, 2),
            "first_result_s": round(arrivals[0], 2), "last_result_s": round(arrivals[-1], 2)}


def rates(run: dict) -> dict:
    steady = (run["cases"] - 1) / max(run["last_result_s"] - run["first_result_s"], 1e-9) * 60
    return {**run, "images_per_min": round(run["cases"] / run["wall_s"] * 60, 2),
            "steady_images_per_min": round(steady, 2)}


def table(runs: list[dict]) -> str:
    rows = ["| mode | workers x threads | wall s | first result s | images/min (whole run) | images/min (steady) |",
            "|---|---|---|---|---|---|"]
    for r in runs:
        rows.append(f"| {r['mode']} | {r['workers']} x {r['threads']} | {r['wall_s']:.1f} | {r['first_result_s']:.1f} "
                    f"| {r['images_per_min']:.2f} | {r['steady_images_per_min']:.2f} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("export", type=Path)
    parser.add_argument("--cases", type=int, default=16)
    parser.add_argument("--size", type=int, default=448)
    parser.add_argument("--tokens", type=int, default=24)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--modes", default="local,ray")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    print(machine_summary(), flush=True)
    runs = []
    with tempfile.TemporaryDirectory(prefix="qvl-batch-bench-") as tmp:
        cases_file = write_inputs(Path(tmp), args.cases, args.size, args.tokens)
        for round_index in range(args.rounds):
            for workers in map(int, args.workers.split(",")):
                for mode in args.modes.split(","):
                    output = Path(tmp) / f"out-{mode}-{workers}-{round_index}.jsonl"
                    run = rates(timed_run(args.export, cases_file, output, mode, workers, args.threads))
                    print(json.dumps(run), flush=True)
                    runs.append(run)
    print(table(runs))
    if args.json:
        args.json.write_text(json.dumps({"machine": machine_summary(), "runs": runs}, indent=2) + "\n")


if __name__ == "__main__":
    main()
