"""The long computations the widgets start, as generators (no Qt, no napari).

Each job yields progress and returns its result; the widgets drain them in
``napari.qt.threading.create_worker`` threads, so they can also be run and
tested plainly: ``result = drain(job(...))``.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import numpy as np

from ..weights import weight_map_components


def drain(job: Generator[Any, Any, Any]) -> Any:
    """Run a job to the end and return its result."""
    while True:
        try:
            next(job)
        except StopIteration as stop:
            return stop.value


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
) -> Generator[tuple[int, int], None, tuple[np.ndarray, np.ndarray | None]]:
    """Labels (and optionally class probabilities) of ``image`` with ``model``.

    Args:
        image: (Y, X) or (Z, Y, X), with a channel axis for multi-channel models;
            numpy, dask or zarr (read tile by tile).
        channel_axis: as in :func:`napari_unet.predict.predict_iter`.
        probabilities: also return the probabilities (computed once, for both).

    Yields:
        (done, total) tiles.

    Returns:
        (labels, probabilities): int32 labels of the spatial shape and float32
        (n_classes, *spatial) probabilities, or None when not asked for.
    """
    from .. import postprocess
    from ..predict import predict_iter, segment_iter

    if not probabilities:
        labels = yield from segment_iter(model, image, channel_axis=channel_axis, device=device)
        return labels, None
    probs = yield from predict_iter(model, image, channel_axis=channel_axis, device=device)
    planes = probs.reshape(probs.shape[0], -1, *probs.shape[-2:])
    labels = np.zeros(planes.shape[1:], np.int32)
    next_id = 0
    for z in range(planes.shape[1]):
        plane = postprocess.labels_from_probabilities(planes[:, z], task=model.info.task)
        if model.info.task == "instance":
            plane[plane > 0] += next_id  # ids stay unique across a stack
            next_id = max(next_id, int(plane.max()))
        labels[z] = plane
    return labels.reshape(probs.shape[1:]), probs
