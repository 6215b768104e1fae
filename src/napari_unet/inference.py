"""Overlap-tile inference: probabilities and label images of any size.

The public functions of the one prediction path, :class:`napari_unet.predictor.Predictor`:
:func:`predict_iter` yields ``(done, total)`` and returns float32 probabilities
``(n_classes, *spatial)``; :func:`segment_iter` returns labels with the model's stored
post-processing. Both accept numpy, dask and zarr images; lazy images are read tile by
tile and ``out=`` writes the result tile by tile (probabilities, semantic class ids) or
block by block (instance labels), so memory is bounded by the tile and block sizes, not
the image. Settings left at None (precision, memory format, tile, batch) are those
measured for this machine (:mod:`napari_unet.hardware`; the first call per network size
measures them, a few seconds, and caches the choice). ``tta`` ("none", "flips",
"d4") averages the predictions of flipped/rotated copies (:mod:`napari_unet.tta`) and
``with_uncertainty`` also returns their disagreement. :func:`as_planes` is the one
channel-axis rule.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any

import numpy as np

from .postprocess import Postprocess
from .progress import drain

Progress = Generator[tuple[int, int], None, Any]


# -- image layout ----------------------------------------------------------------------
#: Lengths of a 3D image's last axis read as channels, not as a stack of thin planes:
#: a 1-channel model refuses such an image unless ``channel_axis`` says otherwise.
AMBIGUOUS_LAST_AXIS = (2, 3, 4)


def as_planes(image, in_channels: int, channel_axis: int | None = None):
    """View ``image`` as ``(planes, C, Y, X)`` without reading it.

    Returns:
        (array, spatial): a numpy view or a dask array of shape (Z, C, Y, X), and the
        image's spatial shape ((Y, X) or (Z, Y, X)) that results keep.

    Channel rule: ``channel_axis`` names the channel axis; without it a model taking C > 1
    channels reads them from the last axis, and a 1-channel model takes a (Y, X) image or
    a (Z, Y, X) stack, but refuses a 3D image whose last axis has 2-4 entries (ambiguous:
    channels or a stack of 2-4 px wide planes).

    Raises:
        ValueError: empty, complex or non-numeric image, wrong or ambiguous channels,
            unsupported ndim, a spatial edge below 2 px (mirror padding needs two pixels).
    """
    if isinstance(image, np.ndarray) or not hasattr(image, "shape"):
        image, xp = np.asarray(image), np
    else:  # dask, zarr or another lazy array: wrap in dask, read nothing yet
        import dask.array as xp

        if not hasattr(image, "dask"):
            image = xp.from_array(image, chunks=getattr(image, "chunks", "auto"))
    shape, dtype = tuple(image.shape), np.dtype(image.dtype)
    if 0 in shape or not shape:
        raise ValueError(f"the image is empty (shape {shape})")
    real = np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)
    if not (real or dtype.kind == "b"):
        raise ValueError(f"the image must hold real numbers, got dtype {dtype}")
    if channel_axis is not None:
        if not -image.ndim <= channel_axis < image.ndim:
            raise ValueError(f"channel_axis {channel_axis} is out of range for shape {shape}")
        image = xp.moveaxis(image, channel_axis, 0)
    elif in_channels > 1:
        if image.ndim < 3 or shape[-1] != in_channels:
            raise ValueError(
                f"this model takes {in_channels} input channels but the image of shape "
                f"{shape} has no last axis of that length; name its channel_axis"
            )
        image = xp.moveaxis(image, -1, 0)
    elif image.ndim == 3 and shape[-1] in AMBIGUOUS_LAST_AXIS:
        raise ValueError(
            f"the image of shape {shape} looks like it has {shape[-1]} channels (RGB or "
            "similar) on its last axis but this model takes 1 input channel; convert it to "
            "grey first (or pass channel_axis for a 1-channel axis)"
        )
    else:
        image = image[None]
    channels, spatial = image.shape[0], tuple(image.shape[1:])
    if channels != in_channels:
        raise ValueError(
            f"this model takes {in_channels} input channel(s), the image has {channels}"
        )
    if len(spatial) not in (2, 3):
        raise ValueError(
            f"expected a 2D image or a stack of 2D planes (plus channels), got shape {shape}"
        )
    if min(spatial[-2:]) < 2:
        raise ValueError(
            f"the image is too small to segment: its spatial shape {spatial} needs at least "
            "2 px per edge (mirror padding reflects about the edge pixel)"
        )
    planes = image[None] if len(spatial) == 2 else xp.moveaxis(image, 1, 0)
    return planes, spatial


# -- the public functions ------------------------------------------------------------------
SETTINGS = ("tile_size", "batch_size", "device", "precision", "channels_last", "tta")


def predict_iter(
    model,
    image,
    *,
    channel_axis: int | None = None,
    out=None,
    with_uncertainty: bool = False,
    on_notice: Callable[[str], None] | None = None,
    **settings,
) -> Progress:
    """Class probabilities of ``image`` by overlap-tile inference.

    Args:
        model: a :class:`~napari_unet.model.UNet` (not modified: a copy runs in eval mode).
        image: (Y, X), (Z|T, Y, X), with channels (RGB last, or ``channel_axis``) when the
            model takes several; numpy, dask or zarr; any real dtype.
        channel_axis: axis of ``image`` holding channels (None: last axis for RGB).
        out: optional array (e.g. zarr) of shape (n_classes, *spatial) written tile by tile.
        with_uncertainty: also return the disagreement of the TTA copies, float32
            (*spatial), 0..0.5 (:func:`napari_unet.tta.combine`); needs ``tta``.
        on_notice: called with a message when settings change (OOM); default warns.
        settings: override what was measured for this machine: ``tile_size`` (input tile
            edge in px, a valid input size), ``batch_size`` (tiles per pass),
            ``device`` ("cpu", "cuda[:N]", "mps"; None: CUDA, then MPS, then CPU),
            ``precision`` ("fp32" exact, "bf16", "fp16"), ``channels_last`` (NHWC),
            ``tta`` (test-time augmentation: "none", "flips" 4x or "d4" 8x the time).

    Yields:
        (done, total): the measurement on first use, then the tiles.

    Returns:
        float32 probabilities (n_classes, *spatial); ``out`` itself when given;
        ``(probabilities, uncertainty)`` with ``with_uncertainty``.
    """
    predictor = yield from _prepare(model, settings, on_notice)
    return (
        yield from predictor.probabilities_iter(
            image, channel_axis=channel_axis, out=out, with_uncertainty=with_uncertainty
        )
    )


def predict(model, image, **kwargs) -> np.ndarray:
    """:func:`predict_iter` without progress: float32 probabilities (n_classes, *spatial)
    (and the uncertainty with ``with_uncertainty``)."""
    return drain(predict_iter(model, image, **kwargs))


def segment_iter(
    model,
    image,
    *,
    min_size: int | None = None,
    expand: int | None = None,
    threshold: float | None = None,
    join_slices: bool = False,
    channel_axis: int | None = None,
    out=None,
    with_uncertainty: bool = False,
    on_notice: Callable[[str], None] | None = None,
    **settings,
) -> Progress:
    """Label image of ``image``'s spatial shape.

    Instance models: connected components of the foreground (probability above
    ``threshold``), objects under ``min_size`` px dropped, grown by ``expand`` px to
    close the background gap the training leaves between touching objects, ids 1..N,
    unique across a stack. ``threshold``, ``min_size`` and ``expand`` None: the values
    stored in the model (:meth:`napari_unet.postprocess.Postprocess.of_model`).
    ``join_slices`` gives objects that overlap in neighbouring slices one id.
    Semantic models: argmax class ids.

    Memory: without ``out`` the foreground mask and the labelling's scratch are numpy
    arrays (about 9 bytes per pixel); with ``out`` (an integer array of the spatial
    shape, e.g. zarr) they are temporary zarr stores and memory is bounded by the tile
    and block sizes. The labels are the same either way.
    ``settings``: as in :func:`predict_iter` (``tta="d4"``: 8 flipped/rotated copies
    averaged). ``with_uncertainty``: also return the copies' disagreement (float32,
    spatial shape, in memory).

    Yields:
        (done, total): the measurement on first use, the tiles, and for instance
        models the labelling's blocks.

    Returns:
        int32 labels of the image's spatial shape (``out`` itself when given), or
        ``(labels, uncertainty)`` with ``with_uncertainty``.
    """
    post = Postprocess.of_model(model.info, threshold=threshold, expand=expand, min_size=min_size)
    predictor = yield from _prepare(model, settings, on_notice)
    return (
        yield from predictor.labels_iter(
            image,
            channel_axis=channel_axis,
            post=post,
            join_slices=join_slices,
            out=out,
            with_uncertainty=with_uncertainty,
        )
    )


def segment(model, image, **kwargs) -> np.ndarray:
    """:func:`segment_iter` without progress: integer labels of the image's spatial shape
    (and the uncertainty with ``with_uncertainty``)."""
    return drain(segment_iter(model, image, **kwargs))


def _prepare(model, settings: dict, on_notice):
    from .predictor import Predictor

    unknown = set(settings) - set(SETTINGS)
    if unknown:
        raise TypeError(f"unexpected keyword arguments: {sorted(unknown)}")
    return Predictor.prepare_iter(model, on_notice=on_notice, **settings)
