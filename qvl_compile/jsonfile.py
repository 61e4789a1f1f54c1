"""Read the JSON file a folder must hold, with one-line errors naming the folder and the file."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from qvl_compile.errors import QvlError


def read_folder_json(folder: str | Path, name: str, what: str) -> tuple[Path, dict[str, Any]]:
    """(path, parsed) of `folder/name`; `what` says what the folder should be ("checkpoint", ...)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise QvlError(f"{what} folder {str(folder)!r} does not exist or is not a folder")
    path = folder / name
    if not path.is_file():
        raise QvlError(f"{folder} is not a {what}: expected {name}, found none")
    try:
        return path, json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise QvlError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write `text` to `path` through a temporary file beside it: readers see the old file or the whole new one."""
    import os
    import tempfile

    path = Path(path)
    if not path.parent.is_dir():
        raise QvlError(f"cannot write {str(path)!r}: folder {str(path.parent)!r} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_case_lines(path: str | Path, what: str, id_of) -> list[tuple[str, str, dict]]:
    """(where, id, object) for each non-blank line of a JSONL file of cases (`eval`'s and `batch`'s inputs).

    Checked before anything runs, each failure one line naming file:line: a JSON object per line, an id that
    `id_of(raw, where)` accepts (it raises otherwise and returns the id as a string), no id twice, some cases.
    Lines end at "\\n" only: JSON allows a raw U+2028 inside a string, which `str.splitlines` would split at.
    """
    path = Path(path)
    if not path.is_file():
        raise QvlError(f"{what} {str(path)!r} does not exist")
    found, seen = [], set()
    for number, line in enumerate(path.read_text(encoding="utf-8").split("\n"), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            raw = json.loads(line)
        except ValueError as exc:
            raise QvlError(f"{where}: expected one JSON object per line ({exc})") from None
        if not isinstance(raw, dict):
            raise QvlError(f"{where}: expected a JSON object, got {type(raw).__name__}")
        case_id = id_of(raw, where)
        if case_id in seen:
            raise QvlError(f"{where}: id {case_id!r} appears twice")
        seen.add(case_id)
        found.append((where, case_id, raw))
    if not found:
        raise QvlError(f"{path}: holds no cases")
    return found
