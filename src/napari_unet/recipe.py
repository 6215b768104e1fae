"""The training recipe chosen from the annotation (numpy/scipy only).

A biologist should not need to know that EM tissue wants the ``dense`` preset.
:func:`describe_annotation` measures what the painted labels look like (how much of
the annotated area objects fill, how many lie against another object, how large
they are) and :func:`choose_recipe` turns that, and how fast the machine trains,
into settings, each with the reason it was chosen::

    stats = describe_annotation(labels, masks)
    recipe = choose_recipe(stats, steps_per_s=3.1, minutes=10)
    settings = PRESETS["fast"].replace(**recipe.changes)
    print(recipe.summary())

The rules come from the measurements in docs/training.md: on ISBI 2012 EM (cells fill
the image, split by thin membranes) ``gap=2`` and selection by Rand error halved the
Rand error of the ``fast`` defaults (0.147 vs 0.300 at 10 CPU-minutes), while
separate nuclei (DSB 2018) do best with ``gap=1`` and AP@0.5.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from .config import UNetConfig

#: objects whose gap to another object is at most this many px count as "touching":
#: membranes in EM and seams between pressed nuclei are a few px wide
NEAR_PX = 3
#: dense tissue: objects fill at least this share of the annotated area...
DENSE_FILL = 0.5
#: ...and at least this share of them lie against another object
DENSE_TOUCHING = 0.5
#: the output tile should span at least this many median object diameters
TILE_OBJECTS = 2.0
#: widen the network (32 base channels) only when the budget still allows this many
#: steps at the wider network's measured speed
WIDE_MIN_STEPS = 4000
#: a measured tile shape replaces the current one only when it trains at least this
#: much faster (output px per second): smaller gains are within the timing noise
SHAPE_GAIN = 1.1
#: median object diameters (px) the built-in ``nuclei`` model was trained on: the 5th
#: to 95th percentile of the per-image medians of its DSB 2018 training images is 9-50 px
BUILTIN_NUCLEI_DIAMETERS = (8.0, 50.0)
#: fine-tuning a built-in model trains at this share of a new network's learning rate:
#: continuing the built-in model at 5e-4 (a quarter of 2e-3) kept its validation AP while
#: 1e-3 first dropped it by 0.09 (benchmarks/results/builtin_nuclei_candidate_C.log and
#: builtin_nuclei.log, docs/models.md)
FINE_TUNE_LR_SCALE = 0.25


@dataclass(frozen=True)
class AnnotationStats:
    """What the annotation looks like.

    Attributes:
        objects: number of annotated objects.
        fill: share of the annotated area (the masks, else the whole planes) that
            objects cover, 0..1.
        touching: share of objects within ``NEAR_PX`` px of another object, 0..1.
        median_diameter: median equivalent diameter of the objects, px.
        annotated_px: annotated pixels in all planes.
    """

    objects: int
    fill: float
    touching: float
    median_diameter: float
    annotated_px: int

    @property
    def dense(self) -> bool:
        """Cells fill the tissue and lie against each other (EM-like)."""
        return self.fill >= DENSE_FILL and self.touching >= DENSE_TOUCHING


@dataclass(frozen=True)
class Recipe:
    """Settings chosen for an annotation and a machine.

    Attributes:
        changes: TrainSettings fields to set (gap, select_by, tile_size, base_channels).
        reasons: one short sentence per choice.
        stats: what the choice was made from.
        start_from: the built-in model to fine-tune (its name), or None for the network
            the caller asked for.
    """

    changes: dict[str, Any]
    reasons: list[str] = field(default_factory=list)
    stats: AnnotationStats | None = None
    start_from: str | None = None

    def summary(self) -> str:
        """One paragraph for the log and the Train widget."""
        return "recipe chosen from the annotation: " + "; ".join(self.reasons)


def describe_annotation(
    labels: Sequence[np.ndarray], masks: Sequence[np.ndarray | None] | None = None
) -> AnnotationStats:
    """Measure instance ``labels`` (each (Y, X) or (Z, Y, X), 0 = background) inside
    their ``masks`` (bool, same shape; None: the whole plane is annotated)."""
    masks = list(masks) if masks is not None else [None] * len(labels)
    areas: list[np.ndarray] = []
    near = objects = annotated = covered = 0
    for label_image, mask in zip(labels, masks):
        label_image = np.asarray(label_image)
        planes = label_image.reshape(-1, *label_image.shape[-2:])
        mask_planes = (
            np.broadcast_to(np.asarray(mask, bool), label_image.shape).reshape(planes.shape)
            if mask is not None
            else np.ones(planes.shape, bool)
        )
        for plane, region in zip(planes, mask_planes):
            plane = np.where(region, plane, 0)
            annotated += int(region.sum())
            covered += int(np.count_nonzero(plane))
            ids, counts = np.unique(plane[plane > 0], return_counts=True)
            objects += ids.size
            areas.append(counts)
            near += _touching_objects(plane).size
    all_areas = np.concatenate(areas) if areas else np.zeros(0)
    diameter = float(np.median(np.sqrt(4 * all_areas / np.pi))) if all_areas.size else 0.0
    return AnnotationStats(
        objects=objects,
        fill=covered / annotated if annotated else 0.0,
        touching=near / objects if objects else 0.0,
        median_diameter=diameter,
        annotated_px=annotated,
    )


def _touching_objects(plane: np.ndarray) -> np.ndarray:
    """Ids of the objects of a 2D label plane within ``NEAR_PX`` px of another one."""
    size = 2 * ((NEAR_PX + 1) // 2) + 1  # a window reaching half the gap from each side
    none = int(plane.max()) + 1  # background reads as "no object" for the minimum
    largest = ndi.maximum_filter(plane, size=size)
    smallest = ndi.minimum_filter(np.where(plane > 0, plane, none), size=size)
    meeting = (largest > 0) & (smallest < none) & (largest != smallest)
    return np.union1d(np.unique(largest[meeting]), np.unique(smallest[meeting]))


def builtin_start(stats: AnnotationStats, in_channels: int = 1) -> tuple[str, str] | None:
    """(built-in model name, reason) when the annotation looks like what a built-in
    model was trained on, else None.

    ``nuclei``: one channel, separate objects (not dense tissue) whose median diameter
    lies in :data:`BUILTIN_NUCLEI_DIAMETERS`. Fine-tuning it beat a new network of the
    same size on held-out data (docs/training.md, "Fine-tuning vs from scratch").
    """
    low, high = BUILTIN_NUCLEI_DIAMETERS
    if in_channels != 1 or stats.dense or not low <= stats.median_diameter <= high:
        return None
    return "nuclei", (
        f"one channel, {stats.median_diameter:.0f} px objects like the built-in nuclei "
        "model's: fine-tuning it (start from 'new' for a new network)"
    )


def choose_recipe(
    stats: AnnotationStats,
    *,
    config: UNetConfig | None = None,
    tile_size: int | None = None,
    max_tile: int | None = None,
    steps_per_s: dict[int, float] | None = None,
    minutes: float | None = None,
    start: tuple[str, str] | None = None,
    lr: float | None = None,
    shapes: Sequence[dict[str, Any]] | None = None,
    batch_size: int | None = None,
    max_output: int | None = None,
) -> Recipe:
    """Settings for an annotation described by ``stats`` on a machine that trains at
    ``steps_per_s`` ({base_channels: measured optimiser steps/s}) for ``minutes``.

    Args:
        config, tile_size: the network to train and its default input tile (px); the
            tile grows when objects are too large for its output (None: never).
        max_tile: the largest input tile the planes allow (px: their shorter edge).
        start: :func:`builtin_start`'s choice, if the caller allows one: the model
            keeps its own width, so none is chosen from ``steps_per_s``, and it trains
            at ``FINE_TUNE_LR_SCALE`` times the learning rate ``lr`` (when given).
        shapes, batch_size, max_output: tile shapes timed on this machine (rows with
            ``tile``, ``batch`` and ``mpx_per_s``, output megapixels per second:
            :func:`napari_unet.train_hardware.choose_training`), the current batch,
            and the largest output edge worth training on (px: the planes' shorter
            edge; a larger output would learn from mirrored copies). The fastest shape
            whose tile still fits the objects replaces ``tile_size`` x ``batch_size``
            when it trains ``SHAPE_GAIN`` times as many pixels per second (None: never).
    """
    changes: dict[str, Any] = {}
    reasons: list[str] = []
    touching = f"{stats.touching:.0%} of {stats.objects} objects lie against another"
    if stats.dense:
        changes |= {"gap": 2, "select_by": "rand_error"}
        reasons.append(
            f"dense tissue (objects fill {stats.fill:.0%} of the annotated area, {touching}): "
            "2 px gaps between objects, best model by Rand error"
        )
    else:
        changes |= {"gap": 1, "select_by": "ap50"}
        reasons.append(
            f"separate objects (they fill {stats.fill:.0%} of the annotated area, {touching}):"
            " 1 px gaps, best model by AP@0.5"
        )
    if config is not None and tile_size is not None and stats.median_diameter > 0:
        tile = _tile_for(stats.median_diameter, config, tile_size, max_tile)
        if tile is not None:
            changes["tile_size"] = tile
            reasons.append(
                f"objects {stats.median_diameter:.0f} px across (median): {tile} px input tiles"
            )
    if config is not None and tile_size is not None and shapes and batch_size:
        tile = changes.get("tile_size", tile_size)
        shape = _shape_for(shapes, config, (tile, batch_size), max_output)
        if shape is not None:
            changes |= {"tile_size": shape[0], "batch_size": shape[1]}
            reasons.append(shape[2])
    if start is not None:
        reasons.append(start[1])
        if lr is not None:
            changes["lr"] = lr * FINE_TUNE_LR_SCALE
            reasons.append(f"fine-tuning at learning rate {changes['lr']:g}")
    elif steps_per_s and minutes:
        width, why = _width_for(steps_per_s, minutes)
        changes["base_channels"] = width
        reasons.append(why)
    return Recipe(changes, reasons, stats, start[0] if start else None)


def _tile_for(
    diameter: float, config: UNetConfig, default: int, max_tile: int | None
) -> int | None:
    """None (keep ``default``) unless objects are too large for its output; then the
    smallest valid tile whose output spans ``TILE_OBJECTS`` diameters, or the largest
    the planes allow."""
    wanted = config.input_size_for_output(int(np.ceil(TILE_OBJECTS * diameter)))
    if wanted <= default:
        return None
    if max_tile is not None and wanted > max_tile:
        below, _ = config.nearest_valid_inputs(max_tile)
        return below if below is not None and below > default else None
    return wanted


def _shape_for(
    shapes: Sequence[dict[str, Any]],
    config: UNetConfig,
    current: tuple[int, int],
    max_output: int | None,
) -> tuple[int, int, str] | None:
    """(tile, batch, reason) of the measured shape that trains the most output pixels
    per second among those whose tile is at least ``current``'s (it still spans the
    objects) and whose output is at most ``max_output`` px; None when that is
    ``current``, ``current`` was not measured, or the gain is below ``SHAPE_GAIN``."""
    rates = {(r["tile"], r["batch"]): r["mpx_per_s"] for r in shapes if r.get("mpx_per_s")}
    fitting = {
        shape: rate
        for shape, rate in rates.items()
        if shape[0] >= current[0]
        and (max_output is None or config.output_size(shape[0]) <= max_output)
    }
    now = rates.get(current)
    if not fitting or now is None:
        return None
    best = max(fitting, key=fitting.get)
    if best == current or fitting[best] < SHAPE_GAIN * now:
        return None
    tile, batch = best
    return (
        tile,
        batch,
        (
            f"{batch} x {tile} px tiles per step: {fitting[best]:.2f} output Mpx/s on this "
            f"machine against {now:.2f} with {current[1]} x {current[0]} px (less cropped "
            "context per output pixel)"
        ),
    )


def _width_for(steps_per_s: dict[int, float], minutes: float) -> tuple[int, str]:
    """32 base channels when the budget still gives ``WIDE_MIN_STEPS`` steps at their
    measured speed, else 16."""
    narrow, wide = steps_per_s.get(16), steps_per_s.get(32)
    if wide is not None and wide * minutes * 60 >= WIDE_MIN_STEPS:
        return 32, (
            f"this machine trains the wider network at {wide:.1f} steps/s: "
            f"32 base channels ({wide * minutes * 60:.0f} steps in {minutes:g} min)"
        )
    if wide is not None:
        return 16, (
            f"16 base channels: the wider network trains at {wide:.1f} steps/s here and "
            f"would not get {WIDE_MIN_STEPS} steps in {minutes:g} min"
        )
    speed = f"{narrow:.1f} steps/s" if narrow else "its measured speed"
    return 16, (
        f"16 base channels: at {speed} a wider network would not get {WIDE_MIN_STEPS} steps "
        f"in {minutes:g} min"
    )
