"""Running a job (see :mod:`.jobs`) in a napari thread worker with a napari progress bar."""

from __future__ import annotations

import gc
from collections.abc import Callable, Generator
from typing import Any

from napari.qt.threading import GeneratorWorker, create_worker
from napari.utils import cancelable_progress
from napari.utils.notifications import show_error


class _CancelableBar(cancelable_progress):
    """napari's cancelable bar, calling back at once (it normally waits for its iterator)."""

    def cancel(self) -> None:
        super().cancel()
        if self.cancel_callback is not None:
            self.cancel_callback()


class ProgressBar:
    """A napari progress bar (status bar / activity dock, with time left and Cancel).

    ``set(done, total)`` may be called with a total that is only known once the
    job runs; ``cancel`` is what napari's Cancel button calls.
    """

    def __init__(self, desc: str, cancel: Callable[[], None] | None = None) -> None:
        self.bar = _CancelableBar(total=0, desc=desc, cancel_callback=cancel)

    def set(self, done: int, total: int) -> None:
        if self.bar.total != total:
            self.bar.total = total
        if done != self.bar.n:
            self.bar.update(done - self.bar.n)

    def close(self) -> None:
        self.bar.close()


def start_job(
    job: Callable[..., Generator],
    *args: Any,
    on_yield: Callable[[Any], None] | None = None,
    on_return: Callable[[Any], None] | None = None,
    on_finish: Callable[[], None] | None = None,
    error_prefix: str = "napari-unet",
    **kwargs: Any,
) -> GeneratorWorker:
    """Start ``job(*args, **kwargs)`` in a thread worker and return the worker.

    ``on_yield`` and ``on_return`` run on the UI thread. Errors become a napari
    error notification (one sentence, no traceback dialog); ``on_finish`` runs
    in every case: returned, failed, or cancelled with ``worker.quit()``.
    """
    worker = create_worker(job, *args, _ignore_errors=True, **kwargs)
    if on_yield is not None:
        worker.yielded.connect(on_yield)
    if on_return is not None:
        worker.returned.connect(on_return)
    worker.errored.connect(lambda error: show_error(f"{error_prefix}: {error}"))
    if on_finish is not None:
        worker.finished.connect(on_finish)
    worker.start()
    return worker


_freezes = 0  # nested freeze_heap() calls (two viewers may train at once)


def freeze_heap() -> None:
    """Keep the objects that exist now out of the garbage collector's full collections.

    In a napari process (Qt, vispy, torch, matplotlib: ~500k objects) a full
    collection takes about 300 ms on a 2-core machine and holds the GIL, so when
    it happens in the training thread the UI freezes for that long. ``gc.freeze()``
    moves the existing objects to a permanent generation that collections skip;
    :func:`thaw_heap` returns them when the job ends.
    """
    global _freezes
    if _freezes == 0:
        gc.freeze()
    _freezes += 1


def freeze_new_objects() -> None:
    """Also freeze what was made since :func:`freeze_heap` (call once the job has set up).

    A job's first steps import modules and build its data and model: long-lived
    objects that every later collection would scan again.
    """
    if _freezes:
        gc.freeze()


def thaw_heap() -> None:
    """Undo one :func:`freeze_heap`; the last one hands the objects back to the collector."""
    global _freezes
    _freezes = max(0, _freezes - 1)
    if _freezes == 0:
        gc.unfreeze()
