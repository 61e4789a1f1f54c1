"""bench/machine.py: which kernels the benchmark tables say each library used, from the CPU's flags."""
import subprocess
import sys
from pathlib import Path

import pytest
from bench_scripts import bench_module

pytestmark = pytest.mark.torch_free
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def machine():
    return bench_module("machine")


@pytest.mark.parametrize(("flags", "fp32", "int8"), [
    (["avx2", "fma"], "avx2+fma", "avx2 (u8 x s8, saturating)"),
    (["avx2", "fma", "avx_vnni"], "avx2+fma", "avx-vnni"),
    (["avx2", "fma", "avx512f", "avx512bw"], "avx512f", "avx512bw (u8 x s8, saturating)"),
    (["avx2", "fma", "avx512f", "avx512bw", "avx512_vnni"], "avx512f", "avx512-vnni"),
    (["avx2", "fma", "avx512f", "avx512_vnni", "amx_tile", "amx_int8"], "avx512f", "amx"),
])
def test_mlas_paths_follow_the_flags(machine, flags, fp32, int8):
    assert machine.mlas_paths(flags) == {"fp32 gemm": fp32, "int8 gemm": int8}


def test_isa_flags_come_from_lscpu_fields(machine):
    fields = {"Model name": "Some CPU", "Flags": "fpu sse2 avx2 fma avx512f avx512_vnni amx_tile"}
    assert machine.isa_flags(fields) == ["avx2", "fma", "avx512f", "avx512_vnni", "amx_tile"]


def test_the_script_prints_one_line_naming_cpu_and_onnxruntime():
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "machine.py")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("CPU: ") and "onnxruntime " in lines[0]
