"""Running a job (see :mod:`.jobs`) in a napari thread worker with a napari progress bar."""

from __future__ import annotations

import contextlib
import gc
import threading
from collections.abc import Callable, Generator
from typing import Any, ClassVar

from napari.qt.threading import GeneratorWorker, create_worker
from napari.utils import cancelable_progress
from napari.utils.notifications import show_error
from qtpy.QtCore import Qt


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


#: longest wait (s) for a job's thread to end when its widget goes away
JOIN_TIMEOUT_S = 10.0


class Job(GeneratorWorker):
    """napari's generator worker, which the widget that started it can end early.

    UI callbacks are connected with :meth:`connect_ui`; :meth:`end` disconnects
    them (and a callback already queued does nothing), asks the generator to
    quit after its current step and waits, bounded, for the thread to end.
    ``on_release`` callbacks run once on the UI thread when the job finished or
    was ended, whichever comes first: bookkeeping that must happen either way.
    """

    _running: ClassVar[set[Job]] = set()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.ended = threading.Event()  # set in the worker thread as it ends
        self.detached = False
        self._ui: list[tuple[str, Callable[..., None]]] = []
        self._release: list[Callable[[], None]] = []
        self.finished.connect(self.ended.set, Qt.ConnectionType.DirectConnection)
        self.finished.connect(self.release)

    def connect_ui(self, signal: str, callback: Callable[..., None]) -> None:
        """Connect ``callback`` to the worker's ``signal`` until :meth:`end`."""

        def guarded(*args: Any) -> None:
            if not self.detached:
                callback(*args)

        getattr(self, signal).connect(guarded)
        self._ui.append((signal, guarded))

    def on_release(self, callback: Callable[[], None]) -> None:
        self._release.append(callback)

    def start(self) -> None:
        Job._running.add(self)
        super().start()

    def release(self) -> None:
        """Run the ``on_release`` callbacks (once)."""
        Job._running.discard(self)
        callbacks, self._release = self._release, []
        for callback in callbacks:
            callback()

    def end(self, timeout_s: float = JOIN_TIMEOUT_S) -> bool:
        """Disconnect the UI, quit after the current step, wait; True if the thread ended."""
        self.detached = True
        for signal, callback in self._ui:
            with contextlib.suppress(TypeError, RuntimeError):
                getattr(self, signal).disconnect(callback)
        self._ui = []
        self.quit()
        ended = self.ended.wait(timeout_s)
        self.release()
        return ended


def end_all_jobs(timeout_s: float = JOIN_TIMEOUT_S) -> int:
    """End every running :class:`Job` (see :meth:`Job.end`); the number still running."""
    jobs = list(Job._running)
    return sum(not job.end(timeout_s) for job in jobs)


def start_job(
    job: Callable[..., Generator],
    *args: Any,
    on_yield: Callable[[Any], None] | None = None,
    on_return: Callable[[Any], None] | None = None,
    on_finish: Callable[[], None] | None = None,
    on_release: Callable[[], None] | None = None,
    error_prefix: str = "napari-unet",
    **kwargs: Any,
) -> Job:
    """Start ``job(*args, **kwargs)`` in a thread worker and return the worker.

    ``on_yield`` and ``on_return`` run on the UI thread. Errors become a napari
    error notification (one sentence, no traceback dialog); ``on_finish`` runs
    in every case: returned, failed, or cancelled with ``worker.quit()``. None
    of them runs once the widget ended the job with :meth:`Job.end`;
    ``on_release`` runs either way (see :class:`Job`).
    """
    worker = create_worker(
        _job_errors, job, *args, _worker_class=Job, _ignore_errors=True, **kwargs
    )
    if on_yield is not None:
        worker.connect_ui("yielded", on_yield)
    if on_return is not None:
        worker.connect_ui("returned", on_return)
    worker.connect_ui("errored", lambda error: show_error(f"{error_prefix}: {error}"))
    if on_finish is not None:
        worker.connect_ui("finished", on_finish)
    if on_release is not None:
        worker.on_release(on_release)
    worker.start()
    return worker


class JobError(Exception):
    """A job failed with a RuntimeError (which napari's worker would swallow)."""


def _job_errors(job: Callable[..., Generator], *args: Any, **kwargs: Any) -> Generator:
    """``job``, with its RuntimeErrors (torch raises many) re-raised as :class:`JobError`.

    napari's worker takes a RuntimeError for a deleted Qt object: it only warns,
    and neither ``errored`` nor ``finished`` is emitted.
    """
    try:
        return (yield from job(*args, **kwargs))
    except RuntimeError as error:
        raise JobError(str(error)) from error


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
