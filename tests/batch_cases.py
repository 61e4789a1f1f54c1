"""What the batch tests share: an input file of suite cases plus bad ones, the replies `generate` gives for
them (computed here with the pipeline, independently of the batch code), and finding, freezing and killing
worker processes by their command line."""
from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

from conftest import write_random_video

from qvl_compile.tasks.shapes import write_cases

BAD_CASES = {  # id -> what its error line must mention
    "missing-image": "does-not-exist.png",
    "unreadable-video": "cannot decode video",
    "prompt-not-text": "'prompt'",
}


def write_batch_input(folder: Path, per_task: int = 10, seed: int = 11) -> Path:
    """Suite cases (every task), one real video file, and three bad cases; -> the JSONL (paths relative)."""
    cases_file = write_cases(folder, seed=seed, per_task=per_task)
    lines = [json.loads(line) for line in cases_file.read_text().splitlines()]
    for line in lines:
        line.pop("answer"), line.pop("task")  # batch input needs neither
    write_random_video(folder / "media" / "clip.mp4", frames=6, height=64, width=96, fps=4, seed=3)
    (folder / "media" / "not-a-video.mp4").write_text("this is text")
    lines += [{"id": "video-file", "prompt": "Which way does the shape move?", "video": "media/clip.mp4"},
              {"id": "missing-image", "prompt": "What color is the shape?", "images": ["media/does-not-exist.png"]},
              {"id": "unreadable-video", "prompt": "Describe.", "video": "media/not-a-video.mp4"},
              {"id": "prompt-not-text", "prompt": ["not", "text"], "images": []}]
    path = folder / "batch.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def generate_replies(export: Path, input_file: Path, max_new_tokens: int = 128) -> dict[str, list[int]]:
    """id -> greedy token ids from `Pipeline.generate` (what `qvl-compile generate --greedy` runs), good cases only."""
    from qvl_compile.runtime.pipeline import Pipeline
    from qvl_compile.runtime.video import Video, read_video

    pipe = Pipeline(export, intra_op_threads=1)
    replies = {}
    for line in input_file.read_text().splitlines():
        case = json.loads(line)
        if case["id"] in BAD_CASES:
            continue
        images = [input_file.parent / p for p in case.get("images") or []]
        video = case.get("video")
        if isinstance(video, str):
            video = read_video(input_file.parent / video, pipe.video_config)
        elif video:
            video = Video.from_images([input_file.parent / p for p in video], fps=2.0)
        replies[case["id"]] = pipe.generate(case["prompt"], images=images, video=video, max_new_tokens=max_new_tokens,
                                            greedy=True).token_ids
    return replies


def read_results(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def check_exactly_once(output: Path, input_file: Path, expected: dict[str, list[int]]) -> list[dict]:
    """Every input id exactly once; good cases equal to `expected`, bad ones error lines naming the fault."""
    results = read_results(output)
    ids = [r["id"] for r in results]
    wanted = [json.loads(line)["id"] for line in input_file.read_text().splitlines()]
    assert sorted(ids) == sorted(wanted), f"missing {set(wanted) - set(ids)}, duplicated {len(ids) - len(set(ids))}"
    for result in results:
        if result["id"] in BAD_CASES:
            assert result["text"] is None and BAD_CASES[result["id"]] in result["error"], result
        else:
            assert "error" not in result, result
            assert result["token_ids"] == expected[result["id"]], result["id"]
    return results


def pids_matching(text: str) -> list[int]:
    """Processes whose command line contains `text` (Ray names actor processes 'ray::<actor class>')."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text in (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


def wait_for(condition, timeout: float, what: str, poll: float = 0.01):
    deadline = time.time() + timeout
    while not (found := condition()):
        assert time.time() < deadline, f"timed out after {timeout:.0f} s waiting for {what}"
        time.sleep(poll)
    return found


def kill_one_mid_run(pids: list[int]) -> int:
    """Freeze every worker, SIGKILL the first, thaw the rest: the kill lands while work is in flight."""
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    os.kill(pids[0], signal.SIGKILL)
    time.sleep(0.3)
    for pid in pids[1:]:
        os.kill(pid, signal.SIGCONT)
    return pids[0]


def worker_processes(pid: int) -> list[int]:
    """The live worker processes `pid` spawned (multiprocessing's spawn_main; none once it has exited)."""
    found = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            found += [int(p) for p in (task / "children").read_text().split()]
    except OSError:
        return []
    return [p for p in found if p in pids_matching("spawn_main")]
