"""The model families qvl-compile supports, one subpackage each; importing this package registers them."""
from qvl_compile.families import qwen3_vl, qwen3_vl_moe

__all__ = ["qwen3_vl", "qwen3_vl_moe"]
