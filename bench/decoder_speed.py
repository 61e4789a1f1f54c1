"""Decoder speed, side by side in one run: our ONNX decoder, onnxruntime-genai's builder output, PyTorch eager.

    python bench/decoder_speed.py --ours OUT_DIR [--ours-level 4] [--genai GENAI_DIR] [--torch MODEL_DIR]
        [--context 512] [--decode-tokens 32] [--prefill 1000] [--repeats 3] [--threads 2]

Workloads (text tokens; random ids, the speed of a decoder does not depend on them):
  * prefill: time to process a `--prefill`-token prompt and produce the last position's logits;
  * decode: tokens/s over `--decode-tokens` greedy steps after a `--context`-token prompt.
Repetitions are interleaved across competitors; the table gives the median and the range.
"""
from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from pathlib import Path

import numpy as np


class Ours:
    def __init__(self, export_dir: Path, threads: int, accuracy_level: int | None, workdir: Path):
        from qvl_compile.runtime.decoder import TextDecoder

        decoder = TextDecoder.from_export(export_dir)
        if accuracy_level is not None:  # same weights, another MatMulNBits accuracy level
            from qvl_compile.export.decoder_verify import with_accuracy_level

            graph = export_dir / "decoder.onnx"
            variant = export_dir / f"decoder.accuracy{accuracy_level}.bench.onnx"
            with_accuracy_level(graph, accuracy_level, variant)
            decoder = TextDecoder(variant, decoder.facts, intra_op_threads=threads)
            variant.unlink()
        else:
            decoder = TextDecoder.from_export(export_dir, intra_op_threads=threads)
        self.decoder = decoder
        self.name = f"ours INT4 (accuracy_level {accuracy_level or 'as exported'})"

    def _positions(self, start: int, count: int) -> np.ndarray:
        return np.broadcast_to(np.arange(start, start + count), (3, 1, count)).copy()

    def prefill(self, ids: np.ndarray) -> float:
        start = time.perf_counter()
        self.decoder.forward(ids[None], self._positions(0, len(ids)), self.decoder.empty_cache())
        return time.perf_counter() - start

    def decode(self, ids: np.ndarray, steps: int) -> float:
        logits, cache = self.decoder.forward(ids[None], self._positions(0, len(ids)), self.decoder.empty_cache())
        token = int(logits[0, -1].argmax())
        start = time.perf_counter()
        for step in range(steps):
            logits, cache = self.decoder.forward(np.array([[token]]), self._positions(len(ids) + step, 1), cache)
            token = int(logits[0, -1].argmax())
        return steps / (time.perf_counter() - start)


class Genai:
    def __init__(self, model_dir: Path, threads: int, max_length: int):
        import onnxruntime_genai as og

        config = og.Config(str(model_dir))
        self.og, self.model = og, og.Model(config)
        self.max_length = max_length
        self.name = "onnxruntime-genai builder INT4"

    def _generator(self):
        params = self.og.GeneratorParams(self.model)
        params.set_search_options(max_length=self.max_length, do_sample=False)
        return self.og.Generator(self.model, params)

    def prefill(self, ids: np.ndarray) -> float:
        generator = self._generator()
        start = time.perf_counter()
        generator.append_tokens(ids[None].astype(np.int32))
        return time.perf_counter() - start

    def decode(self, ids: np.ndarray, steps: int) -> float:
        generator = self._generator()
        generator.append_tokens(ids[None].astype(np.int32))
        start = time.perf_counter()
        for _ in range(steps):
            generator.generate_next_token()
        return steps / (time.perf_counter() - start)


class Torch:
    def __init__(self, model_dir: Path, threads: int):
        import torch

        from qvl_compile.export.decoder import load_full_model

        torch.set_num_threads(threads)
        self.torch, self.model = torch, load_full_model(model_dir)
        self.name = "PyTorch eager fp32 (sdpa)"

    def prefill(self, ids: np.ndarray) -> float:
        with self.torch.no_grad():
            start = time.perf_counter()
            self.model(input_ids=self.torch.from_numpy(ids[None]), use_cache=True, logits_to_keep=1)
            return time.perf_counter() - start

    def decode(self, ids: np.ndarray, steps: int) -> float:
        torch = self.torch
        with torch.no_grad():
            out = self.model(input_ids=torch.from_numpy(ids[None]), use_cache=True, logits_to_keep=1)
            cache = getattr(out, "cache", None) or out.past_key_values
            token = int(out.logits[0, -1].argmax())
            start = time.perf_counter()
            for _ in range(steps):
                out = self.model(input_ids=torch.tensor([[token]]), past_key_values=cache, use_cache=True)
                cache = getattr(out, "cache", None) or out.past_key_values
                token = int(out.logits[0, -1].argmax())
            return steps / (time.perf_counter() - start)


def summarize(values: list[float], fmt: str) -> str:
    return f"{fmt.format(statistics.median(values))} ({fmt.format(min(values))}-{fmt.format(max(values))})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ours", type=Path, required=True)
    parser.add_argument("--ours-level", type=int, action="append", default=[],
                        help="also run our graph at this MatMulNBits accuracy_level (repeatable)")
    parser.add_argument("--genai", type=Path)
    parser.add_argument("--torch", type=Path, help="checkpoint folder for PyTorch eager")
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--decode-tokens", type=int, default=32)
    parser.add_argument("--prefill", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    competitors = [Ours(args.ours, args.threads, None, args.ours)]
    competitors += [Ours(args.ours, args.threads, level, args.ours) for level in args.ours_level]
    if args.genai:
        competitors.append(Genai(args.genai, args.threads, max(args.prefill, args.context + args.decode_tokens) + 8))
    if args.torch:
        competitors.append(Torch(args.torch, args.threads))
    vocab = competitors[0].decoder.facts.vocab_size
    rng = np.random.default_rng(0)
    prefill_ids = rng.integers(0, min(vocab, 151000), args.prefill)
    context_ids = rng.integers(0, min(vocab, 151000), args.context)

    prefill = {c.name: [] for c in competitors}
    decode = {c.name: [] for c in competitors}
    for repeat in range(args.repeats):  # interleaved: every competitor once per round
        for c in competitors:
            prefill[c.name].append(c.prefill(prefill_ids))
            gc.collect()
            decode[c.name].append(c.decode(context_ids, args.decode_tokens))
            gc.collect()
            print(f"round {repeat + 1}: {c.name}: prefill {prefill[c.name][-1]:.2f} s, "
                  f"decode {decode[c.name][-1]:.2f} tokens/s", file=sys.stderr, flush=True)

    print(f"| runner | prefill {args.prefill} tokens (s) | decode at {args.context} context (tokens/s) |")
    print("|---|---|---|")
    for c in competitors:
        print(f"| {c.name} | {summarize(prefill[c.name], '{:.2f}')} | {summarize(decode[c.name], '{:.2f}')} |")
    print(f"\nmedian (min-max) of {args.repeats} interleaved rounds, {args.threads} threads, "
          f"{args.decode_tokens} greedy decode steps")


if __name__ == "__main__":
    main()
