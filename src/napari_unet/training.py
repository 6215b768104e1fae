"""Training engine: from annotated images to a U-Net, as a generator of step records.

``train_iter`` follows the paper (random valid-size tiles with mirrored context,
elastic deformation, pixel-wise softmax cross-entropy weighted by the border
weight map) with settings that are fast on a CPU by default (a narrower, shallower
net, Adam with a cosine schedule, small tile batches, the autocast precision measured
fastest on the machine). The paper's own recipe is the ``"paper"`` preset. Settings
and presets live in :mod:`napari_unet.train_settings`, validation and post-processing
tuning in :mod:`napari_unet.validation`, the step record in
:mod:`napari_unet.train_record`. See docs/training.md for measurements.

Usage::

    run = train_iter(images, labels, settings=PRESETS["fast"], out_dir="models")
    for record in run:           # one StepRecord per optimiser step
        print(record.iteration, record.loss)
    # or: model = train(images, labels, ...)
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import checkpoints, ddp, hardware, train_hardware
from .augment import augment
from .checkpoints import BEST_NAME, LAST_NAME, load_train_state, save_model_copy
from .config import ModelInfo
from .data import Plane, WeightCache, prepare_planes, split_validation
from .ddp import SINGLE, RankFailure, Ranks
from .devices import choose_device
from .hardware import RunSettings
from .model import UNet
from .postprocess import Postprocess
from .predictor import Predictor
from .progress import drain
from .tiling import reflect_indices
from .train_record import StepRecord
from .train_settings import PRESETS, SELECT_BY, TrainSettings
from .validation import ValidationSet, evaluate, score, tune_postprocess, validate

__all__ = [
    "BEST_NAME", "LAST_NAME", "PRESETS", "SELECT_BY", "StepRecord", "TileSource",
    "TrainSettings", "ValidationSet", "evaluate", "run_settings", "score", "split_planes",
    "train", "train_iter", "tune_postprocess", "validate", "weighted_cross_entropy",
]  # fmt: skip


# -- device and run settings --------------------------------------------------------
def run_settings(model: UNet, device: torch.device, settings: TrainSettings) -> RunSettings:
    """How training runs ``model`` on ``device``: the precision and memory format whose
    optimiser step :mod:`napari_unet.train_hardware` measured fastest for this network
    size on this machine, unless ``settings`` fixes them. ``max_tile`` (validation's
    largest tile) is inference's choice (:mod:`napari_unet.hardware`)."""
    needs_choice = settings.precision == "auto" or settings.channels_last is None
    chosen = RunSettings()
    if needs_choice:
        step = train_hardware.choose_training(model, device).settings
        tile = hardware.choose(model, device).settings.max_tile  # cached by the line above
        chosen = dataclasses.replace(step, max_tile=tile)
    return dataclasses.replace(
        chosen,
        precision=chosen.precision if settings.precision == "auto" else settings.precision,
        channels_last=(
            chosen.channels_last if settings.channels_last is None else settings.channels_last
        ),
        batch_size=1,
    )


# -- tiles -------------------------------------------------------------------------
class TileSource:
    """Training planes as device tensors; draws source patches around annotated pixels."""

    def __init__(self, planes: Sequence[Plane], device: torch.device, rng: np.random.Generator):
        self.device, self.rng = device, rng
        self.images = [torch.from_numpy(p.image).to(device) for p in planes]
        self.targets = [torch.from_numpy(p.target).to(device) for p in planes]
        self.weights = [torch.from_numpy(p.weight).to(device) for p in planes]
        # flat indices of annotated pixels (None: the whole plane is annotated)
        self.annotated = [_annotated_pixels(p.weight) for p in planes]
        counts = np.array(
            [p.weight.size if a is None else a.size for p, a in zip(planes, self.annotated)],
            dtype=float,
        )
        if not counts.sum():
            raise ValueError("the training region has no annotated pixel")
        self.plane_probability = counts / counts.sum()
        self.shapes = [p.weight.shape for p in planes]

    def sample(self, batch: int, patch: int, ranks: Ranks = SINGLE):
        """(B, C, P, P) images, (B, P, P) targets and weights centred on annotated pixels.

        With several ranks (sharing one seed) every rank draws the same
        ``batch * world_size`` tile positions and keeps its share (every
        ``world_size``-th, from its rank): the ranks together train on the tiles one
        process would draw for the whole batch.
        """
        images, targets, weights = [], [], []
        planes = self.rng.choice(
            len(self.images), size=batch * ranks.world_size, p=self.plane_probability
        )
        for number, index in enumerate(planes):
            height, width = self.shapes[index]
            annotated = self.annotated[index]
            if annotated is None:
                centre = self.rng.integers(height * width)
            else:
                centre = self.rng.choice(annotated)
            if number % ranks.world_size != ranks.rank:
                continue
            top, left = (c - patch // 2 for c in divmod(int(centre), width))
            rows = reflect_indices(top, top + patch, height)
            cols = reflect_indices(left, left + patch, width)
            rows, cols = (torch.from_numpy(i).to(self.device) for i in (rows, cols))
            images.append(self.images[index][:, rows][:, :, cols])
            targets.append(self.targets[index][rows][:, cols])
            weights.append(self.weights[index][rows][:, cols])
        return torch.stack(images), torch.stack(targets), torch.stack(weights)


def _annotated_pixels(weight: np.ndarray) -> np.ndarray | None:
    inside = weight > 0
    return None if inside.all() else np.flatnonzero(inside).astype(np.int32)


def weighted_cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor,
    normaliser: torch.Tensor | None = None,
) -> torch.Tensor:
    """Pixel-wise softmax cross-entropy of logits (B, K, O, O) against target (B, O, O)
    weighted by ``weight`` (B, O, O), divided by ``normaliser`` (default: the weight's
    sum, at least 1)."""
    loss = F.cross_entropy(logits.float(), target, reduction="none")
    if normaliser is None:
        normaliser = weight.sum().clamp_min(1.0)
    return (loss * weight).sum() / normaliser


# -- the engine --------------------------------------------------------------------
def _initial_model(
    init_model: UNet | None, settings, in_channels, n_classes, mode, device
) -> UNet:
    if init_model is None:
        info = ModelInfo(
            task=mode,
            class_names=["background"]
            + (
                ["foreground"]
                if mode == "instance"
                else [f"class {c}" for c in range(1, n_classes)]
            ),
            normalization=dict(settings.normalization),
        )
        return UNet(settings.config(in_channels, n_classes), info).to(device)
    model = copy.deepcopy(init_model).to(device)  # a UNet: _resolve_init loaded any file
    config = model.config
    if config.in_channels != in_channels:
        raise ValueError(
            f"the model takes {config.in_channels} input channel(s) but the images have "
            f"{in_channels}"
        )
    if model.info.task != mode:
        raise ValueError(f"the model was trained for {model.info.task!r}, not {mode!r} labels")
    if config.n_classes != n_classes:
        raise ValueError(
            f"the model predicts {config.n_classes} classes but the labels have {n_classes}"
        )
    if not config.is_valid_input(settings.tile_size):
        raise ValueError(config._invalid_message(settings.tile_size))
    return model


_save = save_model_copy


def split_planes(
    images, labels, masks=None, *, settings: TrainSettings, mode: str = "instance",
    normalization=None, channel_axis=None, n_classes=None, cache=None,
) -> tuple[list[Plane], list[Plane], int, int]:  # fmt: skip
    """Training planes, validation planes, input channels and classes, as
    :func:`train_iter` prepares and splits them with ``settings`` (see
    :func:`napari_unet.data.prepare_planes`; ``normalization`` None: the settings')."""
    planes, channels, classes = prepare_planes(
        images, labels, masks, mode=mode, gap=settings.gap, w0=settings.w0,
        sigma=settings.sigma, normalization=normalization or settings.normalization,
        channel_axis=channel_axis, n_classes=n_classes, cache=cache,
    )  # fmt: skip
    train_planes, val_planes = split_validation(
        planes, settings.val_fraction, np.random.default_rng(settings.seed),
        settings.val_max_planes,
    )  # fmt: skip
    return train_planes, val_planes, channels, classes


# -- the pieces of the loop ------------------------------------------------------------
def make_optimizer(model: UNet, settings: TrainSettings) -> torch.optim.Optimizer:
    """Adam or SGD (with ``settings.momentum``) over the model's parameters."""
    if settings.optimizer == "adam":
        return torch.optim.Adam(
            model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay
        )
    return torch.optim.SGD(
        model.parameters(),
        lr=settings.lr,
        momentum=settings.momentum,
        weight_decay=settings.weight_decay,
    )


def _learning_rate(settings: TrainSettings, progress: float) -> float:
    """The learning rate at ``progress`` (0..1 of the budget): a linear warm-up over
    ``settings.warmup``, then constant or a cosine decay to 0."""
    if settings.warmup > 0 and progress < settings.warmup:
        return settings.lr * max(progress / settings.warmup, 0.01)
    if settings.schedule == "constant":
        return settings.lr
    span = (progress - settings.warmup) / max(1e-9, 1 - settings.warmup)
    return settings.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, span)))


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def optimizer_step(
    net: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    run: RunSettings,
    batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    ranks: Ranks = SINGLE,
) -> float:
    """One forward/backward/update on ``batch`` = (x (B, C, T, T), target (B, O, O),
    weight (B, O, O)); returns the loss (of all ranks' tiles) as a float.

    With several ranks ``net`` is the DistributedDataParallel wrapper, which averages
    the gradients; each rank divides its weighted loss by the mean weight sum over the
    ranks, so that the average is the gradient of the whole batch's loss.
    """
    x, target, weight = batch
    with run.autocast(x.device):
        logits = net(x)
    normaliser = ddp.mean(weight.sum(), ranks).clamp_min(1.0 / ranks.world_size)
    loss = weighted_cross_entropy(logits, target, weight, normaliser)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return float(ddp.mean(loss.detach(), ranks))


class Budget:
    """How much of the training budget is used: the larger of the share of
    ``settings.iterations`` steps and of ``settings.minutes``, capped at 1."""

    def __init__(self, settings: TrainSettings, start: float):
        self.start = start
        self.seconds = settings.minutes * 60 if settings.minutes is not None else math.inf
        self.steps = settings.iterations if settings.iterations is not None else math.inf

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def progress(self, iteration: int) -> float:
        return min(1.0, max(iteration / self.steps, self.elapsed() / self.seconds))


class Every:
    """True from :meth:`due` at most once per ``seconds`` (perf_counter clock)."""

    def __init__(self, seconds: float, start: float):
        self.seconds, self.last = seconds, start

    def due(self, now: float) -> bool:
        if now - self.last < self.seconds:
            return False
        self.last = now
        return True


class ValidationClock:
    """When to validate: every ``val_every`` steps and/or every ``val_every_s``
    seconds, stretched so that validation takes at most ~10 % of the time."""

    def __init__(self, settings: TrainSettings, start: float):
        self.every_s = settings.val_every_s or math.inf
        self.every_steps = settings.val_every
        self.next_time = start + self.every_s

    def due(self, now: float, iteration: int) -> bool:
        by_step = self.every_steps is not None and iteration % self.every_steps == 0
        return now >= self.next_time or by_step

    def took(self, seconds: float, now: float) -> None:
        self.next_time = now + max(self.every_s, 9 * seconds)


class WeightAverage:
    """The weights training validates and returns: the model's own, or with
    ``settings.ema`` > 0 their exponential moving average (torch's ``AveragedModel``)."""

    def __init__(self, model: UNet, decay: float):
        self.averaged = None
        if decay > 0:
            from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

            self.averaged = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay))
        self.model = model if self.averaged is None else self.averaged.module

    def update(self, model: UNet) -> None:
        if self.averaged is not None:
            self.averaged.update_parameters(model)

    def state(self) -> dict | None:
        """The average's state (weights and how many steps it holds), None without one."""
        return None if self.averaged is None else self.averaged.state_dict()

    def restore(self, state: dict | None) -> None:
        """Carry on a resumed run's average (from :meth:`state`); a run saved without
        one (or before averages were stored) starts it afresh."""
        if self.averaged is not None and state and "ema" in state:
            self.averaged.load_state_dict(state["ema"])


class BestTracker:
    """The best model by validation so far (its score, metrics and weights) and the
    validation history; writes ``out_dir / BEST_NAME`` on every improvement."""

    def __init__(self, select_by: str, out_dir: Path | None):
        self.select_by, self.out_dir = select_by, out_dir
        self.score, self.metrics, self.state = -math.inf, None, None
        self.history: list[dict[str, float]] = []

    @property
    def best(self) -> float | None:
        """The best score, None before any validation."""
        return self.score if self.state is not None else None

    def add(self, model: UNet, metrics: dict[str, float], iteration: int, elapsed: float):
        """Record one validation (``elapsed`` in s); keep and save the model if it is best."""
        self.history.append({"iteration": iteration, "elapsed": elapsed, **metrics})
        if score(metrics, self.select_by) > self.score:
            self.score, self.metrics = score(metrics, self.select_by), metrics
            self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            if self.out_dir is not None:
                _save(self.stamp(model, iteration, elapsed), self.out_dir / BEST_NAME)

    def stamp(self, model: UNet, iteration: int, elapsed: float) -> UNet:
        """``model`` with its ``info.history`` (steps, seconds, best and all validations)."""
        model.info.history = {
            "iterations": iteration,
            "seconds": round(elapsed, 1),
            "best_val": self.metrics,
            "val": self.history,
        }
        return model


class LastWriter:
    """Writes ``last.safetensors`` and ``last.train_state.pt`` (the optimiser and scaler
    state, for resuming) into ``out_dir``; nothing without one."""

    def __init__(self, out_dir: Path | None, optimizer, scaler, world_size: int, weights):
        self.out_dir, self.optimizer, self.scaler = out_dir, optimizer, scaler
        self.world_size, self.weights = world_size, weights

    def write(self, model: UNet, iteration: int) -> None:
        if self.out_dir is not None:
            checkpoints.save_last(
                model, self.optimizer, self.scaler, iteration=iteration,
                world_size=self.world_size, folder=self.out_dir, averaged=self.weights.state(),
            )  # fmt: skip


def _start_name(init_model: UNet | str | Path | None) -> str | None:
    """What a fine-tuned model records it started from: the built-in name or file (a
    model object carries no name); None for a new network."""
    if init_model is None:
        return None
    return str(init_model) if isinstance(init_model, (str, Path)) else "a model in memory"


def _resolve_init(init_model: UNet | str | Path | None):
    """(init model or None, its classes or None, the normalisation to use or None)."""
    if init_model is None:
        return None, None, None
    if isinstance(init_model, (str, Path)):
        from .model_io import load_model

        init_model = load_model(init_model, device="cpu")
    return init_model, init_model.config.n_classes, init_model.info.normalization


def _refreshed(new: tuple, load: Callable, device: torch.device, rng: np.random.Generator):
    """(tile source, validation planes, None) of new ``(images, labels, masks)``, or
    (None, None, notice) when they cannot be used (e.g. all labels erased)."""
    try:
        train_planes, val_planes, _, _ = load(*new)
        return TileSource(train_planes, device, rng), val_planes, None
    except ValueError as error:
        notice = f"the new annotation was not used ({error}); training continues"
        notice += " on the previous one"
        warnings.warn(notice, RuntimeWarning, stacklevel=3)
        return None, None, notice


def _seeded(seed: int | None, device: torch.device, ranks: Ranks = SINGLE):
    """Seed torch's global generator (initialisation, dropout) and return the numpy
    generator (tile positions: the same on every rank, see :meth:`TileSource.sample`)
    and the torch one (augmentation: seeded per rank) of ``seed``."""
    if seed is not None:
        torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    generator = torch.Generator(device=device)
    generator.manual_seed(int(rng.integers(2**62)) + ranks.rank)
    return rng, generator


def _keep_going(budget: Budget, iteration: int, should_stop, ranks: Ranks, device):
    """(train another step?, budget used 0..1), the same on every rank: the largest
    share of the budget any rank has used, and a stop requested on any rank."""
    progress = budget.progress(iteration)
    stop = progress >= 1.0 or should_stop()
    progress, stop = ddp.agree([progress, float(stop)], ranks, device)
    return not stop, progress


def _data_parallel(model: UNet, ranks: Ranks, device: torch.device) -> torch.nn.Module:
    """``model`` wrapped in DistributedDataParallel (which averages the gradients of
    the ranks), or ``model`` itself in one process."""
    if not ranks.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None
    )


def _resume_or_init(resume, init_model):
    """(the model to start from, the training state to restore or None)."""
    if resume is None:
        return init_model, None
    if init_model is not None:
        raise ValueError("give a model to start from or a run to resume, not both")
    return load_train_state(resume)


def _restore(state: dict | None, optimizer: torch.optim.Optimizer, scaler) -> int:
    """Load a resumed run's optimiser and scaler state; returns its step count (0 for a
    new run).

    Raises:
        ValueError: the run used another optimiser.
    """
    if state is None:
        return 0
    ours = type(optimizer).__name__.lower()
    if state["optimizer_name"] != ours:
        raise ValueError(
            f"the run to resume used the {state['optimizer_name']} optimiser, not {ours}"
        )
    optimizer.load_state_dict(state["optimizer"])
    if state["scaler"] and scaler.is_enabled():
        scaler.load_state_dict(state["scaler"])
    return int(state["iteration"])


def _training_info(
    settings: TrainSettings, mode: str, run: RunSettings, device, ranks: Ranks = SINGLE
) -> dict:
    """What ``model.info.training`` records: the settings and how the run actually ran
    (with several ranks: their number, the effective batch and the learning rate)."""
    info = {
        **settings.to_dict(), "gap": settings.gap, "mode": mode,
        "precision_used": run.precision, "channels_last_used": run.channels_last,
        "device_used": str(device),
    }  # fmt: skip
    if ranks.distributed:
        info.update(
            world_size=ranks.world_size, backend=ddp.backend(),
            effective_batch_size=settings.batch_size * ranks.world_size, effective_lr=settings.lr,
        )  # fmt: skip
    return info


def draw_batch(
    source: TileSource,
    settings: TrainSettings,
    config,
    run: RunSettings,
    generator,
    ranks: Ranks = SINGLE,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``settings.batch_size`` augmented tiles: x (B, C, T, T) in ``run``'s memory format,
    target and weight (B, O, O), T = ``settings.tile_size``, O = ``config.output_size(T)``."""
    input_size = settings.tile_size
    patch = settings.augment.patch_size(input_size)
    tiles = source.sample(settings.batch_size, patch, ranks)
    output_size = config.output_size(input_size)
    x, target, weight = augment(*tiles, input_size, output_size, settings.augment, generator)
    return x.contiguous(memory_format=run.memory_format), target, weight


def _best_and_tuned(model: UNet, best: BestTracker) -> UNet:
    """``model`` with the best weights and, for instances, the post-processing its
    validation was tuned to (none without validation: left as they are)."""
    if best.state is not None:
        model.load_state_dict(best.state)
    tuned = best.metrics or {}
    if "threshold" in tuned:  # an instance model's validation, tuned
        model.info.postprocess = Postprocess.of_tuned(tuned).as_dict()
    return model


def _snapshot(model: UNet) -> UNet:
    snapshot = copy.deepcopy(model).eval()
    return snapshot.to(memory_format=torch.contiguous_format)


# -- the loop --------------------------------------------------------------------------
def train_iter(
    images: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    *,
    masks: Sequence[np.ndarray | None] | None = None,
    mode: str = "instance",
    settings: TrainSettings | None = None,
    init_model: UNet | str | Path | None = None,
    resume: str | Path | None = None,
    out_dir: str | Path | None = None,
    should_stop: Callable[[], bool] | None = None,
    refresh: Callable[[], tuple | None] | None = None,
    channel_axis: int | None = None,
    ranks: Ranks = SINGLE,
) -> Iterator[StepRecord]:
    """Train a U-Net, yielding one :class:`StepRecord` per optimiser step; returns the
    best model.

    Args:
        images, labels, masks: training pairs (see :func:`napari_unet.data.prepare_planes`).
        mode: "instance" or "semantic" (scribbles).
        settings: a :class:`TrainSettings` (default ``PRESETS["fast"]``).
        init_model: a UNet or model file to fine-tune from (its width, depth,
            normalisation and classes are kept; the optimiser starts afresh). It is
            validated before the first step, so it is returned (re-tuned) unless a
            later step scores better on the validation planes.
        resume: a run's ``out_dir`` (or its ``last.safetensors``) to continue: its last
            weights, optimiser state and step count (``settings.iterations`` counts
            all steps); any number of ranks. Not together with ``init_model``.
        out_dir: if given, ``best.safetensors`` (on every improvement), ``last.safetensors``
            and ``last.train_state.pt`` (at every validation and at the end) are written
            there (see :mod:`napari_unet.checkpoints`); by rank 0 only.
        should_stop: polled before every step; True (on any rank) ends training
            gracefully.
        refresh: called every ``settings.refresh_every_s``; may return new
            ``(images, labels, masks)`` (e.g. the user painted more). Only changed
            planes get new weight maps. One process only.
        ranks: this process's place in a DistributedDataParallel run whose process group
            is started (:func:`napari_unet.ddp.start`); each rank trains on
            ``settings.batch_size`` tiles per step (the effective batch is
            ``batch_size * world_size``), only rank 0 validates and writes files.

    Yields:
        a :class:`StepRecord` per step (``val`` when validated: :func:`validate`'s
        metrics, for instances with the threshold and growth tuned then; ``preview_model``
        every ``preview_every_s``, ``notice`` after a refresh whose data could not be
        used, also issued as a RuntimeWarning), and a last one with ``lr`` 0 and the
        closing validation when there are validation planes.

    Returns:
        the best model by validation (the last one without validation data), on
        the training device, in eval mode. For instances, its ``info.postprocess``
        holds the threshold and growth its validation was tuned to, the pair that
        scored best by ``settings.select_by`` on the validation planes; rank 0 only.

    Raises:
        RankFailure: another rank failed; rank 0 has saved its files and the
            exception's ``model`` is the best model so far.
    """
    settings = settings or PRESETS["fast"]
    should_stop = should_stop or (lambda: False)
    if refresh is not None and ranks.distributed:
        raise ValueError("refresh (new annotation while training) needs a single process")
    device = choose_device(None if settings.device == "auto" else settings.device)
    if settings.threads:
        torch.set_num_threads(settings.threads)
    rng, generator = _seeded(settings.seed, device, ranks)

    started_from = _start_name(init_model)
    init_model, state = _resume_or_init(resume, init_model)
    init_model, n_classes, normalization = _resolve_init(init_model)
    load = functools.partial(
        split_planes, settings=settings, mode=mode, normalization=normalization,
        channel_axis=channel_axis, n_classes=n_classes, cache=WeightCache(),
    )  # fmt: skip
    train_planes, val_planes, in_channels, n_classes = load(images, labels, masks)
    model = _initial_model(init_model, settings, in_channels, n_classes, mode, device)
    # rank 0 chooses (it may measure the machine); every rank runs the same way
    run = ddp.broadcast(run_settings(model, device, settings) if ranks.is_main else None, ranks)
    model.info.training = _training_info(settings, mode, run, device, ranks)
    if started_from is not None:
        model.info.training["started_from"] = started_from
    model = model.to(memory_format=run.memory_format)
    model.train()
    net = _data_parallel(model, ranks, device)
    source = TileSource(train_planes, device, rng)
    optimizer = make_optimizer(model, settings)
    weights = WeightAverage(model, settings.ema)
    scaler = torch.amp.GradScaler(device.type, enabled=run.precision == "fp16")
    iteration = _restore(state, optimizer, scaler)
    weights.restore(state)
    out_dir = Path(out_dir) if out_dir is not None and ranks.is_main else None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)

    start = time.perf_counter()
    budget = Budget(settings, start)
    best = BestTracker(settings.select_by, out_dir)
    validation = ValidationClock(settings, start)
    preview = Every(settings.preview_every_s, start)
    refresh_clock = Every(settings.refresh_every_s, start)
    loss, notice = float("nan"), None
    last = LastWriter(out_dir, optimizer, scaler, ranks.world_size, weights)
    if init_model is not None and ranks.is_main and val_planes:
        # fine-tuning (or resuming) returns the starting model unless a step beats it
        start_metrics = validate(Predictor(model, device, run), val_planes, settings.select_by)
        best.add(model, start_metrics, iteration, 0.0)

    try:
        while True:
            go_on, progress = _keep_going(budget, iteration, should_stop, ranks, device)
            if not go_on:
                break
            if refresh is not None and refresh_clock.due(time.perf_counter()):
                new = refresh()
                if new is not None:
                    new_source, new_val, notice = _refreshed(new, load, device, rng)
                    if new_source is not None:
                        source, val_planes = new_source, new_val

            lr = _learning_rate(settings, progress)
            set_learning_rate(optimizer, lr)
            batch = draw_batch(source, settings, model.config, run, generator, ranks)
            loss = optimizer_step(net, optimizer, scaler, run, batch, ranks)
            weights.update(model)
            iteration += 1
            if not math.isfinite(loss):
                raise FloatingPointError(
                    f"training diverged at step {iteration} (loss {loss}); lower the lr"
                )

            now = time.perf_counter()
            record = StepRecord(iteration, loss, lr, now - start, budget.progress(iteration))
            if ranks.is_main and val_planes and validation.due(now, iteration):
                predictor = Predictor(weights.model, device, run)
                metrics = validate(predictor, val_planes, settings.select_by)
                best.add(weights.model, metrics, iteration, budget.elapsed())
                last.write(best.stamp(model, iteration, budget.elapsed()), iteration)
                spent, now = time.perf_counter() - now, time.perf_counter()
                validation.took(spent, now)
                record = dataclasses.replace(record, val=metrics)
            if ranks.is_main and preview.due(now):
                record = dataclasses.replace(record, preview_model=_snapshot(weights.model))
            yield dataclasses.replace(record, best=best.best, notice=notice)
            notice = None
    except RuntimeError as error:
        if not ranks.distributed:
            raise
        last.write(best.stamp(model, iteration, budget.elapsed()), iteration)
        model = _best_and_tuned(model, best)
        if out_dir is not None and best.state is None:
            _save(model, out_dir / BEST_NAME)
        message = f"{ddp.failure_message(error)}; training ended after step {iteration}"
        if out_dir is not None:
            message += f", the best model so far and the last state are in {out_dir}"
        raise RankFailure(message, _snapshot(model) if ranks.is_main else None) from error

    if weights.model is not model:  # the averaged weights are the result
        model.load_state_dict(weights.model.state_dict())
    val_planes = val_planes if ranks.is_main and iteration > 0 else []
    if val_planes:
        final = validate(Predictor(model, device, run), val_planes, settings.select_by)
        best.add(model, final, iteration, budget.elapsed())
        yield StepRecord(iteration, loss, 0.0, budget.elapsed(), 1.0, val=final, best=best.score)
    last.write(best.stamp(model, iteration, budget.elapsed()), iteration)
    model = _best_and_tuned(model, best)
    if out_dir is not None and (best.state is None or model.info.postprocess):
        _save(model, out_dir / BEST_NAME)
    return _snapshot(model)


def train(images, labels, **kwargs) -> UNet:
    """Drain :func:`train_iter` and return the best model."""
    return drain(train_iter(images, labels, **kwargs))
