"""Weight-map widget: shows the loss weight of the U-Net paper for a labels layer.

``w(x) = w_c(x) + w0 * exp(-(d1 + d2)**2 / (2 sigma**2))``: touching objects
should get a bright seam between them. "Show weight map" adds the layer; from
then on it is recomputed in a thread worker whenever w0, sigma or the labels
change (the latest request wins). Closing the dock or the viewer ends that:
the running computation is cancelled and its thread waited for.
"""

from __future__ import annotations

import contextlib
from functools import partial
from typing import Any

import numpy as np
from magicgui.widgets import CheckBox, Container, FloatSpinBox, Label, PushButton
from napari.layers import Labels
from napari.utils.notifications import show_warning
from qtpy.QtCore import QTimer

from ._layers import (
    BadChoice,
    find_output,
    follow_layers,
    layer_combo,
    layer_data,
    selected,
    unfollow_layers,
)
from ._layers import show_output as _show_output
from ._lifetime import WidgetLifetime
from ._workers import start_job
from .jobs import weight_map_job

#: output layer role -> (layer name suffix, colormap)
COMPONENT_LAYERS = {"w_c": "viridis", "d1+d2": "cividis", "border": "magma"}
DEBOUNCE_MS = 200


class WeightMapWidget(Container):
    """Labels layer + w0 / sigma -> "<labels> weight map" image layer (and its terms).

    Attributes:
        labels_layer: the instance labels to weigh.
        w0: amplitude of the border term (paper: 10).
        sigma: width of the border term in pixels (paper: 5).
        show_components: also show w_c, d1+d2 and the border term as layers.
        show_button: compute and show the map; it then follows every change.
        status: range of the last map, or what is being computed.
    """

    def __init__(self, napari_viewer: Any) -> None:
        self.viewer = napari_viewer
        self.labels_layer = layer_combo(
            napari_viewer, Labels, "labels", tooltip="instance labels to compute the weight of"
        )
        self.w0 = FloatSpinBox(
            label="w0", value=10.0, min=0.0, max=1000.0, step=1.0,
            tooltip="amplitude of the border term (the paper uses 10)",
        )  # fmt: skip
        self.sigma = FloatSpinBox(
            label="sigma (px)", value=5.0, min=0.5, max=200.0, step=0.5,
            tooltip="width of the border term in pixels (the paper uses about 5)",
        )  # fmt: skip
        self.show_components = CheckBox(
            text="show w_c, d1+d2 and border terms", value=False,
            tooltip="add the class weight, the summed distances and the border term as layers",
        )  # fmt: skip
        self.show_components.native.setText("show w_c, d1+d2 and border terms")  # keep the _
        self.show_button = PushButton(text="Show weight map")
        self.status = Label(value="")
        self.status.native.setWordWrap(True)
        super().__init__(
            widgets=[
                self.labels_layer,
                self.w0,
                self.sigma,
                self.show_components,
                self.show_button,
                self.status,
            ]
        )
        follow_layers(napari_viewer, self)
        self._worker = None
        self._live = False  # follow changes once the user asked for the map
        self._rerun = False
        self._watched: Labels | None = None
        self._debounce = QTimer()
        self._debounce.setSingleShot(True)
        self._debounce.setInterval(DEBOUNCE_MS)
        self._debounce.timeout.connect(self.update_map)
        for control in (self.w0, self.sigma, self.show_components):
            control.changed.connect(self._schedule)
        self.labels_layer.changed.connect(self._watch_labels)
        self.show_button.changed.connect(self.show_map)
        self._lifetime = WidgetLifetime(self.native, self._gone)
        self._watch_labels(self.labels_layer.value)

    # -- scheduling -----------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        """True while a weight map is being computed."""
        return self._worker is not None

    def show_map(self) -> None:
        """Compute and show the map now, and keep it up to date from then on."""
        self._live = True
        self.update_map()

    def _schedule(self, *_: Any) -> None:
        if self._live:
            self._debounce.start()

    def _watch_labels(self, layer: Labels | None) -> None:
        """Recompute when the chosen labels layer is painted on or replaced."""
        if self._watched is not None:
            self._watched.events.paint.disconnect(self._schedule)
            self._watched.events.data.disconnect(self._schedule)
        self._watched = layer
        if layer is not None:
            layer.events.paint.connect(self._schedule)
            layer.events.data.connect(self._schedule)
            self._schedule()

    # -- computing ------------------------------------------------------------------------
    def update_map(self) -> None:
        """Compute the weight map now (after the running computation, if any)."""
        if self._worker is not None:
            self._rerun = True
            self._worker.quit()
            return
        try:
            labels = selected(self.labels_layer, "a labels layer")
            data = np.array(layer_data(labels))  # a copy: painting may go on meanwhile
            if not data.any():
                raise BadChoice(f"labels layer '{labels.name}' is empty: paint some objects first")
            if data.ndim < 2:
                raise BadChoice(f"labels layer '{labels.name}' is not an image")
        except BadChoice as error:
            show_warning(str(error))
            return
        w0, sigma, components = self.w0.value, self.sigma.value, self.show_components.value
        self.status.value = f"computing the weight map of '{labels.name}'..."
        self._lifetime.watch_window()
        self._worker = start_job(
            weight_map_job,
            data,
            w0=w0,
            sigma=sigma,
            components=components,
            on_return=partial(self._show, labels, w0, sigma),
            on_finish=self._finished,
            error_prefix="weight map",
        )

    def _gone(self, destroyed: bool) -> None:
        """The dock or the viewer was closed: stop following changes, cancel, wait."""
        self._live = self._rerun = False
        with contextlib.suppress(RuntimeError):  # the timer may be deleted already
            self._debounce.stop()
        if destroyed:
            self._watch_labels(None)
            unfollow_layers(self.viewer, self)
        if self._worker is not None:
            worker, self._worker = self._worker, None
            worker.end()
            if not destroyed:
                self.status.value = "stopped: the widget was closed"

    def _finished(self) -> None:
        self._worker = None
        if self._rerun:
            self._rerun = False
            self.update_map()

    def _show(self, labels: Labels, w0: float, sigma: float, maps: dict[str, np.ndarray]) -> None:
        if labels not in self.viewer.layers:
            return  # removed while we computed
        weight = maps["weight"]
        top = max(float(weight.max()), 1e-3)
        _show_output(
            self.viewer,
            weight,
            kind="image",
            role="weight map",
            source=labels,
            name=f"{labels.name} weight map",
            colormap="magma",
            contrast_limits=(0.0, top),
        )
        for role, colormap in COMPONENT_LAYERS.items():
            if role in maps:
                part = maps[role]
                _show_output(
                    self.viewer,
                    part,
                    kind="image",
                    role=f"weight map {role}",
                    source=labels,
                    name=f"{labels.name} {role}",
                    colormap=colormap,
                    contrast_limits=(0.0, max(float(part.max()), 1e-3)),
                    visible=False,
                )
            elif (old := find_output(self.viewer, f"weight map {role}", labels.name)) is not None:
                self.viewer.layers.remove(old)
        self.status.value = (
            f"weights {float(weight.min()):.2f} – {top:.2f} (w0 = {w0:g}, sigma = {sigma:g} px)"
        )
