"""The decoder's kernel choices, each measured on its own at the 2B shapes, side by side in one run.

    python bench/decoder_kernels.py [--threads 2] [--rounds 5] [--markdown docs/perf/decoder_kernels_2b.md]

Before a graph fusion is built into the export, this says whether the kernel it would use is faster on this machine:

  * packing: q/k/v as one MatMulNBits [2048 -> 4096] and gate/up as one [2048 -> 12288], against the five separate
    nodes, for all 28 layers at M=1 (decode) and one layer at M=1000 (prefill);
  * the KV cache: GroupQueryAttention over an fp32 cache against an fp16 one and an int8 one (fp32 activations,
    one scale per tensor: GroupQueryAttention's k_quant_type / v_quant_type), in place (past and present bound to
    one buffer, as the runtime binds them), 28 layers, one new token after 128 / 512 / 2048 cached;
  * prefill GEMMs: MatMulNBits at accuracy level 1 and 4 against onnxruntime's fp32 MatMul and PyTorch's fp32
    matmul (the competitor at prefill), one layer's projections at M=1000;
  * the output projection (lm_head, 2048 -> 151936) at decode: 4-bit against 8-bit MatMulNBits (`--lm-head-bits`)
    and an fp32 MatMul (`--no-quantize-lm-head`), M=1.

  * block size: 4-bit MatMulNBits with one scale per 32, 64 or 128 weights (`--block-size`), the layers'
    projections and the output projection (4 and 8 bits) at decode, level 4.

  * int8 prefill (`--prefill int8`): one layer's projections as the prefill graph computes them (int8 weights per
    column, activations per row, onnxruntime's MatMulInteger; export.prefill_int8 rewrites the 4-bit graph) against
    4-bit MatMulNBits at level 4, block 128 (the default), and PyTorch's fp32 matmul, at 1 to 1,000 rows: where the
    runtime should switch graphs (qvl_compile.contract.PREFILL_MIN_ROWS).

`--sections` picks some of them (projections, prefill, attention, lm_head, block_size, prefill_int8).

Weights are random bytes in MatMulNBits' layout (the kernels' speed does not depend on the values). Rounds are
interleaved across variants; each cell is the median (min-max) of the rounds' medians.
"""
from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
import onnx
from machine import summary as machine_summary  # bench scripts share helpers by path
from onnx import TensorProto, helper, numpy_helper

LAYERS, HIDDEN, HEADS, KV_HEADS, HEAD_DIM, INTERMEDIATE = 28, 2048, 16, 8, 128, 6144  # Qwen3-VL-2B's text stack
VOCAB = 151936
BLOCK, PREFILL_TOKENS, KV_CAPACITY = 32, 1000, 4096
SEPARATE = ((HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM), (INTERMEDIATE, INTERMEDIATE))  # out dims
PACKED = ((sum(SEPARATE[0]),), (sum(SEPARATE[1]),))
OPSETS = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]


def _matmul_nbits(rng, x: str, name: str, n: int, level: int, bits: int = 4,
                  block: int = BLOCK) -> tuple[onnx.NodeProto, list]:
    blocks = HIDDEN // block
    packed = rng.integers(0, 256, (n, blocks, block * bits // 8), dtype=np.uint8)  # [N, K / block, block * bits / 8]
    weights = [numpy_helper.from_array(packed, name + "_Q4"),
               numpy_helper.from_array(rng.random(n * blocks, dtype=np.float32) * 0.01, name + "_scales")]
    node = helper.make_node("MatMulNBits", [x, name + "_Q4", name + "_scales"], [name], domain="com.microsoft",
                            K=HIDDEN, N=n, bits=bits, block_size=block, accuracy_level=level)
    return node, weights


def lm_head_graph(bits: int | None, level: int, rng, block: int = BLOCK) -> onnx.ModelProto:
    """The output projection for one token: MatMulNBits at `bits`, or an fp32 MatMul (bits None)."""
    if bits is None:
        weights = [numpy_helper.from_array(rng.standard_normal((HIDDEN, VOCAB), dtype=np.float32) * 0.02, "w")]
        node = helper.make_node("MatMul", ["x", "w"], ["logits"])
    else:
        node, weights = _matmul_nbits(rng, "x", "logits", VOCAB, level, bits, block)
    graph = helper.make_graph([node], "lm_head", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, HIDDEN])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, VOCAB])], weights)
    return helper.make_model(graph, opset_imports=OPSETS)


def projections_graph(groups, layers: int, rows: int, level: int, rng, block: int = BLOCK) -> onnx.ModelProto:
    """`layers` copies of the projections in `groups` (out dims per node), each its own weights, all reading x."""
    nodes, weights, outputs = [], [], []
    for layer in range(layers):
        for group, dims in enumerate(groups):
            for index, n in enumerate(dims):
                node, tensors = _matmul_nbits(rng, "x", f"l{layer}.g{group}.{index}", n, level, block=block)
                nodes.append(node), weights.extend(tensors)
                outputs.append(helper.make_tensor_value_info(node.output[0], TensorProto.FLOAT, [rows, n]))
    graph = helper.make_graph(nodes, "projections", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [rows, HIDDEN])],
                              outputs, weights)
    return helper.make_model(graph, opset_imports=OPSETS)


def fp32_projections_graph(rows: int, rng) -> onnx.ModelProto:
    nodes, weights, outputs = [], [], []
    for index, n in enumerate(SEPARATE[0] + SEPARATE[1]):
        weights.append(numpy_helper.from_array(rng.standard_normal((HIDDEN, n), dtype=np.float32) * 0.02, f"w{index}"))
        nodes.append(helper.make_node("MatMul", ["x", f"w{index}"], [f"y{index}"]))
        outputs.append(helper.make_tensor_value_info(f"y{index}", TensorProto.FLOAT, [rows, n]))
    graph = helper.make_graph(nodes, "fp32", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [rows, HIDDEN])],
                              outputs, weights)
    return helper.make_model(graph, opset_imports=OPSETS)


def attention_graph(dtype: int, cache_dtype: int) -> onnx.ModelProto:
    """28 GroupQueryAttention nodes (one per layer, each its own cache) for one new token. An int8 cache takes
    one scale per tensor for keys and values (GroupQueryAttention's k_quant_type/v_quant_type PER_TENSOR)."""
    value = helper.make_tensor_value_info
    inputs = [value("q", dtype, [1, 1, HEADS * HEAD_DIM]), value("k", dtype, [1, 1, KV_HEADS * HEAD_DIM]),
              value("v", dtype, [1, 1, KV_HEADS * HEAD_DIM]), value("seqlens_k", TensorProto.INT32, [1]),
              value("total_length", TensorProto.INT32, [])]
    quantized = cache_dtype == TensorProto.INT8
    scales, attributes = [], {}
    if quantized:
        inputs += [value("k_scale", dtype, [1]), value("v_scale", dtype, [1])]
        scales = ["", "", "", "", "", "k_scale", "v_scale"]  # cos, sin, position_ids, bias, head_sink skipped
        attributes = {"k_quant_type": "PER_TENSOR", "v_quant_type": "PER_TENSOR", "kv_cache_bit_width": 8}
    nodes, outputs = [], []
    cache = [1, KV_HEADS, KV_CAPACITY, HEAD_DIM]
    for layer in range(LAYERS):
        inputs += [value(f"past_key.{layer}", cache_dtype, cache), value(f"past_value.{layer}", cache_dtype, cache)]
        names = [f"out.{layer}", f"present_key.{layer}", f"present_value.{layer}"]
        nodes.append(helper.make_node(
            "GroupQueryAttention", ["q", "k", "v", f"past_key.{layer}", f"past_value.{layer}", "seqlens_k", "total_length",
                                    *scales], names, domain="com.microsoft", num_heads=HEADS, kv_num_heads=KV_HEADS,
            **attributes))
        outputs += [value(names[0], dtype, None)] + [value(name, cache_dtype, None) for name in names[1:]]
    return helper.make_model(helper.make_graph(nodes, "attention", inputs, outputs), opset_imports=OPSETS)


def cpu_session(model: onnx.ModelProto, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def plain_runner(model: onnx.ModelProto, rows: int, threads: int, rng) -> Callable[[], None]:
    session = cpu_session(model, threads)
    feeds = {"x": rng.standard_normal((rows, HIDDEN), dtype=np.float32)}
    return lambda: session.run(None, feeds)


def attention_runner(dtype, cached: int, threads: int, rng, cache_dtype=None) -> Callable[[], None]:
    """One decode step's attention with the cache bound in place (as runtime/decoder.py binds it)."""
    import onnxruntime as ort

    cache_dtype = np.dtype(cache_dtype or dtype)
    proto_type = helper.np_dtype_to_tensor_dtype
    session = cpu_session(attention_graph(proto_type(np.dtype(dtype)), proto_type(cache_dtype)), threads)
    binding = session.io_binding()
    for name, width in (("q", HEADS), ("k", KV_HEADS), ("v", KV_HEADS)):
        binding.bind_cpu_input(name, rng.standard_normal((1, 1, width * HEAD_DIM)).astype(dtype))
    if cache_dtype == np.int8:
        for name in ("k_scale", "v_scale"):
            binding.bind_cpu_input(name, np.array([4 / 127], dtype))
    binding.bind_cpu_input("seqlens_k", np.array([cached], np.int32))
    binding.bind_cpu_input("total_length", np.array(cached + 1, np.int32))
    buffers = []  # kept alive while the binding refers to them
    for layer in range(LAYERS):
        for kind in ("key", "value"):
            values = rng.standard_normal((1, KV_HEADS, KV_CAPACITY, HEAD_DIM)) * (30 if cache_dtype == np.int8 else 1)
            buffer = ort.OrtValue.ortvalue_from_numpy(values.astype(cache_dtype))
            buffers.append(buffer)
            binding.bind_ortvalue_input(f"past_{kind}.{layer}", buffer)
            binding.bind_ortvalue_output(f"present_{kind}.{layer}", buffer)
        binding.bind_output(f"out.{layer}")

    def run(_buffers=buffers) -> None:  # the default argument keeps the bound buffers alive
        session.run_with_iobinding(binding)
    return run


def torch_runner(rows: int, threads: int) -> Callable[[], None]:
    import torch

    torch.set_num_threads(threads)
    x = torch.randn(rows, HIDDEN)
    weights = [torch.randn(HIDDEN, n) * 0.02 for n in SEPARATE[0] + SEPARATE[1]]

    def run() -> None:
        with torch.inference_mode():
            for weight in weights:
                x @ weight
    return run


def int8_cache_agreement(threads: int, rng, cached: int = 2048) -> float:
    """Largest difference between GroupQueryAttention's output over an int8 cache and over an fp32 cache holding
    the same values dequantized (one layer, one new token): is the int8 path right, apart from its rounding?"""
    scale = np.float32(4 / 127)
    quantized = [rng.integers(-127, 128, (1, KV_HEADS, KV_CAPACITY, HEAD_DIM)).astype(np.int8) for _ in range(2)]
    new = {name: rng.standard_normal((1, 1, width * HEAD_DIM)).astype(np.float32)
           for name, width in (("q", HEADS), ("k", KV_HEADS), ("v", KV_HEADS))}
    lengths = {"seqlens_k": np.array([cached], np.int32), "total_length": np.array(cached + 1, np.int32)}
    outputs = []
    for cache_type in (TensorProto.INT8, TensorProto.FLOAT):
        graph = attention_graph(TensorProto.FLOAT, cache_type)
        feeds = dict(new, **lengths)
        if cache_type == TensorProto.INT8:
            feeds.update(k_scale=np.array([scale]), v_scale=np.array([scale]), **{
                f"past_{kind}.{layer}": quantized[i] for layer in range(LAYERS) for i, kind in enumerate(("key", "value"))})
        else:
            feeds.update({f"past_{kind}.{layer}": quantized[i].astype(np.float32) * scale
                          for layer in range(LAYERS) for i, kind in enumerate(("key", "value"))})
        outputs.append(cpu_session(graph, threads).run(["out.0"], feeds)[0])
    return float(np.abs(outputs[0] - outputs[1]).max())


def seconds(run: Callable[[], None], repeats: int) -> float:
    run()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(runners: dict[str, Callable[[], None]], rounds: int, repeats: int) -> dict[str, list[float]]:
    """Milliseconds per call, one median per round; rounds interleave the variants."""
    results: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(rounds):
        for name, run in runners.items():
            results[name].append(1000 * seconds(run, repeats))
    return results


def _cell(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def table(title: str, results: dict[str, list[float]], baseline: str) -> list[str]:
    base = statistics.median(results[baseline])
    lines = [f"**{title}**", "", "| variant | ms per call | vs " + baseline + " |", "|---|---:|---:|"]
    lines += [f"| {name} | {_cell(values)} | {statistics.median(values) / base:.2f}x |" for name, values in results.items()]
    return lines + [""]


def projection_tables(rounds: int, threads: int, rng) -> list[str]:
    def projections(groups, layers: int, m: int, level: int):
        return plain_runner(projections_graph(groups, layers, m, level, rng), m, threads, rng)

    lines = []
    for level in (4, 1):
        decode = {"separate q,k,v,gate,up": projections(SEPARATE, LAYERS, 1, level),
                  "packed qkv, gate_up": projections(PACKED, LAYERS, 1, level)}
        lines += table(f"Projections at decode (M=1, 28 layers, accuracy level {level})",
                       measure(decode, rounds, 20), "separate q,k,v,gate,up")
    return lines


def prefill_table(rounds: int, threads: int, rng, rows: int = PREFILL_TOKENS) -> list[str]:
    def projections(groups, level: int):
        return plain_runner(projections_graph(groups, 1, rows, level, rng), rows, threads, rng)

    prefill = {"separate, L4": projections(SEPARATE, 4), "packed, L4": projections(PACKED, 4),
               "separate, L1": projections(SEPARATE, 1),
               "onnxruntime fp32 MatMul": plain_runner(fp32_projections_graph(rows, rng), rows, threads, rng),
               "PyTorch fp32 matmul": torch_runner(rows, threads)}
    return table(f"Projections at prefill (M={rows}, one layer: q,k,v,gate,up)", measure(prefill, rounds, 3),
                 "PyTorch fp32 matmul")


def attention_tables(rounds: int, threads: int, rng) -> list[str]:
    lines = []
    for cached in (128, 512, 2048):
        attention = {"fp32 cache": attention_runner(np.float32, cached, threads, rng),
                     "fp16 cache": attention_runner(np.float16, cached, threads, rng),
                     "int8 cache": attention_runner(np.float32, cached, threads, rng, cache_dtype=np.int8)}
        lines += table(f"GroupQueryAttention, one new token after {cached} cached (28 layers, in place)",
                       measure(attention, rounds, 30), "fp32 cache")
    agreement = int8_cache_agreement(threads, rng)
    return lines + [f"int8 cache: largest difference from an fp32 cache holding the same values dequantized, one new "
                    f"token after 2048 cached: {agreement:.1e}", ""]


def lm_head_table(rounds: int, threads: int, rng) -> list[str]:
    heads = {"4-bit, L4": lm_head_graph(4, 4, rng), "8-bit, L4 (the default)": lm_head_graph(8, 4, rng),
             "4-bit, L1": lm_head_graph(4, 1, rng), "8-bit, L1": lm_head_graph(8, 1, rng),
             "fp32 MatMul": lm_head_graph(None, 0, rng)}
    runners = {name: plain_runner(model, 1, threads, rng) for name, model in heads.items()}
    return table(f"Output projection at decode (M=1, {HIDDEN} -> {VOCAB}, block {BLOCK})", measure(runners, rounds, 20),
                 "4-bit, L4")


def block_size_tables(rounds: int, threads: int, rng) -> list[str]:
    """`--block-size` at decode: the projections that read the hidden state, and the output projection, at L4."""
    def projections(block: int):
        return plain_runner(projections_graph(SEPARATE, LAYERS, 1, 4, rng, block), 1, threads, rng)

    layers = {f"block {block}": projections(block) for block in (32, 64, 128)}
    lines = table("Projections q,k,v,gate,up at decode by block size (M=1, 28 layers, 4-bit, L4)",
                  measure(layers, rounds, 20), "block 32")
    heads = {f"{bits}-bit, block {block}": plain_runner(lm_head_graph(bits, 4, rng, block), 1, threads, rng)
             for bits in (8, 4) for block in (32, 128)}
    return lines + table(f"Output projection at decode by block size (M=1, {HIDDEN} -> {VOCAB}, L4)",
                         measure(heads, rounds, 20), "8-bit, block 32")


def int8_prefill_graph(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` with its MatMulNBits rewritten as the int8 prefill graph does (export.prefill_int8)."""
    from qvl_compile.export.prefill_int8 import prefill_graph

    rewritten = onnx.ModelProto()
    rewritten.CopyFrom(model)
    prefill_graph(rewritten)
    return rewritten


def prefill_int8_tables(rounds: int, threads: int, rng) -> list[str]:
    """One layer's q,k,v,gate,up: 4-bit (level 4, block 128) against the int8 prefill graph's form, by rows."""
    lines = []
    for rows in (1, 4, 8, 16, 64, PREFILL_TOKENS):
        four_bit = projections_graph(SEPARATE, 1, rows, 4, rng, block=128)
        runners = {"4-bit, L4, block 128": plain_runner(four_bit, rows, threads, rng),
                   "int8 prefill graph": plain_runner(int8_prefill_graph(four_bit), rows, threads, rng)}
        if rows == PREFILL_TOKENS:
            runners["PyTorch fp32 matmul"] = torch_runner(rows, threads)
        lines += table(f"Projections q,k,v,gate,up at {rows} rows (one layer)",
                       measure(runners, rounds, 3 if rows == PREFILL_TOKENS else 20), "4-bit, L4, block 128")
    return lines


SECTIONS = {"projections": projection_tables, "prefill": prefill_table, "attention": attention_tables,
            "lm_head": lm_head_table, "block_size": block_size_tables, "prefill_int8": prefill_int8_tables}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sections", nargs="+", choices=list(SECTIONS), default=list(SECTIONS))
    parser.add_argument("--markdown", help="also write the tables to this file")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    lines = [line for section in args.sections for line in SECTIONS[section](args.rounds, args.threads, rng)]
    lines += [f"median (min-max) of {args.rounds} interleaved rounds, {args.threads} threads", "", machine_summary()]
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
