"""Tensor-only PyTorch rewrites of Qwen3-VL modules (export side)."""
