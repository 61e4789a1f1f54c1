"""Mixture-of-experts decode cost, side by side in one run: per layer, against a dense decoder, and as experts grow.

    python bench/moe_decode.py RUN=OUT_DIR [RUN=OUT_DIR ...] [--context 512] [--decode-tokens 32]
        [--repeats 3] [--threads 2]

Each RUN is a decoder export (e.g. `qvl-compile random 30b-a3b DIR --layers 4` exported with --component
decoder, and the dense 2B for reference). Per run: decode tokens/s after a `--context`-token prompt (median
of interleaved rounds), milliseconds per token per decoder layer (the lm_head and embedding included, so an
upper bound per layer), bytes read per token (every weight but the embedding table, experts counted at top-k
of E, plus the fp32 KV cache at that context) and the process's peak RSS after loading it and decoding (runs
load in the order given, so each figure includes the runs before it; give the largest last).
"""
from __future__ import annotations

import argparse
import gc
import json
import resource
import statistics
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", metavar="LABEL=OUT_DIR")
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--decode-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    runs, peak = {}, {}
    ids = np.random.default_rng(0).integers(0, 151000, args.context)
    for item in args.runs:
        label, _, folder = item.partition("=")
        runs[label] = Ours(Path(folder), args.threads, None, Path(folder), label=label)
        runs[label].decode(ids % runs[label].decoder.facts.vocab_size, 4)  # warm up
        peak[label] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # kB -> GB
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
    print(machine_summary())


if __name__ == "__main__":
    main()
