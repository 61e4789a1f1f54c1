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
