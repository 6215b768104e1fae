"""Train widget: paint labels, press Train, watch the U-Net learn, correct and retrain.

Training runs in a thread worker (:func:`.jobs.train_job`). While it runs the
dock shows the loss curve and validation metrics, napari shows a progress bar
with the time left, and every few seconds the current model's prediction for
the visible part of the image appears in a "<image> preview" layer. Strokes
painted meanwhile are picked up at the engine's next refresh of its data. Stop
ends training between two steps; the model then becomes the viewer's current
model (used by the Segment widget) and can be saved. Closing the dock or the
viewer while training runs stops it (the run is dropped) and waits for the thread.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FloatSpinBox,
    Label,
    ProgressBar,
    PushButton,
)
from napari.layers import Image, Labels, Shapes
from napari.utils.notifications import show_error, show_info

from .. import inference as _inference  # noqa: F401

# metrics and predict are used by the training worker (validation, live preview);
# importing them here, on the UI thread, keeps a first-time import (which holds the
# GIL for a few hundred ms) out of the training run.
from .. import metrics as _metrics  # noqa: F401
from ..postprocess import Postprocess, without_settings
from ..training import PRESETS
from . import _dialogs
from ._layers import (
    OWNER_KEY,
    BadChoice,
    axes_placement,
    find_output,
    follow_layers,
    layer_combo,
    layer_data,
    selected,
    spatial_shape,
    unfollow_layers,
)
from ._layout import column, fixed_lines, row
from ._lifetime import WidgetLifetime
from ._workers import ProgressBar as NapariProgress
from ._workers import freeze_heap, freeze_new_objects, start_job, thaw_heap
from .jobs import PreviewSource, ShownStep, train_job
from .loss_plot import LossPlot
from .model_store import model_store
from .suggest_panel import SuggestPanel

#: where training starts: a new network, or fine-tuning one of these
START_FROM = ("auto", "new network", "built-in nuclei", "current model", "file...")
#: the preset choice whose settings are chosen from the annotation and the machine
AUTO = "auto"
METRIC_NAMES = {"ap50": "AP@0.5", "iou": "IoU"}  # shown on the plot (values in 0..1)
PROGRESS_STEPS = 1000  # resolution of the progress bars
STATUS_INTERVAL_S = 0.25  # least time between two updates of the status and progress bars


@dataclass(frozen=True)
class Pair:
    """Image and labels layers, and optionally a Shapes layer marking the annotated part."""

    image: Image
    labels: Labels
    region: Shapes | None = None

    def describe(self) -> str:
        region = f" in '{self.region.name}'" if self.region is not None else ""
        return f"'{self.image.name}' + '{self.labels.name}'{region}"

    def check(self) -> None:
        """BadChoice unless the labels fit the image and contain annotation."""
        labels_shape = tuple(self.labels.data.shape)
        image_shape = tuple(layer_data(self.image).shape)
        fits = (
            labels_shape == spatial_shape(self.image)
            or image_shape[1:] == labels_shape
            or image_shape[:-1] == labels_shape
        )
        if not fits:
            raise BadChoice(
                f"labels layer '{self.labels.name}' has shape {labels_shape} but image "
                f"'{self.image.name}' has shape {image_shape}; choose the matching pair"
            )
        if not np.any(self.labels.data):
            raise BadChoice(
                f"labels layer '{self.labels.name}' is empty: paint some objects first"
            )
        if self.region is not None and len(self.region.data) == 0:
            raise BadChoice(
                f"region layer '{self.region.name}' has no shapes: draw one or clear it"
            )

    def channel_axis(self) -> int | None:
        """The image's channel axis (None when it has the labels' shape)."""
        shape, labels_shape = tuple(layer_data(self.image).shape), tuple(self.labels.data.shape)
        if shape == labels_shape:
            return None
        return 0 if shape[1:] == labels_shape else len(shape) - 1

    def read(self) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Copies of (image, labels, mask) for the training engine."""
        labels = np.array(self.labels.data)
        mask = None if self.region is None else region_mask(self.region, labels.shape)
        return np.asarray(layer_data(self.image)), labels, mask


def region_mask(shapes: Shapes, shape: tuple[int, ...]) -> np.ndarray:
    """Bool mask of ``shape`` covered by the rectangles/polygons of a Shapes layer.

    For stacks, a shape drawn on slice z marks that slice only.
    """
    from ..data import region_mask as polygons_mask

    if len(shape) == 2:
        return polygons_mask(shape, list(shapes.data))
    mask = np.zeros(shape, dtype=bool)
    for vertices in shapes.data:
        z = round(float(vertices[0, -3]))
        if 0 <= z < shape[0]:
            mask[z] |= polygons_mask(shape[1:], [vertices])
    return mask


class TrainWidget(Container):
    """Layer pairs + mode + preset + budget -> a trained U-Net (the viewer's current model).

    Attributes:
        image_layer, labels_layer, region_layer: the pair to train on (region optional).
        add_pair_button, clear_pairs_button, pairs_info: train on several pairs at once.
        mode: "instance" (objects, 0 = background) or "semantic" (scribbles:
            0 = not annotated, 1 = background, 2.. = classes).
        preset: "auto" (:data:`AUTO`: settings chosen from the annotation and the
            machine, :func:`napari_unet.train_recipe.choose_settings`) or a named
            :data:`napari_unet.training.PRESETS` entry.
        budget, budget_unit: training length in minutes or iterations.
        device: "auto" or a device name.
        start_from: "auto" (with the auto preset: the built-in nuclei model when the
            annotation looks like its training data, else a new network), a new network,
            or fine-tuning the built-in nuclei model, the current model or a model file /
            bioimage.io package (:data:`START_FROM`).
        live_preview: show the model's prediction of the visible region while training.
        train_button, stop_button: start; stop between two steps keeping the model.
        progress, status, metrics, plot: live feedback.
        recipe_info: what "auto" chose and why (hidden until it has chosen).
        model_info, save_button: the current model and saving it.
        suggester: "Suggest where to annotate" (:class:`.suggest_panel.SuggestPanel`).
    """

    def __init__(self, napari_viewer: Any) -> None:
        self.viewer = napari_viewer
        self.store = model_store(napari_viewer)
        self.image_layer = layer_combo(napari_viewer, Image, "image", skip_outputs=True)
        self.labels_layer = layer_combo(napari_viewer, Labels, "labels")
        self.region_layer = layer_combo(
            napari_viewer, Shapes, "region", nullable=True,
            tooltip="optional: rectangles or polygons around the part you annotated; "
            "pixels outside are ignored",
        )  # fmt: skip
        self.add_pair_button = PushButton(text="Add pair", tooltip="also train on this pair")
        self.clear_pairs_button = PushButton(text="Clear pairs")
        self.pairs_info = Label(value="training on the pair above")
        self.pairs_info.native.setWordWrap(True)
        self.mode = ComboBox(
            label="labels are", choices=["instance", "semantic"],
            tooltip="instance: every object has its own id, 0 = background; semantic "
            "(scribbles): 0 = not annotated, 1 = background, 2, 3, ... = classes",
        )  # fmt: skip
        self.preset = ComboBox(
            label="preset", choices=[AUTO, *PRESETS], value=AUTO,
            tooltip="auto: gaps, best-model metric, tile size and width chosen from your "
            "annotation and this machine's speed (said below when training starts); "
            "fast, dense (EM) and paper are fixed recipes",
        )  # fmt: skip
        self.budget = FloatSpinBox(value=10.0, min=0.1, max=1_000_000.0, step=1.0)
        self.budget.native.setDecimals(1)
        self.budget.native.setMinimumWidth(100)
        self.budget_unit = ComboBox(choices=["minutes", "iterations"])
        self.budget_unit.native.setMaximumWidth(110)
        self.device = ComboBox(label="device", choices=_device_choices())
        self.start_from = ComboBox(
            label="start from", choices=list(START_FROM),
            tooltip="fine-tune: the network, normalisation and classes of the starting model "
            "are kept; the segmentation settings are tuned again. auto (with the auto "
            "preset): the built-in nuclei model when your objects look like nuclei (one "
            "channel, separate, 8-50 px across), else a new network",
        )  # fmt: skip
        self.live_preview = CheckBox(text="live preview of the visible region", value=True)
        self.train_button = PushButton(text="Train")
        self.stop_button = PushButton(text="Stop", enabled=False)
        self.progress = ProgressBar(value=0, max=PROGRESS_STEPS, visible=False)
        self.status = fixed_lines(Label(), 2)  # live text: never re-lays out the dock
        self.metrics = fixed_lines(Label(), 3)
        self.recipe_info = fixed_lines(Label(), 8)
        self.recipe_info.visible = False
        self.model_info = Label(label="model")
        self.save_button = PushButton(text="Save model...", enabled=False)
        self.model_info.native.setWordWrap(True)
        super().__init__(
            widgets=[
                self.image_layer,
                self.labels_layer,
                self.region_layer,
                row(self.add_pair_button, self.clear_pairs_button),
                self.pairs_info,
                self.mode,
                self.preset,
                row(self.budget, self.budget_unit, label="budget"),
                self.device,
                self.start_from,
                self.live_preview,
                row(self.train_button, self.stop_button),
                column(self.progress, self.status, self.metrics, self.recipe_info),
            ]
        )
        self.plot = LossPlot()
        self.native.layout().addWidget(self.plot)
        self.suggester = SuggestPanel(napari_viewer, self.current_pair, self.store)
        self.extend([self.model_info, self.save_button, self.suggester])
        follow_layers(napari_viewer, self)

        self.pairs: list[Pair] = []
        self._worker = None
        self._bar: NapariProgress | None = None
        self._stop_requested = False
        self._last_shown = 0.0
        self._dirty = False
        self._watched: list[Any] = []
        self._visible: tuple[int | None, slice, slice] | None = None
        self._preview_source: Image | None = None
        self._preview: PreviewSource | None = None

        self.add_pair_button.changed.connect(self.add_pair)
        self.clear_pairs_button.changed.connect(self.clear_pairs)
        self.preset.changed.connect(self._preset_budget)
        self.budget_unit.changed.connect(self._unit_changed)
        self.train_button.changed.connect(self.train)
        self.stop_button.changed.connect(self.stop)
        self.save_button.changed.connect(self.save_model)
        self.store.changed.connect(self._show_model)
        self._lifetime = WidgetLifetime(self.native, self._gone)
        self._preset_budget()
        self._show_model()

    @property
    def busy(self) -> bool:
        return self._worker is not None

    # -- choosing the data ----------------------------------------------------------------
    def current_pair(self) -> Pair:
        pair = Pair(
            selected(self.image_layer, "an image layer"),
            selected(self.labels_layer, "a labels layer"),
            self.region_layer.value,
        )
        pair.check()
        return pair

    def add_pair(self) -> None:
        """Add the pair chosen above to the pairs trained on."""
        try:
            pair = self.current_pair()
        except BadChoice as error:
            show_error(str(error))
            return
        if pair not in self.pairs:
            self.pairs.append(pair)
        self._show_pairs()

    def clear_pairs(self) -> None:
        self.pairs = []
        self._show_pairs()

    def _show_pairs(self) -> None:
        if not self.pairs:
            self.pairs_info.value = "training on the pair above"
        else:
            listed = "; ".join(pair.describe() for pair in self.pairs)
            self.pairs_info.value = f"training on {len(self.pairs)} pair(s): {listed}"

    def training_pairs(self) -> list[Pair]:
        """The added pairs, or the pair chosen above when none was added."""
        if not self.pairs:
            return [self.current_pair()]
        for pair in self.pairs:
            if pair.image not in self.viewer.layers or pair.labels not in self.viewer.layers:
                raise BadChoice(f"a layer of the pair {pair.describe()} was removed")
            pair.check()
        return list(self.pairs)

    # -- settings -------------------------------------------------------------------------
    def _base_preset(self) -> Any:
        return PRESETS["fast" if self.preset.value == AUTO else self.preset.value]

    def _preset_budget(self, *_: Any) -> None:
        preset = self._base_preset()
        if preset.minutes is not None:
            self.budget_unit.value = "minutes"
            self.budget.value = preset.minutes
        else:
            self.budget_unit.value = "iterations"
            self.budget.value = preset.iterations

    def _unit_changed(self, unit: str) -> None:
        self.budget.step = 1.0 if unit == "minutes" else 100.0

    def settings(self) -> Any:
        """The chosen preset with the budget, device and UI-friendly thread count."""
        budget = (
            {"minutes": self.budget.value, "iterations": None}
            if self.budget_unit.value == "minutes"
            else {"minutes": None, "iterations": max(1, round(self.budget.value))}
        )
        # leave one core to the UI (the preset may ask for fewer threads still)
        threads = self._base_preset().threads or max(1, (os.cpu_count() or 2) - 1)
        return self._base_preset().replace(device=self.device.value, threads=threads, **budget)

    # -- training -------------------------------------------------------------------------
    def train(self) -> None:
        """Start training in a thread worker."""
        if self._worker is not None:
            return
        try:
            pairs = self.training_pairs()
            settings = self.settings()
            init_model = self.starting_model()
            if init_model is False:
                return  # the user cancelled the file dialog
            data = [pair.read() for pair in pairs]
        except (BadChoice, ValueError) as error:
            show_error(str(error))
            return
        images, labels, masks = (list(part) for part in zip(*data))
        first = pairs[0]
        self._preview_source = first.image
        self._preview = preview = PreviewSource(
            layer_data(first.image),
            first.channel_axis(),
            tuple(a for a in range(layer_data(first.image).ndim) if a != first.channel_axis()),
            lambda: self._visible,
        )
        if self.live_preview.value:
            self._make_preview_layer(first.image, preview, self.mode.value)
        self._watch(pairs)
        self._stop_requested = False
        self._update_visible()
        self.plot.clear()
        self.metrics.value = ""
        self.recipe_info.value, self.recipe_info.visible = "", False
        self.status.value = "preparing the training data..."
        self.progress.value, self.progress.visible = 0, True
        self.train_button.enabled, self.stop_button.enabled = False, True
        self._bar = NapariProgress("training U-Net", cancel=self.stop)
        self._lifetime.watch_window()
        freeze_heap()  # no 300 ms full garbage collections in the training thread
        self._worker = start_job(
            train_job,
            images,
            labels,
            masks,
            mode=self.mode.value,
            settings=settings,
            init_model=init_model,
            choose_recipe=self.preset.value == AUTO,
            builtin_allowed=self.preset.value == AUTO and self.start_from.value == "auto",
            should_stop=lambda: self._stop_requested,
            refresh=partial(self._refresh, pairs),
            preview=preview,
            on_yield=self._on_record,
            on_return=partial(self._trained, pairs),
            on_finish=self._finished,
            on_release=self._release,
            error_prefix="training failed",
        )

    def starting_model(self) -> Any:
        """The model chosen in ``start_from``: None (a new network, or "auto", which the
        recipe may turn into the built-in model when training starts), the current model, the
        built-in nuclei model or a file/bioimage.io package; False when the file dialog
        is cancelled. BadChoice (one sentence) when it cannot be had."""
        from ..model_io import ModelFileError, load_model

        choice = self.start_from.value
        if choice == "current model":
            if self.store.model is None:
                raise BadChoice("no current model to start from: choose 'new network'")
            return self.store.model
        source = {"built-in nuclei": "nuclei"}.get(choice)
        if choice == "file...":
            source = _dialogs.ask_open_model(self.native)
            if not source:
                return False
        if source is None:
            return None
        try:
            return load_model(source)
        except (ModelFileError, OSError) as error:
            raise BadChoice(f"could not load the model to start from: {error}") from None

    def stop(self) -> None:
        """End training after the current step; the model trained so far is kept."""
        if self._worker is not None:
            self._stop_requested = True
            self.stop_button.enabled = False
            self.status.value = "stopping after this step..."

    def _watch(self, pairs: list[Pair]) -> None:
        """Mark the data dirty whenever the user paints or edits a region while training."""
        self._dirty = False
        for pair in pairs:
            pair.labels.events.paint.connect(self._mark_dirty)
            pair.labels.events.data.connect(self._mark_dirty)
            self._watched.append(pair.labels.events.paint)
            self._watched.append(pair.labels.events.data)
            if pair.region is not None:
                pair.region.events.data.connect(self._mark_dirty)
                self._watched.append(pair.region.events.data)

    def _mark_dirty(self, *_: Any) -> None:
        self._dirty = True

    def _refresh(self, pairs: list[Pair]) -> tuple | None:
        """Called by the engine (worker thread): new training data if the user painted."""
        if not self._dirty:
            return None
        self._dirty = False
        images, labels, masks = zip(*(pair.read() for pair in pairs))
        return list(images), list(labels), list(masks)

    # -- worker callbacks (UI thread) -----------------------------------------------------
    def _on_record(self, record: ShownStep) -> None:
        iteration, progress = record.iteration, record.progress
        if iteration == 1:
            freeze_new_objects()  # the engine's imports, data and model: here to stay
        if record.recipe is not None:
            self.recipe_info.value, self.recipe_info.visible = record.recipe, True
            self.recipe_info.tooltip = record.recipe  # all of it, should it not fit
        self.plot.add_loss(iteration, record.loss)
        if record.val is not None:
            shown = {METRIC_NAMES[k]: v for k, v in record.val.items() if k in METRIC_NAMES}
            self.plot.add_metrics(iteration, shown)
            text = _validation_text(record.val)
            self.metrics.value = f"validation at step {iteration}:\n{text}"
        if record.preview is not None:
            self._show_preview(*record.preview)
        now = time.monotonic()
        if now - self._last_shown >= STATUS_INTERVAL_S or progress >= 1:
            # progress bars repaint synchronously: a few times per second is plenty
            self._last_shown = now
            done = round(progress * PROGRESS_STEPS)
            self.progress.value = done
            if self._bar is not None:
                self._bar.set(done, PROGRESS_STEPS)
            left = record.elapsed * (1 - progress) / progress if progress > 0 else np.nan
            if not self._stop_requested:
                self.status.value = (
                    f"step {iteration} · loss {record.loss:.4f} · {_duration(left)} left"
                )
            self._update_visible()

    def _update_visible(self) -> None:
        """Store the visible region of the preview image (read by the worker thread)."""
        layer, source = self._preview_source, self._preview
        if (
            not self.live_preview.value
            or layer is None
            or source is None
            or layer not in self.viewer.layers
            or self.viewer.dims.ndisplay != 2
        ):
            self._visible = None
            return
        spatial = source.spatial_axes
        corners = np.asarray(layer.corner_pixels)
        y, x = spatial[-2:]
        rows = slice(int(corners[0, y]), int(corners[1, y]) + 1)
        cols = slice(int(corners[0, x]), int(corners[1, x]) + 1)
        z = None
        if len(spatial) == 3:
            point = layer.world_to_data(self.viewer.dims.point[-layer.ndim :])
            depth = source.data.shape[spatial[0]]
            z = int(np.clip(round(point[spatial[0]]), 0, depth - 1))
        self._visible = (z, rows, cols)

    def _make_preview_layer(self, image: Image, source: PreviewSource, mode: str) -> None:
        """Create (or reset) "<image> preview": one plane of the image's size, all 0.

        It is made before training starts and then only written into, because
        adding a layer stalls the UI for a few hundred ms.
        """
        spatial = [source.data.shape[a] for a in source.spatial_axes]
        shape = (1, *spatial[-2:]) if len(spatial) == 3 else tuple(spatial)
        scale, translate = axes_placement(image, source.spatial_axes)
        old = find_output(self.viewer, "preview", image.name)
        semantic = mode == "semantic"
        if old is not None:
            if old.data.shape == shape and isinstance(old, Labels) == semantic:
                old.data[...] = 0
                old.refresh()
                return
            self.viewer.layers.remove(old)
        kwargs = {
            "name": f"{image.name} preview",
            "scale": scale,
            "translate": translate,
            "metadata": {OWNER_KEY: {"role": "preview", "source": image.name}},
        }
        if semantic:  # class ids + 1: the colours of the scribbles
            self.viewer.add_labels(np.zeros(shape, np.uint8), opacity=0.5, **kwargs)
        else:  # foreground probability in percent
            self.viewer.add_image(
                np.zeros(shape, np.uint8), colormap="magenta", blending="additive",
                opacity=0.7, contrast_limits=(0, 100), **kwargs,
            )  # fmt: skip

    def _show_preview(self, values: np.ndarray, origin: tuple) -> None:
        """Write the preview of the visible region into the preview layer."""
        image = self._preview_source
        layer = None if image is None else find_output(self.viewer, "preview", image.name)
        if layer is None:
            return  # the user removed it
        z, y, x = origin
        if z is not None:
            scale, translate = axes_placement(image, self._preview.spatial_axes)
            wanted = translate[0] + z * scale[0]
            if layer.translate[0] != wanted:
                layer.translate = (wanted, *layer.translate[1:])
        semantic = np.issubdtype(values.dtype, np.integer)
        values = values + 1 if semantic else np.round(values * 100)
        data = layer.data
        data[...] = 0
        data[..., y : y + values.shape[0], x : x + values.shape[1]] = values
        layer.refresh(extent=False, highlight=False)

    def _trained(self, pairs: list[Pair], model: Any) -> None:
        history = model.info.history
        names = ", ".join(f"'{pair.image.name}'" for pair in pairs)
        steps, seconds = history.get("iterations", 0), history.get("seconds", 0.0)
        self.store.set(model, f"trained on {names} ({steps} steps, {_duration(seconds)})")
        best = history.get("best_val")  # absent without validation data
        if best and "threshold" in best:  # tuned: validation as Segment will segment
            scores = _metrics_text(without_settings(best))
            self.metrics.value = f"validation ({_settings_text(best)}):\n" + scores
        elif best:
            self.metrics.value = "best validation:\n" + _metrics_text(best)
        self.status.value = f"done: {steps} steps in {_duration(seconds)}"
        show_info(f"U-Net trained ({steps} steps); it is now the model of the Segment widget")

    def _finished(self) -> None:
        self._worker = None
        self.plot.flush()
        self._show_idle()

    def _show_idle(self) -> None:
        self.progress.visible = False
        self.train_button.enabled, self.stop_button.enabled = True, False

    def _release(self) -> None:
        """End of a run, also one ended by :meth:`_gone`: heap, layer events, napari's bar."""
        thaw_heap()
        for event in self._watched:
            event.disconnect(self._mark_dirty)
        self._watched = []
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def _gone(self, destroyed: bool) -> None:
        """The dock or the viewer was closed: stop training and wait for its thread.

        The run is dropped (the model is not made current). ``destroyed``: the Qt
        widgets are gone, so nothing is shown and nothing stays connected to them.
        """
        self.suggester.end_job()
        if destroyed:
            self.store.changed.disconnect(self._show_model)
            unfollow_layers(self.viewer, self)
        if self._worker is None:
            return
        self._stop_requested = True
        worker, self._worker = self._worker, None
        worker.end()
        if not destroyed:
            self.status.value = "training stopped: the widget was closed"
            self._show_idle()

    # -- the model ------------------------------------------------------------------------
    def _show_model(self) -> None:
        self.model_info.value = self.store.describe()
        self.save_button.enabled = self.store.model is not None

    def save_model(self) -> None:
        """Save the current model to a file chosen in a dialog."""
        from ..model_io import save_model

        if self.store.model is None:
            show_error("no model to save: train one first")
            return
        path = _dialogs.ask_save_model(self.native)
        if not path:
            return
        try:
            save_model(self.store.model, path)
        except (OSError, ValueError) as error:
            show_error(f"could not save the model: {error}")
            return
        show_info(f"model saved to {path}")


def _device_choices() -> list[str]:
    from ..devices import available_devices

    return ["auto", *available_devices()]


def _validation_text(metrics: dict[str, float]) -> str:
    """A validation's scores, and the post-processing they were scored with
    (instances: tuned at every validation)."""
    text = _metrics_text(without_settings(metrics))
    if "threshold" in metrics:
        text += f"\n({_settings_text(metrics)})"
    return text


def _settings_text(tuned: dict[str, float]) -> str:
    """'threshold 0.5, min size 20 px, grow 1 px' of a tuned validation's settings
    (:meth:`Postprocess.of_tuned`)."""
    post = Postprocess.of_tuned(tuned)
    return f"threshold {post.threshold:g}, min size {post.min_size} px, grow {post.expand} px"


def _metrics_text(metrics: dict[str, float]) -> str:
    names = {**METRIC_NAMES, "rand_error": "Rand error", "pixel_error": "pixel error"}
    return " · ".join(f"{names.get(k, k)} {v:.3f}" for k, v in metrics.items())


def _duration(seconds: float) -> str:
    """``75`` -> ``"1:15"``; ``"?"`` when unknown."""
    if not np.isfinite(seconds):
        return "?"
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes}:{secs:02d}"
