"""Decoder export options, read once from the command line into a frozen dataclass."""
from __future__ import annotations

from dataclasses import dataclass, replace

from qvl_compile.errors import QvlError


@dataclass(frozen=True)
class QuantOptions:
    """The decoder's weight format (INT4 weight-only quantization, onnxruntime MatMulNBits) and graph fusions."""

    mode: str = "int4"  # "int4" or "fp32"
    # INT4 block size along the input dim; None: the family's choice for the checkpoint (Family.auto_block_size),
    # resolved once by export_model through `for_family` before anything reads it.
    block_size: int | None = None
    # 4 (int8 activations) is the default: on the trained tiny model's 600-case suite it scores as level 1 does
    # (73.7% against 73.8%, every task within 1 point of level 1) and decodes 3.5x faster on 2 AVX2 cores (README, docs/perf).
    # 1 keeps fp32 activations: logits match the fake-quant reference to ~1e-6 (the goldens' exact path).
    accuracy_level: int = 4
    quantize_lm_head: bool = True
    # Bits of the quantized output projection (and of a table tied to it); None: at accuracy level 4 the family's
    # choice (Family.auto_lm_head_bits: 8 for Qwen3-VL, 4 for the MoE family), else 4.
    # It sets every logit: on the trained tiny model the 4-bit lm_head cost grounding 9-11 points, which 8 bits
    # restore (README, accuracy table); llama.cpp's Q4_0 likewise keeps its output tensor at 6 bits. onnxruntime
    # 1.32 runs 8-bit MatMulNBits fast only at level 4 (int8 activations): at 2B size 1.42x the 4-bit lm_head's time
    # there, 106x at level 1 (docs/perf/lm_head_bits_2b.md), hence 4 bits at the other levels.
    lm_head_bits: int | None = None
    quantize_embedding: bool = True  # GatherBlockQuantized table (int4 mode, symmetric only)
    symmetric: bool = True
    # RMSNorm chains as onnxruntime's (Skip)SimplifiedLayerNormalization (export.fusion.fuse_rms_norm)
    fuse_rms_norm: bool = True
    # Rotary as onnxruntime's MRotaryEmbedding, one node per q and k (rewrite/rotary.py), not 14 elementwise nodes.
    # Off by default: at 2B size it decoded 0.95x the elementwise form (20.75 against 21.86 tokens/s at 512
    # context, 6 interleaved rounds, AMD EPYC AVX-512; README, "Text decoder").
    fused_rotary: bool = False
    # The attention's KV cache: "int8" stores keys and values as int8 with calibrated per-channel scales
    # (export.kv_cache_int8), reading a quarter of the fp32 cache's bytes per decoded token.
    kv_cache: str = "fp32"
    # "int8": also write decoder_prefill.onnx, the same decoder with int8 projection weights for onnxruntime's
    # integer GEMM, which the runtime reads prompts with (export.prefill_int8). Off by default: it adds about
    # twice the 4-bit projections' bytes on disk and in memory.
    prefill: str = "none"

    def head_bits_for(self, family_auto: int) -> int:
        """The lm_head's bits: the choice made, else (auto) `family_auto` (Family.auto_lm_head_bits) at accuracy
        level 4 and 4 at the other levels. The one place auto is resolved."""
        if self.lm_head_bits is not None:
            return self.lm_head_bits
        return family_auto if self.accuracy_level == 4 else 4

    def for_family(self, family_block_size: int) -> "QuantOptions":
        """These options with the block size resolved: the choice made, else (auto) the family's."""
        return self if self.block_size is not None else replace(self, block_size=family_block_size)

    def validate(self) -> None:
        if self.mode not in ("int4", "fp32"):
            raise QvlError(f"--quant: expected int4 or fp32, got {self.mode!r}")
        if self.block_size not in (None, 16, 32, 64, 128, 256):
            raise QvlError(f"--block-size: expected one of 16, 32, 64, 128, 256, got {self.block_size}")
        if self.accuracy_level not in (0, 1, 2, 3, 4):
            raise QvlError(f"--accuracy-level: expected 0..4, got {self.accuracy_level}")
        if self.lm_head_bits not in (None, 4, 8):
            raise QvlError(f"--lm-head-bits: expected 4 or 8, got {self.lm_head_bits}")
        if self.kv_cache not in ("fp32", "int8"):
            raise QvlError(f"--kv-cache: expected fp32 or int8, got {self.kv_cache!r}")
        if self.prefill not in ("none", "int8"):
            raise QvlError(f"--prefill: expected none or int8, got {self.prefill!r}")
        if self.prefill == "int8" and self.mode != "int4":
            raise QvlError(f"--prefill int8: expected --quant int4 (its int8 weights come from the 4-bit ones), "
                           f"got --quant {self.mode}")
