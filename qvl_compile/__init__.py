"""qvl-compile: tensor-only rewrite and ONNX re-export of Qwen3-VL.

The package is split by job: the core here (config, the export contract, parity, the family registry),
`qvl_compile.rewrite` (PyTorch rewrites, export side), `qvl_compile.export` (checkpoint -> ONNX),
`qvl_compile.runtime` (numpy + onnxruntime only), `qvl_compile.families` (one package per model family),
`qvl_compile.golden` (golden data and its generator). Importing this package loads no torch.
"""
from qvl_compile.errors import QvlError

__version__ = "0.1.0"
__all__ = ["QvlError", "__version__"]
