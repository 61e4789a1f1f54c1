"""Whether this CPU multiplies u8 x s8 without saturating: which int8 vision weights suit it.

onnxruntime's MLAS multiplies the int8 vision graph's u8 activations by s8 weights with VNNI (AVX512-VNNI,
AVX-VNNI) or AMX where the CPU has them: exact int32 sums. Without them, x86 falls back to VPMADDUBSW, whose int16
pair sums saturate for full-range s8 weights (measured: cosine 0.9948 against the fp32 tower on an AVX2-only
EPYC). u8 x u8 products take another kernel and never saturate. ARM's dot-product kernels do not saturate either.
"""
from __future__ import annotations

import logging
import platform
from pathlib import Path

log = logging.getLogger(__name__)

EXACT_INT8_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
X86 = ("x86_64", "amd64", "i386", "i686")


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str] | None:
    """The CPU's feature flags from /proc/cpuinfo (Linux); None where they cannot be read."""
    try:
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        return None
    return None


def s8_weights_exact(machine: str | None = None, flags: set[str] | None = None) -> bool:
    """True where u8 x s8 int8 products do not saturate: x86 with VNNI or AMX, or any non-x86 CPU. An x86 CPU
    whose flags cannot be read counts as saturating (the safe answer)."""
    machine = (machine or platform.machine()).lower()
    if machine not in X86:
        return True
    flags = cpu_flags() if flags is None else flags
    return bool(flags) and any(flag in flags for flag in EXACT_INT8_FLAGS)


def warn_if_saturating(weights: str) -> None:
    """Log a warning when an s8-weight int8 vision graph is loaded on a CPU that saturates u8 x s8 products."""
    if weights == "s8" and not s8_weights_exact():
        log.warning("this int8 vision graph has s8 weights, whose products saturate on this CPU (x86 without VNNI "
                    "or AMX); re-export it with --vision-quant int8 on this machine (u8 weights) or use fp32 vision")
