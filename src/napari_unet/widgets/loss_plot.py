"""A small live plot of the training loss and validation metrics for the Train dock.

A matplotlib draw of even a small figure takes 40-100 ms on a busy 2-core
machine (mostly text rendering), more than the UI may stall while training.
So the figure is drawn with matplotlib's Agg backend in a thread worker and the
widget only paints the finished image (about 1 ms on the UI thread). The figure
is made once and redrawn with new data, which leaves no garbage for the
collector (see :class:`PlotRenderer`).
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
        self._renderer = PlotRenderer()

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
            self._renderer.render, list(self.loss_points), metrics, size, _ignore_errors=True
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


class PlotRenderer:
    """One matplotlib figure (Agg backend), redrawn with new data on every call.

    Reusing the figure and its lines, instead of building a figure per draw,
    leaves no cyclic garbage (a matplotlib figure is a web of reference cycles):
    garbage that would otherwise make the training thread's garbage collections
    scan and free tens of thousands of objects, holding the GIL. Not thread-safe:
    one render at a time (LossPlot renders one at a time).
    """

    def __init__(self) -> None:
        self.figure = Figure(dpi=DPI, facecolor=BACKGROUND)
        self.canvas = FigureCanvasAgg(self.figure)
        self.axes = self.figure.add_subplot()
        self.metric_axes = self.axes.twinx()
        for ax in (self.axes, self.metric_axes):
            ax.set_facecolor(BACKGROUND)
            ax.tick_params(colors=FOREGROUND, labelsize=7)
            for spine in ax.spines.values():
                spine.set_color(GRID)
        for axis in (self.axes.xaxis, self.axes.yaxis, self.metric_axes.yaxis):
            axis.set_major_locator(MaxNLocator(4))
        self.axes.grid(True, color=GRID, linewidth=0.5)
        self.axes.set_xlabel("iteration", color=FOREGROUND, fontsize=8)
        self.axes.set_ylabel("loss", color=LOSS_COLOUR, fontsize=8)
        self.metric_axes.set_ylabel("validation", color=FOREGROUND, fontsize=8)
        self.metric_axes.set_ylim(0, 1.02)
        (self.loss_line,) = self.axes.plot([], [], color=LOSS_COLOUR, linewidth=0.8, alpha=0.4)
        (self.mean_line,) = self.axes.plot([], [], color=LOSS_COLOUR, linewidth=1.6)
        self.metric_lines: dict[str, Any] = {}
        self.legend: Any = None
        self.size: tuple[int, int] | None = None

    def render(
        self,
        loss_points: list[tuple[int, float]],
        metric_points: dict[str, list[tuple[int, float]]],
        size: tuple[int, int],
    ) -> np.ndarray:
        """Draw loss and metrics at ``size`` (px); (H, W, 4) uint8 RGBA."""
        width, height = max(size[0], 120), max(size[1], 100)
        if self.size != (width, height):
            self.size = (width, height)
            self.figure.set_size_inches(width / DPI, height / DPI)
            # margins in px, so labels fit whatever the widget's size
            self.figure.subplots_adjust(
                left=48 / width, right=1 - 48 / width, bottom=38 / height, top=1 - 10 / height
            )
        self.axes.set_xlim(0, 10)
        if loss_points:
            steps, losses = (np.asarray(values) for values in zip(*loss_points))
            window = max(1, len(losses) // 30)
            self.loss_line.set_data(steps, losses)
            self.mean_line.set_data(steps, running_mean(losses, window))
            self.axes.set_xlim(0, max(10, float(steps.max()) * 1.05))
            self.axes.set_ylim(0, max(float(losses.max()) * 1.05, 1e-6))
        else:
            self.loss_line.set_data([], [])
            self.mean_line.set_data([], [])
        if list(metric_points) != list(self.metric_lines):  # new names: new lines and legend
            for line in self.metric_lines.values():
                line.remove()
            self.metric_lines = {
                name: self.metric_axes.plot(
                    [], [], "o-", color=colour, markersize=3, linewidth=1.2, label=name
                )[0]
                for colour, name in zip(METRIC_COLOURS, metric_points)
            }
            if self.legend is not None:
                self.legend.remove()
                self.legend = None
            if self.metric_lines:
                self.legend = self.metric_axes.legend(
                    loc="lower left", fontsize=7, frameon=False, labelcolor=FOREGROUND, ncols=3
                )
        for name, line in self.metric_lines.items():
            steps, values = zip(*metric_points[name])
            line.set_data(steps, values)
        self.canvas.draw()
        return np.array(self.canvas.buffer_rgba())


def render_plot(
    loss_points: list[tuple[int, float]],
    metric_points: dict[str, list[tuple[int, float]]],
    size: tuple[int, int],
) -> np.ndarray:
    """Draw loss and metrics in a new figure; (H, W, 4) uint8 RGBA (thread-safe)."""
    return PlotRenderer().render(loss_points, metric_points, size)


def running_mean(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over ``window`` points (shorter at the start)."""
    sums = np.cumsum(values, dtype=float)
    sums[window:] = sums[window:] - sums[:-window]
    return sums / np.minimum(np.arange(1, len(values) + 1), window)
