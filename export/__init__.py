"""Checkpoint -> ONNX: staged export, manifest, verification (export side: needs torch)."""
