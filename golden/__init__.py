"""PyTorch references and golden data (export side)."""
