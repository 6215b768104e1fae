"""The long computations the widgets start, as generators (no Qt, no napari).

Each job yields progress and returns its result; the widgets drain them in
``napari.qt.threading.create_worker`` threads, so they can also be run and
tested plainly: ``result = drain(job(...))``.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from ..train_record import StepRecord
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


# -- bioimage.io export ------------------------------------------------------------------
def export_job(
    model: Any, out: str, *, source: str, image: np.ndarray | None = None
) -> Generator[tuple[int, int], None, str]:
    """Write ``model`` as a bioimage.io package (zip) at ``out``, replacing it.

    ``source`` says where the model came from (the package's description); ``image``
    (Y, X), when given, makes its test tensors and cover. Yields (0, 1) then (1, 1)
    (the export is one step: a bar without steps shows that it is busy).
    Returns ``out``. Raises ValueError with one sentence when the bioimageio extra is
    missing or the package is refused.
    """
    import getpass
    from pathlib import Path

    from ..bioimageio_export import export_bioimageio, require_extra

    require_extra()
    yield 0, 1
    kind = "instance" if model.info.task == "instance" else "semantic"
    export_bioimageio(
        model, out,
        name=f"napari-unet {Path(out).name.split('.')[0]}",
        description=f"U-Net ({kind} segmentation) made with napari-unet: {source}"[:1000],
        authors=[getpass.getuser() or "napari-unet user"],
        image=image, overwrite=True,
    )  # fmt: skip
    yield 1, 1
    return out


# -- segmentation -------------------------------------------------------------------------
def segment_job(
    model: Any,
    image: Any,
    *,
    channel_axis: int | None = None,
    probabilities: bool = False,
    device: str | None = None,
    out: Any = None,
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
        out: an int32 array-like of the spatial shape (e.g. :func:`temporary_labels`)
            to write the labels into block by block; None: a numpy array.
        tta: test-time augmentation mode (:mod:`napari_unet.tta`).
        uncertainty: also return the TTA copies' disagreement (needs ``tta``).

    Yields:
        (done, total): the measurement on first use, then tiles and labelling blocks.

    Returns:
        (labels, probabilities, uncertainty): int32 labels of the spatial shape (``out``
        when given), float32 (n_classes, *spatial) probabilities and float32 (*spatial)
        uncertainty, each None when not asked for.
    """
    from ..predictor import Predictor

    predictor = yield from Predictor.prepare_iter(model, device=device, tta=tta)
    result = yield from predictor.labels_iter(
        image,
        channel_axis=channel_axis,
        with_probabilities=probabilities,
        with_uncertainty=uncertainty,
        out=out,
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


def temporary_labels(shape: tuple[int, ...]) -> Any:
    """An empty int32 zarr array of ``shape`` in a temporary folder removed when Python
    exits: the ``out`` of :func:`segment_job` for images larger than memory (labels are
    then computed and kept block by block)."""
    import atexit
    import shutil
    import tempfile

    import zarr

    from ..chunked_labels import DEFAULT_BLOCK_SIZE as LABEL_BLOCK_SIZE

    folder = tempfile.mkdtemp(prefix="napari-unet-labels-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    chunks = (*(1,) * (len(shape) - 2), *(min(LABEL_BLOCK_SIZE, n) for n in shape[-2:]))
    return zarr.create_array(store=folder, shape=shape, chunks=chunks, dtype=np.int32,
                             fill_value=0)  # fmt: skip


def segment_ome_zarr_job(
    model: Any, image: str, *, name: str, overwrite: bool, tta: str = "none"
) -> Generator[tuple[int, int] | str, None, Any]:
    """Segment the OME-Zarr image at ``image`` block by block in this process
    (:func:`napari_unet.distributed.segment_dataset_iter`) into its own ``labels/<name>``;
    memory is bounded by the block size. The labels equal
    :func:`napari_unet.inference.segment`'s on the whole image.

    Args:
        model: the in-memory model (saved to a temporary file the blocks load).
        overwrite: replace labels of that name (the caller asked the user); False
            continues unfinished labels of the same model and settings.
        tta: test-time augmentation mode (:data:`napari_unet.tta.MODES`).

    Yields:
        (done, total) block tasks, and one-line notes (str) such as "resuming: 3 of 8
        bands already done".

    Returns:
        The :class:`~napari_unet.ngff.LabelTarget` written.
    """
    import tempfile
    from pathlib import Path

    from ..distributed import OtherRun, segment_dataset_iter
    from ..model_io import save_model

    with tempfile.TemporaryDirectory(prefix="napari-unet-model-") as folder:
        path = save_model(model, Path(folder) / "model.safetensors")
        notes: list[str] = []
        run = segment_dataset_iter(
            image, path, image, name=name, cluster="none", overwrite=overwrite, tta=tta,
            on_message=notes.append,
        )  # fmt: skip
        try:
            return (yield from _with_notes(run, notes))
        except OtherRun as error:  # the user chose to continue unfinished labels
            raise ValueError(
                f"{error.where} was begun with another model or other settings "
                f"({', '.join(error.changed)}): segment again and choose Replace, or "
                "another label name"
            ) from None


def _with_notes(run: Generator, notes: list[str]) -> Generator:
    """``run``'s items, each preceded by the notes ``run`` appended to ``notes`` since the
    last one; returns ``run``'s value (closing ``run`` when this is closed)."""
    try:
        while True:
            try:
                item = next(run)
            except StopIteration as stop:
                return stop.value
            while notes:
                yield notes.pop(0)
            yield item
    finally:
        run.close()


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


@dataclass(frozen=True)
class ShownStep(StepRecord):
    """A training step as the Train widget shows it: the engine's record without its
    model snapshot (``preview_model`` None), and ``preview = (values, origin)``, the
    snapshot's prediction for the visible region (None when there is none)."""

    preview: tuple[np.ndarray, tuple[int | None, int, int]] | None = None
    recipe: str | None = None

    @classmethod
    def of(cls, record: StepRecord, preview: tuple | None, recipe: str | None = None) -> ShownStep:
        values = {f.name: getattr(record, f.name) for f in fields(StepRecord)}
        return cls(**{**values, "preview_model": None}, preview=preview, recipe=recipe)


def train_job(
    images: list[np.ndarray],
    labels: list[np.ndarray],
    masks: list[np.ndarray | None],
    *,
    mode: str,
    settings: Any,
    init_model: Any = None,
    choose_recipe: bool = False,
    builtin_allowed: bool = False,
    should_stop: Callable[[], bool] | None = None,
    refresh: Callable[[], tuple | None] | None = None,
    preview: PreviewSource | None = None,
) -> Generator[ShownStep, None, Any]:
    """:func:`napari_unet.training.train_iter` with a live preview; returns the best model.

    Each :class:`StepRecord` the engine yields becomes a :class:`ShownStep` whose
    ``preview_model`` snapshot is replaced by ``preview = (values, origin)``: the
    snapshot's prediction for the region ``preview.region()`` (foreground probability
    for instance models, class ids for semantic ones) and the region's origin
    ``(z, y, x)``. torch's
    thread count is restored afterwards (``settings.threads`` may lower it to
    leave a core to the UI).

    ``choose_recipe``: ``settings`` is the base that
    :func:`napari_unet.train_recipe.choose_settings` adapts to the annotation and the
    machine; the first step carries the choice's summary (``recipe``) and the model
    keeps its reasons (``info.training["recipe"]``). With ``builtin_allowed`` (and no
    ``init_model``) the recipe may start from a built-in model instead of a new network.
    """
    import torch

    from ..training import train_iter

    threads_before = torch.get_num_threads()
    recipe = None
    if choose_recipe:
        from ..train_recipe import choose_settings, in_channels_hint

        settings, recipe = choose_settings(
            labels, masks, base=settings, mode=mode, new_network=init_model is None,
            builtin_allowed=builtin_allowed, in_channels=in_channels_hint(images, labels),
        )  # fmt: skip
        if recipe.start_from is not None:
            init_model = recipe.start_from  # a built-in name: train_iter loads it
    run = train_iter(
        images, labels, masks=masks, mode=mode, settings=settings, init_model=init_model,
        should_stop=should_stop, refresh=refresh,
    )  # fmt: skip
    try:
        while True:
            try:
                record = next(run)
            except StopIteration as stop:
                if recipe is not None:
                    stop.value.info.training["recipe"] = recipe.reasons
                return stop.value
            snapshot, shown = record.preview_model, None
            if snapshot is not None and preview is not None:
                shown = preview_prediction(snapshot, preview)
            summary = recipe.summary() if recipe is not None and record.iteration == 1 else None
            yield ShownStep.of(record, shown, summary)
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
