"""The long computations the widgets start, as generators (no Qt, no napari).

Each job yields progress and returns its result; the widgets drain them in
``napari.qt.threading.create_worker`` threads, so they can also be run and
tested plainly: ``result = drain(job(...))``.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..weights import weight_map_components


# -- weight map ---------------------------------------------------------------------------
def weight_map_job(
    labels: np.ndarray, *, w0: float, sigma: float, components: bool = False
) -> Generator[tuple[int, int], None, dict[str, np.ndarray]]:
    """The paper's loss weight for ``labels``, one 2D slice at a time.

    Args:
        labels: (..., Y, X) instance labels; leading axes are slices.
        components: also return the terms ``"w_c"``, ``"d1+d2"`` and ``"border"``.

    Yields:
        (done, total) slices.

    Returns:
        ``{"weight": total, ...}``: float32 arrays of the labels' shape. ``"d1+d2"``
        is capped at the distance beyond which the border term is 0 (instead of inf).
    """
    labels = np.asarray(labels)
    planes = labels.reshape(-1, *labels.shape[-2:])
    names = ["weight", "w_c", "d1+d2", "border"] if components else ["weight"]
    out = {name: np.empty(planes.shape, np.float32) for name in names}
    for z, plane in enumerate(planes):
        yield z, len(planes)
        parts = weight_map_components(plane, w0=w0, sigma=sigma)
        out["weight"][z] = parts.total
        if components:
            out["w_c"][z] = parts.class_weight
            out["d1+d2"][z] = np.minimum(parts.d1 + parts.d2, parts.cutoff)
            out["border"][z] = parts.border
    yield len(planes), len(planes)
    return {name: array.reshape(labels.shape) for name, array in out.items()}


# -- segmentation -------------------------------------------------------------------------
def segment_job(
    model: Any,
    image: Any,
    *,
    channel_axis: int | None = None,
    probabilities: bool = False,
    device: str | None = None,
    tta: str = "none",
    uncertainty: bool = False,
) -> Generator[tuple[int, int], None, tuple[np.ndarray, Any, Any]]:
    """Labels (and optionally class probabilities and uncertainty) of ``image``, through
    the one prediction path (:class:`napari_unet.predictor.Predictor`): the settings
    measured for this machine and the model's stored post-processing, so the labels
    equal :func:`napari_unet.inference.segment`'s with or without probabilities.

    Args:
        image: (Y, X) or (Z, Y, X), with a channel axis for multi-channel models;
            numpy, dask or zarr (read tile by tile).
        channel_axis: as in :func:`napari_unet.inference.predict_iter`.
        probabilities: also return the probabilities (computed once, for both).
        tta: test-time augmentation mode (:mod:`napari_unet.tta`).
        uncertainty: also return the TTA copies' disagreement (needs ``tta``).

    Yields:
        (done, total): the measurement on first use, then tiles and labelling blocks.

    Returns:
        (labels, probabilities, uncertainty): int32 labels of the spatial shape,
        float32 (n_classes, *spatial) probabilities and float32 (*spatial)
        uncertainty, each None when not asked for.
    """
    from ..predictor import Predictor

    predictor = yield from Predictor.prepare_iter(model, device=device, tta=tta)
    result = yield from predictor.labels_iter(
        image,
        channel_axis=channel_axis,
        with_probabilities=probabilities,
        with_uncertainty=uncertainty,
    )
    labels, *extras = result if isinstance(result, tuple) else (result,)
    return (
        labels,
        extras.pop(0) if probabilities else None,
        extras.pop(0) if uncertainty else None,
    )


# -- where to annotate next -----------------------------------------------------------------
#: test-time augmentation whose disagreement ranks the suggested regions
SUGGEST_TTA = "d4"


def suggest_job(
    model: Any,
    image: Any,
    *,
    channel_axis: int | None = None,
    annotated: np.ndarray | None = None,
    size: int = 128,
    count: int = 3,
) -> Generator[tuple[int, int], None, tuple[list, np.ndarray]]:
    """The regions of ``image`` where ``model`` is least sure (TTA disagreement),
    outside ``annotated`` (:func:`napari_unet.suggest.suggest_regions`).

    Args:
        image: (Y, X) or (Z, Y, X), with a channel axis for multi-channel models.
        annotated: bool mask of the spatial shape (painted or marked area), or None.
        size: window edge in px; count: how many windows.

    Yields:
        (done, total): the measurement on first use, then tiles.

    Returns:
        (regions, uncertainty): :class:`napari_unet.suggest.Region` s, best first, and
        the float32 uncertainty map of the spatial shape.
    """
    from ..predictor import Predictor
    from ..suggest import suggest_regions

    predictor = yield from Predictor.prepare_iter(model, tta=SUGGEST_TTA)
    _, uncertainty = yield from predictor.probabilities_iter(
        image, channel_axis=channel_axis, with_uncertainty=True
    )
    regions = suggest_regions(uncertainty, size=size, count=count, annotated=annotated)
    return regions, uncertainty


# -- training -----------------------------------------------------------------------------
#: largest edge (px) of the region predicted for the live preview
MAX_PREVIEW_EDGE = 768


@dataclass
class PreviewSource:
    """Where the live preview comes from.

    Attributes:
        data: the image array (numpy, dask or zarr).
        channel_axis: its channel axis, or None.
        spatial_axes: its (Y, X) or (Z, Y, X) axes.
        region: returns the visible part as ``(z, rows, cols)`` (z None for 2D
            images), or None when there is nothing to preview; called from the
            worker thread, so it must only read values the UI thread stored.
    """

    data: Any
    channel_axis: int | None
    spatial_axes: tuple[int, ...]
    region: Callable[[], tuple[int | None, slice, slice] | None]


def train_job(
    images: list[np.ndarray],
    labels: list[np.ndarray],
    masks: list[np.ndarray | None],
    *,
    mode: str,
    settings: Any,
    init_model: Any = None,
    should_stop: Callable[[], bool] | None = None,
    refresh: Callable[[], tuple | None] | None = None,
    preview: PreviewSource | None = None,
) -> Generator[dict[str, Any], None, Any]:
    """:func:`napari_unet.training.train_iter` with a live preview; returns the best model.

    Each ``preview_model`` snapshot the engine yields is replaced by
    ``record["preview"] = (values, origin)``: the snapshot's prediction for the
    region ``preview.region()`` (foreground probability for instance models,
    class ids for semantic ones) and the region's origin ``(z, y, x)``. torch's
    thread count is restored afterwards (``settings.threads`` may lower it to
    leave a core to the UI).
    """
    import torch

    from ..training import train_iter

    threads_before = torch.get_num_threads()
    run = train_iter(
        images, labels, masks=masks, mode=mode, settings=settings, init_model=init_model,
        should_stop=should_stop, refresh=refresh,
    )  # fmt: skip
    try:
        while True:
            try:
                record = next(run)
            except StopIteration as stop:
                return stop.value
            snapshot = record.pop("preview_model", None)
            if snapshot is not None and preview is not None:
                shown = preview_prediction(snapshot, preview)
                if shown is not None:
                    record["preview"] = shown
            yield record
    finally:
        run.close()
        torch.set_num_threads(threads_before)


def preview_prediction(model: Any, source: PreviewSource) -> tuple[np.ndarray, tuple] | None:
    """The model's prediction for the visible region of ``source`` (see :func:`train_job`)."""
    from ..inference import predict

    region = source.region()
    if region is None:
        return None
    z, rows, cols = region
    rows, cols = _clamp(rows), _clamp(cols)
    if rows.stop - rows.start < 2 or cols.stop - cols.start < 2:
        return None
    index: list[Any] = [slice(None)] * len(source.data.shape)
    y_axis, x_axis = source.spatial_axes[-2:]
    index[y_axis], index[x_axis] = rows, cols
    if len(source.spatial_axes) == 3:
        index[source.spatial_axes[0]] = z
    crop = np.asarray(source.data[tuple(index)])
    channel_axis = source.channel_axis
    if (
        channel_axis is not None
        and len(source.spatial_axes) == 3
        and source.spatial_axes[0] < channel_axis
    ):
        channel_axis -= 1  # the z axis was indexed away
    probs = predict(model, crop, channel_axis=channel_axis)
    values = probs[1] if model.info.task == "instance" else probs.argmax(0).astype(np.int32)
    return values, (z, rows.start, cols.start)


def _clamp(span: slice) -> slice:
    """At most MAX_PREVIEW_EDGE px around the centre of ``span``."""
    start, stop = span.start, span.stop
    if stop - start > MAX_PREVIEW_EDGE:
        start = (start + stop - MAX_PREVIEW_EDGE) // 2
        stop = start + MAX_PREVIEW_EDGE
    return slice(start, stop)
