"""Decoder speed, side by side in one run: our ONNX decoder, onnxruntime-genai's builder output, llama.cpp,
PyTorch eager.

    python bench/decoder_speed.py --ours OUT_DIR [--ours-level 4] [--compare-copy] [--also LABEL=OUT_DIR2]
        [--genai GENAI_DIR] [--llama-bench BINARY --gguf MODEL.gguf] [--torch MODEL_DIR]
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
from machine import summary as machine_summary  # bench scripts share helpers by path


class Ours:
    def __init__(self, export_dir: Path, threads: int, accuracy_level: int | None, workdir: Path, in_place: bool = True,
                 label: str = ""):
        from qvl_compile.manifest import load_artifact
        from qvl_compile.runtime.decoder import TextDecoder

        if accuracy_level is None:
            decoder = TextDecoder.from_export(export_dir, intra_op_threads=threads)
        else:  # same weights, another MatMulNBits accuracy level; one session, on the rewritten graph only
            from qvl_compile.export.decoder_verify import with_accuracy_level

            graph, artifact, _ = load_artifact(export_dir, "decoder")
            variant = workdir / f"decoder.accuracy{accuracy_level}.bench.onnx"
            with_accuracy_level(graph, accuracy_level, variant)
            try:
                decoder = TextDecoder(variant, artifact.shape, intra_op_threads=threads, kv_cache=artifact.kv_cache)
            finally:
                variant.unlink()
        self.decoder = decoder
        self.in_place = in_place
        cache = "KV cache in place" if in_place else "KV cache copied per step"
        self.name = f"ours INT4 (accuracy_level {accuracy_level or 'as exported'}, {cache}{', ' + label if label else ''})"

    def _positions(self, start: int, count: int) -> np.ndarray:
        return np.broadcast_to(np.arange(start, start + count), (3, 1, count)).copy()

    def prefill(self, ids: np.ndarray) -> float:
        start = time.perf_counter()
        self.decoder.forward(ids[None], self._positions(0, len(ids)), self.decoder.empty_cache())
        return time.perf_counter() - start

    def decode(self, ids: np.ndarray, steps: int) -> float:
        cache = self.decoder.empty_cache(capacity=len(ids) + steps) if self.in_place else self.decoder.empty_cache()
        logits, cache = self.decoder.forward(ids[None], self._positions(0, len(ids)), cache)
        token = int(logits[0, -1].argmax())
        start = time.perf_counter()
        for step in range(steps):
            logits, cache = self.decoder.forward(np.array([[token]]), self._positions(len(ids) + step, 1), cache)
            token = int(logits[0, -1].argmax())
        return steps / (time.perf_counter() - start)


class Genai:
    def __init__(self, model_dir: Path, threads: int, max_length: int):
        import onnxruntime_genai as og

        self._overlay = _genai_with_threads(model_dir, threads)
        self.og, self.model = og, og.Model(og.Config(self._overlay.name))
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


def _genai_with_threads(model_dir: Path, threads: int):
    """onnxruntime-genai takes its thread count from genai_config.json only: a temporary folder of links to the
    builder's files, with a genai_config.json whose session options say `threads`."""
    import json
    import tempfile

    overlay = tempfile.TemporaryDirectory(prefix="genai-threads-")
    for item in model_dir.iterdir():
        if item.name != "genai_config.json":
            (Path(overlay.name) / item.name).symlink_to(item.resolve())
    config = json.loads((model_dir / "genai_config.json").read_text())
    options = config["model"]["decoder"].setdefault("session_options", {})
    options["intra_op_num_threads"] = threads
    options["inter_op_num_threads"] = 1
    (Path(overlay.name) / "genai_config.json").write_text(json.dumps(config, indent=2))
    return overlay


class LlamaCpp:
    """llama.cpp's own benchmark (`llama-bench`) on a GGUF made by its own converter and quantizer
    (docs/perf/llama_cpp.md). llama-bench draws its own random tokens; each call loads the model (not timed) and
    measures one repetition after its warm-up."""

    def __init__(self, llama_bench: Path, gguf: Path, threads: int):
        if not llama_bench.is_file() or not gguf.is_file():
            raise SystemExit(f"--llama-bench {llama_bench} and --gguf {gguf}: expected an existing binary and GGUF file")
        self.binary, self.gguf, self.threads = llama_bench, gguf, threads
        self.name = f"llama.cpp ({gguf.name})"

    def _run(self, prompt: int, generate: int, depth: int) -> dict:
        import json
        import subprocess

        command = [str(self.binary), "-m", str(self.gguf), "-p", str(prompt), "-n", str(generate), "-d", str(depth),
                   "-t", str(self.threads), "-r", "1", "-o", "json"]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise SystemExit(f"llama-bench failed ({done.returncode}): {done.stderr.strip().splitlines()[-1:]}")
        (result,) = json.loads(done.stdout)
        return result

    def prefill(self, ids: np.ndarray) -> float:
        return self._run(len(ids), 0, 0)["avg_ns"] / 1e9

    def decode(self, ids: np.ndarray, steps: int) -> float:
        return self._run(0, steps, len(ids))["avg_ts"]


class Torch:
    def __init__(self, model_dir: Path, threads: int):
        import torch

        from qvl_compile.families.qwen3_vl.loaders import load_full_model

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


def plot(decode: dict, contexts: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, per_context in decode.items():
        ax.plot(contexts, [statistics.median(per_context[c]) for c in contexts], marker="o", label=name)
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("decode tokens/s (median)")
    ax.set_title("Qwen3-VL-2B text decoder, INT4, 2 threads")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def make_competitors(args) -> list:
    """Ours as exported (and the variants asked for), then onnxruntime-genai and PyTorch when given."""
    competitors = [Ours(args.ours, args.threads, None, args.ours)]
    if args.compare_copy:
        competitors.append(Ours(args.ours, args.threads, None, args.ours, in_place=False))
    competitors += [Ours(args.ours, args.threads, level, args.ours) for level in args.ours_level]
    for label, folder in (item.split("=", 1) for item in args.also):
        competitors.append(Ours(Path(folder), args.threads, None, Path(folder), label=label))
        competitors += [Ours(Path(folder), args.threads, level, Path(folder), label=label) for level in args.ours_level]
    if args.genai:
        longest = max(args.prefill, max(args.context) + args.decode_tokens) + 8
        competitors.append(Genai(args.genai, args.threads, longest))
    if args.llama_bench or args.gguf:
        competitors.append(LlamaCpp(Path(args.llama_bench or ""), Path(args.gguf or ""), args.threads))
    if args.torch:
        competitors.append(Torch(args.torch, args.threads))
    return competitors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ours", type=Path, required=True)
    parser.add_argument("--ours-level", type=int, action="append", default=[],
                        help="also run our graph at this MatMulNBits accuracy_level (repeatable)")
    parser.add_argument("--compare-copy", action="store_true",
                        help="also run our graph with a cache copied per step (no IO binding)")
    parser.add_argument("--also", action="append", default=[], metavar="LABEL=EXPORT_DIR",
                        help="another export of ours, e.g. one made with --no-fuse-rms-norm (repeatable)")
    parser.add_argument("--genai", type=Path)
    parser.add_argument("--torch", type=Path, help="checkpoint folder for PyTorch eager")
    parser.add_argument("--llama-bench", help="llama.cpp's llama-bench binary (with --gguf; docs/perf/llama_cpp.md)")
    parser.add_argument("--gguf", help="the GGUF llama-bench runs, e.g. Q4_0 from llama.cpp's own converter")
    parser.add_argument("--context", type=int, nargs="+", default=[512], help="decode context lengths")
    parser.add_argument("--decode-tokens", type=int, default=32)
    parser.add_argument("--prefill", type=int, default=1000, help="prefill length (0: skip the prefill workload)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--plot", type=Path, help="PNG of decode tokens/s against context length")
    args = parser.parse_args()

    competitors = make_competitors(args)
    vocab = competitors[0].decoder.facts.vocab_size
    rng = np.random.default_rng(0)
    prefill_ids = rng.integers(0, min(vocab, 151000), args.prefill)
    context_ids = {c: rng.integers(0, min(vocab, 151000), c) for c in args.context}

    prefill = {c.name: [] for c in competitors}
    decode = {c.name: {n: [] for n in args.context} for c in competitors}
    for repeat in range(args.repeats):  # interleaved: every competitor once per round
        for c in competitors:
            if args.prefill:
                prefill[c.name].append(c.prefill(prefill_ids))
                gc.collect()
            for n in args.context:
                decode[c.name][n].append(c.decode(context_ids[n], args.decode_tokens))
                gc.collect()
            print(f"round {repeat + 1}: {c.name}: prefill {prefill[c.name][-1] if args.prefill else 0:.2f} s, decode "
                  + ", ".join(f"{decode[c.name][n][-1]:.2f}" for n in args.context) + " tokens/s",
                  file=sys.stderr, flush=True)

    head = ([f"prefill {args.prefill} tokens (s)"] if args.prefill else []) + \
        [f"decode at {n} context (tokens/s)" for n in args.context]
    print("| runner | " + " | ".join(head) + " |")
    print("|---" * (len(head) + 1) + "|")
    for c in competitors:
        cells = ([summarize(prefill[c.name], "{:.2f}")] if args.prefill else []) + \
            [summarize(decode[c.name][n], "{:.2f}") for n in args.context]
        print(f"| {c.name} | " + " | ".join(cells) + " |")
    print(f"\nmedian (min-max) of {args.repeats} interleaved rounds, {args.threads} threads, "
          f"{args.decode_tokens} greedy decode steps")
    print(machine_summary())
    if args.plot:
        plot(decode, args.context, args.plot)


if __name__ == "__main__":
    main()
