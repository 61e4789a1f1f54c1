"""runtime.cpu_int8: which CPUs multiply u8 x s8 without saturating, read from their flags (torch-free)."""
import logging

import pytest

from qvl_compile.runtime.cpu_int8 import cpu_flags, s8_weights_exact, warn_if_saturating

pytestmark = pytest.mark.torch_free


@pytest.mark.parametrize("machine, flags, exact", [
    ("x86_64", {"avx2", "fma"}, False),  # VPMADDUBSW: saturates
    ("x86_64", {"avx2", "avx512f", "avx512bw"}, False),  # AVX-512 without VNNI: saturates too
    ("x86_64", {"avx2", "avx512f", "avx512_vnni"}, True),
    ("x86_64", {"avx2", "avx_vnni"}, True),
    ("x86_64", {"avx2", "amx_tile", "amx_int8"}, True),
    ("x86_64", set(), False),  # flags unreadable: the safe answer
    ("aarch64", set(), True),  # ARM's dot-product kernels do not saturate
])
def test_which_cpus_multiply_u8_by_s8_exactly(machine, flags, exact):
    assert s8_weights_exact(machine, flags) is exact


def test_flags_are_read_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu sse2 avx2 avx512_vnni\n\n")
    assert cpu_flags(cpuinfo) == {"fpu", "sse2", "avx2", "avx512_vnni"}
    assert cpu_flags(tmp_path / "missing") is None


def test_an_s8_graph_on_a_saturating_cpu_is_a_warning(monkeypatch, caplog):
    import qvl_compile.runtime.cpu_int8 as cpu_int8

    monkeypatch.setattr(cpu_int8, "s8_weights_exact", lambda: False)
    with caplog.at_level(logging.WARNING, logger="qvl_compile.runtime.cpu_int8"):
        warn_if_saturating("u8")
        warn_if_saturating("")  # an export from before the choice: 7-bit weights, safe
        assert not caplog.records
        warn_if_saturating("s8")
    assert len(caplog.records) == 1 and "saturate" in caplog.records[0].getMessage()
