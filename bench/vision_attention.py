"""One vision block's attention, by form, side by side in one run: why the vision graph keeps onnxruntime's fused
fp32 `com.microsoft.MultiHeadAttention` although int8 weights made its linear layers 3x faster.

    python bench/vision_attention.py [--tokens 784 --tokens 3136] [--heads 16] [--head-dim 64] [--rounds 5]
        [--threads 2] [--markdown FILE]

Forms, each one onnxruntime session over q, k, v `[1, tokens, heads*head_dim]` (one frame: 784 tokens is a
448x448 image, 3,136 a 896x896 one):
- `MultiHeadAttention fp32` (what the vision graph runs); `MultiHeadAttention fp16` (inputs cast to fp16 and back);
- `Attention (ONNX opset 23) fp32`: the standard op's CPU kernel (our graphs are opset 18);
- `unfused fp32`: MatMul, Softmax, MatMul over the full score matrix;
- `QK int8`: Q (uint8, one scale per row) x K^T (int8, one scale per key) by MatMulInteger, rescaled, Softmax,
  fp32 MatMul with V: the form that could use the int8 GEMM (AMX / VNNI) for half the FLOPs;
- `QK and PV int8`: also P (uint8, one scale per row) x V (int8, one scale per channel) by MatMulInteger;
and PyTorch's `scaled_dot_product_attention` in fp32 as the competitor. Cosine is against MultiHeadAttention.
Inputs are seeded normal values (scale 2). Median (min-max) of the rounds, forms interleaved.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from machine import summary as machine_summary  # bench scripts share helpers by path
from onnx import TensorProto, helper

FLOAT, INT64 = TensorProto.FLOAT, TensorProto.INT64


def _const(name: str, value, dtype=FLOAT) -> helper.NodeProto:
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    dims = [len(values)] if isinstance(value, (list, tuple)) else []
    return helper.make_node("Constant", [], [name], value=helper.make_tensor(name, dtype, dims, values))


def _quantize(x: str, axis: int, signed: bool) -> tuple[list, str, str]:
    """Symmetric 8-bit along `axis` (scale = max|x| / 127, one per slice): -> (nodes, quantized, scale)."""
    nodes = [_const(f"{x}_axis", [axis], INT64),
             helper.make_node("Abs", [x], [f"{x}_abs"]),
             helper.make_node("ReduceMax", [f"{x}_abs", f"{x}_axis"], [f"{x}_max"], keepdims=1),
             helper.make_node("Div", [f"{x}_max", "c127"], [f"{x}_s0"]),
             helper.make_node("Max", [f"{x}_s0", "tiny"], [f"{x}_scale"]),
             helper.make_node("Div", [x, f"{x}_scale"], [f"{x}_div"]),
             helper.make_node("Round", [f"{x}_div"], [f"{x}_round"])]
    if signed:
        nodes.append(helper.make_node("Cast", [f"{x}_round"], [f"{x}_q"], to=TensorProto.INT8))
    else:  # uint8 around 128, the zero point MatMulInteger is given
        nodes += [helper.make_node("Add", [f"{x}_round", "c128"], [f"{x}_shift"]),
                  helper.make_node("Cast", [f"{x}_shift"], [f"{x}_q"], to=TensorProto.UINT8)]
    return nodes, f"{x}_q", f"{x}_scale"


def _heads(heads: int, head_dim: int) -> list:
    """q, k, v [1, T, H*D] -> qh, vh [1, H, T, D] and kh [1, H, T, D]; 'out' back to [1, T, H*D]."""
    nodes = [_const("split4", [1, -1, heads, head_dim], INT64), _const("merged", [1, -1, heads * head_dim], INT64),
             _const("c127", 127.0), _const("c128", 128.0), _const("tiny", 1e-12), _const("zp", 128, TensorProto.UINT8),
             _const("softmax_scale", head_dim ** -0.5)]
    for name in "qkv":
        nodes += [helper.make_node("Reshape", [name, "split4"], [f"{name}4"]),
                  helper.make_node("Transpose", [f"{name}4"], [f"{name}h"], perm=[0, 2, 1, 3])]
    return nodes + [helper.make_node("Transpose", ["attn"], ["attn_t"], perm=[0, 2, 1, 3]),
                    helper.make_node("Reshape", ["attn_t", "merged"], ["out"])]


def _scores_int8() -> list:
    """qh x kh^T through MatMulInteger, rescaled by row and key scales and the softmax scale -> 'probs'."""
    q_nodes, q8, q_scale = _quantize("qh", -1, signed=False)
    k_nodes, k8, k_scale = _quantize("kh", -1, signed=True)
    return q_nodes + k_nodes + [
        helper.make_node("Transpose", [k8], ["k8_t"], perm=[0, 1, 3, 2]),
        helper.make_node("Transpose", [k_scale], ["k_scale_t"], perm=[0, 1, 3, 2]),  # [1, H, 1, T]
        helper.make_node("MatMulInteger", [q8, "k8_t", "zp"], ["scores_i32"]),
        helper.make_node("Cast", ["scores_i32"], ["scores_f"], to=FLOAT),
        helper.make_node("Mul", [q_scale, "softmax_scale"], ["row_scale"]),
        helper.make_node("Mul", ["scores_f", "row_scale"], ["scores_r"]),
        helper.make_node("Mul", ["scores_r", "k_scale_t"], ["scores"]),
        helper.make_node("Softmax", ["scores"], ["probs"], axis=-1)]


def _pv_int8() -> list:
    """probs (uint8, scale = row max / 255) x vh (int8 per channel) through MatMulInteger -> 'attn'."""
    v_nodes, v8, v_scale = _quantize("vh", -2, signed=True)
    return v_nodes + [
        _const("c255", 255.0), _const("p_axis", [-1], INT64), _const("zero_u8", 0, TensorProto.UINT8),
        helper.make_node("ReduceMax", ["probs", "p_axis"], ["p_max"], keepdims=1),
        helper.make_node("Div", ["p_max", "c255"], ["p_scale"]),
        helper.make_node("Div", ["probs", "p_scale"], ["p_div"]),
        helper.make_node("Round", ["p_div"], ["p_round"]),
        helper.make_node("Cast", ["p_round"], ["p8"], to=TensorProto.UINT8),
        helper.make_node("MatMulInteger", ["p8", v8, "zero_u8"], ["attn_i32"]),
        helper.make_node("Cast", ["attn_i32"], ["attn_f"], to=FLOAT),
        helper.make_node("Mul", ["attn_f", "p_scale"], ["attn_r"]),
        helper.make_node("Mul", ["attn_r", v_scale], ["attn"])]


def _unfused_fp32() -> list:
    return [helper.make_node("Mul", ["qh", "softmax_scale"], ["q_scaled"]),
            helper.make_node("Transpose", ["kh"], ["kh_t"], perm=[0, 1, 3, 2]),
            helper.make_node("MatMul", ["q_scaled", "kh_t"], ["scores"]),
            helper.make_node("Softmax", ["scores"], ["probs"], axis=-1)]


def build_forms(heads: int, head_dim: int) -> dict[str, bytes]:
    """Form name -> serialized ONNX model (inputs q, k, v; output out)."""
    io = [helper.make_tensor_value_info(n, FLOAT, [1, "tokens", heads * head_dim]) for n in "qkv"]
    out = [helper.make_tensor_value_info("out", FLOAT, None)]
    fp32_pv = [helper.make_node("MatMul", ["probs", "vh"], ["attn"])]
    bodies = {"unfused fp32": _unfused_fp32() + fp32_pv, "QK int8": _scores_int8() + fp32_pv,
              "QK and PV int8": _scores_int8() + _pv_int8()}
    opsets = [helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft", 1)]
    mha = helper.make_node("MultiHeadAttention", ["q", "k", "v"], ["out"], domain="com.microsoft", num_heads=heads)
    half = [helper.make_node("Cast", [n], [f"{n}16"], to=TensorProto.FLOAT16) for n in "qkv"] + [
        helper.make_node("MultiHeadAttention", ["q16", "k16", "v16"], ["out16"], domain="com.microsoft", num_heads=heads),
        helper.make_node("Cast", ["out16"], ["out"], to=FLOAT)]
    forms = {"MultiHeadAttention fp32": helper.make_model(helper.make_graph([mha], "mha", io, out), opset_imports=opsets),
             "MultiHeadAttention fp16": helper.make_model(helper.make_graph(half, "mha16", io, out), opset_imports=opsets)}
    onnx_attention = helper.make_node("Attention", ["q", "k", "v"], ["out"], q_num_heads=heads, kv_num_heads=heads)
    forms["Attention (ONNX opset 23) fp32"] = helper.make_model(
        helper.make_graph([onnx_attention], "attention23", io, out), opset_imports=[helper.make_opsetid("", 23)])
    for name, body in bodies.items():
        forms[name] = helper.make_model(helper.make_graph(_heads(heads, head_dim) + body, name, io, out),
                                        opset_imports=opsets)
    return {name: model.SerializeToString() for name, model in forms.items()}


def _torch_sdpa(heads: int, head_dim: int, threads: int):
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(threads)

    def run(feeds):
        q, k, v = (torch.from_numpy(feeds[n]).view(1, -1, heads, head_dim).transpose(1, 2) for n in "qkv")
        with torch.inference_mode():
            out = torch.nn.functional.scaled_dot_product_attention(q, k, v)  # [1, H, T, D]
        return out.transpose(1, 2).reshape(1, -1, heads * head_dim).numpy()
    return run


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _onnx_runner(model: bytes, options: ort.SessionOptions):
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    return lambda feeds: session.run(None, feeds)[0]


def measure(tokens: int, heads: int, head_dim: int, rounds: int, threads: int) -> dict[str, tuple[list[float], float]]:
    """Form -> (seconds per round, cosine against MultiHeadAttention) at one frame length."""
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    runners = {name: _onnx_runner(model, options) for name, model in build_forms(heads, head_dim).items()}
    sdpa = _torch_sdpa(heads, head_dim, threads)
    if sdpa is not None:
        runners["PyTorch sdpa fp32"] = sdpa
    rng = np.random.default_rng(tokens)
    feeds = {n: rng.standard_normal((1, tokens, heads * head_dim), dtype=np.float32) * 2 for n in "qkv"}
    reference = runners["MultiHeadAttention fp32"](feeds)
    cosines = {name: _cosine(run(feeds), reference) for name, run in runners.items()}  # also the warm-up
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(rounds):
        for name, run in runners.items():
            start = time.perf_counter()
            run(feeds)
            times[name].append(time.perf_counter() - start)
    return {name: (times[name], cosines[name]) for name in runners}


def markdown(results: dict[int, dict], heads: int, head_dim: int, rounds: int, threads: int) -> str:
    lines = ["| tokens per frame | form | ms (one block) | x MultiHeadAttention | cosine |", "|---|---|---|---|---|"]
    for tokens, forms in results.items():
        base = statistics.median(forms["MultiHeadAttention fp32"][0])
        for name, (times, cosine) in forms.items():
            median = statistics.median(times)
            cell = f"{median * 1e3:.1f} ({min(times) * 1e3:.1f}-{max(times) * 1e3:.1f})"
            lines.append(f"| {tokens} | {name} | {cell} | {median / base:.2f} | {cosine:.6f} |")
    lines += ["", f"{heads} heads of {head_dim}; median (min-max) of {rounds} interleaved rounds, {threads} threads",
              machine_summary()]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, action="append", help="tokens per frame (default 784 and 3136)")
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args()
    results = {t: measure(t, args.heads, args.head_dim, args.rounds, args.threads) for t in args.tokens or [784, 3136]}
    table = markdown(results, args.heads, args.head_dim, args.rounds, args.threads)
    print(table)
    if args.markdown:
        args.markdown.write_text(table)


if __name__ == "__main__":
    main()
