"""`qvl-compile batch` on this machine (worker processes): every id exactly once, even with a worker killed
mid-run or a run resumed after a torn write; bad cases become error lines; answers equal `generate`'s.

Torch-free: it runs the CLI on an export built elsewhere (QVL_GOLDEN_EXPORTS in CI's torch-free stage).
"""
import json
import subprocess
import sys

import pytest
from batch_cases import (
    BAD_CASES,
    check_exactly_once,
    generate_replies,
    kill_one_mid_run,
    read_results,
    wait_for,
    worker_processes,
    write_batch_input,
)

pytestmark = pytest.mark.torch_free


@pytest.fixture(scope="module")
def export(golden_exports):
    return golden_exports["fp32"]


@pytest.fixture(scope="module")
def batch_input(tmp_path_factory):
    return write_batch_input(tmp_path_factory.mktemp("batch-cases"))


@pytest.fixture(scope="module")
def expected(export, batch_input):
    return generate_replies(export, batch_input)


def batch_command(export, input_file, output, *args) -> list[str]:
    return [sys.executable, "-m", "qvl_compile.cli", "batch", str(export), str(input_file), str(output), *args]


def test_a_worker_killed_mid_run_loses_and_duplicates_nothing(export, batch_input, expected, tmp_path):
    output = tmp_path / "out.jsonl"
    process = subprocess.Popen(batch_command(export, batch_input, output, "--workers", "2"),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    workers = wait_for(lambda: len(found := worker_processes(process.pid)) == 2 and found, 60, "two workers")
    wait_for(lambda: output.exists() and output.read_text().count("\n") >= 2, 60, "the first results")
    kill_one_mid_run(workers)
    written_before_the_kill = output.read_text().count("\n")
    _, err = process.communicate(timeout=300)
    assert process.returncode == 0, err
    results = check_exactly_once(output, batch_input, expected)
    assert written_before_the_kill < len(results) - 10, "the kill came too late to test anything"
    assert "qvl-batch-worker-" in err and "died (exit code -9) holding" in err, err
    assert f"{len(expected) + len(BAD_CASES)} of {len(expected) + len(BAD_CASES)} cases" in err


def test_a_resumed_run_skips_done_ids_and_cuts_a_torn_line(export, batch_input, expected, tmp_path):
    first = tmp_path / "first.jsonl"
    subprocess.run(batch_command(export, batch_input, first), check=True, capture_output=True, timeout=300)
    lines = first.read_text().splitlines(keepends=True)
    output = tmp_path / "out.jsonl"
    output.write_text("".join(lines[:5]) + lines[5][:17])  # five done, the sixth torn mid-line by a crash
    run = subprocess.run(batch_command(export, batch_input, output, "--workers", "2"), capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert output.read_text().startswith("".join(lines[:5]))  # what was done stays as it was
    assert "5 of" in run.stderr.splitlines()[0]
    check_exactly_once(output, batch_input, expected)
    again = subprocess.run(batch_command(export, batch_input, output), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and output.read_text().count("\n") == len(lines)  # all done: nothing added


def test_answers_equal_the_generate_command(export, batch_input, tmp_path):
    """One case through `qvl-compile generate --greedy --json` itself, beside the batch's line for it."""
    case = next(json.loads(line) for line in batch_input.read_text().splitlines() if "ground" in line)
    single = tmp_path / "one.jsonl"
    single.write_text(json.dumps({**case, "images": [str(batch_input.parent / p) for p in case["images"]]}) + "\n")
    output = tmp_path / "out.jsonl"
    subprocess.run(batch_command(export, single, output), check=True, capture_output=True, timeout=300)
    args = [a for p in case["images"] for a in ("--image", str(batch_input.parent / p))]
    generated = subprocess.run([sys.executable, "-m", "qvl_compile.cli", "generate", str(export), "--prompt",
                                case["prompt"], *args, "--greedy", "--json", "--boxes"],
                               check=True, capture_output=True, text=True, timeout=300)
    reply = json.loads(generated.stdout)
    [line] = read_results(output)
    assert (line["text"], line["token_ids"]) == (reply["text"], reply["token_ids"])
    assert line.get("boxes") == reply["boxes"] and reply["boxes"], "a grounding case's boxes, in pixels"


@pytest.mark.parametrize("content, message", [
    ('{"id": "a", "prompt": "x"}\n{"id": "a", "prompt": "y"}\n', "batch.jsonl:2: id 'a' appears twice"),
    ('{"id": "a", "prompt": "x"}\nnot json\n', "batch.jsonl:2: expected one JSON object per line"),
    ('{"prompt": "x"}\n', "batch.jsonl:1: expected 'id' as a non-empty string or integer, got null"),
    ("", "batch.jsonl: holds no cases"),
])
def test_a_bad_input_file_is_one_line_and_writes_nothing(export, tmp_path, content, message):
    (tmp_path / "batch.jsonl").write_text(content)
    run = subprocess.run(batch_command(export, tmp_path / "batch.jsonl", tmp_path / "out.jsonl"),
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 1 and run.stderr.startswith("error: ") and run.stderr.count("\n") == 1, run.stderr
    assert message in run.stderr and not (tmp_path / "out.jsonl").exists()


def test_an_output_that_is_not_batch_results_is_refused(export, batch_input, tmp_path):
    (tmp_path / "out.jsonl").write_text('{"text": "no id here"}\n')
    run = subprocess.run(batch_command(export, batch_input, tmp_path / "out.jsonl"), capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 1 and "out.jsonl:1: not a result line of qvl-compile batch" in run.stderr, run.stderr
    assert (tmp_path / "out.jsonl").read_text() == '{"text": "no id here"}\n'


def test_one_output_has_one_writer(tmp_path):
    from qvl_compile.errors import QvlError
    from qvl_compile.runtime.batch import ResultLog

    with ResultLog(tmp_path / "out.jsonl"):
        with pytest.raises(QvlError, match="out.jsonl is being written by another qvl-compile batch"):
            ResultLog(tmp_path / "out.jsonl")


def test_the_result_log_writes_an_id_once(tmp_path):
    from qvl_compile.runtime.batch import ResultLog

    with ResultLog(tmp_path / "out.jsonl") as log:
        assert log.write({"id": "a", "text": "first"})
        assert not log.write({"id": "a", "text": "again"})
    assert read_results(tmp_path / "out.jsonl") == [{"id": "a", "text": "first"}]


def test_ray_without_the_extra_is_one_line(export, batch_input, tmp_path):
    import importlib.util

    if importlib.util.find_spec("ray") is not None:
        pytest.skip("ray is installed here")
    run = subprocess.run(batch_command(export, batch_input, tmp_path / "out.jsonl", "--ray"), capture_output=True,
                         text=True, timeout=120)
    assert not (tmp_path / "out.jsonl").exists()
    assert run.returncode == 1 and run.stderr.strip().endswith("--ray needs the ray extra: pip install "
                                                                "'qvl-compile[ray]' (ray is not installed)"), run.stderr
