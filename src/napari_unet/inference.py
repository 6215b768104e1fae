"""Overlap-tile inference (torch engine): probabilities and label images of any size.

:func:`predict_iter` normalises each 2D plane with the model's stored percentiles
(computed once per plane), cuts it into mirrored overlap tiles
(:mod:`napari_unet.tiling`), runs the network on batches of tiles and stitches the
softmax outputs; it yields ``(done, total)`` tiles and returns float32
probabilities ``(n_classes, *spatial)``. :func:`segment_iter` turns them into labels
(:mod:`napari_unet.postprocess`, or block by block with :mod:`napari_unet.chunked_labels`).
Both accept numpy, dask and zarr images; lazy images are read tile by tile and ``out=``
writes the result tile by tile (probabilities, semantic class ids) or block by block
(instance labels), so memory is bounded by the tile and block sizes, not the image.

Defaults per device (tile size, precision, memory format, batch) were chosen by
measurement: see docs/inference.md and benchmarks/bench_inference.py.
"""

from __future__ import annotations

import contextlib
import copy
import tempfile
import warnings
from collections.abc import Callable, Generator
from dataclasses import dataclass

import numpy as np
import torch

from . import chunked_labels, postprocess
from .devices import choose_device, empty_cache
from .normalization import normalize, percentile_range
from .progress import drain
from .tiling import auto_tile_size, read_tile, tile_layout

Progress = Generator[tuple[int, int], None, np.ndarray]

LABEL_BLOCK_SIZE = chunked_labels.DEFAULT_BLOCK_SIZE  # px, blocks labelled with ``out=``

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class DeviceDefaults:
    """Settings used when the caller leaves them at None (measured, docs/inference.md)."""

    max_tile: int  # largest automatic input tile edge, px
    precision: str  # "fp32", "bf16" or "fp16"
    channels_last: bool
    batch_size: int


DEFAULTS = {
    "cpu": DeviceDefaults(max_tile=1212, precision="bf16", channels_last=True, batch_size=1),
    "cuda": DeviceDefaults(max_tile=1052, precision="bf16", channels_last=True, batch_size=4),
    "mps": DeviceDefaults(max_tile=572, precision="fp16", channels_last=False, batch_size=1),
}


def _notice(message: str) -> None:
    warnings.warn(message, RuntimeWarning, stacklevel=3)


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


@dataclass
class _Run:
    """Resolved settings of one inference run."""

    device: torch.device
    precision: str
    memory_format: torch.memory_format
    batch: int
    tile: int


def _resolve(model, plane_shape, tile_size, batch_size, device, precision, channels_last) -> _Run:
    run_device = choose_device(device)
    defaults = DEFAULTS.get(run_device.type, DEFAULTS["cpu"])
    precision = precision or defaults.precision
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    batch = defaults.batch_size if batch_size is None else int(batch_size)
    if batch < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    config = model.config
    tile = int(tile_size) if tile_size else auto_tile_size(plane_shape, config, defaults.max_tile)
    tile_layout(plane_shape, tile, config)  # validates tile_size before any work
    use_cl = defaults.channels_last if channels_last is None else channels_last
    memory_format = torch.channels_last if use_cl else torch.contiguous_format
    return _Run(run_device, precision, memory_format, batch, tile)


# -- engine ----------------------------------------------------------------------------
def predict_iter(
    model: torch.nn.Module,
    image,
    *,
    tile_size: int | None = None,
    batch_size: int | None = None,
    device: str | torch.device | None = None,
    channel_axis: int | None = None,
    precision: str | None = None,
    channels_last: bool | None = None,
    out=None,
    on_notice: Callable[[str], None] | None = None,
) -> Progress:
    """Class probabilities of ``image`` by overlap-tile inference.

    Args:
        model: a :class:`~napari_unet.model.UNet` (not modified: a copy runs in eval mode).
        image: (Y, X), (Z|T, Y, X), with channels (RGB last, or ``channel_axis``) when the
            model takes several; numpy, dask or zarr; any real dtype.
        tile_size: input tile edge in px (a valid input size, e.g. 572); None picks the
            one computing the fewest pixels up to the device's maximum.
        batch_size: tiles per forward pass (None: device default).
        device: "cpu", "cuda[:N]", "mps" or None (CUDA, then MPS, then CPU).
        channel_axis: axis of ``image`` holding channels (None: last axis for RGB).
        precision: "fp32", "bf16" or "fp16" autocast (None: device default; fp32 is exact).
        channels_last: NHWC memory format (None: device default).
        out: optional array (e.g. zarr) of shape (n_classes, *spatial) written tile by tile.
        on_notice: called with a message when settings change (OOM); default warns.

    Yields:
        (done, total) tiles.

    Returns:
        float32 probabilities (n_classes, *spatial); ``out`` itself when given.
    """
    planes, spatial = as_planes(image, model.config.in_channels, channel_axis)
    expected = (model.config.n_classes, *spatial)
    if out is not None and tuple(out.shape) != expected:
        raise ValueError(f"out has shape {tuple(out.shape)}, expected {expected}")
    run = _resolve(model, spatial[-2:], tile_size, batch_size, device, precision, channels_last)
    result = np.empty(expected, dtype=np.float32) if out is None else out

    def write(z, tile, probs):
        where = (
            (z, tile.out_rows, tile.out_cols)
            if len(spatial) == 3
            else (tile.out_rows, tile.out_cols)
        )
        result[(slice(None), *where)] = probs

    yield from _tiled_inference(model, planes, run, write, on_notice or _notice)
    return result


def _tiled_inference(
    model, planes, run: _Run, write, notice, plane_done=None, plane_steps=0, final_steps=0
):
    """Run the network over every tile of every plane; yields (done, total) steps.

    ``write(z, tile, probs)`` receives each output tile's probabilities (n_classes, h, w)
    cropped to the image; ``plane_done(z)`` is called after each plane and may return a
    generator of its own (done, plane_steps) progress, counted after the plane's tiles.
    ``final_steps`` are left in the total for the caller's work after the last plane.
    """
    config = model.config
    check_all = isinstance(planes, np.ndarray) and np.issubdtype(planes.dtype, np.floating)
    if check_all and not np.isfinite(planes).all():
        raise ValueError("the image contains NaN or infinite pixels")
    net = copy.deepcopy(model).eval().to(run.device, memory_format=run.memory_format)
    autocast = (
        torch.autocast(run.device.type, dtype=PRECISIONS[run.precision])
        if run.precision != "fp32"
        else contextlib.nullcontext()
    )
    if run.device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    low, high = model.info.normalization["low"], model.info.normalization["high"]
    layout = tile_layout(planes.shape[-2:], run.tile, config)
    done, total = 0, (len(layout) + plane_steps) * len(planes) + final_steps
    yield done, total
    try:
        for z in range(len(planes)):
            plane = planes[z]
            lo_hi = percentile_range(plane, low, high)
            if not np.isfinite(np.concatenate(lo_hi)).all():
                raise ValueError("the image contains NaN or infinite pixels")
            plane_start = done
            while True:  # repeated only after running out of memory
                try:
                    for tiles in _batches(layout, run.batch):
                        probs = _forward(net, plane, tiles, lo_hi, run, autocast, not check_all)
                        for tile, p in zip(tiles, probs):
                            write(z, tile, p[:, tile.crop_rows, tile.crop_cols])
                        done += len(tiles)
                        yield done, total
                    break
                except torch.OutOfMemoryError:
                    empty_cache(run.device)
                    layout = _shrink_after_oom(run, layout, config, notice)
                    done = plane_start
                    remaining = (len(layout) + plane_steps) * (len(planes) - z)
                    total = plane_start + remaining + final_steps
            if plane_done is not None:
                tiles_done = done
                for step, _ in plane_done(z) or ():
                    if step > 0:
                        done = tiles_done + step
                        yield done, total
    finally:
        del net
        empty_cache(run.device)


def _batches(layout, batch: int):
    tiles = list(layout)
    for start in range(0, len(tiles), batch):
        yield tiles[start : start + batch]


def _forward(net, plane, tiles, lo_hi, run: _Run, autocast, check_finite: bool) -> np.ndarray:
    """Normalised input tiles -> softmax probabilities (B, n_classes, h, w) as numpy."""
    batch = np.stack([normalize(read_tile(plane, t.rows, t.cols), lo_hi=lo_hi) for t in tiles])
    if check_finite and not np.isfinite(batch).all():
        raise ValueError("the image contains NaN or infinite pixels")
    x = torch.from_numpy(batch).to(run.device).contiguous(memory_format=run.memory_format)
    with torch.inference_mode(), autocast:
        logits = net(x)
    return torch.softmax(logits.float(), dim=1).cpu().numpy()


def _shrink_after_oom(run: _Run, layout, config, notice):
    """Halve the batch, else the output tile; returns the layout to restart the plane with."""
    if run.batch > 1:
        run.batch //= 2
        notice(f"out of memory: continuing with {run.batch} tile(s) per batch")
        return layout
    smallest = config.input_size_for_output(config.pool_factor)
    tile = max(layout.tile_shape)
    half = max(smallest, config.input_size_for_output(max(1, config.output_size(tile) // 2)))
    if half >= tile:
        raise MemoryError(
            f"out of memory even with one {tile} px tile per batch; "
            "use a smaller tile_size or another device"
        )
    run.tile = half
    notice(f"out of memory: continuing with {half} px tiles")
    return tile_layout((layout.y.length, layout.x.length), half, config)


def predict(model, image, **kwargs) -> np.ndarray:
    """:func:`predict_iter` without progress: float32 probabilities (n_classes, *spatial)."""
    return drain(predict_iter(model, image, **kwargs))


def segment_iter(
    model,
    image,
    *,
    min_size: int = postprocess.DEFAULT_MIN_SIZE,
    expand: int | None = None,
    threshold: float | None = None,
    join_slices: bool = False,
    channel_axis: int | None = None,
    out=None,
    on_notice: Callable[[str], None] | None = None,
    **settings,
) -> Progress:
    """Label image of ``image``'s spatial shape.

    Instance models: connected components of the foreground (probability above
    ``threshold``), objects under ``min_size`` px dropped, grown by ``expand`` px to
    close the background gap the training leaves between touching objects, ids 1..N,
    unique across a stack. ``threshold`` and ``expand`` None: the values training
    chose on validation data (``model.info.postprocess``), else 0.5 and the model's
    training ``gap`` (else 1)
    (``join_slices`` gives objects that overlap in neighbouring slices one id).
    Semantic models: argmax class ids.

    Memory: each tile's class ids go straight into the result (semantic), or its
    foreground into a mask that :mod:`napari_unet.chunked_labels` labels block by
    block (instance). Without ``out`` the mask and the result are numpy arrays (about
    9 bytes per pixel of the image with the labelling's scratch). With ``out`` (an
    integer array of the spatial shape, e.g. zarr) the mask and scratch are temporary
    zarr stores and memory is bounded by the tile and block sizes, not the plane; the
    labels are the same either way.
    ``settings``: tile_size, batch_size, device, precision, channels_last as in
    :func:`predict_iter`.

    Yields:
        (done, total) steps: the tiles, and for instance models also the labelling's
        blocks (:func:`napari_unet.chunked_labels.label_steps` per plane).

    Returns:
        int32 labels of the image's spatial shape (``out`` itself when given).
    """
    planes, spatial = as_planes(image, model.config.in_channels, channel_axis)
    if out is not None and tuple(out.shape) != spatial:
        raise ValueError(f"out has shape {tuple(out.shape)}, expected {spatial}")
    run = _resolve(model, spatial[-2:], **_settings(settings))
    if expand is None:
        expand = default_expand(model)
    if threshold is None:
        threshold = default_threshold(model)
    if not 0 < threshold < 1:
        raise ValueError(f"threshold must lie between 0 and 1, got {threshold}")
    post = {"min_size": min_size, "expand": expand, "threshold": threshold}
    notice = on_notice or _notice
    join = join_slices and model.info.task == "instance" and len(spatial) == 3
    if out is None:
        out = np.zeros(spatial, dtype=np.int32)
    return (yield from _segment_to(out, model, planes, spatial, run, notice, post, join))


def _segment_to(out, model, planes, spatial, run, notice, post: dict, join: bool):
    """Tile by tile into ``out`` (semantic) or a foreground mask that is then labelled
    block by block (instance). For a numpy ``out`` the mask and the labelling's scratch
    are numpy arrays too; otherwise temporary zarr stores, so that memory is bounded by
    tile and block, not plane."""
    plane_shape = spatial[-2:]

    def target(z):
        return chunked_labels.PlaneView(out, z) if len(spatial) == 3 else out

    if model.info.task == "semantic":

        def write_classes(z, tile, tile_probs):
            target(z)[tile.out_rows, tile.out_cols] = np.argmax(tile_probs, axis=0)

        yield from _tiled_inference(model, planes, run, write_classes, notice)
        return out

    next_id = 0
    in_memory = isinstance(out, np.ndarray)
    with tempfile.TemporaryDirectory(prefix="napari-unet-foreground-") as folder:
        if in_memory:
            foreground = np.zeros(plane_shape, dtype=bool)
            id_dtype = np.int32 if np.prod(plane_shape) < 2**31 else np.int64
            scratch = np.zeros(plane_shape, dtype=id_dtype)
        else:
            import zarr

            chunks = tuple(min(LABEL_BLOCK_SIZE, edge) for edge in plane_shape)
            foreground = zarr.create_array(
                store=folder, shape=plane_shape, chunks=chunks, dtype=bool, fill_value=False
            )
            scratch = None  # chunked_labels makes a temporary zarr store

        def write_foreground(z, tile, tile_probs):
            foreground[tile.out_rows, tile.out_cols] = tile_probs[1] > post["threshold"]

        def label_plane(z):
            nonlocal next_id
            next_id += yield from chunked_labels.instances_from_foreground_iter(
                foreground,
                target(z),
                min_size=post["min_size"],
                expand=post["expand"],
                block_size=LABEL_BLOCK_SIZE,
                offset=next_id,
                scratch=scratch,
            )

        steps = chunked_labels.label_steps(plane_shape, LABEL_BLOCK_SIZE)
        join_steps = chunked_labels.join_steps(spatial, LABEL_BLOCK_SIZE) if join else 0
        done, total = yield from _relay(
            _tiled_inference(
                model, planes, run, write_foreground, notice, label_plane, steps, join_steps
            )
        )
    if join:
        for step, _ in chunked_labels.join_slices_iter(out, block_size=LABEL_BLOCK_SIZE):
            if step > 0:
                yield done + step, total
    return out


def _relay(progress):
    """Yield from ``progress``; return the last (done, total) it yielded."""
    last = (0, 0)
    for last in progress:
        yield last
    return last


def default_expand(model) -> int:
    """Px objects grow after labelling: chosen on validation by training, else the
    ``gap`` the model was trained with, else 1."""
    info = model.info
    return int(
        info.postprocess.get("expand", info.training.get("gap", postprocess.DEFAULT_EXPAND))
    )


def default_threshold(model) -> float:
    """Foreground probability threshold: chosen on validation by training, else 0.5."""
    return float(model.info.postprocess.get("threshold", postprocess.DEFAULT_THRESHOLD))


def _settings(settings: dict) -> dict:
    known = ("tile_size", "batch_size", "device", "precision", "channels_last")
    unknown = set(settings) - set(known)
    if unknown:
        raise TypeError(f"unexpected keyword arguments: {sorted(unknown)}")
    return {name: settings.get(name) for name in known}


def segment(model, image, **kwargs) -> np.ndarray:
    """:func:`segment_iter` without progress: integer labels of the image's spatial shape."""
    return drain(segment_iter(model, image, **kwargs))
