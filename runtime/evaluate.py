"""`qvl-compile eval`: accuracy per task on labelled cases (a JSONL file), with the torch-free pipeline.

A case: {"id", "task", "prompt", "images": [paths], "video": [frame paths] or null, "answer"}; paths relative to
the JSONL's folder; video frames are taken as already sampled at 2 fps. A reply is correct when, if the answer
parses as grounding boxes, the reply does too and the first boxes overlap with IoU >= 0.5; otherwise when it
equals the answer after stripping whitespace.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from qvl_compile.errors import QvlError
from qvl_compile.jsonfile import read_case_lines
from qvl_compile.runtime.grounding import iou, parse_boxes

MIN_IOU = 0.5
VIDEO_FPS = 2.0  # frames in a case are already sampled at this rate


@dataclass(frozen=True)
class EvalCase:
    id: str
    task: str
    prompt: str
    images: tuple[Path, ...]
    video: tuple[Path, ...] | None
    answer: str


@dataclass(frozen=True)
class Prediction:
    case: EvalCase
    reply: str
    correct: bool

    def as_dict(self) -> dict:
        return {"id": self.case.id, "task": self.case.task, "reply": self.reply, "correct": self.correct}


def _paths(value, field: str, where: str, folder: Path) -> tuple[Path, ...]:
    if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
        raise QvlError(f"{where}: {field!r} must be a list of file paths, got {json.dumps(value)[:60]}")
    paths = tuple(p if p.is_absolute() else folder / p for p in map(Path, value))
    for path in paths:
        if not path.is_file():
            raise QvlError(f"{where}: {field} file {str(path)!r} does not exist")
    return paths


def _checked_id(raw: dict, where: str) -> str:
    for key in ("id", "prompt", "answer"):
        if not isinstance(raw.get(key), (str, int)) or isinstance(raw.get(key), bool):
            raise QvlError(f"{where}: expected {key!r} as a string, got {json.dumps(raw.get(key))}")
    return str(raw["id"])


def read_cases(path: str | Path) -> list[EvalCase]:
    """Every case of a JSONL file, checked before anything runs (one-line errors name the line)."""
    folder = Path(path).parent
    cases = []
    for where, case_id, raw in read_case_lines(path, "cases file", _checked_id):
        video = raw.get("video")
        cases.append(EvalCase(
            id=case_id, task=str(raw.get("task") or "unlabelled"), prompt=str(raw["prompt"]),
            images=_paths(raw.get("images") or [], "images", where, folder),
            video=None if video is None else _paths(video, "video", where, folder),
            answer=str(raw["answer"])))
    return cases


def is_correct(reply: str, answer: str) -> bool:
    truth = parse_boxes(answer)
    if truth is None:
        return reply.strip() == answer.strip()
    found = parse_boxes(reply)
    return found is not None and iou(found[0].bbox, truth[0].bbox) >= MIN_IOU


def run_cases(cases: list[EvalCase], answer: Callable[[EvalCase], str]) -> Iterator[Prediction]:
    for case in cases:
        reply = answer(case)
        yield Prediction(case, reply, is_correct(reply, case.answer))


def accuracy_table(predictions: list[Prediction]) -> dict:
    """{"tasks": {task: {"correct", "total", "accuracy"}}, "overall": {...}} in first-seen task order."""
    tasks: dict[str, list[bool]] = {}
    for p in predictions:
        tasks.setdefault(p.case.task, []).append(p.correct)

    def row(values: list[bool]) -> dict:
        return {"correct": sum(values), "total": len(values), "accuracy": round(sum(values) / len(values), 4)}

    return {"tasks": {task: row(v) for task, v in tasks.items()},
            "overall": row([p.correct for p in predictions])}


def pipeline_answerer(pipeline, max_new_tokens: int) -> Callable[[EvalCase], str]:
    """Greedy replies from the torch-free pipeline."""
    from qvl_compile.runtime.video import Video

    def answer(case: EvalCase) -> str:
        video = None if case.video is None else Video.from_images(list(case.video), fps=VIDEO_FPS)
        return pipeline.generate(case.prompt, images=list(case.images), video=video,
                                 max_new_tokens=max_new_tokens, greedy=True).text

    return answer
