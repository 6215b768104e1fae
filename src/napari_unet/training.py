"""Training engine: from annotated images to a U-Net, as a generator of progress records.

``train_iter`` follows the paper (random valid-size tiles with mirrored context,
elastic deformation, pixel-wise softmax cross-entropy weighted by the border
weight map) with settings that are fast on a CPU by default (a narrower, shallower
net, Adam with a cosine schedule, small tile batches, the autocast precision measured
fastest on the machine). The paper's own recipe is the ``"paper"`` preset. See
docs/training.md for measurements.

Usage::

    run = train_iter(images, labels, settings=PRESETS["fast"], out_dir="models")
    for record in run:           # one record per optimiser step
        print(record["iteration"], record["loss"])
    # or: model = train(images, labels, ...)
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from . import hardware
from .augment import AugmentSettings, augment
from .config import ModelInfo, UNetConfig
from .data import Plane, WeightCache, prepare_planes, split_validation
from .devices import choose_device
from .hardware import PRECISIONS, RunSettings
from .model import UNet
from .postprocess import tune_instances
from .predictor import Predictor
from .progress import drain
from .tiling import reflect_indices

SELECT_BY = ("ap50", "rand_error")
BEST_NAME = "best.safetensors"
LAST_NAME = "last.safetensors"


@dataclass
class TrainSettings:
    """Everything that defines a training run (stored in ``ModelInfo.training``).

    Attributes:
        base_channels, depth, dropout: network width/depth (see :class:`UNetConfig`).
        tile_size: network input edge in px (must be valid for ``depth``); the
            output tile is ``tile_size - shrink``.
        batch_size: tiles per optimiser step.
        optimizer: "adam" or "sgd".
        lr: peak learning rate; ``schedule`` "cosine" decays it to ~0 over the
            budget after ``warmup`` (fraction of the budget), "constant" keeps it.
        momentum: SGD momentum (paper: 0.99).
        weight_decay: L2 penalty.
        iterations / minutes: budget; the first reached ends training (one needed).
        w0, sigma: border weight parameters (paper: 10, 5 px).
        gap: px each object is eroded by in the instance target (touching objects
            get a ``2 * gap`` background line); prediction grows objects back by it.
        normalization: percentiles mapped to 0 and 1 (stored in the model).
        augment: augmentation strengths.
        val_fraction: share of planes (or of the rows of a single plane) held out.
        val_every_s / val_every: validate every so many seconds (stretched so that
            validation takes at most ~10 % of the time) and/or steps.
        val_max_planes: at most this many planes are held out.
        preview_every_s: put a ``preview_model`` snapshot in a record this often.
        refresh_every_s: call ``refresh`` this often.
        device: "auto", "cpu", "cuda", "mps", ...
        precision: "auto" (the autocast precision :mod:`napari_unet.hardware`
            measured fastest for this network on this device, as inference uses),
            "bf16", "fp16" or "fp32".
        channels_last: NHWC memory layout; None: as measured (see ``precision``).
        threads: torch CPU threads (None: torch's default).
        seed: seeds tiles, augmentation, initialisation and the validation split.
        select_by: the validation metric that picks the best model and, for
            instances, the segmentation threshold and growth (``ModelInfo.postprocess``):
            "ap50" (AP at IoU 0.5: separate objects, e.g. nuclei) or "rand_error"
            (lowest Rand error: dense tissue such as EM, where cells fill the image).
            Semantic models always use the mean IoU.
    """

    base_channels: int = 16
    depth: int = 3
    dropout: float = 0.0
    tile_size: int = 188
    batch_size: int = 4
    optimizer: str = "adam"
    lr: float = 2e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "cosine"
    warmup: float = 0.02
    iterations: int | None = None
    minutes: float | None = 10.0
    w0: float = 10.0
    sigma: float = 5.0
    gap: int = 1
    normalization: dict[str, float] = field(default_factory=lambda: {"low": 1.0, "high": 99.8})
    augment: AugmentSettings = field(default_factory=AugmentSettings)
    val_fraction: float = 0.1
    val_every_s: float | None = 60.0
    val_every: int | None = None
    val_max_planes: int = 24
    preview_every_s: float = 5.0
    refresh_every_s: float = 10.0
    device: str = "auto"
    precision: str = "auto"
    channels_last: bool | None = None
    threads: int | None = None
    seed: int | None = 0
    select_by: str = "ap50"

    def __post_init__(self) -> None:
        if self.select_by not in SELECT_BY:
            raise ValueError(f"select_by must be one of {SELECT_BY}, got {self.select_by!r}")
        if self.optimizer not in ("adam", "sgd"):
            raise ValueError(f"optimizer must be 'adam' or 'sgd', got {self.optimizer!r}")
        if self.schedule not in ("cosine", "constant"):
            raise ValueError(f"schedule must be 'cosine' or 'constant', got {self.schedule!r}")
        if self.precision not in ("auto", "bf16", "fp16", "fp32"):
            raise ValueError(f"precision must be auto/bf16/fp16/fp32, got {self.precision!r}")
        if self.iterations is None and self.minutes is None:
            raise ValueError("give a training budget: iterations and/or minutes")
        self._check_numbers()
        if isinstance(self.augment, dict):
            self.augment = AugmentSettings(**self.augment)
        self.config().output_size(self.tile_size)  # raises for an invalid tile size

    def _check_numbers(self) -> None:
        """Raise ValueError naming the first numeric setting outside its range."""
        for name, (low, high) in _INTEGER_RANGES.items():
            value = getattr(self, name)
            if (value is not None or name not in _OPTIONAL) and not (
                _is_integer(value) and low <= value <= high
            ):
                raise ValueError(f"{name} must be a whole number >= {low}, got {value!r}")
        for name, interval in _NUMBER_RANGES.items():
            value = getattr(self, name)
            if (value is not None or name not in _OPTIONAL) and not _in_interval(value, interval):
                raise ValueError(f"{name} must be a number in {interval}, got {value!r}")
        low, high = (self.normalization.get(k) for k in ("low", "high"))
        if not (_in_interval(low, "[0, 100]") and _in_interval(high, "[0, 100]") and low < high):
            raise ValueError(
                "normalization must give percentiles 0 <= low < high <= 100, "
                f"got {self.normalization!r}"
            )

    def config(self, in_channels: int = 1, n_classes: int = 2) -> UNetConfig:
        return UNetConfig(in_channels, n_classes, self.base_channels, self.depth, self.dropout)

    def replace(self, **changes: Any) -> TrainSettings:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


#: name: (lowest, highest) of the whole-number settings (None: not set, where allowed).
_INTEGER_RANGES = {
    "tile_size": (1, math.inf),
    "batch_size": (1, math.inf),
    "iterations": (1, math.inf),
    "gap": (0, math.inf),
    "val_every": (1, math.inf),
    "val_max_planes": (1, math.inf),
    "threads": (1, math.inf),
}
_OPTIONAL = ("iterations", "minutes", "val_every", "val_every_s", "threads")
#: name: interval of the real-valued settings, "[" / "]" closed, "(" / ")" open.
_NUMBER_RANGES = {
    "lr": "(0, inf)",
    "momentum": "[0, 1)",
    "weight_decay": "[0, inf)",
    "warmup": "[0, 1)",
    "minutes": "(0, inf)",
    "w0": "[0, inf)",
    "sigma": "(0, inf)",
    "val_fraction": "[0, 1)",
    "val_every_s": "(0, inf]",
    "preview_every_s": "[0, inf]",
    "refresh_every_s": "[0, inf]",
}


def _is_integer(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _in_interval(value: Any, interval: str) -> bool:
    """True for a real ``value`` inside ``interval``, e.g. ``"(0, inf)"`` or ``"[0, 1)"``."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        return False
    low, high = (float(text) for text in interval[1:-1].split(","))
    above = value > low if interval[0] == "(" else value >= low
    below = value < high if interval[-1] == ")" else value <= high
    return above and below  # False for NaN


#: Named presets. "fast" is the measured CPU default (docs/training.md); "paper" is
#: the recipe of Ronneberger et al. 2015: 64 base channels, depth 4, dropout 0.5,
#: one large 572-px tile per step, SGD with momentum 0.99; "dense" is "fast" for
#: tissue that cells fill (EM): a 2 px gap each side, best model and segmentation
#: settings chosen by the Rand error (measured on ISBI 2012).
PRESETS: dict[str, TrainSettings] = {
    "fast": TrainSettings(),
    "paper": TrainSettings(
        base_channels=64,
        depth=4,
        dropout=0.5,
        tile_size=572,
        batch_size=1,
        optimizer="sgd",
        lr=0.01,
        momentum=0.99,
        schedule="constant",
        warmup=0.0,
        minutes=None,
        iterations=10_000,
        precision="fp32",
        channels_last=False,
    ),
    # dense tissue (EM): cells fill the image, split by thin membranes
    "dense": TrainSettings(gap=2, select_by="rand_error"),
}


# -- device and run settings --------------------------------------------------------
def run_settings(model: UNet, device: torch.device, settings: TrainSettings) -> RunSettings:
    """How training runs ``model`` on ``device``: the precision and memory format that
    :mod:`napari_unet.hardware` measured fastest for this network size on this machine
    (the same choice as inference), unless ``settings`` fixes them."""
    needs_choice = settings.precision == "auto" or settings.channels_last is None
    chosen = hardware.choose(model, device).settings if needs_choice else RunSettings()
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

    def sample(self, batch: int, patch: int):
        """(B, C, P, P) images, (B, P, P) targets and weights centred on annotated pixels."""
        images, targets, weights = [], [], []
        for index in self.rng.choice(len(self.images), size=batch, p=self.plane_probability):
            height, width = self.shapes[index]
            annotated = self.annotated[index]
            if annotated is None:
                centre = self.rng.integers(height * width)
            else:
                centre = self.rng.choice(annotated)
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
    logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor
) -> torch.Tensor:
    """Pixel-wise softmax cross-entropy weighted by ``weight``, normalised by its sum."""
    loss = F.cross_entropy(logits.float(), target, reduction="none")
    return (loss * weight).sum() / weight.sum().clamp_min(1.0)


# -- validation (through the one prediction path) ----------------------------------
def evaluate(predictor: Predictor, planes: Sequence[Plane]) -> dict[str, float]:
    """Validation metrics of ``predictor``'s model on held-out planes, restricted to
    their annotated region, with the model's stored post-processing.

    Instance: ``ap50`` (TP/(TP+FP+FN) at IoU 0.5 over all planes), ``iou``
    (foreground IoU), ``rand_error`` (foreground-restricted). Semantic: ``iou``
    (mean over classes) and ``pixel_error``.
    """
    probabilities, truths, scorer = _validation_set(predictor, planes)
    return scorer(truths, [predictor.to_labels(p) for p in probabilities])


def tune_postprocess(
    predictor: Predictor, planes: Sequence[Plane], select_by: str
) -> dict[str, float]:
    """Instance threshold and growth that score best by ``select_by`` on validation
    planes (see :func:`napari_unet.postprocess.tune_instances`), with the metrics there."""
    probabilities, truths, scorer = _validation_set(predictor, planes)
    found = tune_instances(
        [p[1] for p in probabilities],
        truths,
        lambda truths, preds: score(scorer(truths, preds), select_by),
    )
    post = predictor.postprocess(threshold=found["threshold"], expand=found["expand"])
    preds = [predictor.to_labels(p, post) for p in probabilities]
    return {"threshold": found["threshold"], "expand": found["expand"], **scorer(truths, preds)}


def _validation_set(predictor: Predictor, planes: Sequence[Plane]):
    """Probabilities (n_classes, Y, X) of each (normalised) plane, their truths cropped
    to the annotated region's box, and ``scorer(truths, labels)`` -> metrics, which
    crops whole-plane labels to the same boxes and masks them to the region (semantic
    labels are compared as painted: class id + 1)."""
    from . import metrics

    task = predictor.model.info.task
    probabilities, truths, boxes = [], [], []
    for plane in planes:
        region = plane.weight > 0
        rows, cols = np.flatnonzero(region.any(1)), np.flatnonzero(region.any(0))
        box = np.s_[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
        probs = predictor.probabilities(plane.image, channel_axis=0, normalized=True)
        probabilities.append(probs)
        truths.append(np.where(region[box], plane.labels[box], 0))
        boxes.append((box, region[box]))

    def scorer(gts, labels) -> dict[str, float]:
        if task == "semantic":  # class ids as painted: 1 = background, 2.. = classes
            labels = [lab + 1 for lab in labels]
        preds = [np.where(inside, lab[box], 0) for lab, (box, inside) in zip(labels, boxes)]
        if task == "semantic":
            gt = np.concatenate([g.ravel() for g in gts])
            pr = np.concatenate([p.ravel() for p in preds])
            annotated = gt > 0
            ious = [
                np.sum((gt == c) & (pr == c) & annotated)
                / np.sum(((gt == c) | (pr == c)) & annotated)
                for c in np.unique(gt[annotated])
            ]
            return {
                "iou": float(np.mean(ious)),
                "pixel_error": float(np.mean(gt[annotated] != pr[annotated])),
            }
        return {
            "ap50": float(metrics.average_precision(gts, preds, iou=0.5)),
            "iou": float(np.mean([metrics.foreground_iou(g, p) for g, p in zip(gts, preds)])),
            "rand_error": float(np.mean([metrics.rand_error(g, p) for g, p in zip(gts, preds)])),
        }

    return probabilities, truths, scorer


def score(metrics: dict[str, float], select_by: str = "ap50") -> float:
    """The number the best model maximises: AP@0.5 (or minus the Rand error, for
    ``select_by="rand_error"``) for instances, mean IoU for classes."""
    if "ap50" not in metrics:
        return metrics.get("iou", 0.0)
    return -metrics["rand_error"] if select_by == "rand_error" else metrics["ap50"]


# -- the engine --------------------------------------------------------------------
def _initial_model(init_model, settings, in_channels, n_classes, mode, device) -> UNet:
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
    if isinstance(init_model, (str, Path)):
        from .model_io import load_model

        init_model = load_model(init_model, device=str(device))
    model = copy.deepcopy(init_model).to(device)
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


def _save(model: UNet, path: Path) -> None:
    """Save a CPU copy atomically; a failure (e.g. a full disk) leaves older files intact."""
    from .model_io import save_model

    snapshot = copy.deepcopy(model).to("cpu").to(memory_format=torch.contiguous_format)
    try:
        save_model(snapshot, path)
    except OSError as error:
        reason = error.strerror or str(error)
        raise OSError(f"could not save the model to {path}: {reason}") from error


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


def train_iter(
    images: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    *,
    masks: Sequence[np.ndarray | None] | None = None,
    mode: str = "instance",
    settings: TrainSettings | None = None,
    init_model: UNet | str | Path | None = None,
    out_dir: str | Path | None = None,
    should_stop: Callable[[], bool] | None = None,
    refresh: Callable[[], tuple | None] | None = None,
    channel_axis: int | None = None,
) -> Iterator[dict[str, Any]]:
    """Train a U-Net, yielding one record per optimiser step; returns the best model.

    Args:
        images, labels, masks: training pairs (see :func:`napari_unet.data.prepare_planes`).
        mode: "instance" or "semantic" (scribbles).
        settings: a :class:`TrainSettings` (default ``PRESETS["fast"]``).
        init_model: a UNet or model file to fine-tune/resume from (its width, depth,
            normalisation and classes are kept; the optimiser starts afresh).
        out_dir: if given, ``best.safetensors`` (best validation score) and ``last.safetensors``
            are written there; ``best`` on every improvement, both at the end.
        should_stop: polled before every step; True ends training gracefully.
        refresh: called every ``settings.refresh_every_s``; may return new
            ``(images, labels, masks)`` (e.g. the user painted more). Only changed
            planes get new weight maps.

    Yields:
        dict with ``iteration``, ``loss``, ``lr``, ``elapsed`` (s), ``progress``
        (0..1), ``val`` (metrics dict, when computed), ``best`` (best validation
        score so far), ``preview_model`` (an eval-mode copy, every
        ``preview_every_s``), ``notice`` (a sentence, after a ``refresh`` whose data
        could not be used, e.g. all labels erased: training goes on with the
        previous data; also issued as a RuntimeWarning).

    Returns:
        the best model by validation (the last one without validation data), on
        the training device, in eval mode. For instances, its ``info.postprocess``
        holds the threshold and growth that scored best by ``settings.select_by``
        on the validation planes (:func:`tune_postprocess`).
    """
    settings = settings or PRESETS["fast"]
    should_stop = should_stop or (lambda: False)
    device = choose_device(None if settings.device == "auto" else settings.device)
    if settings.threads:
        torch.set_num_threads(settings.threads)
    if settings.seed is not None:
        torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    generator = torch.Generator(device=device)
    generator.manual_seed(int(rng.integers(2**62)))

    n_classes = None
    norm = settings.normalization
    if init_model is not None and not isinstance(init_model, (str, Path)):
        n_classes, norm = init_model.config.n_classes, init_model.info.normalization
    elif isinstance(init_model, (str, Path)):
        from .model_io import load_model

        init_model = load_model(init_model, device="cpu")
        n_classes, norm = init_model.config.n_classes, init_model.info.normalization
    cache = WeightCache()

    def load(images, labels, masks):
        return split_planes(
            images, labels, masks, settings=settings, mode=mode, normalization=norm,
            channel_axis=channel_axis, n_classes=n_classes, cache=cache,
        )  # fmt: skip

    train_planes, val_planes, in_channels, n_classes = load(images, labels, masks)
    model = _initial_model(init_model, settings, in_channels, n_classes, mode, device)
    run = run_settings(model, device, settings)
    dtype = PRECISIONS[run.precision] if run.precision != "fp32" else None
    model.info.training = {
        **settings.to_dict(), "gap": settings.gap, "mode": mode,
        "precision_used": run.precision, "channels_last_used": run.channels_last,
        "device_used": str(device),
    }  # fmt: skip
    model = model.to(memory_format=run.memory_format)
    model.train()
    source = TileSource(train_planes, device, rng)

    if settings.optimizer == "adam":
        optimizer = torch.optim.Adam(
            model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay
        )
    else:
        optimizer = torch.optim.SGD(
            model.parameters(),
            lr=settings.lr,
            momentum=settings.momentum,
            weight_decay=settings.weight_decay,
        )
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    out_dir = Path(out_dir) if out_dir is not None else None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)

    input_size = settings.tile_size
    output_size = model.config.output_size(input_size)
    patch = settings.augment.patch_size(input_size)
    budget_s = settings.minutes * 60 if settings.minutes is not None else math.inf
    budget_it = settings.iterations if settings.iterations is not None else math.inf

    best_score, best_state, best_metrics = -math.inf, None, None
    history: list[dict[str, float]] = []
    start = time.perf_counter()
    last_preview = last_refresh = start
    next_val = start + (settings.val_every_s or math.inf)
    iteration, loss_value = 0, float("nan")

    def progress_now() -> float:
        elapsed = time.perf_counter() - start
        return min(1.0, max(iteration / budget_it, elapsed / budget_s))

    def validate() -> dict[str, float]:
        nonlocal best_score, best_state, best_metrics
        metrics = evaluate(Predictor(model, device, run), val_planes)
        history.append({"iteration": iteration, "elapsed": time.perf_counter() - start, **metrics})
        if score(metrics, settings.select_by) > best_score:
            best_score, best_metrics = score(metrics, settings.select_by), metrics
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            if out_dir is not None:
                _save(
                    _with_history(model, iteration, start, best_metrics, history),
                    out_dir / BEST_NAME,
                )
        return metrics

    notice = None
    while progress_now() < 1.0 and not should_stop():
        now = time.perf_counter()
        if refresh is not None and now - last_refresh >= settings.refresh_every_s:
            last_refresh = now
            new = refresh()
            if new is not None:
                try:
                    train_planes, val_planes, _, _ = load(*new)
                    source = TileSource(train_planes, device, rng)
                except ValueError as error:  # e.g. all labels erased: keep the last good data
                    notice = f"the new annotation was not used ({error}); training continues"
                    notice += " on the previous one"
                    warnings.warn(notice, RuntimeWarning, stacklevel=2)

        fraction = progress_now()
        lr = _learning_rate(settings, fraction)
        for group in optimizer.param_groups:
            group["lr"] = lr
        sources = source.sample(settings.batch_size, patch)
        x, target, weight = augment(*sources, input_size, output_size, settings.augment, generator)
        x = x.contiguous(memory_format=run.memory_format)
        with run.autocast(device):
            logits = model(x)
        loss = weighted_cross_entropy(logits, target, weight)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        iteration += 1
        loss_value = float(loss.detach())
        if not math.isfinite(loss_value):
            raise FloatingPointError(
                f"training diverged at step {iteration} (loss {loss_value}); lower the lr"
            )

        now = time.perf_counter()
        record: dict[str, Any] = {
            "iteration": iteration,
            "loss": loss_value,
            "lr": lr,
            "elapsed": now - start,
            "progress": progress_now(),
        }
        if notice is not None:
            record["notice"], notice = notice, None
        due_time = now >= next_val
        due_step = settings.val_every is not None and iteration % settings.val_every == 0
        if val_planes and (due_time or due_step):
            record["val"] = validate()
            spent, now = time.perf_counter() - now, time.perf_counter()
            # validation takes at most ~10 % of the time, however slow it is
            next_val = now + max(settings.val_every_s or math.inf, 9 * spent)
        if now - last_preview >= settings.preview_every_s:
            last_preview = now
            record["preview_model"] = _snapshot(model)
        record["best"] = best_score if best_state is not None else None
        yield record

    if val_planes and iteration > 0:
        final = validate()
        yield {
            "iteration": iteration,
            "loss": loss_value,
            "lr": 0.0,
            "elapsed": time.perf_counter() - start,
            "progress": 1.0,
            "val": final,
            "best": best_score,
        }
    _with_history(model, iteration, start, best_metrics, history)
    if out_dir is not None:
        _save(model, out_dir / LAST_NAME)
    if best_state is not None:
        model.load_state_dict(best_state)
    if mode == "instance" and val_planes and iteration > 0:
        # the segmentation threshold and growth that serve the best model best
        tuned = tune_postprocess(Predictor(model, device, run), val_planes, settings.select_by)
        model.info.postprocess = {"threshold": tuned["threshold"], "expand": tuned["expand"]}
        model.info.history["postprocess_val"] = tuned
    if out_dir is not None and (best_state is None or model.info.postprocess):
        _save(model, out_dir / BEST_NAME)
    return _snapshot(model)


def _with_history(model, iteration, start, best_metrics, history) -> UNet:
    model.info.history = {
        "iterations": iteration,
        "seconds": round(time.perf_counter() - start, 1),
        "best_val": best_metrics,
        "val": history,
    }
    return model


def _snapshot(model: UNet) -> UNet:
    snapshot = copy.deepcopy(model).eval()
    return snapshot.to(memory_format=torch.contiguous_format)


def _learning_rate(settings: TrainSettings, progress: float) -> float:
    if settings.warmup > 0 and progress < settings.warmup:
        return settings.lr * max(progress / settings.warmup, 0.01)
    if settings.schedule == "constant":
        return settings.lr
    span = (progress - settings.warmup) / max(1e-9, 1 - settings.warmup)
    return settings.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, span)))


def train(images, labels, **kwargs) -> UNet:
    """Drain :func:`train_iter` and return the best model."""
    return drain(train_iter(images, labels, **kwargs))
