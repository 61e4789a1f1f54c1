"""Which machine a benchmark ran on: the CPU, its instruction sets, and which of them each library uses.

    python bench/machine.py            # one line, as every bench script prints under its table

Every table in docs/perf/ carries this line, because the CPU behind our machines changes (an AVX2-only EPYC
one day, a Xeon with AVX-512, VNNI and AMX the next) and ratios are only comparable within one run.

- cpuid: the instruction-set flags `lscpu` reports that matter to these kernels.
- PyTorch: `torch.backends.cpu.get_cpu_capability()`, the ATen kernel level it dispatched to (only when torch
  is importable; the torch-free stage reports none).
- onnxruntime: its MLAS library picks kernels from the same cpuid flags at start-up and exposes no query, so
  this names the paths MLAS's platform initialisation selects for these flags: the fp32 GEMM (AVX-512F or
  AVX2/FMA), the int8 GEMM behind MatMulNBits accuracy level 4 and int8 vision (AMX, AVX-512 VNNI, AVX-VNNI or
  plain AVX2 u8 x s8, which saturates; see docs/accuracy.md).
"""
from __future__ import annotations

import platform
import subprocess

ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8")


def lscpu() -> dict[str, str]:
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return {}
    return {key.strip(): value.strip() for key, value in (line.split(":", 1) for line in text.splitlines() if ":" in line)}


def isa_flags(fields: dict[str, str]) -> list[str]:
    flags = set(fields.get("Flags", "").split())
    return [flag for flag in ISA_FLAGS if flag in flags]


def mlas_paths(flags: list[str]) -> dict[str, str]:
    """The kernels onnxruntime's MLAS selects for these cpuid flags (its platform initialisation's order)."""
    has = set(flags).__contains__
    fp32 = "avx512f" if has("avx512f") else "avx2+fma" if has("avx2") and has("fma") else "sse"
    if has("amx_int8") and has("amx_tile"):
        int8 = "amx"
    elif has("avx512_vnni"):
        int8 = "avx512-vnni"
    elif has("avx_vnni"):
        int8 = "avx-vnni"
    elif has("avx512bw"):
        int8 = "avx512bw (u8 x s8, saturating)"
    elif has("avx2"):
        int8 = "avx2 (u8 x s8, saturating)"
    else:
        int8 = "sse"
    return {"fp32 gemm": fp32, "int8 gemm": int8}


def torch_capability() -> str | None:
    try:
        import torch
    except ImportError:
        return None
    return torch.backends.cpu.get_cpu_capability()


def describe() -> dict:
    fields = lscpu()
    flags = isa_flags(fields)
    try:
        import onnxruntime
        ort_version = onnxruntime.__version__
    except ImportError:
        ort_version = None
    return {"cpu": fields.get("Model name", platform.processor() or "?"), "threads available": fields.get("CPU(s)"),
            "isa": flags, "torch kernels": torch_capability(), "onnxruntime": ort_version,
            "onnxruntime mlas": mlas_paths(flags)}


def summary(info: dict | None = None) -> str:
    info = info or describe()
    mlas = info["onnxruntime mlas"]
    parts = [f"CPU: {info['cpu']}, {info['threads available']} threads ({', '.join(info['isa']) or 'no AVX2'})",
             f"onnxruntime {info['onnxruntime']} MLAS fp32 {mlas['fp32 gemm']}, int8 {mlas['int8 gemm']}"]
    if info["torch kernels"]:
        parts.append(f"PyTorch kernels {info['torch kernels']}")
    return "; ".join(parts)


if __name__ == "__main__":
    print(summary())
