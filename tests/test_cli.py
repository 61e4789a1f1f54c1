"""The command line: main job on the embedded default, one-line errors, non-zero exit on parity failure."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args, check=False):
    result = subprocess.run([sys.executable, "-m", "qvl_compile.cli", *map(str, args)],
                            capture_output=True, text=True)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def test_verify_passes_on_matrix_and_custom_grid(vision_export, tiny_dir):
    result = run_cli("verify", vision_export, "--model", tiny_dir, "--grid", "1x30x2", "--grid", "2x2x2,1x4x6", check=True)
    assert "all 20 parity checks passed" in result.stdout
    assert result.stdout.count("  pass\n") == 20


def test_verify_fails_against_another_checkpoint(vision_export, tmp_path):
    from qvl_compile.families.qwen3_vl.fixtures import write_tiny_untrained

    other = write_tiny_untrained(tmp_path / "other", seed=5)  # the same architecture, other weights
    result = run_cli("verify", vision_export, "--model", other)
    assert result.returncode == 1
    assert "FAIL" in result.stdout
    assert result.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "parity checks failed" in result.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["export", "{tmp}/missing", "{tmp}/out", "--component", "vision"], "does not exist"),
        (["export", "{tmp}", "{tmp}/out", "--component", "vision"], "expected config.json"),
        (["verify", "{tmp}", "--model", "{tmp}"], "expected manifest.json"),
        (["verify", "{tmp}", "--model", "{tmp}", "--grid", "1x6"], "expected TxHxW"),
    ],
)
def test_bad_input_is_one_line(tmp_path, args, message):
    result = run_cli(*[a.format(tmp=tmp_path) for a in args])
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr


def test_export_refuses_foreign_output_folder(tiny_dir, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    result = run_cli("export", tiny_dir, out, "--component", "vision")
    assert result.returncode == 1 and "pass --force" in result.stderr
    assert (out / "keep.txt").read_text() == "precious"
    # With --force it goes, but not silently: the warning names what is replaced.
    forced = run_cli("export", tiny_dir, out, "--component", "vision", "--force", check=True)
    assert "not an output of ours" in forced.stderr and "keep.txt" in forced.stderr
    assert not (out / "keep.txt").exists()


def test_debug_works_after_the_command_too(tmp_path):
    for args in (["--debug", "verify", tmp_path, "--model", tmp_path], ["verify", tmp_path, "--model", tmp_path, "--debug"]):
        result = run_cli(*args)
        assert result.returncode == 1 and "Traceback" in result.stderr and "expected manifest.json" in result.stderr


def test_truncated_weights_are_named(tiny_dir, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_dir, broken)
    with open(broken / "model.safetensors", "r+b") as fh:
        fh.truncate(5000)
    result = run_cli("export", broken, tmp_path / "out", "--component", "vision")
    assert result.returncode == 1
    assert "model.safetensors" in result.stderr and "truncated" in result.stderr
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.tmp")]


def test_readme_main_job_exports_and_verifies_both_graphs(tiny_dir, tmp_path):
    out = tmp_path / "out"
    exported = run_cli("export", tiny_dir, out, check=True)
    assert "vision: vision.onnx" in exported.stdout and "decoder: decoder.onnx" in exported.stdout
    verified = run_cli("verify", out, "--model", tiny_dir, check=True)
    assert "decoder: video, 2 images" in verified.stdout and "greedy tokens" in verified.stdout
    assert "FAIL" not in verified.stdout and "parity checks passed" in verified.stdout
    # Front door: the table fits 80 columns; token rows demand identity, not a tolerance; each export step
    # names its component; onnxruntime's fusion lines do not repeat ours.
    assert max(len(line) for line in verified.stdout.splitlines()) <= 80, verified.stdout
    # The default decoder quantizes activations (accuracy_level 4): its INT4 weights are checked exactly on a
    # level-0 copy (identical tokens required), the graph as shipped within its own bound (tokens shown).
    assert "[int4 weights]" in verified.stdout and "[accuracy_level 4]" in verified.stdout
    token_rows = [line for line in verified.stdout.splitlines() if line.startswith("  greedy tokens")]
    required = [row for row in token_rows if " exact " in row]
    assert len(required) == len(token_rows) // 2 and all(" same " in row and row.endswith("pass") for row in required)
    assert all(row.endswith("shown") for row in token_rows if row not in required), token_rows
    assert "vision step 1/" in exported.stderr and "decoder step 1/" in exported.stderr
    assert "Fused FastGelu" not in exported.stderr and "fused 4 FastGelu" in exported.stderr
    assert "verify: loading the export's graphs" in verified.stderr.splitlines()[0]  # said before the slow part
    assert "Loading weights" not in exported.stderr + verified.stderr  # library progress bars stay quiet
    # The README's main job: the answer it shows is the one the command prints.
    readme = (ROOT / "README.md").read_text()
    command = re.search(r'qvl-compile generate out --prompt "([^"]+)" --image (\S+) --greedy\n', readme)
    shown = re.search(r"The last command prints `([^`]+)`", readme).group(1)
    generated = run_cli("generate", out, "--prompt", command.group(1), "--image", ROOT / command.group(2), "--greedy",
                        check=True)
    assert generated.stdout.strip() == shown
    # A lossy accuracy level hides no wrong weight: against another checkpoint the level-0 copy's rows fail.
    from qvl_compile.families.qwen3_vl.fixtures import write_tiny_untrained

    other = write_tiny_untrained(tmp_path / "other", seed=5)
    wrong = run_cli("verify", out, "--model", other)
    assert wrong.returncode == 1
    failed_cases, case = set(), None
    for line in wrong.stdout.splitlines():
        case = line if not line.startswith(" ") else case
        if line.endswith("FAIL"):
            failed_cases.add(case)
    assert any("[int4 weights]" in c for c in failed_cases), failed_cases


def test_decoder_only_export_keeps_the_earlier_vision_graph(vision_export, tiny_dir, tmp_path):
    import json
    import shutil

    out = tmp_path / "both"
    shutil.copytree(vision_export, out)
    run_cli("export", tiny_dir, out, "--component", "decoder", "--quant", "fp32", check=True)
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["artifacts"]) == {"vision", "decoder"}
    assert manifest["artifacts"]["decoder"]["quant"]["mode"] == "fp32"
    assert (out / "vision.onnx").is_file() and (out / "decoder.onnx").is_file()
