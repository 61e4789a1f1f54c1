"""What an int8 KV cache costs at prefill: one GroupQueryAttention layer at the 2B shapes reading a whole prompt,
fp32 cache against the int8 cache the export writes (`--kv-cache int8`: export.kv_cache_int8 rewrites the same
node), side by side in interleaved rounds.

    python bench/kv_cache_prefill.py [--tokens 256 1000] [--threads 2] [--rounds 5]

The decode side (one new token after 128 to 2,048 cached) is in bench/decoder_kernels.py and, for the whole
decoder, docs/perf/decoder_2b_kv_cache.md.
"""
from __future__ import annotations

import argparse
import statistics

import numpy as np
import onnx
from decoder_kernels import cpu_session, seconds  # bench scripts share helpers by path
from machine import summary as machine_summary
from onnx import TensorProto, helper

from qvl_compile.export.kv_cache_int8 import quantize_kv_cache

HEADS, KV_HEADS, HEAD_DIM = 16, 8, 128  # Qwen3-VL-2B's attention


def attention_graph(int8: bool) -> onnx.ModelProto:
    value = helper.make_tensor_value_info
    cache = [1, KV_HEADS, None, HEAD_DIM]
    inputs = [value("q", TensorProto.FLOAT, [1, None, HEADS * HEAD_DIM]),
              value("k", TensorProto.FLOAT, [1, None, KV_HEADS * HEAD_DIM]),
              value("v", TensorProto.FLOAT, [1, None, KV_HEADS * HEAD_DIM]),
              value("past_key", TensorProto.FLOAT, cache), value("past_value", TensorProto.FLOAT, cache),
              value("seqlens_k", TensorProto.INT32, [1]), value("total", TensorProto.INT32, [])]
    node = helper.make_node("GroupQueryAttention", [i.name for i in inputs], ["out", "present_key", "present_value"],
                            domain="com.microsoft", num_heads=HEADS, kv_num_heads=KV_HEADS)
    outputs = [value(name, TensorProto.FLOAT, None) for name in node.output]
    model = helper.make_model(helper.make_graph([node], "attention", inputs, outputs),
                              opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft", 1)])
    if int8:
        scales = np.full((1, KV_HEADS, 1, HEAD_DIM), 4 / 127, np.float32)
        quantize_kv_cache(model, scales, scales)
    return model


def runner(int8: bool, tokens: int, threads: int, rng):
    session = cpu_session(attention_graph(int8), threads)
    dtype = np.int8 if int8 else np.float32
    feeds = {name: rng.standard_normal((1, tokens, width * HEAD_DIM), dtype=np.float32)
             for name, width in (("q", HEADS), ("k", KV_HEADS), ("v", KV_HEADS))}
    feeds |= {"past_key": np.zeros((1, KV_HEADS, tokens, HEAD_DIM), dtype),
              "past_value": np.zeros((1, KV_HEADS, tokens, HEAD_DIM), dtype),
              "seqlens_k": np.array([tokens - 1], np.int32), "total": np.array(tokens, np.int32)}
    return lambda: session.run(["out"], feeds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[256, 1000])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    lines = ["| prompt tokens | fp32 cache (ms per layer) | int8 cache (ms per layer) | int8 / fp32 |", "|---:|---:|---:|---:|"]
    for tokens in args.tokens:
        runs = {"fp32": runner(False, tokens, args.threads, rng), "int8": runner(True, tokens, args.threads, rng)}
        results = {name: [] for name in runs}
        for _ in range(args.rounds):  # interleaved
            for name, run in runs.items():
                results[name].append(1000 * seconds(run, 3))
        fp32, int8 = (statistics.median(results[n]) for n in ("fp32", "int8"))
        cells = [f"{statistics.median(results[n]):.1f} ({min(results[n]):.1f}-{max(results[n]):.1f})" for n in runs]
        lines.append(f"| {tokens} | {cells[0]} | {cells[1]} | {int8 / fp32:.2f}x |")
    lines += ["", f"median (min-max) of {args.rounds} interleaved rounds, {args.threads} threads; one layer "
              f"(16 query heads, 8 kv heads, head_dim 128)", "", machine_summary()]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
