"""Memory read bandwidth of this machine, and the decode bound it sets for an export.

    python bench/bandwidth.py [--gib 1] [--threads 2] [--export OUT_DIR --context 512]

Bandwidth: `--threads` threads each sum their share of a `--gib` GiB float32 array (numpy releases the GIL
in reductions); best of 7 passes. Decode bound: every token reads every weight except the token-embedding
table (one row of it) plus the KV cache at `--context` tokens, so tokens/s <= bandwidth / bytes per token.
"""
from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from machine import summary as machine_summary  # bench scripts share helpers by path


def read_bandwidth(gib: float = 1.0, threads: int = 2, passes: int = 7) -> float:
    """Bytes per second, best of `passes`."""
    data = np.ones(int(gib * (1 << 30)) // 4, np.float32)
    chunks = np.array_split(data, threads)
    best = 0.0
    with ThreadPoolExecutor(threads) as pool:
        for _ in range(passes):
            start = time.perf_counter()
            list(pool.map(np.add.reduce, chunks))
            best = max(best, data.nbytes / (time.perf_counter() - start))
    return best


def bytes_per_token(export_dir: Path, context: int) -> dict[str, float]:
    """Weights read per decode step (all but the embedding table) and the KV cache at `context`."""
    import onnx

    manifest = json.loads((export_dir / "manifest.json").read_text())
    decoder = manifest["artifacts"]["decoder"]
    total = sum(f["bytes"] for f in decoder["files"])
    model = onnx.load(str(export_dir / decoder["files"][0]["path"]), load_external_data=False)
    gathered = {n.input[0] for n in model.graph.node if n.op_type in ("Gather", "GatherND")}
    table = 0
    for tensor in model.graph.initializer:
        if tensor.name in gathered and len(tensor.dims) == 2 and tensor.dims[0] == decoder["vocab_size"]:
            table = int(np.prod(tensor.dims)) * 4
    kv = 2 * decoder["num_layers"] * decoder["num_key_value_heads"] * decoder["head_dim"] * 4 * context
    return {"weights": total - table, "embedding_table": table, "kv_cache": kv, "per_token": total - table + kv}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gib", type=float, default=1.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--export", type=Path)
    parser.add_argument("--context", type=int, default=512)
    args = parser.parse_args()
    print(machine_summary())
    bandwidth = read_bandwidth(args.gib, args.threads)
    print(f"read bandwidth: {bandwidth / 1e9:.1f} GB/s ({args.threads} threads, best of 7 over {args.gib} GiB)")
    if args.export:
        b = bytes_per_token(args.export, args.context)
        print(f"bytes per decode token at {args.context} context: {b['per_token'] / 1e9:.3f} GB "
              f"(weights {b['weights'] / 1e9:.3f}, KV cache {b['kv_cache'] / 1e9:.3f}; embedding table "
              f"{b['embedding_table'] / 1e9:.3f} GB not streamed)")
        print(f"decode bound: {bandwidth / b['per_token']:.2f} tokens/s; 60% of it: {0.6 * bandwidth / b['per_token']:.2f}")


if __name__ == "__main__":
    main()
