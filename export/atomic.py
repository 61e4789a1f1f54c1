"""Write a folder atomically: build it beside the destination, swap it in only when complete."""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from qvl_compile.errors import QvlError


def _is_ours(dest: Path, marker: str) -> bool:
    return not any(dest.iterdir()) or (dest / marker).is_file()


def _make_readable(folder: Path) -> None:
    """mkdtemp makes 0700 folders; give the result the modes a plain mkdir/open would."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for path in folder.rglob("*"):
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


@contextlib.contextmanager
def atomic_output_dir(dest: str | Path, *, force: bool, marker: str) -> Iterator[Path]:
    """Yield a temporary folder next to `dest`; on success it replaces `dest`, on failure it vanishes.

    An existing `dest` is replaced only if it is empty, holds `marker` (an earlier output of ours),
    or `force` is set. The previous complete output stays in place until the new one is complete.
    """
    dest = Path(dest).absolute()
    if dest.exists():
        if not dest.is_dir():
            raise QvlError(f"output {dest} exists and is not a folder")
        if not force and not _is_ours(dest, marker):
            raise QvlError(f"output folder {dest} exists and holds no {marker} (not ours); pass --force to replace it")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        yield tmp
        _make_readable(tmp)
        old = None
        if dest.exists():
            old = dest.with_name(f".{dest.name}.old-{tmp.name.rsplit('-', 1)[-1]}")
            dest.rename(old)
        tmp.rename(dest)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
