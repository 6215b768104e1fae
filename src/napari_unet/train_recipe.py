"""Training settings chosen from the annotation and the machine (torch: it times steps).

:func:`choose_settings` is what ``napari-unet train`` without ``--preset`` and the
Train widget's "auto" preset run before training: the pure rules of
:mod:`napari_unet.recipe` applied to the labels, with the optimiser steps/s of the
candidate widths measured on the training device.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence

import numpy as np

from .devices import choose_device
from .model import UNet
from .recipe import AnnotationStats, Recipe, builtin_start, choose_recipe, describe_annotation
from .train_settings import TrainSettings

#: network widths (base channels) the recipe chooses between
WIDTHS = (16, 32)


def measure_steps_per_s(
    settings: TrainSettings,
    in_channels: int = 1,
    widths: Sequence[int] = WIDTHS,
    steps: int = 5,
    min_seconds: float = 1.0,
) -> dict[int, float]:
    """Optimiser steps/s of a network of each width with ``settings`` (tile, batch,
    depth, device, precision as training will run them), the step the training
    measurement times (:func:`napari_unet.train_hardware.optimizer_step_function`: Adam
    on a test batch, finished on the device): the median of at least ``steps`` steps
    timed one by one, for at least ``min_seconds``, after two warm-up steps (a few
    seconds on a CPU).

    Two steps timed together (before) read the wider network on an AMX Xeon at under
    6.7 steps/s in two runs of three and at 9.7 in the third, so the recipe chose
    different widths for the same data on the same machine.
    """
    from .train_hardware import optimizer_step_function
    from .training import run_settings

    device = choose_device(None if settings.device == "auto" else settings.device)
    # the run settings measured for the preset's width serve all widths (measuring
    # inference again for each would cost more than the training steps timed here)
    run = run_settings(UNet(settings.config(in_channels)), device, settings)
    run = dataclasses.replace(run, batch_size=settings.batch_size)
    speeds = {}
    for width in widths:
        model = UNet(settings.replace(base_channels=width).config(in_channels))
        step = optimizer_step_function(model, device, run, settings.tile_size)
        speeds[width] = 1.0 / median_step_seconds(step, steps, min_seconds)
    return speeds


def median_step_seconds(step, steps: int = 5, min_seconds: float = 1.0, warmup: int = 2) -> float:
    """Median seconds of ``step()`` over at least ``steps`` calls and ``min_seconds``,
    after ``warmup`` untimed calls (kernel selection, allocator growth)."""
    for _ in range(warmup):
        step()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < steps or time.perf_counter() - start < min_seconds:
        before = time.perf_counter()
        step()
        times.append(time.perf_counter() - before)
    return float(np.median(times))


def measure_shapes(settings: TrainSettings, in_channels: int = 1) -> list[dict]:
    """Tile shapes (rows with ``tile``, ``batch``, ``mpx_per_s``) timed for the network
    of ``settings`` on its training device, in the precision and memory format training
    uses (:func:`napari_unet.train_hardware.choose_training`: measured once, cached)."""
    from .train_hardware import choose_training

    device = choose_device(None if settings.device == "auto" else settings.device)
    choice = choose_training(UNet(settings.config(in_channels)), device)
    return [row for row in choice.timings if row.get("stage") == "shape"]


def in_channels_hint(images: Sequence[np.ndarray], labels: Sequence[np.ndarray]) -> int:
    """1 when every image has its labels' dimensions (no channel axis), else 2: some
    number of channels above one, all :func:`builtin_start` needs to know."""
    return 1 if all(np.ndim(i) == np.ndim(lab) for i, lab in zip(images, labels)) else 2


def choose_settings(
    labels: Sequence[np.ndarray],
    masks: Sequence[np.ndarray | None] | None = None,
    *,
    base: TrainSettings,
    mode: str = "instance",
    new_network: bool = True,
    builtin_allowed: bool = False,
    in_channels: int = 1,
    measure=None,
    measure_tiles=None,
) -> tuple[TrainSettings, Recipe]:
    """``base`` with the recipe for ``labels`` (inside ``masks``) applied.

    Instance labels only (semantic scribbles keep ``base``). The width is chosen only
    for a ``new_network`` with a minutes budget (a fine-tuned model keeps its own;
    a step budget does not depend on speed); the tile only grows within the planes.
    ``measure(settings, in_channels) -> {width: steps/s}`` (default
    :func:`measure_steps_per_s`). With whole planes annotated (no masks) and a minutes
    budget, the tile shape may change too: ``measure_tiles(settings, in_channels)``
    (default :func:`measure_shapes`) times shapes of the same input area, and the
    recipe takes the one that trains the most output pixels per second.
    ``builtin_allowed``: the recipe may choose to fine-tune a built-in model
    (:func:`napari_unet.recipe.builtin_start`); the caller loads ``recipe.start_from``
    when it is set.
    """
    if mode != "instance":
        return base, Recipe({}, ["semantic labels: the preset as it is"])
    stats: AnnotationStats = describe_annotation(labels, masks)
    if stats.objects == 0:
        return base, Recipe({}, ["no objects annotated yet: the preset as it is"], stats)
    max_tile = min(min(np.shape(lab)[-2:]) for lab in labels)
    start = builtin_start(stats, in_channels) if builtin_allowed and new_network else None
    speeds = None
    if new_network and start is None and base.minutes is not None and base.iterations is None:
        speeds = (measure or measure_steps_per_s)(base, in_channels)
    shapes = None
    whole_planes = masks is None or all(mask is None for mask in masks)
    if whole_planes and base.minutes is not None and base.iterations is None:
        shapes = (measure_tiles or measure_shapes)(base, in_channels)
    recipe = choose_recipe(
        stats, config=base.config(in_channels), tile_size=base.tile_size,
        max_tile=max(max_tile, base.tile_size), steps_per_s=speeds, minutes=base.minutes,
        start=start, lr=base.lr, shapes=shapes, batch_size=base.batch_size,
        max_output=max_tile,
    )  # fmt: skip
    return base.replace(**recipe.changes), recipe
