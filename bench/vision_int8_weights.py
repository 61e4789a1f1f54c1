"""Which int8 weight format the vision graph should use: accuracy against the fp32 graph and speed, side by side.

    python bench/vision_int8_weights.py VISION_FP32_EXPORT [--threads 2] [--rounds 3]

VISION_FP32_EXPORT holds an fp32 `vision.onnx` (`qvl-compile export MODEL OUT --component vision`). Each variant is
onnxruntime's `quantize_dynamic` on the same MatMul graph the export quantizes (export.vision_quant.gemm_to_matmul),
per-channel weights, uint8 activations:

  * s8, 7-bit range (`reduce_range`): what `--vision-quant int8` writes, safe from the u8 x s8 saturation of CPUs
    without VNNI;
  * s8, full range: the most precise s8 weights; saturates on CPUs without VNNI;
  * u8, full range: u8 x u8 products, which no x86 kernel saturates.

Reported: cosine of image_embeds and of the worst DeepStack output against the fp32 graph at the export check's
"three mixed images" grid and at 448x448 (random pixels), and seconds per 448x448 image (median of the rounds).
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from machine import summary as machine_summary  # bench scripts share helpers by path

from qvl_compile.export.vision_quant import gemm_to_matmul
from qvl_compile.parity import cosine, random_pixels

GRIDS = {"three mixed images": [(1, 8, 8), (1, 4, 14), (1, 12, 6)], "448x448": [(1, 28, 28)]}


def variants():
    from onnxruntime.quantization import QuantType

    return {"s8, 7-bit range (--vision-quant int8)": dict(weight_type=QuantType.QInt8, reduce_range=True),
            "s8, full range": dict(weight_type=QuantType.QInt8, reduce_range=False),
            "u8, full range": dict(weight_type=QuantType.QUInt8, reduce_range=False)}


def session(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def main() -> None:
    from onnxruntime.quantization import quantize_dynamic

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("export", type=Path)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    fp32_path = args.export / "vision.onnx"
    feeds = {name: {"pixel_values": random_pixels(grid, 1536, seed), "grid_thw": np.array(grid, np.int64)}
             for seed, (name, grid) in enumerate(GRIDS.items(), start=1)}
    sessions = {"fp32": session(fp32_path, args.threads)}
    reference = {name: sessions["fp32"].run(None, feed) for name, feed in feeds.items()}
    with tempfile.TemporaryDirectory() as scratch:
        model = onnx.load(str(fp32_path))
        gemm_to_matmul(model)
        staged = Path(scratch) / "matmul.onnx"
        onnx.save_model(model, str(staged), save_as_external_data=True, location="matmul.onnx.data")
        for index, (name, options) in enumerate(variants().items()):
            out = Path(scratch) / f"variant{index}.onnx"
            quantize_dynamic(str(staged), str(out), per_channel=True, op_types_to_quantize=["MatMul"], **options)
            sessions[name] = session(out, args.threads)
    lines = ["| weights | " + " | ".join(f"cosine {g}: embeds / worst DeepStack" for g in GRIDS) + " | s per 448x448 |",
             "|---|" + "---|" * len(GRIDS) + "---:|"]
    times = {name: [] for name in sessions}
    for _ in range(args.rounds):  # interleaved
        for name, s in sessions.items():
            start = time.perf_counter()
            s.run(None, feeds["448x448"])
            times[name].append(time.perf_counter() - start)
    for name, s in sessions.items():
        cells = []
        for grid, feed in feeds.items():
            got, ref = s.run(None, feed), reference[grid]
            deepstack = min(cosine(got[1][i], ref[1][i]) for i in range(ref[1].shape[0]))
            cells.append(f"{cosine(got[0], ref[0]):.5f} / {deepstack:.5f}")
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {statistics.median(times[name]):.2f} |")
    lines += ["", f"median of {args.rounds} interleaved rounds, {args.threads} threads", machine_summary()]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
