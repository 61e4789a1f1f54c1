"""Write a folder atomically: build it beside the destination, swap it in only when complete.

A process killed at any point leaves the destination as it was (the previous complete output, or
nothing) plus, at worst, a hidden `.NAME.tmp-PID-*` folder, which the next write to NAME removes.
"""
from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from qvl_compile.errors import QvlError

log = logging.getLogger(__name__)
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _is_ours(dest: Path, marker: str) -> bool:
    return not any(dest.iterdir()) or (dest / marker).is_file()


def _make_readable(folder: Path) -> None:
    """mkdtemp makes 0700 folders; give the result the modes a plain mkdir/open would."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for path in folder.rglob("*"):
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux renameat2 RENAME_EXCHANGE); False where that is unavailable."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale_work(dest: Path) -> list[Path]:
    """Remove `.NAME.tmp-PID-*` folders left by killed writers (their PID no longer runs); restore
    `.NAME.old-*` when a writer without RENAME_EXCHANGE died between its two renames."""
    removed = []
    pattern = re.compile(rf"^\.{re.escape(dest.name)}\.(tmp|old)-(\d+)-")
    for path in dest.parent.iterdir() if dest.parent.is_dir() else []:
        match = pattern.match(path.name)
        if not match or _alive(int(match.group(2))):
            continue
        if match.group(1) == "old" and not dest.exists():
            path.rename(dest)
            log.warning("restored %s from %s (an earlier write died while swapping)", dest, path.name)
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
        log.info("removed %s, left by an interrupted write", path)
    return removed


def _swap_in(tmp: Path, dest: Path) -> None:
    """Make `tmp` the new `dest`; the old `dest` (if any) is deleted only after the swap."""
    if not dest.exists():
        tmp.rename(dest)
    elif _exchange(tmp, dest):
        shutil.rmtree(tmp, ignore_errors=True)  # tmp now holds the previous output
    else:  # two renames: remove_stale_work restores `old` if we die in between
        old = dest.with_name(f".{dest.name}.old-{os.getpid()}-{tmp.name.rsplit('-', 1)[-1]}")
        dest.rename(old)
        tmp.rename(dest)
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_output_dir(dest: str | Path, *, force: bool, marker: str) -> Iterator[Path]:
    """Yield a temporary folder next to `dest`; on success it replaces `dest`, on failure it vanishes.

    An existing `dest` is replaced only if it is empty, holds `marker` (an earlier output of ours),
    or `force` is set. The previous complete output stays in place until the new one is complete.
    """
    dest = Path(dest).absolute()
    remove_stale_work(dest)
    if dest.exists():
        if not dest.is_dir():
            raise QvlError(f"output {dest} exists and is not a folder")
        ours = _is_ours(dest, marker)
        if not force and not ours:
            raise QvlError(f"output folder {dest} exists and holds no {marker} (not ours); pass --force to replace it")
        if not ours:
            entries = sorted(p.name for p in dest.iterdir())
            if entries:
                shown = ", ".join(entries[:8]) + (f" and {len(entries) - 8} more" if len(entries) > 8 else "")
                log.warning("--force: %s is not an output of ours; its %d entries will be replaced when the new output "
                            "is complete: %s", dest, len(entries), shown)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-{os.getpid()}-", dir=dest.parent))
    try:
        yield tmp
        _make_readable(tmp)
        _swap_in(tmp, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
