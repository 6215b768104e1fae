"""'Suggest where to annotate' in the Train widget: the current model, run with
test-time augmentation on the training image, points at the regions it is least sure
about (:mod:`napari_unet.suggest`), shown as rectangles in a Shapes layer."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np
from magicgui.widgets import Container, Label, PushButton, SpinBox
from napari.layers import Image
from napari.utils.notifications import show_error

from ._layers import OWNER_KEY, BadChoice, ImageInput, find_output, image_input
from ._layout import fixed_lines
from ._workers import start_job
from .jobs import SUGGEST_TTA, suggest_job
from .tta_options import show_uncertainty

ROLE = "suggested regions"


class SuggestPanel(Container):
    """Button + window size + count -> "<image> suggested regions" (Shapes rectangles).

    Args:
        viewer: the napari viewer.
        current_pair: returns the Train widget's chosen pair (``image``, ``labels``,
            ``region``), raising BadChoice when there is none.
        store: the viewer's model store (its ``model`` is the one run).

    Attributes:
        size: window edge (px); count: how many windows.
        button: start; status: what happened last.
    """

    def __init__(self, viewer: Any, current_pair: Callable[[], Any], store: Any) -> None:
        self.viewer, self.current_pair, self.store = viewer, current_pair, store
        self.size = SpinBox(label="region px", value=128, min=16, max=4096, step=16)
        self.count = SpinBox(label="regions", value=3, min=1, max=50)
        self.button = PushButton(text="Suggest where to annotate")
        self.button.tooltip = (
            f"run the current model with test-time augmentation ({SUGGEST_TTA}, 8x a "
            "prediction) and mark the regions where its copies disagree most, outside "
            "the painted labels and the region layer"
        )
        self.status = fixed_lines(Label(), 3)
        super().__init__(
            widgets=[
                Container(widgets=[self.size, self.count], layout="horizontal", labels=True),
                self.button,
                self.status,
            ]
        )
        self.margins = (0, 0, 0, 0)
        self._worker = None
        self.button.changed.connect(self.suggest)

    @property
    def busy(self) -> bool:
        return self._worker is not None

    def suggest(self) -> None:
        """Start the suggestion job for the chosen pair in a thread worker."""
        if self._worker is not None:
            return
        try:
            pair = self.current_pair()
            model = self.store.model
            if model is None:
                raise BadChoice("no model yet: train one first (or load one in Segment)")
            source = image_input(pair.image, model.config.in_channels)
            annotated = annotated_area(pair)
        except BadChoice as error:
            show_error(str(error))
            return
        self.button.enabled = False
        self.status.value = f"looking for uncertain regions in '{pair.image.name}'..."
        self._worker = start_job(
            suggest_job,
            model,
            source.data,
            channel_axis=source.channel_axis,
            annotated=annotated,
            size=self.size.value,
            count=self.count.value,
            on_return=partial(self._show, pair.image, source),
            on_finish=self._finished,
            error_prefix="suggesting regions failed",
        )

    def end_job(self) -> None:
        """End a running job (the widget goes away): nothing is added."""
        if self._worker is not None:
            worker, self._worker = self._worker, None
            worker.end()

    def _finished(self) -> None:
        self._worker = None
        self.button.enabled = True

    def _show(self, image: Image, source: ImageInput, result: tuple[list, np.ndarray]) -> None:
        regions, uncertainty = result
        if image not in self.viewer.layers:
            self.status.value = f"'{image.name}' was removed: nothing shown"
            return
        show_uncertainty(self.viewer, uncertainty, image, source)
        show_regions(self.viewer, regions, image, source)
        if not regions:
            self.status.value = "no free region left: everything is annotated"
            return
        scores = [region.score for region in regions]
        self.status.value = (
            f"{len(regions)} region(s) to annotate next (mean uncertainty "
            f"{max(scores):.3f} to {min(scores):.3f}); add them to the region layer"
        )


def annotated_area(pair: Any) -> np.ndarray:
    """Bool mask of the labels' shape: painted pixels, plus the region layer's shapes."""
    from .train_widget import region_mask

    labels = np.asarray(pair.labels.data)
    annotated = labels != 0
    if pair.region is not None and len(pair.region.data):
        annotated |= region_mask(pair.region, labels.shape)
    return annotated


def show_regions(viewer: Any, regions: list, image: Image, placement: ImageInput) -> Any:
    """Rectangles of ``regions`` in "<image> suggested regions", replacing the plugin's
    previous one for ``image`` (a layer the user edited is theirs and stays)."""
    old = find_output(viewer, ROLE, image.name)
    if old is not None:
        viewer.layers.remove(old)
    ndim = len(placement.spatial_axes)
    layer = viewer.add_shapes(
        [region.corners() for region in regions],
        ndim=ndim,
        shape_type="rectangle",
        edge_color="yellow",
        face_color="transparent",
        edge_width=max(1.0, 0.01 * max(placement.spatial_shape[-2:])),
        name=f"{image.name} {ROLE}",
        scale=placement.scale,
        translate=placement.translate,
        metadata={OWNER_KEY: {"role": ROLE, "source": image.name}},
    )
    layer.events.data.connect(lambda _event: layer.metadata.pop(OWNER_KEY, None))
    return layer
