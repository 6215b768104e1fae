"""Segment widget: one click from an image layer to a labels layer.

The model is the viewer's current one (just trained in the Train widget, or
loaded from a file here). The result goes to "<image> segmentation"; running
again replaces that layer, never a layer the user made or painted on. Closing
the dock or the viewer cancels a running segmentation and waits for its thread.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import numpy as np
from magicgui.widgets import CheckBox, Container, Label, ProgressBar, PushButton
from napari.layers import Image
from napari.utils.notifications import show_error

from . import _dialogs
from ._layers import (
    BadChoice,
    ImageInput,
    follow_layers,
    image_input,
    layer_combo,
    selected,
    unfollow_layers,
)
from ._layers import show_output as _show_output
from ._layout import column, fixed_lines, row
from ._lifetime import WidgetLifetime
from ._workers import ProgressBar as NapariProgress
from ._workers import start_job
from .jobs import segment_job
from .model_store import model_store
from .tta_options import TTAOptions, show_uncertainty


class SegmentWidget(Container):
    """Image layer + current model -> "<image> segmentation" labels layer.

    Attributes:
        image_layer: the image to segment (2D, stack, RGB, multi-channel, lazy).
        model_info: which model is loaded.
        run_info: the device and the settings measured for this machine.
        load_button: replace the current model with one from a file.
        builtin_button: replace it with the built-in nuclei model.
        show_probabilities: also add the class probabilities as image layers.
        tta: test-time augmentation and the "<image> uncertainty" layer.
        segment_button, cancel_button: start / cancel (between two tiles).
        progress: tiles done.
        status: what happened last.
    """

    def __init__(self, napari_viewer: Any) -> None:
        self.viewer = napari_viewer
        self.store = model_store(napari_viewer)
        self.image_layer = layer_combo(
            napari_viewer, Image, "image", skip_outputs=True, tooltip="image to segment"
        )
        self.model_info = Label(label="model")
        self.model_info.native.setWordWrap(True)
        self.run_info = fixed_lines(Label(), 3)
        self.run_info.tooltip = "device and settings measured for this machine (napari-unet info)"
        self.load_button = PushButton(text="Load model from file...")
        self.builtin_button = PushButton(text="Use built-in nuclei model")
        self.builtin_button.tooltip = "U-Net trained on DSB 2018 fluorescence nuclei (CC0)"
        self.show_probabilities = CheckBox(text="also show probabilities", value=False)
        self.tta = TTAOptions()
        self.segment_button = PushButton(text="Segment")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        buttons = row(self.segment_button, self.cancel_button)
        self.progress = ProgressBar(value=0, max=1, visible=False)
        self.status = fixed_lines(Label(), 2)
        super().__init__(
            widgets=[
                self.image_layer,
                self.model_info,
                column(self.run_info),
                row(self.load_button, self.builtin_button),
                self.show_probabilities,
                self.tta,
                buttons,
                column(self.progress, self.status),
            ]
        )
        follow_layers(napari_viewer, self)
        self._worker = None
        self._bar: NapariProgress | None = None
        self.load_button.changed.connect(self.load_model)
        self.builtin_button.changed.connect(self.use_builtin)
        self.segment_button.changed.connect(self.segment)
        self.cancel_button.changed.connect(self.cancel)
        self.store.changed.connect(self._show_model)
        self._lifetime = WidgetLifetime(self.native, self._gone)
        self._show_model()

    @property
    def busy(self) -> bool:
        return self._worker is not None

    def _show_model(self) -> None:
        from ..hardware import summary

        self.model_info.value = self.store.describe()
        self.run_info.value = summary(self.store.model)

    # -- actions --------------------------------------------------------------------------
    def load_model(self) -> None:
        """Ask for a model file or bioimage.io package (zip) and make it the current
        model (:func:`napari_unet.model_io.load_model` reads both)."""
        from ..model_io import ModelFileError, load_model

        path = _dialogs.ask_open_model(self.native)
        if not path:
            return
        try:
            model = load_model(path)
        except (ModelFileError, OSError) as error:
            show_error(f"could not load the model: {error}")
            return
        self.store.set(model, f"file {path}")

    def use_builtin(self) -> None:
        """Make the built-in nuclei model the current model."""
        from ..model_io import ModelFileError, load_model
        from ..models import describe

        try:
            model = load_model("nuclei")
        except (ModelFileError, OSError) as error:
            show_error(f"could not load the built-in model: {error}")
            return
        self.store.set(model, describe("nuclei"))

    def segment(self) -> None:
        """Segment the chosen image with the current model in a thread worker."""
        if self._worker is not None:
            return
        try:
            layer = selected(self.image_layer, "an image layer")
            model = self.store.model
            if model is None:
                raise BadChoice("no model loaded: train one in 'Train U-Net' or load a file")
            source = image_input(layer, model.config.in_channels)
        except BadChoice as error:
            show_error(str(error))
            return
        self._bar = NapariProgress(f"segmenting {layer.name}", cancel=self.cancel)
        self.progress.visible = True
        self.progress.value = 0
        self.status.value = f"segmenting '{layer.name}'..."
        self.segment_button.enabled, self.cancel_button.enabled = False, True
        self._lifetime.watch_window()
        self._worker = start_job(
            segment_job,
            model,
            source.data,
            channel_axis=source.channel_axis,
            probabilities=self.show_probabilities.value,
            tta=self.tta.mode.value,
            uncertainty=self.tta.wants_uncertainty,
            on_yield=self._progress,
            on_return=partial(self._show, layer, source, model),
            on_finish=self._finished,
            on_release=self._close_bar,
            error_prefix="segmentation failed",
        )
        self._worker.connect_ui("aborted", self._cancelled)

    def cancel(self) -> None:
        """Stop the running segmentation after the current tile; no layer is changed."""
        if self._worker is not None:
            self.status.value = "cancelling..."
            self._worker.quit()

    # -- worker callbacks (UI thread) -----------------------------------------------------
    def _progress(self, done_total: tuple[int, int]) -> None:
        done, total = done_total
        self.progress.max = max(total, 1)
        self.progress.value = done
        if self._bar is not None:
            self._bar.set(done, total)

    def _cancelled(self) -> None:
        self.status.value = "cancelled: no layer was changed"

    def _finished(self) -> None:
        self._worker = None
        self._show_idle()
        self._show_model()  # the settings measured on the first run

    def _show_idle(self) -> None:
        self.progress.visible = False
        self.segment_button.enabled, self.cancel_button.enabled = True, False

    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def _gone(self, destroyed: bool) -> None:
        """The dock or the viewer was closed: cancel and wait for the thread (no layer added)."""
        if destroyed:
            self.store.changed.disconnect(self._show_model)
            unfollow_layers(self.viewer, self)
        if self._worker is None:
            return
        worker, self._worker = self._worker, None
        worker.end()
        if not destroyed:
            self.status.value = "cancelled: the widget was closed"
            self._show_idle()

    def _show(
        self,
        layer: Image,
        source: ImageInput,
        model: Any,
        result: tuple[np.ndarray, np.ndarray | None, np.ndarray | None],
    ) -> None:
        labels, probabilities, uncertainty = result
        if layer not in self.viewer.layers:
            self.status.value = f"'{layer.name}' was removed: result dropped"
            return
        out = _show_output(
            self.viewer,
            labels,
            kind="labels",
            role="segmentation",
            source=layer,
            name=f"{layer.name} segmentation",
            placement=source,
        )
        if probabilities is not None:
            names = model.info.class_names
            # background is 1 - the rest; instance models show the foreground only
            for k in range(1, probabilities.shape[0]):
                _show_output(
                    self.viewer,
                    probabilities[k],
                    kind="image",
                    role=f"probability {k}",
                    source=layer,
                    name=f"{layer.name} p({names[k] if k < len(names) else k})",
                    placement=source,
                    colormap="magma",
                    contrast_limits=(0.0, 1.0),
                    blending="additive",
                    visible=k == 1,
                )
            self.viewer.layers.move(self.viewer.layers.index(out), len(self.viewer.layers))
        if uncertainty is not None:
            show_uncertainty(self.viewer, uncertainty, layer, source)
            self.viewer.layers.move(self.viewer.layers.index(out), len(self.viewer.layers))
        if model.info.task == "instance":
            count, what = int(labels.max()), "objects"  # ids are 1..N
        else:
            count, what = int(np.count_nonzero(np.bincount(labels.ravel())[1:])), "classes"
        self.status.value = f"{count} {what} in '{out.name}'"
