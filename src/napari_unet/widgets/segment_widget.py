"""Segment widget: one click from an image layer to a labels layer.

The model is the viewer's current one (just trained in the Train widget, or
loaded from a file here). The result goes to "<image> segmentation"; running
again replaces that layer, never a layer the user made or painted on. Closing
the dock or the viewer cancels a running segmentation and waits for its thread.
Lazy (dask, zarr, multiscale) images are labelled block by block into a temporary
zarr array, or, for a layer opened from an OME-Zarr, optionally into the file's own
``labels/<name>`` group (:mod:`.ome_zarr_output`); either is shown lazily.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from magicgui.widgets import CheckBox, Container, Label, ProgressBar, PushButton
from napari.layers import Image
from napari.utils.notifications import show_error

from .. import ngff
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
from .jobs import export_job, segment_job, segment_ome_zarr_job, temporary_labels
from .model_store import model_store
from .ome_zarr_output import OmeZarrOutput
from .tta_options import TTAOptions, show_uncertainty


class SegmentWidget(Container):
    """Image layer + current model -> "<image> segmentation" labels layer.

    Attributes:
        image_layer: the image to segment (2D, stack, RGB, multi-channel, lazy).
        model_info: which model is loaded.
        run_info: the device and the settings measured for this machine.
        load_button: replace the current model with one from a file.
        builtin_button: replace it with the built-in nuclei model.
        export_button: write the current model as a bioimage.io package (zip).
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
        self.export_button = PushButton(text="Export to bioimage.io...", enabled=False)
        self.export_button.tooltip = (
            "write the current model as a bioimage.io package (zip) for ilastik, "
            "deepImageJ, QuPath, BiaPy..."
        )
        self.show_probabilities = CheckBox(text="also show probabilities", value=False)
        self.ome_zarr = OmeZarrOutput()
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
                row(self.export_button),
                self.show_probabilities,
                self.ome_zarr,
                self.tta,
                buttons,
                column(self.progress, self.status),
            ]
        )
        follow_layers(napari_viewer, self)
        self._worker = None
        self._bar: NapariProgress | None = None
        self.load_button.changed.connect(self.load_model)
        self.builtin_button.changed.connect(lambda *_: self.use_builtin())  # not its value
        self.export_button.changed.connect(self.export_model)
        self.segment_button.changed.connect(self.segment)
        self.cancel_button.changed.connect(self.cancel)
        self.store.changed.connect(self._show_model)
        self.image_layer.changed.connect(self.ome_zarr.follow)
        self.ome_zarr.follow(self.image_layer.value)
        self._lifetime = WidgetLifetime(self.native, self._gone)
        self._show_model()

    @property
    def busy(self) -> bool:
        return self._worker is not None

    def _show_model(self) -> None:
        from ..hardware import summary

        self.model_info.value = self.store.describe()
        self.export_button.enabled = self.store.model is not None and self._worker is None
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

    def use_builtin(self, name: str = "nuclei") -> None:
        """Make built-in model ``name`` (the button: nuclei) the current model."""
        from ..model_io import ModelFileError, load_model
        from ..models import describe

        try:
            model = load_model(name)
        except (ModelFileError, OSError) as error:
            show_error(f"could not load the built-in model: {error}")
            return
        self.store.set(model, describe(name))

    def export_model(self) -> None:
        """Ask for a .zip and write the current model there as a bioimage.io package,
        in a thread worker; the chosen image (if 2D) makes its test tensors and cover."""
        model = self.store.model
        if model is None or self._worker is not None:
            return
        path = _dialogs.ask_export_package(self.native)
        if not path:
            return
        layer = self.image_layer.value
        image = None
        in_memory = layer is not None and isinstance(layer.data, np.ndarray)  # not lazy
        if in_memory and layer.ndim == 2 and not layer.rgb and model.config.in_channels == 1:
            image = layer.data
        # one step that writes the file at its end: nothing to cancel between steps
        self._begin(f"exporting {Path(path).name}", f"exporting to {path}...", False)
        self._worker = start_job(
            export_job,
            model,
            path,
            source=self.store.source,
            image=image,
            on_yield=self._progress,
            on_return=self._exported,
            on_finish=self._finished,
            on_release=self._close_bar,
            error_prefix="export failed",
        )

    def _exported(self, path: str) -> None:
        size = Path(path).stat().st_size / 2**20
        self.status.value = f"exported {Path(path).name} ({size:.1f} MiB): a bioimage.io package"

    def segment(self) -> None:
        """Segment the chosen image with the current model in a thread worker."""
        if self._worker is not None:
            return
        try:
            layer = selected(self.image_layer, "an image layer")
            model = self.store.model
            if model is None:
                raise BadChoice("no model loaded: train one in 'Train U-Net' or load a file")
            request = self.ome_zarr.request(layer, self.native, model.config.in_channels)
            if request is not None and self.tta.wants_uncertainty:
                raise BadChoice(
                    "the uncertainty layer is not offered when saving into the OME-Zarr: "
                    "untick one of the two"
                )
            # the OME-Zarr path reads the file itself (all channels): the layer places it
            source = layer if request else image_input(layer, model.config.in_channels)
        except BadChoice as error:
            show_error(str(error))
            return
        self._begin(f"segmenting {layer.name}", f"segmenting '{layer.name}'...")
        if request is not None:
            job, args = segment_ome_zarr_job, (model, request.store)
            options = {"name": request.name, "overwrite": request.overwrite}
            options["tta"] = self.tta.mode.value
        else:
            lazy = not isinstance(source.data, np.ndarray)
            job, args = segment_job, (model, source.data)
            options = {
                "channel_axis": source.channel_axis,
                "probabilities": self.show_probabilities.value,
                "out": temporary_labels(source.spatial_shape) if lazy else None,
                "tta": self.tta.mode.value,
                "uncertainty": self.tta.wants_uncertainty,
            }
        self._worker = start_job(
            job,
            *args,
            **options,
            on_yield=self._progress,
            on_return=partial(self._show, layer, source, model),
            on_finish=self._finished,
            on_release=self._close_bar,
            error_prefix="segmentation failed",
        )
        self._worker.connect_ui("aborted", self._cancelled)

    def _begin(self, bar_text: str, status: str, cancellable: bool = True) -> None:
        """Show a job as running: progress bars, status, buttons."""
        self._bar = NapariProgress(bar_text, cancel=self.cancel if cancellable else None)
        self.progress.visible = True
        self.progress.value = 0
        self.status.value = status
        self.segment_button.enabled, self.cancel_button.enabled = False, cancellable
        self.export_button.enabled = False
        self._lifetime.watch_window()

    def cancel(self) -> None:
        """Stop the running segmentation after the current tile; no layer is changed."""
        if self._worker is not None:
            self.status.value = "cancelling..."
            self._worker.quit()

    # -- worker callbacks (UI thread) -----------------------------------------------------
    def _progress(self, done_total: tuple[int, int] | str) -> None:
        if isinstance(done_total, str):  # a note, e.g. how much of a run was done before
            self.status.value = done_total
            return
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
        self.export_button.enabled = self.store.model is not None

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
        source: ImageInput | Image,
        model: Any,
        result: tuple[np.ndarray, np.ndarray | None, np.ndarray | None],
    ) -> None:
        written = None
        if isinstance(result, ngff.LabelTarget):  # written into the image's OME-Zarr
            written = f"{Path(result.store).name}/{result.group_path}"
            levels = ngff.label_levels(result)  # napari needs two levels for multiscale
            result = (levels if len(levels) > 1 else levels[0], None, None)
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
        self.status.value = _summary(labels, model.info.task, out.name, written)


def _summary(labels: Any, task: str, layer_name: str, written: str | None) -> str:
    """One line on the result: objects or classes found, or where lazy labels were written
    (they are not read back to count: they may not fit in memory)."""
    if not isinstance(labels, np.ndarray):
        where = written or "a temporary folder"
        return f"labels in '{layer_name}', written block by block to {where}"
    if task == "instance":
        count, what = int(labels.max()), "objects"  # ids are 1..N
    else:
        count, what = int(np.count_nonzero(np.bincount(labels.ravel())[1:])), "classes"
    return f"{count} {what} in '{layer_name}'"
