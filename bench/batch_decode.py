"""Decode step time against batch size: what continuous batching can gain on this machine.

    python bench/batch_decode.py EXPORT_DIR [--batches 1,2,4,8] [--prompt-tokens 128] [--steps 16] [--threads 0]

Runs the export's decoder the way the serving engine does (`TextDecoder.forward_rows` on a preallocated KV
pool, each row at its own length): B text prompts are prefilled, then `--steps` batched decode steps are
timed. Prints ms per step, tokens/s, and the throughput relative to batch 1; --json writes them with the
CPU's model and flags.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import summary as machine_summary  # bench scripts share helpers by path


def step_times(decoder, batch: int, prompt: int, steps: int, seed: int = 0) -> list[float]:
    facts = decoder.facts
    rows = prompt + steps + 1
    shape = (batch, facts.num_key_value_heads, rows, facts.head_dim)  # [B, kv, rows, hd]
    keys = [np.zeros(shape, np.float32) for _ in range(facts.num_layers)]
    values = [np.zeros(shape, np.float32) for _ in range(facts.num_layers)]
    rng = np.random.default_rng(seed)
    lengths = prompt - rng.integers(0, 8, batch)  # rows of slightly different lengths, as in serving
    for b in range(batch):  # prefill each row alone, as the engine does
        ids = rng.integers(10, 1000, (1, lengths[b]))
        positions = np.broadcast_to(np.arange(lengths[b]), (3, 1, lengths[b])).copy()
        decoder.forward_rows(ids, positions, np.ones((1, lengths[b]), np.int64),
                             [k[b:b + 1] for k in keys], [v[b:b + 1] for v in values])
    times = []
    for _ in range(steps):
        ids = rng.integers(10, 1000, (batch, 1))
        positions = np.broadcast_to(lengths[None, :, None], (3, batch, 1)).copy()
        mask = (np.arange(lengths.max() + 1)[None, :] <= lengths[:, None]).astype(np.int64)
        start = time.perf_counter()
        decoder.forward_rows(ids, positions, mask, keys, values)
        times.append(time.perf_counter() - start)
        lengths = lengths + 1
    return times


def main(argv=None) -> None:
    from qvl_compile.runtime.decoder import TextDecoder

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("export", type=Path)
    parser.add_argument("--batches", default="1,2,4,8")
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    decoder = TextDecoder.from_export(args.export, intra_op_threads=args.threads)
    step_times(decoder, 1, 16, 2)  # warm-up
    rows = []
    for batch in [int(b) for b in args.batches.split(",")]:
        median = float(np.median(step_times(decoder, batch, args.prompt_tokens, args.steps)))
        rows.append({"batch": batch, "ms_per_step": round(1000 * median, 1), "tokens_per_s": round(batch / median, 2)})
    print(f"{'batch':>5} {'ms/step':>8} {'tokens/s':>9} {'vs batch 1':>10}")
    for row in rows:
        print(f"{row['batch']:>5} {row['ms_per_step']:>8.1f} {row['tokens_per_s']:>9.2f} "
              f"{row['tokens_per_s'] / rows[0]['tokens_per_s']:>9.2f}x")
    if args.json:
        args.json.write_text(json.dumps({"cpu": machine_summary(), "export": str(args.export), "quant": decoder.artifact.quant
                                         if decoder.artifact else None, "prompt_tokens": args.prompt_tokens,
                                         "rows": rows}, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
