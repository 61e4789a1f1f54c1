"""Run llama.cpp's own converter (convert_hf_to_gguf.py) on a `qvl-compile random` checkpoint.

    python bench/llama_cpp_convert.py LLAMA_CPP_DIR MODEL_DIR --outfile OUT.gguf --outtype f16 [--mmproj]

llama.cpp names a BPE tokenizer's pre-tokenizer by hashing what it makes of a fixed text, and refuses a tokenizer
it has not seen. Random checkpoints carry our small tokenizer (families/qwen3_vl/tiny/tokenizer.py), whose
pre-tokenizer is Qwen2's split pattern but whose vocabulary is not Qwen's, so the hash is unknown. This runs the
converter unchanged except for that one lookup: an unknown hash is read as "qwen2" (logged). Everything else,
tensors, quantization and the vision projector (--mmproj), is llama.cpp's own code. docs/perf/llama_cpp.md has
the whole recipe.
"""
from __future__ import annotations

import importlib
import logging
import runpy
import sys
from pathlib import Path

log = logging.getLogger("llama_cpp_convert")


def _qwen2_when_unknown(original):
    def get_vocab_base_pre(self, tokenizer) -> str:
        try:
            return original(self, tokenizer)
        except NotImplementedError:
            log.warning("tokenizer hash unknown to llama.cpp: using the qwen2 pre-tokenizer (the same split pattern)")
            return "qwen2"
    return get_vocab_base_pre


def main() -> None:
    if len(sys.argv) < 3:
        sys.exit(__doc__.splitlines()[2].strip())
    llama_cpp = Path(sys.argv[1]).resolve()
    converter = llama_cpp / "convert_hf_to_gguf.py"
    if not converter.is_file():
        sys.exit(f"{llama_cpp}: expected llama.cpp's source tree (convert_hf_to_gguf.py), not found")
    sys.path[:0] = [str(llama_cpp / "gguf-py"), str(llama_cpp)]
    base = importlib.import_module("conversion.base")  # llama.cpp's converter package, from the tree just added

    base.TextModel.get_vocab_base_pre = _qwen2_when_unknown(base.TextModel.get_vocab_base_pre)
    sys.argv = [str(converter), *sys.argv[2:]]
    runpy.run_path(str(converter), run_name="__main__")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    main()
