"""The benchmark helpers that need no GPU and no torch."""
import subprocess
import sys
from pathlib import Path

import onnxruntime as ort
import pytest
from bench_scripts import bench_module

pytestmark = pytest.mark.torch_free
ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="a CUDA machine runs the check")
def test_gpu_check_skips_with_a_clear_message_on_cpu(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), str(tmp_path)],
                            capture_output=True, text=True)
    assert result.returncode == 0
    assert result.stdout.startswith("skipped: onnxruntime") and "no CUDAExecutionProvider" in result.stdout


@pytest.mark.slow  # a machine-dependent figure
def test_read_bandwidth_is_measured():
    assert bench_module("bandwidth").read_bandwidth(gib=0.0625, threads=2, passes=2) > 1e8  # bytes/s: any machine reads 100 MB/s
