"""The command line: main job on the embedded default, one-line errors, non-zero exit on parity failure."""
import subprocess
import sys
from pathlib import Path

import pytest


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
    other = tmp_path / "other"
    run_cli("tiny", other, "--seed", "5", check=True)
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
    assert "Loading weights" not in exported.stderr + verified.stderr  # library progress bars stay quiet
    sample = Path(__file__).resolve().parents[1] / "runtime" / "samples" / "red-house.png"
    generated = run_cli("generate", out, "--prompt", "Describe the image.", "--image", sample,
                        "--max-new-tokens", "24", "--greedy", check=True)
    assert generated.stdout.strip() or generated.stdout.count("\n") >= 1


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
