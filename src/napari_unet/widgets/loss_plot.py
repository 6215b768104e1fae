"""A small live plot of the training loss and validation metrics for the Train dock.

A matplotlib draw of even a small figure takes 40-100 ms on a busy 2-core
machine (mostly text rendering), more than the UI may stall while training.
So the figure is drawn with matplotlib's Agg backend in a thread worker and the
widget only paints the finished image (about 1 ms on the UI thread).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from qtpy.QtCore import QSize
from qtpy.QtGui import QColor, QImage, QPainter
from qtpy.QtWidgets import QSizePolicy, QWidget
from superqt.utils import create_worker

# napari's dark theme, so the plot does not glare in the dock
BACKGROUND = "#262930"
FOREGROUND = "#f0f1f2"
GRID = "#414851"
LOSS_COLOUR = "#e0a458"
METRIC_COLOURS = ("#7fc8f8", "#9be38f", "#f27781")
DPI = 100


class LossPlot(QWidget):
    """Training loss (left axis) and validation metrics (0..1, right axis).

    ``add_loss`` / ``add_metrics`` store points; a redraw is requested at most
    every ``min_interval`` seconds (always for new metrics) and rendered off the
    UI thread; requests arriving while one renders are merged into the next.
    """

    def __init__(self, min_interval: float = 1.0) -> None:
        super().__init__()
        self.setMinimumHeight(200)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.min_interval = min_interval
        self.loss_points: list[tuple[int, float]] = []
        self.metric_points: dict[str, list[tuple[int, float]]] = {}
        self._image: QImage | None = None
        self._last_request = 0.0
        self._rendering = False
        self._pending = False
        self._worker: Any = None

    def sizeHint(self) -> QSize:
        return QSize(360, 220)

    # -- data -----------------------------------------------------------------------------
    def clear(self) -> None:
        """Forget all points."""
        self.loss_points = []
        self.metric_points = {}
        self.request_redraw()

    def add_loss(self, iteration: int, loss: float) -> None:
        self.loss_points.append((iteration, float(loss)))
        if time.monotonic() - self._last_request >= self.min_interval:
            self.request_redraw()

    def add_metrics(self, iteration: int, metrics: dict[str, float]) -> None:
        """Add validation metrics (values in 0..1), e.g. ``{"AP@0.5": 0.8, "IoU": 0.9}``."""
        for name, value in metrics.items():
            self.metric_points.setdefault(name, []).append((iteration, float(value)))
        self.request_redraw()

    def flush(self) -> None:
        """Draw whatever has not been drawn yet (call when training ends)."""
        self.request_redraw()

    # -- drawing --------------------------------------------------------------------------
    def request_redraw(self) -> None:
        """Render the current points in a thread worker (after the running render, if any)."""
        self._last_request = time.monotonic()
        if not self.isVisible():
            return  # rendered when shown (showEvent), at the size it is shown at
        if self._rendering:
            self._pending = True
            return
        self._rendering, self._pending = True, False
        size = (self.width(), self.height())
        metrics = {name: list(points) for name, points in self.metric_points.items()}
        self._worker = create_worker(
            render_plot, list(self.loss_points), metrics, size, _ignore_errors=True
        )
        self._worker.returned.connect(self._show)
        self._worker.finished.connect(self._rendered)
        self._worker.start()

    def _show(self, rgba: np.ndarray) -> None:
        height, width = rgba.shape[:2]
        self._image = QImage(rgba.data, width, height, 4 * width, QImage.Format.Format_RGBA8888)
        self._image.ndarray = rgba  # the QImage does not own its buffer: keep it alive
        self.update()

    def _rendered(self) -> None:
        self._rendering = False
        if self._pending:
            self.request_redraw()

    def paintEvent(self, event: Any) -> None:
        painter = QPainter(self)
        painter.fillRect(self.rect(), QColor(BACKGROUND))
        if self._image is not None:  # drawn at its own size: never stretched
            painter.drawImage(0, 0, self._image)
        painter.end()

    def resizeEvent(self, event: Any) -> None:
        super().resizeEvent(event)
        self.request_redraw()

    def showEvent(self, event: Any) -> None:
        super().showEvent(event)
        self.request_redraw()


def render_plot(
    loss_points: list[tuple[int, float]],
    metric_points: dict[str, list[tuple[int, float]]],
    size: tuple[int, int],
) -> np.ndarray:
    """Draw loss and metrics with matplotlib's Agg backend; (H, W, 4) uint8 RGBA.

    Thread-safe: every call builds its own figure.
    """
    width, height = max(size[0], 120), max(size[1], 100)
    figure = Figure(figsize=(width / DPI, height / DPI), dpi=DPI, facecolor=BACKGROUND)
    canvas = FigureCanvasAgg(figure)
    # margins in px, so labels fit whatever the widget's size
    figure.subplots_adjust(
        left=48 / width, right=1 - 48 / width, bottom=38 / height, top=1 - 10 / height
    )
    axes = figure.add_subplot()
    metric_axes = axes.twinx()
    for ax in (axes, metric_axes):
        ax.set_facecolor(BACKGROUND)
        ax.tick_params(colors=FOREGROUND, labelsize=7)
        for spine in ax.spines.values():
            spine.set_color(GRID)
    for axis in (axes.xaxis, axes.yaxis, metric_axes.yaxis):
        axis.set_major_locator(MaxNLocator(4))
    axes.grid(True, color=GRID, linewidth=0.5)
    axes.set_xlabel("iteration", color=FOREGROUND, fontsize=8)
    axes.set_ylabel("loss", color=LOSS_COLOUR, fontsize=8)
    metric_axes.set_ylabel("validation", color=FOREGROUND, fontsize=8)
    metric_axes.set_ylim(0, 1.02)
    axes.set_xlim(0, 10)
    if loss_points:
        steps, losses = (np.asarray(values) for values in zip(*loss_points))
        axes.plot(steps, losses, color=LOSS_COLOUR, linewidth=0.8, alpha=0.4)
        window = max(1, len(losses) // 30)
        axes.plot(steps, running_mean(losses, window), color=LOSS_COLOUR, linewidth=1.6)
        axes.set_xlim(0, max(10, float(steps.max()) * 1.05))
        axes.set_ylim(0, max(float(losses.max()) * 1.05, 1e-6))
    for colour, (name, points) in zip(METRIC_COLOURS, metric_points.items()):
        steps, values = zip(*points)
        metric_axes.plot(
            steps, values, "o-", color=colour, markersize=3, linewidth=1.2, label=name
        )
    if metric_points:
        metric_axes.legend(
            loc="lower left", fontsize=7, frameon=False, labelcolor=FOREGROUND, ncols=3
        )
    canvas.draw()
    return np.array(canvas.buffer_rgba())


def running_mean(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over ``window`` points (shorter at the start)."""
    sums = np.cumsum(values, dtype=float)
    sums[window:] = sums[window:] - sums[:-window]
    return sums / np.minimum(np.arange(1, len(values) + 1), window)
