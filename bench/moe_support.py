"""Which of onnxruntime's mixture-of-experts operators run on the installed CPU build, and how exactly.

    python bench/moe_support.py

For the Qwen3-VL-MoE family (a SwiGLU expert MLP, softmax routing renormalised over the top k): each variant is
one `com.microsoft.MoE` / `QMoE` node with random weights, compared with a numpy reference of the same routing
and expert MLP (the int4 one with the dequantized weights). Prints one line per variant: the max error, or
onnxruntime's refusal.
"""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

TOKENS, HIDDEN, INTER, EXPERTS, TOP_K = 3, 16, 8, 4, 2


def silu(v: np.ndarray) -> np.ndarray:
    return v / (1 + np.exp(-v))


def reference(x, logits, gate, up, down) -> np.ndarray:
    """Qwen3-MoE routing: softmax over the top-k logits; expert e: down[e] @ (silu(gate[e] @ x) * up[e] @ x)."""
    out = np.zeros_like(x)
    for t in range(len(x)):
        top = np.argsort(-logits[t])[:TOP_K]
        weights = np.exp(logits[t][top] - logits[t][top].max())
        for e, w in zip(top, weights / weights.sum()):
            out[t] += w * (down[e] @ (silu(gate[e] @ x[t]) * (up[e] @ x[t])))
    return out


def run_node(op: str, inputs: list[str], tensors: dict[str, np.ndarray], x, logits, **attrs) -> np.ndarray:
    node = helper.make_node(op, inputs, ["y"], domain="com.microsoft", **attrs)
    graph = helper.make_graph(
        [node], "moe", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape)),
                        helper.make_tensor_value_info("router", TensorProto.FLOAT, list(logits.shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(array, name) for name, array in tensors.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft", 1)])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x, "router": logits})[0]


def quantize_rows_4bit(w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """[E, N, K] -> (packed uint8 [E, N, K/2], scales [E, N], dequantized [E, N, K]); symmetric, offset 8."""
    scale = np.abs(w).max(-1) / 7.0
    q = np.clip(np.round(w / scale[..., None]), -8, 7).astype(np.int16) + 8
    packed = (q[..., 0::2] | (q[..., 1::2] << 4)).astype(np.uint8)
    return packed, scale.astype(np.float32), ((q - 8) * scale[..., None]).astype(np.float32)


def main() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((TOKENS, HIDDEN)).astype(np.float32)
    logits = rng.standard_normal((TOKENS, EXPERTS)).astype(np.float32)
    gate, up = (rng.standard_normal((EXPERTS, INTER, HIDDEN)).astype(np.float32) * 0.3 for _ in range(2))
    down = rng.standard_normal((EXPERTS, HIDDEN, INTER)).astype(np.float32) * 0.3  # torch Linear layout [out, in]
    expected = reference(x, logits, gate, up, down)
    interleaved = np.stack([gate, up], axis=2).reshape(EXPERTS, 2 * INTER, HIDDEN)  # rows g0 u0 g1 u1 ...
    concatenated = np.concatenate([gate, up], axis=1)  # rows g0..gI-1 u0..uI-1
    routing = {"k": TOP_K, "normalize_routing_weights": 1}
    variants = {
        "MoE fp32, silu with a separate up (fc3)": (
            "MoE", ["x", "router", "fc1", "", "fc2", "", "fc3"], {"fc1": gate, "fc2": down, "fc3": up},
            {**routing, "activation_type": "silu"}, expected),
        "MoE fp32, swiglu, gate/up concatenated (swiglu_fusion=2)": (
            "MoE", ["x", "router", "fc1", "", "fc2", ""], {"fc1": concatenated, "fc2": down},
            {**routing, "activation_type": "swiglu", "swiglu_fusion": 2}, expected),
        "MoE fp32, swiglu, gate/up interleaved (swiglu_fusion=1)": (
            "MoE", ["x", "router", "fc1", "", "fc2", ""], {"fc1": interleaved, "fc2": down},
            {**routing, "activation_type": "swiglu", "swiglu_fusion": 1}, expected),
    }
    packed1, scales1, deq1 = quantize_rows_4bit(interleaved)
    packed2, scales2, deq2 = quantize_rows_4bit(down)
    variants["QMoE int4 (per-row scales), swiglu interleaved"] = (
        "QMoE", ["x", "router", "fc1", "s1", "", "fc2", "s2", ""],
        {"fc1": packed1, "s1": scales1, "fc2": packed2, "s2": scales2},
        {**routing, "activation_type": "swiglu", "swiglu_fusion": 1, "expert_weight_bits": 4},
        reference(x, logits, deq1[:, 0::2], deq1[:, 1::2], deq2))
    ort.set_default_logger_severity(4)  # the refusals are printed below, once
    print(f"onnxruntime {ort.__version__}, CPUExecutionProvider; {EXPERTS} experts, top {TOP_K}, hidden {HIDDEN}")
    for name, (op, inputs, tensors, attrs, want) in variants.items():
        try:
            got = run_node(op, inputs, tensors, x, logits, **attrs)
            print(f"{name}: runs, max error {np.abs(got - want).max():.1e} (outputs up to {np.abs(want).max():.1f})")
        except (ort.capi.onnxruntime_pybind11_state.Fail, ort.capi.onnxruntime_pybind11_state.NotImplemented) as exc:
            message = str(exc).splitlines()[0]  # onnxruntime's refusal is the finding
            print(f"{name}: refused: {message.split('Status Message: ')[-1].split('[with T = float] ')[-1][:160]}")


if __name__ == "__main__":
    main()
