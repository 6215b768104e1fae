"""A small live plot of the training loss and validation metrics for the Train dock."""

from __future__ import annotations

import time

from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure

# napari's dark theme, so the plot does not glare in the dock
BACKGROUND = "#262930"
FOREGROUND = "#f0f1f2"
GRID = "#414851"
LOSS_COLOUR = "#e0a458"
METRIC_COLOURS = ("#7fc8f8", "#9be38f", "#f27781")


class LossPlot(FigureCanvasQTAgg):
    """Training loss (log scale, left axis) and validation metrics (0..1, right axis).

    ``add_loss`` / ``add_metrics`` only store points; the figure is redrawn at
    most every ``min_interval`` seconds (``draw_idle``), so a fast training loop
    costs the UI thread a few ms per second, not one redraw per step.
    """

    def __init__(self, min_interval: float = 0.5) -> None:
        figure = Figure(figsize=(3.6, 2.3), dpi=100, facecolor=BACKGROUND, layout="constrained")
        super().__init__(figure)
        self.setMinimumHeight(190)
        self.min_interval = min_interval
        self._last_draw = 0.0
        self.axes = figure.add_subplot()
        self.metric_axes = self.axes.twinx()
        self.loss_points: list[tuple[int, float]] = []
        self.metric_points: dict[str, list[tuple[int, float]]] = {}
        self.clear()

    def clear(self) -> None:
        """Forget all points and draw the empty axes."""
        self.loss_points = []
        self.metric_points = {}
        self._redraw()

    def add_loss(self, iteration: int, loss: float) -> None:
        self.loss_points.append((iteration, float(loss)))
        self._maybe_redraw()

    def add_metrics(self, iteration: int, metrics: dict[str, float]) -> None:
        """Add validation metrics (values in 0..1), e.g. ``{"AP@0.5": 0.8, "IoU": 0.9}``."""
        for name, value in metrics.items():
            self.metric_points.setdefault(name, []).append((iteration, float(value)))
        self._maybe_redraw(force=True)

    def flush(self) -> None:
        """Draw whatever has not been drawn yet (call when training ends)."""
        self._redraw()

    def _maybe_redraw(self, force: bool = False) -> None:
        if force or time.monotonic() - self._last_draw >= self.min_interval:
            self._redraw()

    def _redraw(self) -> None:
        self._last_draw = time.monotonic()
        ax, mx = self.axes, self.metric_axes
        ax.clear()
        mx.clear()
        for axes in (ax, mx):
            axes.set_facecolor(BACKGROUND)
            axes.tick_params(colors=FOREGROUND, labelsize=7)
            for spine in axes.spines.values():
                spine.set_color(GRID)
        ax.grid(True, color=GRID, linewidth=0.5)
        ax.set_xlabel("iteration", color=FOREGROUND, fontsize=8)
        ax.set_ylabel("loss", color=LOSS_COLOUR, fontsize=8)
        mx.set_ylim(0, 1)
        mx.set_ylabel("validation", color=FOREGROUND, fontsize=8)
        if self.loss_points:
            steps, losses = zip(*self.loss_points)
            ax.plot(steps, losses, color=LOSS_COLOUR, linewidth=0.8, alpha=0.45)
            smooth = _running_mean(losses, max(1, len(losses) // 30))
            ax.plot(steps, smooth, color=LOSS_COLOUR, linewidth=1.6, label="loss")
            if min(losses) > 0:
                ax.set_yscale("log")
        for colour, (name, points) in zip(METRIC_COLOURS, self.metric_points.items()):
            steps, values = zip(*points)
            mx.plot(steps, values, "o-", color=colour, markersize=3, linewidth=1.2, label=name)
        if self.metric_points:
            mx.legend(
                loc="lower left", fontsize=7, frameon=False, labelcolor=FOREGROUND, ncols=3
            )
        self.draw_idle()


def _running_mean(values: tuple[float, ...], window: int) -> list[float]:
    """Trailing mean over ``window`` points (shorter at the start)."""
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out
