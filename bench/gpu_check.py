"""GPU readiness: run an export on onnxruntime's CUDA execution provider, check parity, time it.

    python bench/gpu_check.py OUT_DIR [--repeats 5] [--fp16-vision FILE]

On a machine without CUDAExecutionProvider (CPU-only, or the CPU onnxruntime wheel) it prints why it
skipped and exits 0. With CUDA it:
  * runs vision.onnx on CUDA and on CPU for three grids (image, mixed images, video) and reports the max
    relative error and cosine between them, and the median latency of each;
  * converts the vision graph to fp16 with onnxconverter-common (inputs/outputs stay fp32) and reports
    the same against the CPU fp32 output (cosine must stay >= 0.999);
  * runs the decoder (prefill of 512 tokens, 32 cached steps) on CUDA and CPU: logits error and tokens/s.
Needs `pip install onnxruntime-gpu onnxconverter-common` on the GPU machine; torch is not needed.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from qvl_compile.parity import INT8_MIN_COSINE, cosine, max_rel

GRIDS = {"image 448x448": [[1, 28, 28]], "three mixed images": [[1, 16, 16], [1, 20, 12], [1, 8, 32]],
         "video 8 frames 448x448": [[4, 28, 28]]}
MIN_COSINE = INT8_MIN_COSINE  # the policy's cosine bound for lossy float formats


def _with_cpu_fallback(provider: str) -> list[str]:
    return [provider] + (["CPUExecutionProvider"] if provider != "CPUExecutionProvider" else [])


def _session(path: Path, provider: str):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=_with_cpu_fallback(provider))


def _timed(run, repeats: int):
    run()  # warm-up (CUDA graph capture, cuDNN autotune, allocations)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = run()
        times.append(time.perf_counter() - start)
    return out, statistics.median(times)


def _errors(got: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    return max_rel(got, ref), cosine(got, ref)


def check_vision(export_dir: Path, repeats: int, fp16_path: Path | None) -> bool:
    import onnx
    from onnxconverter_common import float16

    from qvl_compile.manifest import read_manifest

    graph = export_dir / "vision.onnx"
    patch_dim = read_manifest(export_dir).artifacts["vision"].patch_dim
    fp16_path = fp16_path or export_dir / "vision.fp16.onnx"
    if not fp16_path.is_file():
        model = onnx.load(str(graph))
        onnx.save(float16.convert_float_to_float16(model, keep_io_types=True), str(fp16_path))
    sessions = {"cpu fp32": _session(graph, "CPUExecutionProvider"), "cuda fp32": _session(graph, "CUDAExecutionProvider"),
                "cuda fp16": _session(fp16_path, "CUDAExecutionProvider")}
    ok = True
    for name, grid in GRIDS.items():
        grid = np.asarray(grid, np.int64)
        pixels = np.random.default_rng(0).uniform(-1, 1, (int(grid.prod(axis=1).sum()), patch_dim)).astype(np.float32)
        feeds = {"pixel_values": pixels, "grid_thw": grid}
        results = {k: _timed(lambda s=s, feeds=feeds: s.run(None, feeds), repeats) for k, s in sessions.items()}
        reference = results["cpu fp32"][0]
        for runner, (outputs, seconds) in results.items():
            rel, cosine = _errors(outputs[0], reference[0])
            passed = runner == "cpu fp32" or (cosine >= MIN_COSINE and (runner != "cuda fp32" or rel <= 1e-3))
            ok &= passed
            print(f"| vision | {name} | {runner} | {seconds * 1000:.1f} ms | max rel {rel:.2e} | cosine {cosine:.6f} | "
                  f"{'pass' if passed else 'FAIL'} |")
    return ok


def check_decoder(export_dir: Path, repeats: int) -> bool:
    from qvl_compile.runtime.decoder import TextDecoder

    ok = True
    decoders = {p: TextDecoder.from_export(export_dir, providers=_with_cpu_fallback(p))
                for p in ("CPUExecutionProvider", "CUDAExecutionProvider")}
    ids = np.random.default_rng(1).integers(0, min(decoders["CPUExecutionProvider"].facts.vocab_size, 150000), (1, 512))
    positions = np.broadcast_to(np.arange(512), (3, 1, 512)).copy()
    logits = {}
    for provider, decoder in decoders.items():
        prefill_logits, cache = decoder.forward(ids, positions, decoder.empty_cache())
        token, start = int(prefill_logits[0, -1].argmax()), time.perf_counter()
        for step in range(32):
            step_logits, cache = decoder.forward(np.array([[token]]), np.full((3, 1, 1), 512 + step, np.int64), cache)
            token = int(step_logits[0, -1].argmax())
        rate = 32 / (time.perf_counter() - start)
        logits[provider] = prefill_logits
        rel, cosine = _errors(prefill_logits, logits["CPUExecutionProvider"])
        passed = cosine >= MIN_COSINE
        ok &= passed
        print(f"| decoder | prefill 512 + 32 steps | {provider} | {rate:.1f} tokens/s | max rel {rel:.2e} | "
              f"cosine {cosine:.6f} | {'pass' if passed else 'FAIL'} |")
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("export_dir", type=Path)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--fp16-vision", type=Path, help="where the fp16 vision graph is (or will be) written")
    args = parser.parse_args()
    import onnxruntime as ort

    providers = ort.get_available_providers()
    if "CUDAExecutionProvider" not in providers:
        print(f"skipped: onnxruntime {ort.__version__} offers {providers}, no CUDAExecutionProvider "
              "(a CPU-only machine, or the CPU wheel: install onnxruntime-gpu on a CUDA machine)")
        return
    print("| graph | workload | runner | latency | vs CPU fp32 | cosine | result |\n|---|---|---|---|---|---|---|")
    ok = True
    if (args.export_dir / "vision.onnx").is_file():
        ok &= check_vision(args.export_dir, args.repeats, args.fp16_vision)
    if (args.export_dir / "decoder.onnx").is_file():
        ok &= check_decoder(args.export_dir, args.repeats)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
