"""What onnxslim would do to our graphs: node counts, latency and outputs, before and after, in one run.

    python bench/slim_check.py OUT_DIR [--graph vision.onnx] [--repeats 20] [--threads 2]

qvl-compile does not run onnxslim at export (the decision and its figures are in the README); this
script is the measurement behind that decision, to rerun when onnxslim or the exporter changes. The
vision graph is fed a 1x16x16 image and a 2x8x8 video; the decoder a 32-token text prefill. Rounds
alternate the two graphs, and the report gives medians and the largest relative output difference.
"""
from __future__ import annotations

import argparse
import collections
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from qvl_compile.manifest import read_manifest
from qvl_compile.parity import max_rel, random_pixels


def _feeds(export_dir: Path, graph: str) -> dict[str, np.ndarray]:
    manifest = read_manifest(export_dir)
    if graph == "vision.onnx":
        grid = np.array([[1, 16, 16], [2, 8, 8]], np.int64)
        return {"pixel_values": random_pixels(grid, manifest.artifacts["vision"].patch_dim, seed=0), "grid_thw": grid}
    decoder = manifest.artifacts["decoder"]
    shape, seq = decoder.shape, 32
    feeds = {"input_ids": np.arange(seq, dtype=np.int64)[None] % 100,
             "position_ids": np.broadcast_to(np.arange(seq, dtype=np.int64), (3, 1, seq)).copy(),
             "visual_embeds": np.zeros((0, shape.hidden_size), np.float32),
             "deepstack_embeds": np.zeros((shape.num_deepstack, 0, shape.hidden_size), np.float32),
             "logit_positions": np.array([seq - 1], np.int64), "attention_mask": np.ones((1, seq), np.int64)}
    past_k, past_v, _, _ = shape.cache_names
    for name in past_k + past_v:
        feeds[name] = np.zeros((1, shape.num_key_value_heads, 0, shape.head_dim), np.float32)
    return feeds


def _ops(model: onnx.ModelProto) -> collections.Counter:
    return collections.Counter(node.op_type for node in model.graph.node)


def _session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("export_dir", type=Path)
    parser.add_argument("--graph", default="vision.onnx", choices=["vision.onnx", "decoder.onnx"])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    import onnxslim

    original_path = args.export_dir / args.graph
    original = onnx.load(str(original_path))
    with tempfile.TemporaryDirectory() as tmp:
        slim_path = Path(tmp) / args.graph
        start = time.perf_counter()
        slimmed = onnxslim.slim(original)
        slim_seconds = time.perf_counter() - start
        onnx.save(slimmed, str(slim_path))
        sessions = {"as exported": _session(original_path, args.threads), "onnxslim": _session(slim_path, args.threads)}
        feeds = _feeds(args.export_dir, args.graph)
        times = {name: [] for name in sessions}
        outputs = {}
        for _ in range(args.repeats):
            for name, session in sessions.items():
                begin = time.perf_counter()
                outputs[name] = session.run(None, feeds)
                times[name].append(time.perf_counter() - begin)
    before, after = _ops(original), _ops(slimmed)
    print(f"{args.graph}: {sum(before.values())} nodes as exported, {sum(after.values())} after onnxslim "
          f"({slim_seconds:.1f} s)")
    for op in sorted(set(before) | set(after)):
        if before[op] != after[op]:
            print(f"  {op}: {before[op]} -> {after[op]}")
    for name, values in times.items():
        print(f"  {name}: median {statistics.median(values) * 1000:.2f} ms over {len(values)} runs")
    worst = max(max_rel(a, b) for a, b in zip(outputs["onnxslim"], outputs["as exported"]))
    print(f"  max rel difference of the outputs: {worst:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
