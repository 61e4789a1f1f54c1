"""bench/vision_attention.py: every attention form it times computes the attention it is compared with."""
import numpy as np
from bench_scripts import bench_module


def test_every_form_computes_attention():
    results = bench_module("vision_attention").measure(tokens=48, heads=2, head_dim=16, rounds=1, threads=1)
    assert set(results) >= {"MultiHeadAttention fp32", "MultiHeadAttention fp16", "Attention (ONNX opset 23) fp32",
                            "unfused fp32", "QK int8", "QK and PV int8", "PyTorch sdpa fp32"}
    for name, (times, cosine) in results.items():
        assert len(times) == 1 and times[0] > 0, name
        bound = 0.9999 if "int8" not in name and "fp16" not in name else 0.999  # 8-bit forms are approximations
        assert cosine >= bound, (name, cosine)
    assert np.isclose(results["unfused fp32"][1], 1.0, atol=1e-6)  # the same math, unfused
