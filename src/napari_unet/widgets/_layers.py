"""Layer helpers shared by the widgets: choices, checks, and the layers the plugin owns.

Output layers (segmentations, probabilities, weight maps, previews) carry
``metadata["napari_unet"] = {"role": ..., "source": <input layer name>}``. A
widget only ever replaces a layer with that mark, so a user's own layer is
never overwritten, even when it has the same name. Painting on an output
labels layer makes it the user's: the mark is dropped and the next run writes
a new layer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from magicgui.widgets import ComboBox, Container
from napari.layers import Image, Labels, Layer

OWNER_KEY = "napari_unet"


class BadChoice(ValueError):
    """A layer or model choice a widget cannot use; shown to the user as a notification."""


# -- choices ------------------------------------------------------------------------------
def layer_combo(
    viewer: Any,
    layer_type: type[Layer],
    label: str,
    *,
    nullable: bool = False,
    skip_outputs: bool = False,
    tooltip: str | None = None,
) -> ComboBox:
    """A combo box listing ``viewer``'s layers of ``layer_type`` (newest last).

    ``skip_outputs`` hides the layers the plugin wrote itself (weight maps,
    probabilities, previews), which are never a sensible input image.
    """

    def choices(_widget: Any) -> list[tuple[str, Layer]]:
        return [
            (layer.name, layer)
            for layer in viewer.layers
            if isinstance(layer, layer_type) and not (skip_outputs and is_output(layer))
        ]

    return ComboBox(label=label, choices=choices, nullable=nullable, tooltip=tooltip)


def follow_layers(viewer: Any, container: Container) -> None:
    """Refresh ``container``'s layer combo boxes whenever the layer list changes.

    napari does the same when a widget is docked; this also covers a widget
    used on its own (e.g. in a script or a test).
    """
    events = viewer.layers.events
    for event in (events.inserted, events.removed, events.reordered, events.renamed):
        event.connect(container.reset_choices)


def unfollow_layers(viewer: Any, container: Container) -> None:
    """Undo :func:`follow_layers` (the container's Qt widgets were deleted)."""
    events = viewer.layers.events
    for event in (events.inserted, events.removed, events.reordered, events.renamed):
        event.disconnect(container.reset_choices)


def selected(combo: ComboBox, what: str) -> Layer:
    """The combo's layer, or BadChoice naming what is missing."""
    if combo.value is None:
        raise BadChoice(f"choose {what} first (add one to the viewer if the list is empty)")
    return combo.value


# -- geometry -----------------------------------------------------------------------------
def spatial_shape(layer: Layer) -> tuple[int, ...]:
    """Shape of ``layer`` without its colour axis (RGB images) — what labels must match."""
    shape = tuple(int(s) for s in layer_data(layer).shape)
    return shape[:-1] if isinstance(layer, Image) and layer.rgb else shape


def layer_data(layer: Layer) -> Any:
    """The full-resolution array of a layer (level 0 of a multiscale layer)."""
    return layer.data[0] if getattr(layer, "multiscale", False) else layer.data


def check_labels(labels: Labels, spatial: tuple[int, ...], image_name: str) -> None:
    """BadChoice unless ``labels`` has the image's spatial shape and at least one object."""
    if tuple(labels.data.shape) != tuple(spatial):
        raise BadChoice(
            f"labels layer '{labels.name}' has shape {tuple(labels.data.shape)} but image "
            f"'{image_name}' has spatial shape {tuple(spatial)}; choose the matching pair"
        )
    if not np.any(np.asarray(labels.data)):
        raise BadChoice(f"labels layer '{labels.name}' is empty: paint some objects first")


@dataclass(frozen=True)
class ImageInput:
    """How an image layer feeds a network taking ``in_channels`` channels.

    Attributes:
        data: the full-resolution array (numpy, dask or zarr; not read).
        channel_axis: axis of ``data`` holding channels, or None (single channel).
        spatial_axes: the other axes of ``data``: (Y, X) or (Z, Y, X).
        scale, translate: of the spatial axes, to place outputs on the image.
    """

    data: Any
    channel_axis: int | None
    spatial_axes: tuple[int, ...]
    scale: tuple[float, ...]
    translate: tuple[float, ...]

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return tuple(int(self.data.shape[a]) for a in self.spatial_axes)


def image_input(layer: Image, in_channels: int) -> ImageInput:
    """Find the channel axis of ``layer`` for a network with ``in_channels`` inputs.

    RGB(A) layers have channels last; another multi-channel layer has them first
    (napari's convention) or last. BadChoice when no axis fits, or the image is
    not 2D or a stack of 2D planes.
    """
    data = layer_data(layer)
    shape, ndim = tuple(data.shape), len(data.shape)
    if layer.rgb:
        channel_axis: int | None = ndim - 1
    elif in_channels == 1:
        channel_axis = None
    elif ndim >= 3 and shape[0] == in_channels:
        channel_axis = 0
    elif ndim >= 3 and shape[-1] == in_channels:
        channel_axis = ndim - 1
    else:
        raise BadChoice(
            f"the model takes {in_channels} channels but image '{layer.name}' of shape "
            f"{shape} has no axis of that length"
        )
    if channel_axis is not None and shape[channel_axis] != in_channels:
        raise BadChoice(
            f"the model takes {in_channels} channel(s) but image '{layer.name}' has "
            f"{shape[channel_axis]}; use a model trained on such images"
        )
    spatial_axes = tuple(a for a in range(ndim) if a != channel_axis)
    if len(spatial_axes) not in (2, 3):
        raise BadChoice(f"image '{layer.name}' of shape {shape} is not 2D or a stack of 2D planes")
    return ImageInput(data, channel_axis, spatial_axes, *axes_placement(layer, spatial_axes))


def axes_placement(layer: Layer, axes: tuple[int, ...]) -> tuple[tuple[float, ...], ...]:
    """(scale, translate) of the given data axes of ``layer``.

    ``layer.scale`` covers the layer's dimensions: every data axis, except the
    colour axis of an RGB image, which is last.
    """
    ndim = len(layer_data(layer).shape)
    layer_axes = range(ndim - 1) if getattr(layer, "rgb", False) else range(ndim)
    scale = dict(zip(layer_axes, layer.scale))
    translate = dict(zip(layer_axes, layer.translate))
    return tuple(float(scale[a]) for a in axes), tuple(float(translate[a]) for a in axes)


# -- output layers ------------------------------------------------------------------------
def is_output(layer: Layer, role: str | None = None) -> bool:
    """True for a layer the plugin wrote (with the given role, if one is given)."""
    mark = layer.metadata.get(OWNER_KEY)
    return isinstance(mark, dict) and (role is None or mark.get("role") == role)


def find_output(viewer: Any, role: str, source: str) -> Layer | None:
    """The plugin's ``role`` layer written for the input layer named ``source``."""
    for layer in viewer.layers:
        if layer.metadata.get(OWNER_KEY) == {"role": role, "source": source}:
            return layer
    return None


def show_output(
    viewer: Any,
    data: np.ndarray,
    *,
    kind: str,
    role: str,
    source: Layer,
    name: str,
    placement: Layer | ImageInput | None = None,
    update: tuple[str, ...] = ("contrast_limits",),
    **kwargs: Any,
) -> Layer:
    """Show ``data`` (an array, or a list of levels for a multiscale layer) in the
    plugin's ``role`` layer for ``source``; create it if needed.

    An existing output layer of the same kind and shape gets the new data in
    place and, of ``kwargs``, only those named in ``update`` (the user's other
    display settings stay); otherwise it is replaced.
    ``placement`` (default ``source``; a layer or an :class:`ImageInput`) gives the
    scale and translation of the output's axes, so it lies on top of its input;
    ``kwargs`` go to ``viewer.add_image`` / ``viewer.add_labels``.
    """
    layer_type = {"image": Image, "labels": Labels}[kind]
    old = find_output(viewer, role, source.name)
    multiscale = isinstance(data, list)  # levels, full resolution first
    level0 = data[0] if multiscale else data
    if (
        old is not None
        and isinstance(old, layer_type)
        and old.multiscale == multiscale
        and layer_data(old).shape == level0.shape
    ):
        old.data = data
        for key in update:
            if key in kwargs:
                setattr(old, key, kwargs[key])
        return old
    placement = source if placement is None else placement
    ndim = level0.ndim
    if multiscale:
        kwargs["multiscale"] = True
    units = getattr(source, "units", None)  # e.g. micrometer from an OME-Zarr
    if units is not None and len(units) >= ndim:
        kwargs.setdefault("units", tuple(str(u) for u in units)[-ndim:])
    add = viewer.add_image if kind == "image" else viewer.add_labels
    layer = add(
        data,
        name=name,
        scale=tuple(placement.scale)[-ndim:],
        translate=tuple(placement.translate)[-ndim:],
        metadata={OWNER_KEY: {"role": role, "source": source.name}},
        **kwargs,
    )
    if old is not None:
        index = viewer.layers.index(old)
        viewer.layers.remove(old)
        viewer.layers.move(viewer.layers.index(layer), index)
    if kind == "labels":
        layer.events.paint.connect(_release(layer))
    return layer


def _release(layer: Labels) -> Callable[[Any], None]:
    """Callback dropping the plugin's mark from ``layer`` once the user paints on it."""

    def release(_event: Any) -> None:
        layer.metadata.pop(OWNER_KEY, None)

    return release
