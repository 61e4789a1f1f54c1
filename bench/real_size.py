"""`generate` at real size through the runtime's own path: tokenizer, chat template, image preprocessing,
vision graph, INT4 decoder with the in-place cache. One 448x448 image, greedy, EOS ignored.

    python bench/real_size.py OUT_DIR [--size 448] [--new-tokens 64] [--repeats 3] [--threads 2]

Reported: load time, time to first token (preprocessing included), decode tokens/s after the first token,
and the process's peak RSS. Run on exports of `qvl-compile random 2b|4b|8b` checkpoints (they ship a
tokenizer with the released special tokens), so the figures come from the same code `qvl-compile generate`
runs.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import statistics
import time
from pathlib import Path

from PIL import Image

from qvl_compile.runtime.pipeline import Pipeline

SAMPLE = Path(__file__).resolve().parents[1] / "runtime" / "samples" / "red-house.png"


def run_once(pipeline: Pipeline, image: Image.Image, new_tokens: int) -> tuple[float, float]:
    """(seconds to the first token, decode tokens per second after it)."""
    sampling = dataclasses.replace(pipeline.sampling.greedy(), eos_token_ids=())  # exactly new_tokens tokens
    start = time.perf_counter()
    stamps = []
    for _ in pipeline.stream("Describe this image.", images=[image], max_new_tokens=new_tokens, sampling=sampling):
        stamps.append(time.perf_counter())
    return stamps[0] - start, (len(stamps) - 1) / (stamps[-1] - stamps[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("export_dir", type=Path)
    parser.add_argument("--size", type=int, default=448)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    start = time.perf_counter()
    pipeline = Pipeline(args.export_dir, intra_op_threads=args.threads)
    load = time.perf_counter() - start
    image = Image.open(SAMPLE).convert("RGB").resize((args.size, args.size))
    run_once(pipeline, image, 4)  # warm-up
    runs = [run_once(pipeline, image, args.new_tokens) for _ in range(args.repeats)]
    print(json.dumps({
        "export": str(args.export_dir), "image": f"{args.size}x{args.size}", "threads": args.threads,
        "load_s": round(load, 2),
        "ttft_s": round(statistics.median(r[0] for r in runs), 3),
        "decode_tokens_per_s": round(statistics.median(r[1] for r in runs), 2),
        "new_tokens": args.new_tokens, "repeats": args.repeats,
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2),
    }))


if __name__ == "__main__":
    main()
