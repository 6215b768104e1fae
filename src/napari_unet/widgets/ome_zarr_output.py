"""The Segment widget's OME-Zarr option: an image layer opened from an OME-Zarr (napari's
File > Open with napari-ome-zarr, or ``viewer.open(path, plugin="napari-ome-zarr")``)
can have its labels written into the file's own ``labels/<name>`` group, block by block
(:func:`napari_unet.widgets.jobs.segment_ome_zarr_job`), and shown from there lazily.
A name already taken is replaced only after the user said yes; unfinished labels (a
cancelled run) can be continued instead, keeping the blocks already written.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from magicgui.widgets import CheckBox, Container, LineEdit
from napari.layers import Layer

from .. import ngff
from . import _dialogs
from ._layers import BadChoice, layer_data


@dataclass(frozen=True)
class OmeZarrRequest:
    """Write the labels of the OME-Zarr image ``store`` into ``labels/<name>``."""

    store: str
    name: str
    overwrite: bool


def layer_ome_zarr(layer: Layer | None) -> ngff.ImageSource | None:
    """The OME-Zarr image ``layer`` was opened from, if its full-resolution data is that
    image's (all channels, or one channel napari-ome-zarr split off); else None."""
    path = getattr(getattr(layer, "source", None), "path", None)
    if not path:
        return None
    try:
        source = ngff.open_source(path)
    except ValueError:
        return None
    if source.axes is None:
        return None  # a bare zarr array: no labels group to write into
    shape = tuple(layer_data(layer).shape)
    without_channels = tuple(n for a, n in zip(source.axes, source.shape) if a != "c")
    return source if shape in (source.shape, without_channels) else None


class OmeZarrOutput(Container):
    """ "save labels into the OME-Zarr as labels/<name>", shown for OME-Zarr layers only."""

    def __init__(self) -> None:
        self.write = CheckBox(text="save into the OME-Zarr as labels/", value=False)
        self.write.tooltip = (
            "segment block by block and write the labels into the image's own OME-Zarr "
            "(NGFF labels group); asks before replacing labels of that name"
        )
        self.label_name = LineEdit(value="unet")
        self.label_name.tooltip = "name of the label image inside the OME-Zarr's labels group"
        super().__init__(widgets=[self.write, self.label_name], layout="horizontal", labels=False)
        self.margins = (0, 0, 0, 0)
        self.offered = False
        self.visible = False

    def follow(self, layer: Layer | None) -> None:
        """Offer (show) the option only for a layer opened from an OME-Zarr image."""
        self.offered = layer_ome_zarr(layer) is not None
        self.visible = self.offered

    def request(self, layer: Layer, parent: Any, in_channels: int) -> OmeZarrRequest | None:
        """What to write for ``layer`` with a model taking ``in_channels`` channels: None
        when not asked for (or not an OME-Zarr).

        Raises:
            BadChoice: a bad name, an image whose channels the model does not take, or
                the user declined to replace existing labels.
        """
        source = layer_ome_zarr(layer)
        if source is None or not self.write.value:
            return None
        channels = source.shape[source.axes.index("c")] if "c" in source.axes else 1
        if channels != in_channels:
            raise BadChoice(
                f"the OME-Zarr image has {channels} channel(s) but the model takes "
                f"{in_channels}; untick 'save into the OME-Zarr' to segment this layer alone"
            )
        name = self.label_name.value.strip()
        if not name or "/" in name or name.startswith("."):
            raise BadChoice(f"label name {name!r} must be a plain, non-empty name")
        where = f"labels/{name} in {source.store}"
        if ngff.unfinished_run(source.store, name):
            answer = _dialogs.ask_continue_or_replace(parent, where)
            if answer is None:
                raise BadChoice(f"{where} was left as it was: nothing was written")
            return OmeZarrRequest(source.store, name, overwrite=answer == "replace")
        taken = ngff.labels_exist(source.store, name)
        if taken and not _dialogs.confirm_replace(parent, where):
            raise BadChoice(f"labels/{name} exists in {source.store}: nothing was written")
        return OmeZarrRequest(source.store, name, overwrite=taken)
