"""The model families qvl-compile supports, one subpackage each; importing this package registers them."""
from qvl_compile.families import qwen3_vl

__all__ = ["qwen3_vl"]
