"""Running progress generators plainly (numpy-free, torch-free, Qt-free).

Every long computation in napari-unet is a generator that yields progress and
returns its result; the widgets drain them in napari thread workers, the CLI
through tqdm, and scripts with :func:`drain`.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any


def drain(generator: Generator[Any, Any, Any]) -> Any:
    """Run ``generator`` to the end, discarding what it yields; return its return value."""
    while True:
        try:
            next(generator)
        except StopIteration as stop:
            return stop.value


def collect(generator: Generator[Any, Any, Any]) -> tuple[list[Any], Any]:
    """Run ``generator`` to the end; return (everything it yielded, its return value)."""
    yielded: list[Any] = []
    while True:
        try:
            yielded.append(next(generator))
        except StopIteration as stop:
            return yielded, stop.value
