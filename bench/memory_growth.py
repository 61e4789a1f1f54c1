"""Resident memory over a long generation: does anything but the KV cache grow?

    python bench/memory_growth.py OUT_DIR [--tokens 2000] [--every 100] [--rounds 3] [--json]

Generates `--tokens` tokens per round with end-of-sequence disabled (so every round runs to the end),
`--rounds` times with one loaded Pipeline, and records the process's resident memory (VmRSS) every
`--every` tokens. The KV cache is preallocated per call and its pages are touched as it fills, so the
allowed growth within a round is the cache's bytes; between rounds memory should return to the same level.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

from qvl_compile.runtime.pipeline import Pipeline


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status (Linux only)")


def kv_bytes(pipe: Pipeline, rows: int) -> int:
    f = pipe.decoder.facts
    return 2 * f.num_layers * f.num_key_value_heads * f.head_dim * 4 * rows  # keys + values, float32


def measure(export_dir: Path, tokens: int, every: int, rounds: int, threads: int) -> dict:
    pipe = Pipeline(export_dir, intra_op_threads=threads)
    sampling = replace(pipe.sampling, eos_token_ids=())  # never stop early
    samples = []  # (round, tokens generated, rss bytes)
    for round_ in range(rounds):
        count = 0
        for count, _ in enumerate(pipe.stream("Tell a long story.", max_new_tokens=tokens, sampling=sampling,
                                              seed=round_), start=1):
            if count % every == 0:
                samples.append((round_, count, rss_bytes()))
        assert count == tokens, f"round {round_} stopped at {count} tokens"
    prompt_rows = len(pipe.prepare("Tell a long story.").input_ids)
    return {"tokens": tokens, "rounds": rounds, "samples": samples,
            "kv_cache_bytes": kv_bytes(pipe, prompt_rows + tokens)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("export_dir", type=Path)
    parser.add_argument("--tokens", type=int, default=2000)
    parser.add_argument("--every", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", action="store_true", help="print the samples as JSON instead of a table")
    args = parser.parse_args()
    result = measure(args.export_dir, args.tokens, args.every, args.rounds, args.threads)
    if args.json:
        print(json.dumps(result))
        return
    print(f"KV cache at {args.tokens} tokens: {result['kv_cache_bytes'] / 2**20:.1f} MiB")
    print("| round | tokens | RSS MiB |\n|---|---|---|")
    for round_, count, rss in result["samples"]:
        print(f"| {round_} | {count} | {rss / 2**20:.1f} |")


if __name__ == "__main__":
    main()
