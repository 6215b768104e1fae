"""Noticing that a widget goes away, so that its jobs end with it.

A widget's thread worker must not outlive the widget: its callbacks would reach
deleted Qt objects (PyQt aborts the process on such an error in a slot), and a
training run whose dock was closed would go on with no Stop button.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from qtpy.QtCore import QEvent, QObject
from qtpy.QtWidgets import QWidget


class WidgetLifetime(QObject):
    """Calls ``on_gone(destroyed)`` when ``widget`` leaves the user's sight for good.

    - its dock is removed (napari's ``remove_dock_widget``, the dock's close
      button): napari sets the widget's parent to None; ``destroyed`` False;
    - the window it is docked in closes (``viewer.close()``), or the widget itself
      is closed; ``destroyed`` False;
    - it is destroyed (the window's deferred deletion, e.g. after the user
      closed it); ``destroyed`` True: its Qt objects must not be touched.

    ``on_gone`` may be called more than once; call :meth:`watch_window` when a job
    starts so that the window the widget is in by then is watched.
    """

    def __init__(self, widget: QWidget, on_gone: Callable[[bool], None]) -> None:
        super().__init__()
        self._widget: QWidget | None = widget
        self._on_gone = on_gone
        self._docked = widget.parentWidget() is not None
        widget.installEventFilter(self)
        widget.destroyed.connect(self._destroyed)

    def watch_window(self) -> None:
        """Also watch the top-level window the widget is in now (napari's main window).

        No reference to the window is kept: it must not outlive its viewer.
        """
        if self._widget is not None and self._widget.window() is not self._widget:
            self._widget.window().installEventFilter(self)  # once, however often called

    def eventFilter(self, obj: Any, event: Any) -> bool:
        widget, kind = self._widget, event.type()
        if widget is None:
            return False
        if obj is widget and kind == QEvent.Type.ParentChange:
            docked = widget.parentWidget() is not None
            if self._docked and not docked:
                self._on_gone(False)
            self._docked = docked
        elif kind == QEvent.Type.Close and (
            obj is widget or (obj is widget.window() and not event.spontaneous())
        ):
            # a programmatic close of the window (viewer.close()) is never refused; one
            # by the user may be (napari asks), and is then followed by the deletion
            self._on_gone(False)
        return False

    def _destroyed(self, *_: Any) -> None:
        self._widget = None
        self._on_gone(True)
