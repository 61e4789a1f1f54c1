"""An export killed at any stage leaves the previous complete output, or nothing; never a mix.

The export is a subprocess killed (SIGKILL: no cleanup at all) when its progress log reaches a stage.
SIGTERM and Ctrl-C clean up their temporary folder before exiting; a SIGKILL leaves a hidden
`.OUT.tmp-PID-*` folder that the next export to OUT removes.
"""
import os
import shutil
import signal
import subprocess
import sys

import pytest

from qvl_compile.export.atomic import remove_stale_work
from qvl_compile.manifest import check_files, read_manifest

# (component, progress line of `qvl-compile export MODEL OUT --component ...` at which the export is killed)
KILL_POINTS = [
    ("vision", "step 1/8: load checkpoint ..."),  # before any graph exists
    ("vision", "step 4/8: translate to ONNX ..."),  # graph being translated
    ("vision", "step 8/8: verify against eager PyTorch at other grids ..."),  # graph complete, being checked
    ("decoder", "step 6/8: write weights (streamed from the checkpoint) ..."),  # weights being written
    ("decoder", "step 8/8: verify against transformers (weights streamed) ..."),  # all written but the manifest
]


def export_until(model, out, marker, sig=signal.SIGKILL, component="all"):
    """Start `qvl-compile export`, send `sig` when stderr shows `marker`; return (exit code, stderr)."""
    proc = subprocess.Popen([sys.executable, "-m", "qvl_compile.cli", "export", str(model), str(out),
                             "--component", component],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if marker in line:
            proc.send_signal(sig)
            break
    rest = proc.stderr.read()
    code = proc.wait()
    assert any(marker in line for line in seen), "".join(seen) + rest
    return code, "".join(seen) + rest


def snapshot(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def leftovers(out):
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}."))


def test_killed_first_export_leaves_nothing(tiny_dir, tmp_path):
    out = tmp_path / "out"
    for component, marker in KILL_POINTS:
        code, log = export_until(tiny_dir, out, marker, component=component)
        assert code == -signal.SIGKILL, log
        assert not out.exists(), f"killed at {marker!r}, yet {out} exists"
    # Each export removes the work folders of earlier killed ones as it starts: the last one's is left.
    assert len(leftovers(out)) == 1 and leftovers(out)[0].startswith(".out.tmp-"), leftovers(out)
    result = subprocess.run([sys.executable, "-m", "qvl_compile.cli", "-q", "export", str(tiny_dir), str(out),
                             "--component", "vision"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert leftovers(out) == []  # the next export removed them
    check_files(out, read_manifest(out).artifacts["vision"].files, hashes=True)


def test_killed_export_keeps_the_previous_output(tiny_dir, fp32_export, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(fp32_export, out)
    before = snapshot(out)
    for component, marker in (KILL_POINTS[1], KILL_POINTS[3]):
        code, log = export_until(tiny_dir, out, marker, component=component)
        assert code == -signal.SIGKILL, log
        assert snapshot(out) == before, f"killed at {marker!r}: {out} changed"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_terminated_export_cleans_up(tiny_dir, tmp_path, sig):
    out = tmp_path / "out"
    code, log = export_until(tiny_dir, out, KILL_POINTS[1][1], sig, component="vision")
    assert code == 1 and log.strip().splitlines()[-1] == "error: interrupted; no partial output was left behind", log
    assert not out.exists() and leftovers(out) == []


def test_death_between_the_two_renames_is_repaired(tmp_path):
    """Without RENAME_EXCHANGE the swap is two renames; a writer dying between them leaves `.OUT.old-PID-*`."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = tmp_path / "out"
    old = tmp_path / f".out.old-{dead.pid}-abc"
    old.mkdir()
    (old / "manifest.json").write_text("{}")
    stale = tmp_path / f".out.tmp-{dead.pid}-def"
    stale.mkdir()
    live = tmp_path / f".out.tmp-{os.getpid()}-ghi"  # a writer still running: left alone
    live.mkdir()
    assert remove_stale_work(out) == [stale]
    assert (out / "manifest.json").read_text() == "{}" and not old.exists() and live.exists()
