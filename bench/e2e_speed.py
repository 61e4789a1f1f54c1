"""End to end, side by side: one image and a short prompt in, N greedy tokens out.

    python bench/e2e_speed.py --ours OUT_DIR [--also LABEL=OUT_DIR2] --torch MODEL_DIR [--size 448] [--new-tokens 64]
        [--repeats 3] [--llama-mtmd llama.cpp/build/bin/llama-mtmd-cli --gguf MODEL.gguf --mmproj MMPROJ.gguf]

Each runner lives in its own worker process (peak RSS is its own) and uses its own preprocessing: ours
the torch-free runtime (preprocess, vision graph, INT4 decoder with the in-place KV cache), PyTorch
transformers' PIL image processor and `generate()` (eager, sdpa, fp32). The prompt is built at the
token-id level (12 text tokens, the image's placeholders, 8 text tokens) because random-weight
checkpoints ship no tokenizer. Reported: time to first token (image decode excluded, preprocessing
included) and total time for `--new-tokens` tokens (EOS ignored so both produce exactly N).

llama.cpp (optional; docs/perf/llama_cpp.md) runs its own multimodal CLI, `llama-mtmd-cli`, once per round on the
same image saved as PNG, its chat template around a short prompt, `--temp 0 --ignore-eos -c 4096`. Its model load is
left out, as ours is: the times are read from its own log (`-lv 4`). Time to first token is its "prompt eval time",
which runs from the prompt's first batch to its last and so holds the image's encoding too (measured: 3,905 ms =
2,529 encoding + 1,200 image tokens + the text); should a build report them apart, the encoding is added. Total =
that + its "eval time" of the generated tokens. Its peak RSS is that of its processes.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import sys
from pathlib import Path

from machine import summary as machine_summary  # bench scripts share helpers by path

SAMPLE = Path(__file__).resolve().parents[1] / "runtime" / "samples" / "red-house.png"


def _prompt_ids(image_token: int, start: int, end: int, merged: int):
    import numpy as np

    text = np.random.default_rng(0).integers(0, min(image_token, 1000), 20)
    return np.concatenate([text[:12], [start], [image_token] * merged, [end], text[12:]]).astype(np.int64)


def _ours(export_dir: str, threads: int):
    import time

    import numpy as np

    from qvl_compile.manifest import read_manifest
    from qvl_compile.runtime.decoder import TextDecoder
    from qvl_compile.runtime.preprocess import ImageProcessorConfig, preprocess_image
    from qvl_compile.runtime.rope_index import mrope_position_ids
    from qvl_compile.runtime.vision import VisionEncoder

    model = read_manifest(export_dir).model
    vision = VisionEncoder.from_export(export_dir, intra_op_threads=threads)
    decoder = TextDecoder.from_export(export_dir, intra_op_threads=threads)
    config = ImageProcessorConfig.from_dir(export_dir)

    def run(image, new_tokens: int) -> tuple[float, float]:
        start = time.perf_counter()
        pixels, grid = preprocess_image(image, config)
        out = vision(pixels, np.array([grid]))
        ids = _prompt_ids(model["image_token_id"], model["vision_start_token_id"], model["vision_end_token_id"],
                          int(np.prod(grid)) // 4)
        positions, delta = mrope_position_ids(ids, model["image_token_id"], model["video_token_id"], [grid], [])
        cache = decoder.empty_cache(capacity=len(ids) + new_tokens)
        logits, cache = decoder.forward(ids[None], positions[:, None], cache, out.image_embeds, out.deepstack_embeds)
        token = int(logits[0, -1].argmax())
        first = time.perf_counter() - start
        for step in range(new_tokens - 1):
            position = np.full((3, 1, 1), len(ids) + delta + step, np.int64)
            logits, cache = decoder.forward(np.array([[token]]), position, cache)
            token = int(logits[0, -1].argmax())
        return first, time.perf_counter() - start

    return run


def _torch(model_dir: str, threads: int):
    import time

    import torch
    from transformers.generation.streamers import BaseStreamer

    from qvl_compile.families.qwen3_vl.loaders import load_full_model, load_image_processor
    from qvl_compile.families.qwen3_vl.reference import with_token_types

    torch.set_num_threads(threads)
    model = load_full_model(Path(model_dir))
    processor = load_image_processor(model_dir)
    config = model.config

    class FirstToken(BaseStreamer):
        def __init__(self, start):
            self.start, self.calls, self.first = start, 0, None

        def put(self, value):
            self.calls += 1
            if self.calls == 2:  # the first call carries the prompt
                self.first = time.perf_counter() - self.start

        def end(self):
            pass

    def run(image, new_tokens: int) -> tuple[float, float]:
        start = time.perf_counter()
        pixels = processor(images=[image], return_tensors="pt")
        merged = int(pixels["image_grid_thw"].prod()) // 4
        ids = torch.from_numpy(_prompt_ids(config.image_token_id, config.vision_start_token_id,
                                           config.vision_end_token_id, merged))[None]
        kwargs = with_token_types(model, {"input_ids": ids, "pixel_values": pixels["pixel_values"],
                                          "image_grid_thw": pixels["image_grid_thw"]})
        streamer = FirstToken(start)
        model.model.rope_deltas = None
        with torch.no_grad():
            model.generate(**kwargs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                           streamer=streamer)
        return streamer.first, time.perf_counter() - start

    return run


# llama.cpp's log lines: mtmd-helper's encoding time, llama_perf_context_print's evaluation times
_LLAMA_TIMES = {"encode": r"(?:slice|batch) encod\w+ (?:done )?in (\d+) ms", "prompt": r"prompt eval time =\s+([\d.]+) ms",
                "eval": r"\beval time =\s+([\d.]+) ms / +(\d+) runs"}


def _llama(paths: str, threads: int):
    import re
    import subprocess
    import tempfile

    binary, gguf, mmproj = paths.split("|")
    folder = tempfile.mkdtemp(prefix="e2e_llama_")

    def run(image, new_tokens: int) -> tuple[float, float]:
        image_path = Path(folder) / "image.png"
        image.save(image_path)
        done = subprocess.run([binary, "-m", gguf, "--mmproj", mmproj, "--image", str(image_path), "-p",
                               "Describe the image.", "-n", str(new_tokens), "-t", str(threads), "--temp", "0",
                               "--ignore-eos", "--no-warmup", "-c", "4096", "-lv", "4"],
                              capture_output=True, text=True, check=True)
        log = done.stdout + done.stderr
        found = {name: re.findall(pattern, log) for name, pattern in _LLAMA_TIMES.items()}
        if not all(found.values()):
            raise RuntimeError(f"llama-mtmd-cli: timings not found in its log: {log[-2000:]}")
        encode, prompt = sum(float(t) for t in found["encode"]), float(found["prompt"][-1])
        first = (prompt if prompt >= encode else prompt + encode) / 1000
        return first, first + float(found["eval"][-1][0]) / 1000

    return run


def _worker(kind: str, path: str, threads: int, size: int, conn) -> None:
    import resource

    from PIL import Image

    run = {"ours": _ours, "torch": _torch, "llama": _llama}[kind](path, threads)
    image = Image.open(SAMPLE).convert("RGB").resize((size, size))
    run(image, 2)  # warm-up
    conn.send("ready")
    while (request := conn.recv()) != "stop":
        conn.send(run(image, request))
    usage = resource.RUSAGE_CHILDREN if kind == "llama" else resource.RUSAGE_SELF
    conn.send(resource.getrusage(usage).ru_maxrss / 1024)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ours", type=Path, required=True, help="export folder with vision and decoder")
    parser.add_argument("--also", action="append", default=[], metavar="LABEL=OUT_DIR",
                        help="another export of ours, in the same rounds (e.g. --prefill int8)")
    parser.add_argument("--torch", type=Path, help="checkpoint folder for PyTorch eager")
    parser.add_argument("--llama-mtmd", type=Path, help="llama.cpp's llama-mtmd-cli (with --gguf and --mmproj)")
    parser.add_argument("--gguf", type=Path, help="the language model GGUF llama-mtmd-cli runs, e.g. Q4_0")
    parser.add_argument("--mmproj", type=Path, help="the vision tower GGUF from llama.cpp's converter (--mmproj)")
    parser.add_argument("--size", type=int, default=448)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    runners = {"ours (torch-free runtime)": ("ours", args.ours)}
    for also in args.also:
        label, _, folder = also.partition("=")
        if not folder:
            parser.error(f"--also: expected LABEL=OUT_DIR, got {also!r}")
        runners[f"ours, {label}"] = ("ours", Path(folder))
    if args.torch:
        runners["PyTorch eager sdpa (transformers generate)"] = ("torch", args.torch)
    if args.llama_mtmd:
        if not (args.gguf and args.mmproj):
            parser.error("--llama-mtmd needs --gguf and --mmproj")
        runners[f"llama.cpp ({args.gguf.name}, {args.mmproj.name})"] = (
            "llama", f"{args.llama_mtmd}|{args.gguf}|{args.mmproj}")
    ctx, workers = mp.get_context("spawn"), {}
    for name, (kind, path) in runners.items():
        conn, child = ctx.Pipe()
        ctx.Process(target=_worker, args=(kind, str(path), args.threads, args.size, child), daemon=True).start()
        if conn.recv() != "ready":
            raise RuntimeError(f"{name}: worker failed")
        workers[name] = conn
    results = {name: [] for name in workers}
    for repeat in range(args.repeats):
        for name, conn in workers.items():
            conn.send(args.new_tokens)
            results[name].append(conn.recv())
            print(f"round {repeat + 1}: {name}: first token {results[name][-1][0]:.2f} s, "
                  f"total {results[name][-1][1]:.2f} s", file=sys.stderr, flush=True)
    peaks = {}
    for name, conn in workers.items():
        conn.send("stop")
        peaks[name] = conn.recv()

    def cell(values):
        return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"

    print(f"| runner | time to first token (s) | total for {args.new_tokens} tokens (s) | peak RSS (MiB) |")
    print("|---|---|---|---|")
    for name, values in results.items():
        print(f"| {name} | {cell([v[0] for v in values])} | {cell([v[1] for v in values])} | {peaks[name]:.0f} |")
    print(f"\n{args.size}x{args.size} image, median (min-max) of {args.repeats} interleaved rounds, "
          f"{args.threads} threads")
    print(machine_summary())


if __name__ == "__main__":
    main()
