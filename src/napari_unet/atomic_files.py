"""Atomic file writes: write a temporary file beside the target, then rename it over.

An error (or a kill) never leaves a partial target. Temporary files are named
``.NAME.XXXXXXXX.tmp`` beside ``NAME``; one left behind by a killed process is
removed by the next write of the same target once it is :data:`STALE_AFTER_S` old
(a write in progress keeps touching its file, so it is never taken for stale).
"""

from __future__ import annotations

import os
import re
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

#: Seconds after its last change when a temporary file of ours counts as abandoned.
STALE_AFTER_S = 3600.0


def _temp_pattern(path: Path) -> re.Pattern[str]:
    """Names :func:`tempfile.mkstemp` gives our temporary files for ``path``."""
    return re.compile(re.escape(f".{path.name}.") + r"[a-z0-9_]{8}\.tmp")


def remove_stale_temps(path: str | os.PathLike, older_than_s: float = STALE_AFTER_S) -> list[Path]:
    """Delete our abandoned temporary files of ``path`` (older than ``older_than_s``).

    Only files beside ``path`` named like ours (``.NAME.XXXXXXXX.tmp``) are touched.
    Returns the removed paths.
    """
    path = Path(path)
    pattern, removed = _temp_pattern(path), []
    if not path.parent.is_dir():
        return removed
    now = time.time()
    for entry in os.scandir(path.parent):
        if not pattern.fullmatch(entry.name) or not entry.is_file(follow_symlinks=False):
            continue
        try:
            if now - entry.stat(follow_symlinks=False).st_mtime >= older_than_s:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except OSError:  # gone meanwhile, or not ours to delete
            continue
    return removed


def new_temp_file(path: str | os.PathLike) -> Path:
    """A new empty temporary file beside ``path`` (``.NAME.XXXXXXXX.tmp``)."""
    path = Path(path)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    return Path(temporary)


@contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``path``, on error it goes.

    Abandoned temporary files of earlier writes of ``path`` are removed first.
    """
    path = Path(path)
    remove_stale_temps(path)
    temporary = new_temp_file(path)
    try:
        yield temporary
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def check_can_create(path: str | os.PathLike) -> Path:
    """Raise unless a file ``path`` can be written; returns its nearest existing folder.

    The folder of ``path`` may not exist yet: its nearest existing ancestor must be a
    folder where a probe file (named like our temporary files) can be created.

    Raises:
        ValueError: the nearest existing ancestor is a file.
        OSError: it is not writable (permissions, read-only file system, ...).
    """
    path = Path(path)
    folder = next(p for p in (path.parent, *path.parent.parents) if p.exists())
    if not folder.is_dir():
        raise ValueError(f"cannot write {path}: {folder} is a file, not a folder")
    try:
        new_temp_file(folder / path.name).unlink()
    except OSError as error:
        raise OSError(
            f"cannot write {path}: {folder} is not writable ({error.strerror or error})"
        ) from error
    return folder
