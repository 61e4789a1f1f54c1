"""`qvl-compile batch`: one reply per input case, written exactly once to an append-only JSONL file.

    cases = read_batch_cases("in.jsonl")              # ids checked; media paths made absolute
    with ResultLog("out.jsonl") as log:               # ids already there are done (resume)
        for case in log.pending(cases):
            log.write(run_case(pipe, case, BatchOptions()))

A case is `{"id", "prompt", "images": [paths], "video": [frame paths] or a video file or null}` plus optional
`max_new_tokens`, `greedy`, `seed`, `temperature`, `top_p`, `top_k`, `repetition_penalty` (the case format of
`qvl-compile eval`; `answer` and `task` are ignored). The file must be JSON objects with distinct ids: that is
checked before anything runs. Everything else about a case (a missing image, an unreadable video, a bad option)
is checked by the worker and becomes that case's error line; it never stops the batch.

Exactly once: one process (the driver) writes OUTPUT, a whole line per `write`, flushed and fsynced; a
worker's result only becomes a line there. An id already written is never written again, and a run killed
mid-line leaves a torn last line that the next run cuts off before appending.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from qvl_compile.errors import QvlError
from qvl_compile.jsonfile import read_case_lines

VIDEO_FPS = 2.0  # frame lists are taken as already sampled at this rate (as in `qvl-compile eval`)
OPTION_TYPES = {"max_new_tokens": int, "greedy": bool, "seed": int, "temperature": float, "top_p": float,
                "top_k": int, "repetition_penalty": float}


@dataclass(frozen=True)
class BatchOptions:
    """Defaults for cases that do not set their own."""
    max_new_tokens: int = 128
    greedy: bool = True
    seed: int = 0  # mixed with each case's id: a rerun samples the same reply


def _case_id(raw: dict, where: str) -> str:
    value = raw.get("id")
    if isinstance(value, bool) or not isinstance(value, (str, int)) or value == "":
        raise QvlError(f"{where}: expected 'id' as a non-empty string or integer, got {json.dumps(value)}")
    return str(value)


def _absolute(raw: dict, folder: Path) -> dict:
    """Media paths resolved against the input's folder (workers may run elsewhere)."""
    case = dict(raw)
    for key in ("images", "video"):
        value = case.get(key)
        if isinstance(value, str):
            case[key] = str(folder / value)
        elif isinstance(value, list):
            case[key] = [str(folder / p) if isinstance(p, str) else p for p in value]
    return case


def read_batch_cases(path: str | Path) -> list[dict]:
    """The cases of a JSONL file (ids as strings, media paths absolute); one-line errors name the line."""
    folder = Path(path).parent.resolve()
    return [{**_absolute(raw, folder), "id": case_id}
            for _, case_id, raw in read_case_lines(path, "input file", _case_id)]


class ResultLog:
    """OUTPUT.jsonl, append-only: the ids it holds (done), a torn last line cut off, each new line synced."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.parent.is_dir():
            raise QvlError(f"cannot write {str(self.path)!r}: folder {str(self.path.parent)!r} does not exist")
        self.done: set[str] = set()
        self.errors = 0
        self._handle = open(self.path, "a", encoding="utf-8")
        try:
            fcntl.flock(self._handle, fcntl.LOCK_EX | fcntl.LOCK_NB)  # two drivers on one file would both write
        except OSError:
            self._handle.close()
            raise QvlError(f"{self.path} is being written by another qvl-compile batch") from None
        try:
            self._repair_and_read()
        except BaseException:
            self._handle.close()
            raise

    def _repair_and_read(self) -> None:
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        keep = len(data) if data.endswith(b"\n") or not data else data.rfind(b"\n") + 1
        for number, line in enumerate(data[:keep].decode("utf-8").split("\n")[:-1], start=1):
            try:
                self.done.add(str(json.loads(line)["id"]))
            except (ValueError, KeyError, TypeError):
                raise QvlError(f"{self.path}:{number}: not a result line of qvl-compile batch; "
                               f"expected {{\"id\": ...}}, got {line[:60]!r}") from None
        if keep < len(data):  # the last run died mid-line: that case was not done
            with open(self.path, "r+b") as handle:
                handle.truncate(keep)

    def pending(self, cases: list[dict]) -> list[dict]:
        return [case for case in cases if case["id"] not in self.done]

    def write(self, result: dict) -> bool:
        """Append one result line unless its id is already written; True when written."""
        if result["id"] in self.done:
            return False
        self._handle.write(json.dumps(result) + "\n")
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self.done.add(result["id"])
        self.errors += "error" in result
        return True

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> "ResultLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def case_seed(case_id: str, seed: int) -> int:
    """A seed per case that does not depend on the order, the worker or the run."""
    digest = hashlib.sha256(f"{seed}:{case_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def _options(case: dict) -> dict:
    found = {}
    for key, kind in OPTION_TYPES.items():
        value = case.get(key)
        if value is None:
            continue
        ok = isinstance(value, bool) if kind is bool else \
            isinstance(value, (int, float) if kind is float else int) and not isinstance(value, bool)
        if not ok:
            raise QvlError(f"option {key!r}: expected {kind.__name__}, got {json.dumps(value)}")
        found[key] = value
    if found.get("max_new_tokens", 1) < 1:
        raise QvlError(f"option 'max_new_tokens': expected >= 1, got {found['max_new_tokens']}")
    return found


def _media(case: dict, video_config):
    from qvl_compile.runtime.video import Video, read_video

    images = case.get("images") or []
    if not isinstance(images, list) or not all(isinstance(p, str) for p in images):
        raise QvlError(f"'images': expected a list of file paths, got {json.dumps(images)[:60]}")
    for image in images:
        if not Path(image).is_file():
            raise QvlError(f"image {image!r} does not exist")
    video = case.get("video")
    if video is None:
        return images, None
    if isinstance(video, str):
        return images, read_video(video, video_config())
    if not isinstance(video, list) or not video or not all(isinstance(p, str) for p in video):
        raise QvlError(f"'video': expected a video file, a list of frame files or null, got {json.dumps(video)[:60]}")
    return images, Video.from_images(video, fps=VIDEO_FPS)


def _boxes(text: str, images: list[str]) -> list[dict] | None:
    """Pixels of the first image; Qwen3-VL's 0..1000 relative coordinates when the case has no image."""
    from qvl_compile.runtime.grounding import boxes_in_pixels, parse_boxes
    from qvl_compile.runtime.preprocess import load_image

    found = boxes_in_pixels(text, load_image(images[0]).size) if images else parse_boxes(text)
    return None if found is None else [box.as_dict() for box in found]


def generate_case(pipe, case: dict, defaults: BatchOptions) -> dict:
    """The result line of one case; raises on a bad case."""
    prompt = case.get("prompt")
    if not isinstance(prompt, str):
        raise QvlError(f"'prompt': expected a string, got {json.dumps(prompt)[:60]}")
    options = _options(case)
    images, video = _media(case, lambda: pipe.video_config)
    sampling = pipe.sampling.overridden(options.get("temperature"), options.get("top_p"), options.get("top_k"),
                                        options.get("repetition_penalty"))
    greedy = options.get("greedy", defaults.greedy and "temperature" not in options)
    result = pipe.generate(prompt, images=images, video=video,
                           max_new_tokens=options.get("max_new_tokens", defaults.max_new_tokens), greedy=greedy,
                           seed=options.get("seed", case_seed(case["id"], defaults.seed)), sampling=sampling)
    line = {"id": case["id"], "text": result.text, "token_ids": result.token_ids}
    boxes = _boxes(result.text, images)
    if boxes is not None:
        line["boxes"] = boxes
    return line


def one_line(exc: BaseException) -> str:
    message = " ".join(str(exc).split()) or type(exc).__name__
    return message if isinstance(exc, QvlError) else f"{type(exc).__name__}: {message}"


def run_case(pipe, case: dict, defaults: BatchOptions) -> dict:
    """`generate_case`, or the case's error line: a bad case never stops the batch."""
    try:
        return generate_case(pipe, case, defaults)
    except Exception as exc:  # noqa: BLE001 - any failure of one case is that case's error line
        return error_line(case["id"], one_line(exc))


def error_line(case_id: str, message: str) -> dict:
    return {"id": case_id, "text": None, "token_ids": None, "error": message}
