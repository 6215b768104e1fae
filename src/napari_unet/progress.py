"""Running progress generators plainly (numpy-free, torch-free, Qt-free).

Every long computation in napari-unet is a generator that yields progress and
returns its result; the widgets drain them in napari thread workers, the CLI
through tqdm, and scripts with :func:`drain`.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any


def drain(
    generator: Generator[Any, Any, Any], on_step: Callable[[Any], None] | None = None
) -> Any:
    """Run ``generator`` to the end and return its return value; ``on_step`` (e.g. a
    progress bar's update) is called with everything it yields, else that is discarded."""
    while True:
        try:
            step = next(generator)
        except StopIteration as stop:
            return stop.value
        if on_step is not None:
            on_step(step)


def collect(generator: Generator[Any, Any, Any]) -> tuple[list[Any], Any]:
    """Run ``generator`` to the end; return (everything it yielded, its return value)."""
    yielded: list[Any] = []
    while True:
        try:
            yielded.append(next(generator))
        except StopIteration as stop:
            return yielded, stop.value
