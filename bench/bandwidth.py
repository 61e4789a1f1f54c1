"""Memory read bandwidth of this machine, and the decode bound it sets for an export.

    python bench/bandwidth.py [--gib 1] [--threads 2] [--export OUT_DIR --context 512]

Bandwidth: `--threads` threads each take the maximum of their share of a `--gib` GiB float32 array (numpy
releases the GIL in reductions); best of 7 passes. The maximum, not the sum: numpy's float32 sum is pairwise and
compute-bound (about 8 GB/s per thread on our Xeon, half of what the same threads read with `maximum`), so a sum
measured the adder, not the memory. Decode bound: every token reads every weight except the token-embedding
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
            list(pool.map(np.maximum.reduce, chunks))
            best = max(best, data.nbytes / (time.perf_counter() - start))
    return best


# Ops that read rows of the embedding table: input 0 is the table; GatherBlockQuantized's other tensor inputs are
# its scales and zero points, read a row at a time too (unless another node reads the same bytes whole).
EMBEDDING_LOOKUPS = ("Gather", "GatherND", "GatherBlockQuantized")


def _tensor_bytes(tensor) -> int:
    import onnx

    return int(np.prod(tensor.dims)) * onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize


def _storage(tensor) -> tuple[str, str]:
    """Where a tensor's bytes live: (file, offset) for external data, else its own name."""
    external = {entry.key: entry.value for entry in tensor.external_data}
    return (external["location"], external.get("offset", "0")) if "location" in external else ("", tensor.name)


def embedding_table_bytes(model, vocab_size: int) -> int:
    """Bytes of the token-embedding table (data, scales, zero points) that only the lookup reads: one row per token.

    A tied table (the 2B and 4B checkpoints tie the embedding to the lm_head) is a second view of the lm_head's
    bytes, which MatMulNBits reads whole every token: those bytes stay in the per-token count."""
    initializers = {t.name: t for t in model.graph.initializer}
    nodes = list(model.graph.node)
    for index, node in enumerate(nodes):
        table = initializers.get(node.input[0]) if node.op_type in EMBEDDING_LOOKUPS and node.input else None
        if table is None or len(table.dims) != 2 or table.dims[0] != vocab_size:
            continue
        read_elsewhere = {_storage(initializers[name]) for other_index, other in enumerate(nodes) if other_index != index
                          for name in other.input if name in initializers}
        own = [table] + [initializers[name] for name in node.input[2:] if name in initializers]
        return sum(_tensor_bytes(t) for t in own if _storage(t) not in read_elsewhere)
    return 0


def bytes_per_token(export_dir: Path, context: int) -> dict[str, float]:
    """Weights read per decode step (all but the embedding table) and the KV cache at `context`."""
    import onnx

    manifest = json.loads((export_dir / "manifest.json").read_text())
    decoder = manifest["artifacts"]["decoder"]
    total = sum(f["bytes"] for f in decoder["files"] if f["path"].startswith("decoder.onnx"))  # not the prefill graph
    model = onnx.load(str(export_dir / decoder["files"][0]["path"]), load_external_data=False)
    table = embedding_table_bytes(model, decoder["vocab_size"])
    kv_bytes = 1 if decoder.get("quant", {}).get("kv_cache", {}).get("dtype") == "int8" else 4
    kv = 2 * decoder["num_layers"] * decoder["num_key_value_heads"] * decoder["head_dim"] * kv_bytes * context
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
        print(f"decode bound: {bandwidth / b['per_token']:.2f} tokens/s; 65% of it (the target): "
              f"{0.65 * bandwidth / b['per_token']:.2f}")


if __name__ == "__main__":
    main()
