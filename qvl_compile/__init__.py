"""qvl-compile: tensor-only rewrite and ONNX re-export of Qwen3-VL.

The package is split by job: `qvl_compile.rewrite` (PyTorch rewrites, export side),
`qvl_compile.export` (checkpoint -> ONNX), `qvl_compile.runtime` (numpy + onnxruntime only),
`qvl_compile.golden` (PyTorch references). Importing this package loads no torch.
"""
from qvl_compile.errors import QvlError

__version__ = "0.1.0"
__all__ = ["QvlError", "__version__"]
