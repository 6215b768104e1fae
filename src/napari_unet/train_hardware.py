"""How training runs fastest on this machine: optimiser steps timed once, cached, explained.

Inference's measurement (:mod:`napari_unet.hardware`) times forward passes. A training
step adds the backward pass and the update, whose fastest memory format can differ: on
an AVX2 CPU without native bf16 (AMD EPYC, torch 2.13) channels_last made the forward
pass of the default network 1.5x faster but the whole step 1.2x slower (its
weight-gradient kernels). So training times its own step:

1. precision x memory format, on the reference shape (4 tiles of about 100 px output,
   the ``fast`` preset's step). fp32, and each reduced precision inference found
   faster than fp32 *and* agreeing with it (:func:`napari_unet.hardware.choose`);
2. tile shapes of the same input area with the winner, e.g. 4 x 188, 2 x 260 and
   1 x 372 px at depth 3: output (labelled) pixels per second. A larger tile recomputes
   less of the context that unpadded convolutions crop away, so it usually trains more
   pixels per second: the paper's own choice of "large input tiles over a large batch
   size". Which shape a run uses is the recipe's choice
   (:func:`napari_unet.recipe.choose_recipe`): it also depends on the planes' size.

The result is cached beside inference's (same file, key + ``" | training step"``) and
re-measured with ``napari-unet info --remeasure``.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch

from . import hardware
from .config import UNetConfig
from .hardware import Choice, RunSettings, Timer

#: output edge (px) of the reference tile, and tiles per reference step
REFERENCE_OUTPUT = 100
REFERENCE_BATCH = 4
#: batch sizes whose tile shapes are timed (each with the reference step's input area)
SHAPE_BATCHES = (4, 2, 1)
KEY_SUFFIX = " | training step"
MAX_STEP_S = 20.0  # no larger shape is timed once one step takes this long


def cache_key(config: UNetConfig, device: torch.device) -> str:
    return hardware.cache_key(config, device) + KEY_SUFFIX


def reference_tile(config: UNetConfig) -> int:
    """Input edge of the reference step's tiles (188 px at depth 3, 284 at depth 4)."""
    return config.input_size_for_output(REFERENCE_OUTPUT)


def tile_shapes(config: UNetConfig) -> list[tuple[int, int]]:
    """(tile, batch) with about the reference step's input area: the largest valid tile
    with ``batch * tile**2 <= REFERENCE_BATCH * reference**2`` per batch size."""
    area = REFERENCE_BATCH * reference_tile(config) ** 2
    shapes = []
    for batch in SHAPE_BATCHES:
        below, _ = config.nearest_valid_inputs(int(math.sqrt(area / batch)))
        if below is not None:
            shapes.append((below, batch))
    return shapes


def cached_training_choice(config: UNetConfig, device: torch.device) -> Choice | None:
    """The cached training choice for this network size on ``device``, or None."""
    return hardware.read_choice(cache_key(config, device))


def choose_training(
    model: torch.nn.Module,
    device: torch.device,
    *,
    remeasure: bool = False,
    timer: Timer | None = None,
) -> Choice:
    """The cached training choice for ``model``'s size on ``device``, else measure it
    (a few seconds on a CPU) and cache it.

    Args:
        model: a :class:`~napari_unet.model.UNet` (a copy is trained; it is not modified).
        timer: ``timer(settings, tile) -> seconds`` per optimiser step of
            ``settings.batch_size`` tiles, replacing the real timing (tests).

    Returns:
        a :class:`~napari_unet.hardware.Choice` whose settings hold the winning
        precision and memory format and the fastest shape (``max_tile``: its tile,
        ``batch_size``: its batch); ``timings`` has one row per measured candidate
        (``stage`` "format" or "shape", ``mpx_per_s``: output megapixels per second).
    """
    config = model.config
    key = cache_key(config, device)
    if not remeasure:
        choice = cached_training_choice(config, device)
        if choice is not None:
            return choice
    inference = hardware.choose(model, device, timer=timer)  # which precisions agree
    bench = _StepBench(model, device, timer)
    choice = _measure(bench, config, _precisions(inference))
    hardware.write_choice(key, choice)
    return choice


def _precisions(inference: Choice) -> list[str]:
    """fp32 and the reduced precisions inference timed faster and found agreeing."""
    agreeing = [row["precision"] for row in inference.timings if row.get("agrees") is True]
    return ["fp32", *dict.fromkeys(p for p in agreeing if p != "fp32")]


def _measure(bench: _StepBench, config: UNetConfig, precisions: list[str]) -> Choice:
    reference = reference_tile(config)
    formats: list[dict] = []
    for precision in precisions:
        for channels_last in (False, True):
            settings = RunSettings(precision, channels_last, reference, REFERENCE_BATCH)
            best = min((r["s"] for r in formats if r["s"] is not None), default=None)
            row = bench.time(settings, reference, slower_than=best)
            formats.append({**row, "stage": "format"})
    winner = min((r for r in formats if r["s"] is not None), key=lambda r: r["s"])
    precision, channels_last = winner["precision"], winner["channels_last"]

    shapes = [winner | {"stage": "shape"}]
    for tile, batch in tile_shapes(config):
        if (tile, batch) == (reference, REFERENCE_BATCH):
            continue
        row = bench.time(RunSettings(precision, channels_last, tile, batch), tile)
        shapes.append({**row, "stage": "shape"})
        if row["s"] is None or row["s"] > MAX_STEP_S:
            break  # out of memory, or too slow to try larger
    measured = [r for r in shapes if r["s"] is not None]
    best = max(measured, key=lambda r: r["mpx_per_s"])
    settings = RunSettings(precision, channels_last, best["tile"], best["batch"])
    return Choice(settings, best["mpx_per_s"], _explain(formats, measured), formats + shapes)


def _explain(formats: list[dict], shapes: list[dict]) -> str:
    def name(row):
        return f"{row['precision']} {hardware.layout_name(row['channels_last'])}"

    steps = ", ".join(
        f"{name(r)} {r['s'] * 1e3:.0f} ms" if r["s"] is not None else f"{name(r)} out of memory"
        for r in formats
    )
    rates = ", ".join(f"{r['batch']} x {r['tile']} px {r['mpx_per_s']:.3g}" for r in shapes)
    return f"training step: {steps}; output Mpx/s: {rates}"


def optimizer_step_function(
    model: torch.nn.Module, device: torch.device, settings: RunSettings, tile: int
):
    """``step()``: one optimiser step of a copy of ``model`` as this measurement times it
    (Adam, a smooth test batch of ``settings.batch_size`` tiles of ``tile`` px, finished
    on the device); :func:`napari_unet.train_recipe.measure_steps_per_s` times it too."""
    return _StepBench(model, device, None).step_for(settings, tile)


class _StepBench(hardware._Bench):
    """Times optimiser steps (forward, weighted loss, backward, Adam) of a model copy."""

    def __init__(self, model: torch.nn.Module, device: torch.device, timer: Timer | None):
        super().__init__(model, device, timer)
        self.model.train()

    def _seconds(self, settings: RunSettings, tile: int, slower_than: float | None) -> float:
        if self.timer is not None:
            return self.timer(settings, tile)
        step = self.step_for(settings, tile)
        start = time.perf_counter()
        step()  # warm-up: allocations, kernel selection
        first = time.perf_counter() - start
        if hardware.hopeless(first, slower_than):
            return first  # hopeless (e.g. fp16 emulated on a CPU: seconds a step): no repeat
        times: list[float] = []
        while len(times) < 3 and sum(times) < 2 * hardware.MIN_TIMED_S:
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
            if times[-1] > 1.0:
                break  # long steps: one is enough
        return min(times)

    def step_for(self, settings: RunSettings, tile: int):
        """``step()``: one optimiser step on ``settings.batch_size`` tiles of ``tile`` px
        with ``settings``' precision and memory format, finished on the device."""
        from .train_settings import TrainSettings
        from .training import make_optimizer, optimizer_step

        net = self.model.to(memory_format=settings.memory_format)
        optimizer = make_optimizer(net, TrainSettings())
        scaler = torch.amp.GradScaler(self.device.type, enabled=settings.precision == "fp16")
        out = self.config.output_size(tile)
        batch = settings.batch_size
        x = self._input(tile, batch).to(self.device)
        tiles = (
            x.contiguous(memory_format=settings.memory_format),
            (x[:, 0, :out, :out] > 0.5).long(),
            torch.ones(batch, out, out, device=self.device),
        )

        def step() -> Any:
            optimizer_step(net, optimizer, scaler, settings, tiles)
            hardware._synchronize(self.device)

        return step
