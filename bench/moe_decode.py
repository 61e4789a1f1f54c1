"""Mixture-of-experts decode cost, side by side in one run: per layer, against a dense decoder, and as experts grow.

    python bench/moe_decode.py RUN=OUT_DIR [RUN=OUT_DIR ...] [--context 512] [--decode-tokens 32]
        [--repeats 3] [--threads 2]

Each RUN is a decoder export (e.g. `qvl-compile random 30b-a3b DIR --layers 4` exported with --component
decoder, and the dense 2B for reference). Per run: decode tokens/s after a `--context`-token prompt (median
of interleaved rounds), milliseconds per token per decoder layer (the lm_head and embedding included, so an
upper bound per layer), bytes read per token (every weight but the embedding table, experts counted at top-k
of E, plus the fp32 KV cache at that context) and the peak RSS of a process that loads only that export and
decodes at that context.
"""
from __future__ import annotations

import argparse
import gc
import json
import resource
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
from decoder_speed import Ours  # bench scripts share helpers by path
from machine import summary as machine_summary


def decode_bytes(export_dir: Path, context: int) -> float:
    """Bytes a decode step reads: weights (experts at k/E of their bytes), not the embedding table, plus the cache."""
    import onnx

    from qvl_compile.manifest import load_artifact

    graph, artifact, _ = load_artifact(export_dir, "decoder")
    proto = onnx.load(str(graph), load_external_data=False)
    nbytes = {t.name: int(np.prod(t.dims)) * np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
              for t in proto.graph.initializer}
    table = {n.input[0] for n in proto.graph.node if n.op_type in ("Gather", "GatherBlockQuantized")
             and n.input[0] in nbytes and nbytes[n.input[0]] > 1 << 20}
    experts: dict[str, float] = {}
    for node in proto.graph.node:
        if node.op_type in ("MoE", "QMoE"):
            k = next(a.i for a in node.attribute if a.name == "k")
            count = next(d for t in proto.graph.initializer if t.name == node.input[2] for d in t.dims[:1])
            for name in node.input[2:]:
                if name in nbytes:
                    experts[name] = nbytes[name] * k / count
    weights = sum(experts.get(name, size) for name, size in nbytes.items() if name not in table)
    shape = artifact.shape
    return weights + 2 * shape.num_layers * shape.num_key_value_heads * shape.head_dim * 4 * context


def peak_rss_gb() -> float:
    """This process's peak resident set. VmHWM, not ru_maxrss: Linux carries ru_maxrss over fork and exec, so a
    child started by a large parent would report the parent's size."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1e6  # kB -> GB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def run_arguments(description: str) -> argparse.ArgumentParser:
    """The arguments every MoE decode measurement takes (this script's and moe_prepacking.py's)."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", metavar="LABEL=OUT_DIR")
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--decode-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    return parser


def main() -> None:
    parser = run_arguments(__doc__)
    parser.add_argument("--depths", nargs=2, metavar=("SHALLOW", "DEEP"),
                        help="labels of two runs of one architecture at different depths: per-layer cost by difference")
    parser.add_argument("--dense", metavar="LABEL", help="a dense run whose per-layer cost uses the same fixed cost")
    parser.add_argument("--extrapolate", type=int, metavar="LAYERS", help="the full depth to extrapolate to")
    parser.add_argument("--experts-pair", nargs=2, metavar=("FEWER", "MORE"),
                        help="labels of two runs differing only in the number of experts")
    parser.add_argument("--peak-rss-only", action="store_true", help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args()
    ids = np.random.default_rng(0).integers(0, 151000, args.context)
    if args.peak_rss_only:
        run = Ours(Path(args.runs[0]), args.threads, None, Path(args.runs[0]))
        run.decode(ids % run.decoder.facts.vocab_size, 4)
        print(peak_rss_gb())
        return
    runs, peak = {}, {}
    for item in args.runs:
        label, _, folder = item.partition("=")
        child = subprocess.run([sys.executable, __file__, folder, "--peak-rss-only", "--context", str(args.context),
                                "--threads", str(args.threads)], capture_output=True, text=True, check=True)
        peak[label] = float(child.stdout.split()[-1])
        runs[label] = Ours(Path(folder), args.threads, None, Path(folder), label=label)
        runs[label].decode(ids % runs[label].decoder.facts.vocab_size, 4)  # warm up
        gc.collect()
    speed: dict[str, list[float]] = {label: [] for label in runs}
    for repeat in range(args.repeats):  # interleaved rounds
        for label, run in runs.items():
            speed[label].append(run.decode(ids % run.decoder.facts.vocab_size, args.decode_tokens))
            gc.collect()
            print(f"round {repeat + 1}: {label}: {speed[label][-1]:.2f} tokens/s", file=sys.stderr, flush=True)
    print(f"| run | layers | decode at {args.context} (tokens/s) | ms/token/layer | GB read/token | peak RSS (GB) |")
    print("|---|---|---|---|---|---|")
    for item in args.runs:
        label, _, folder = item.partition("=")
        layers = json.loads((Path(folder) / "manifest.json").read_text())["artifacts"]["decoder"]["num_layers"]
        tps = statistics.median(speed[label])
        print(f"| {label} | {layers} | {tps:.2f} ({min(speed[label]):.2f}-{max(speed[label]):.2f}) | "
              f"{1000 / tps / layers:.2f} | {decode_bytes(Path(folder), args.context) / 1e9:.3f} | {peak[label]:.1f} |")
    print(f"\nmedian (min-max) of {args.repeats} interleaved rounds, {args.decode_tokens} tokens, {args.threads} threads")
    folders = dict(item.partition("=")[::2] for item in args.runs)
    if args.depths:
        print(depth_analysis(args, speed, folders, peak))
    if args.experts_pair:
        fewer, more = args.experts_pair
        ratios = [b / a for a, b in zip(speed[fewer], speed[more])]  # per round: the machine drifts between rounds
        print(f"\ndecode time per token, {more} against {fewer}: {statistics.median(ratios):.3f}x "
              f"(median of per-round ratios, range {min(ratios):.3f}-{max(ratios):.3f})")
    print(machine_summary())


def _layers(folder: str) -> int:
    return json.loads((Path(folder) / "manifest.json").read_text())["artifacts"]["decoder"]["num_layers"]


def _data_bytes(folder: str) -> int:
    files = json.loads((Path(folder) / "manifest.json").read_text())["artifacts"]["decoder"]["files"]
    return sum(f["bytes"] for f in files)


def depth_analysis(args, speed: dict, folders: dict, peak: dict) -> str:
    """Per-layer and fixed costs from two depths of one architecture (per round, then the median), and the full
    depth extrapolated linearly: time, bytes read, file size and peak RSS."""
    shallow, deep = args.depths
    ls, ld = _layers(folders[shallow]), _layers(folders[deep])
    per_layer = statistics.median((1 / d - 1 / s) / (ld - ls) for s, d in zip(speed[shallow], speed[deep]))
    fixed = statistics.median(1 / s - ls * per_layer for s in speed[shallow])
    lines = [f"\nper decoder layer: {per_layer * 1000:.2f} ms; fixed (embedding, final norm, lm_head, "
             f"session): {fixed * 1000:.2f} ms ({shallow} against {deep}, median over rounds)"]
    if args.dense:
        dense = statistics.median((1 / t - fixed) / _layers(folders[args.dense]) for t in speed[args.dense])
        lines.append(f"{args.dense} per layer with the same fixed cost: {dense * 1000:.2f} ms; the MoE layer costs "
                     f"{per_layer / dense:.2f}x")
    if args.extrapolate:
        n = args.extrapolate

        def linear(shallow_value: float, deep_value: float) -> float:
            step = (deep_value - shallow_value) / (ld - ls)
            return shallow_value + (n - ls) * step
        read = linear(decode_bytes(Path(folders[shallow]), args.context), decode_bytes(Path(folders[deep]), args.context))
        lines.append(f"extrapolated to {n} layers (an extrapolation, not a measurement): decode "
                     f"{1 / (fixed + n * per_layer):.1f} tokens/s at {args.context} context, {read / 1e9:.2f} GB read "
                     f"per token, decoder files {linear(_data_bytes(folders[shallow]), _data_bytes(folders[deep])) / 1e9:.1f}"
                     f" GB, peak RSS {linear(peak[shallow], peak[deep]):.1f} GB")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
