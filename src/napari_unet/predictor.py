"""The one prediction path: a :class:`Predictor` owns how a model runs and what it returns.

A Predictor holds an eval-mode copy of the model on its device, the run settings
chosen for this machine (:mod:`napari_unet.hardware`: precision, memory format,
largest tile, batch), and the model's post-processing
(:class:`~napari_unet.postprocess.Postprocess`). Everything that predicts goes
through it: :func:`napari_unet.inference.predict` / ``segment``, the CLI, the
Segment widget (with and without probabilities), the live preview, and training's
validation and tuning.

Images are cut into mirrored overlap tiles (:mod:`napari_unet.tiling`); each 2D
plane is normalised with the model's stored percentiles (computed once per plane)
unless it is already normalised. Lazy images (dask, zarr) are read tile by tile and
results can be written tile by tile (probabilities, semantic ids) or block by block
(instance labels, :mod:`napari_unet.chunked_labels`) into ``out``.

Test-time augmentation (``tta``, :mod:`napari_unet.tta`) runs every tile once per
flip/rotation, maps each output back and averages the probabilities; the copies'
disagreement is the optional uncertainty map (``with_uncertainty``).
"""

from __future__ import annotations

import copy
import dataclasses
import tempfile
import warnings
from collections.abc import Callable, Generator
from typing import Any

import numpy as np
import torch

from . import chunked_labels, hardware
from . import tta as _tta
from .devices import choose_device, empty_cache
from .hardware import RunSettings
from .normalization import normalize, percentile_range
from .postprocess import Postprocess, labels_from_probabilities
from .tiling import auto_tile_size, read_tile, tile_layout

Progress = Generator[tuple[int, int], None, Any]
LABEL_BLOCK_SIZE = chunked_labels.DEFAULT_BLOCK_SIZE  # px, blocks labelled with ``out=``


def _warn(message: str) -> None:
    warnings.warn(message, RuntimeWarning, stacklevel=3)


class Predictor:
    """A model ready to predict: device, run settings, tiles and post-processing.

    Build one with :meth:`prepare_iter` (measures this machine on first use, with
    progress) or :meth:`prepare`; then call :meth:`probabilities_iter`,
    :meth:`labels_iter` or :meth:`to_labels` as often as needed.

    Attributes:
        model: the caller's model (untouched); ``net`` is the eval-mode copy that runs.
        device: torch device.
        settings: :class:`~napari_unet.hardware.RunSettings` in use.
        tile_size: fixed input tile edge, or None (the cheapest tile up to
            ``settings.max_tile`` for each image).
        choice: the hardware measurement the settings came from (None when all given).
        on_notice: called with a message when settings change (out of memory).
        tta: test-time augmentation mode (:data:`napari_unet.tta.MODES`), ``"none"``
            by default; ``transforms`` are its flips/rotations.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        device: torch.device,
        settings: RunSettings,
        *,
        tile_size: int | None = None,
        choice: hardware.Choice | None = None,
        on_notice: Callable[[str], None] | None = None,
        tta: str = "none",
    ) -> None:
        self.model, self.device, self.settings = model, device, settings
        self.tile_size, self.choice = tile_size, choice
        self.tta, self.transforms = tta, _tta.transforms(tta)
        self.on_notice = on_notice or _warn
        self.net = copy.deepcopy(model).eval().to(device, memory_format=settings.memory_format)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True

    # -- construction ------------------------------------------------------------------
    @classmethod
    def prepare_iter(
        cls,
        model: torch.nn.Module,
        *,
        device: str | torch.device | None = None,
        precision: str | None = None,
        channels_last: bool | None = None,
        tile_size: int | None = None,
        batch_size: int | None = None,
        remeasure: bool = False,
        on_notice: Callable[[str], None] | None = None,
        tta: str = "none",
    ) -> Generator[tuple[int, int], None, Predictor]:
        """A Predictor for ``model``; settings left at None come from
        :func:`napari_unet.hardware.choose_iter` (cached; measured once per machine
        and network size, yielding its progress).

        ``tta``: test-time augmentation mode, ``"none"``, ``"flips"`` or ``"d4"``.

        Raises:
            ValueError: unknown device, precision, tta, batch size or an invalid tile size.
        """
        _tta.check_mode(tta)
        run_device = choose_device(device)
        given = {
            "precision": precision,
            "channels_last": channels_last,
            "batch_size": None if batch_size is None else int(batch_size),
        }
        RunSettings(**{k: v for k, v in given.items() if v is not None})  # validates early
        if tile_size is not None and not model.config.is_valid_input(int(tile_size)):
            raise ValueError(f"tile size: {model.config._invalid_message(tile_size)}")
        choice = None
        if None in given.values() or tile_size is None or remeasure:
            choice = yield from hardware.choose_iter(model, run_device, remeasure=remeasure)
        base = choice.settings if choice is not None else RunSettings()
        overrides = {k: v for k, v in given.items() if v is not None}
        if tile_size is not None:
            overrides["max_tile"] = int(tile_size)
        settings = dataclasses.replace(base, **overrides)
        return cls(
            model,
            run_device,
            settings,
            tile_size=None if tile_size is None else int(tile_size),
            choice=choice,
            on_notice=on_notice,
            tta=tta,
        )

    @classmethod
    def prepare(cls, model: torch.nn.Module, **kwargs: Any) -> Predictor:
        """:meth:`prepare_iter` without progress."""
        from .progress import drain

        return drain(cls.prepare_iter(model, **kwargs))

    # -- probabilities -----------------------------------------------------------------
    def tile_for(self, plane_shape: tuple[int, int]) -> int:
        """Input tile edge for a (Y, X) plane (validated against the plane)."""
        config = self.model.config
        tile = self.tile_size or auto_tile_size(plane_shape, config, self.settings.max_tile)
        tile_layout(plane_shape, tile, config)  # raises for a tile the plane cannot use
        return tile

    def probabilities_iter(
        self,
        image,
        *,
        channel_axis: int | None = None,
        out=None,
        normalized: bool = False,
        with_uncertainty: bool = False,
    ) -> Progress:
        """float32 class probabilities (n_classes, *spatial) of ``image``.

        Args:
            image: see :func:`napari_unet.inference.as_planes`.
            out: optional array (e.g. zarr) of that shape, written tile by tile.
            normalized: the image is already normalised (training's planes): skip
                the percentile normalisation.
            with_uncertainty: also return the TTA copies' disagreement
                (:func:`napari_unet.tta.combine`), float32 (*spatial) in memory.

        Yields:
            (done, total) tiles.

        Returns:
            the probabilities (``out`` when given), or ``(probabilities, uncertainty)``.
        """
        from .inference import as_planes

        planes, spatial = as_planes(image, self.model.config.in_channels, channel_axis)
        expected = (self.model.config.n_classes, *spatial)
        if out is not None and tuple(out.shape) != expected:
            raise ValueError(f"out has shape {tuple(out.shape)}, expected {expected}")
        uncertainty = self._uncertainty_array(spatial) if with_uncertainty else None
        tile = self.tile_for(spatial[-2:])
        result = np.empty(expected, dtype=np.float32) if out is None else out

        def write(z, where, probs, spread):
            result[(slice(None), *_at(z, where, spatial))] = probs
            if uncertainty is not None:
                uncertainty[_at(z, where, spatial)] = spread

        yield from self._tiles(planes, tile, write, normalized=normalized)
        return (result, uncertainty) if with_uncertainty else result

    def _uncertainty_array(self, spatial: tuple[int, ...]) -> np.ndarray:
        """A float32 array of the spatial shape for the uncertainty (ValueError without TTA)."""
        if len(self.transforms) == 1:
            raise ValueError(
                "an uncertainty map needs test-time augmentation: use tta='flips' or 'd4'"
            )
        return np.zeros(spatial, dtype=np.float32)

    def probabilities(self, image, **kwargs: Any) -> np.ndarray:
        """:meth:`probabilities_iter` without progress."""
        from .progress import drain

        return drain(self.probabilities_iter(image, **kwargs))

    # -- labels ------------------------------------------------------------------------
    def postprocess(self, **overrides: Any) -> Postprocess:
        """The model's stored post-processing, with ``overrides`` (None keeps the stored)."""
        return Postprocess.of_model(self.model.info, **overrides)

    def to_labels(self, probs: np.ndarray, post: Postprocess | None = None) -> np.ndarray:
        """int32 labels (Y, X) of in-memory probabilities (n_classes, Y, X) of one plane:
        class ids for semantic models, objects 1..N with ``post`` (default: the model's
        stored settings) for instance models."""
        post = post or self.postprocess()
        return labels_from_probabilities(
            probs,
            task=self.model.info.task,
            min_size=post.min_size,
            expand=post.expand,
            threshold=post.threshold,
        )

    def labels_iter(
        self,
        image,
        *,
        channel_axis: int | None = None,
        post: Postprocess | None = None,
        join_slices: bool = False,
        out=None,
        with_probabilities: bool = False,
        with_uncertainty: bool = False,
    ) -> Progress:
        """Labels of ``image``'s spatial shape (see :func:`napari_unet.inference.segment_iter`).

        Args:
            post: instance post-processing (default: the model's stored settings).
            out: integer array of the spatial shape (e.g. zarr) written block by block.
            with_probabilities: also keep the probabilities, computed in the same pass.
            with_uncertainty: also keep the TTA copies' disagreement, float32
                (*spatial) in memory (:func:`napari_unet.tta.combine`; needs ``tta``).

        Yields:
            (done, total): the tiles, then (instance models) the labelling's blocks.

        Returns:
            int32 labels (``out`` when given), or a tuple of the labels followed by
            each extra asked for, in this order: probabilities, uncertainty.
        """
        from .inference import as_planes

        post = post or self.postprocess()
        planes, spatial = as_planes(image, self.model.config.in_channels, channel_axis)
        if out is not None and tuple(out.shape) != spatial:
            raise ValueError(f"out has shape {tuple(out.shape)}, expected {spatial}")
        tile = self.tile_for(spatial[-2:])
        probs = uncertainty = None
        if with_uncertainty:
            uncertainty = self._uncertainty_array(spatial)
        if with_probabilities:
            probs = np.empty((self.model.config.n_classes, *spatial), dtype=np.float32)
        if out is None:
            out = np.zeros(spatial, dtype=np.int32)
        join = join_slices and self.model.info.task == "instance" and len(spatial) == 3
        labelling = _Labelling(self, planes, spatial, tile, post, out, probs, uncertainty)
        yield from labelling.run(join)
        asked = ((probs, with_probabilities), (uncertainty, with_uncertainty))
        extras = [array for array, wanted in asked if wanted]
        return (out, *extras) if extras else out

    # -- the engine --------------------------------------------------------------------
    def _tiles(self, planes, tile, write, *, normalized=False, plane_done=None, plane_steps=0,
               final_steps=0):  # fmt: skip
        """Run the network over every tile of every plane; yields (done, total) steps.

        ``write(z, (out_rows, out_cols), probs, spread)`` receives each output tile's
        probabilities (n_classes, h, w) and TTA uncertainty (h, w) (None without TTA)
        cropped to the image; ``plane_done(z)`` may
        return a generator of its own (step, plane_steps) progress, counted after the
        plane's tiles; ``final_steps`` are left in the total for the caller.
        """
        config = self.model.config
        check_all = isinstance(planes, np.ndarray) and np.issubdtype(planes.dtype, np.floating)
        if check_all and not np.isfinite(planes).all():
            raise ValueError("the image contains NaN or infinite pixels")
        low, high = self.model.info.normalization["low"], self.model.info.normalization["high"]
        layout = tile_layout(planes.shape[-2:], tile, config)
        batch = self.settings.batch_size
        done, total = 0, (len(layout) + plane_steps) * len(planes) + final_steps
        yield done, total
        try:
            for z in range(len(planes)):
                plane = planes[z]
                lo_hi = None if normalized else percentile_range(plane, low, high)
                if lo_hi is not None and not np.isfinite(np.concatenate(lo_hi)).all():
                    raise ValueError("the image contains NaN or infinite pixels")
                plane_start = done
                while True:  # repeated only after running out of memory
                    try:
                        for tiles in _batches(layout, batch):
                            probs, spread = self._forward(plane, tiles, lo_hi, not check_all)
                            for i, t in enumerate(tiles):
                                crop = (t.crop_rows, t.crop_cols)
                                write(
                                    z, (t.out_rows, t.out_cols), probs[i][(slice(None), *crop)],
                                    None if spread is None else spread[i][crop],
                                )  # fmt: skip
                            done += len(tiles)
                            yield done, total
                        break
                    except torch.OutOfMemoryError:
                        empty_cache(self.device)
                        layout, batch = self._shrink_after_oom(layout, batch)
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
            empty_cache(self.device)

    def forward_tiles(self, plane, tiles, lo_hi) -> np.ndarray:
        """Softmax probabilities (B, n_classes, h, w) of ``tiles`` (of :func:`tile_layout`)
        of a (C, Y, X) plane normalised with ``lo_hi`` (:func:`percentile_range` of the
        whole plane): the step of the whole-image pass, for callers that run a layout's
        batches elsewhere (blocks on a cluster, :mod:`napari_unet.distributed`). Pass the
        same batches as :meth:`_tiles` (``settings.batch_size`` tiles in layout order)
        for bit-identical results: kernels may differ with the batch size. With TTA the
        probabilities are the mean over the transformed copies."""
        return self._forward(plane, tiles, lo_hi, True)[0]

    def _forward(self, plane, tiles, lo_hi, check_finite: bool):
        """Input tiles -> (softmax probabilities (B, n_classes, h, w), uncertainty
        (B, h, w) or None without TTA) as numpy: one pass per TTA transform, each
        output mapped back (:func:`napari_unet.tta.combine`)."""
        batch = np.stack([read_tile(plane, t.rows, t.cols) for t in tiles])
        batch = normalize(batch, lo_hi=lo_hi) if lo_hi is not None else batch
        batch = np.asarray(batch, dtype=np.float32)
        if check_finite and not np.isfinite(batch).all():
            raise ValueError("the image contains NaN or infinite pixels")
        copies = [t.invert(self._softmax(t.apply(batch))) for t in self.transforms]
        return _tta.combine(copies)

    def _softmax(self, batch: np.ndarray) -> np.ndarray:
        """Softmax probabilities (B, n_classes, h, w) of a (B, C, H, W) input batch."""
        memory_format = self.settings.memory_format
        x = torch.from_numpy(np.ascontiguousarray(batch)).to(self.device)
        x = x.contiguous(memory_format=memory_format)
        with torch.inference_mode(), self.settings.autocast(self.device):
            logits = self.net(x)
        return torch.softmax(logits.float(), dim=1).cpu().numpy()

    def _shrink_after_oom(self, layout, batch: int):
        """Halve the batch, else the output tile; returns (layout, batch) to restart with."""
        config = self.model.config
        if batch > 1:
            batch //= 2
            self.on_notice(f"out of memory: continuing with {batch} tile(s) per batch")
            return layout, batch
        smallest = config.input_size_for_output(config.pool_factor)
        tile = max(layout.tile_shape)
        half = max(smallest, config.input_size_for_output(max(1, config.output_size(tile) // 2)))
        if half >= tile:
            raise MemoryError(
                f"out of memory even with one {tile} px tile per batch; "
                "use a smaller tile_size or another device"
            )
        self.on_notice(f"out of memory: continuing with {half} px tiles")
        return tile_layout((layout.y.length, layout.x.length), half, config), batch


def _at(z: int, where: tuple[slice, slice], spatial: tuple[int, ...]) -> tuple:
    """Index of an output tile in an array of the image's spatial shape."""
    return (z, *where) if len(spatial) == 3 else where


def _batches(layout, batch: int):
    tiles = list(layout)
    for start in range(0, len(tiles), batch):
        yield tiles[start : start + batch]


class _Labelling:
    """One labelling run: tile probabilities -> class ids (semantic) or a foreground
    mask labelled block by block (instance), optionally keeping the probabilities.

    For a numpy ``out`` the mask and the labelling's scratch are numpy arrays;
    otherwise temporary zarr stores, so memory is bounded by tile and block, not plane.
    """

    def __init__(self, predictor, planes, spatial, tile, post, out, probs, uncertainty) -> None:
        self.predictor, self.planes, self.spatial, self.tile = predictor, planes, spatial, tile
        self.post, self.out, self.probs, self.uncertainty = post, out, probs, uncertainty

    def target(self, z):
        return chunked_labels.PlaneView(self.out, z) if len(self.spatial) == 3 else self.out

    def keep(self, z, where, tile_probs, spread) -> None:
        if self.probs is not None:
            self.probs[(slice(None), *_at(z, where, self.spatial))] = tile_probs
        if self.uncertainty is not None:
            self.uncertainty[_at(z, where, self.spatial)] = spread

    def run(self, join: bool) -> Progress:
        if self.predictor.model.info.task == "semantic":

            def write_classes(z, where, tile_probs, spread):
                self.keep(z, where, tile_probs, spread)
                self.target(z)[where] = np.argmax(tile_probs, axis=0)

            yield from self.predictor._tiles(self.planes, self.tile, write_classes)
            return
        with tempfile.TemporaryDirectory(prefix="napari-unet-foreground-") as folder:
            done, total = yield from _relay(self._instances(folder, join))
        if join:
            for step, _ in chunked_labels.join_slices_iter(self.out, block_size=LABEL_BLOCK_SIZE):
                if step > 0:
                    yield done + step, total

    def _instances(self, folder: str, join: bool) -> Progress:
        plane_shape = self.spatial[-2:]
        post, next_id = self.post, 0
        if isinstance(self.out, np.ndarray):
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

        def write_foreground(z, where, tile_probs, spread):
            self.keep(z, where, tile_probs, spread)
            foreground[where] = tile_probs[1] > post.threshold

        def label_plane(z):
            nonlocal next_id
            next_id += yield from chunked_labels.instances_from_foreground_iter(
                foreground, self.target(z), min_size=post.min_size, expand=post.expand,
                block_size=LABEL_BLOCK_SIZE, offset=next_id, scratch=scratch,
            )  # fmt: skip

        steps = chunked_labels.label_steps(plane_shape, LABEL_BLOCK_SIZE)
        join_steps = chunked_labels.join_steps(self.spatial, LABEL_BLOCK_SIZE) if join else 0
        yield from self.predictor._tiles(
            self.planes, self.tile, write_foreground,
            plane_done=label_plane, plane_steps=steps, final_steps=join_steps,
        )  # fmt: skip


def _relay(progress):
    """Yield from ``progress``; return the last (done, total) it yielded."""
    last = (0, 0)
    for last in progress:
        yield last
    return last
