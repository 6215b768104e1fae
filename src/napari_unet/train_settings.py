"""Training settings: :class:`TrainSettings` (everything that defines a run, with its
validation) and the named :data:`PRESETS`. See docs/training.md for the measurements
behind the defaults."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .augment import AugmentSettings
from .config import UNetConfig

SELECT_BY = ("ap50", "rand_error")


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
        ema: decay per step of an exponential moving average of the weights (e.g.
            0.99: the last ~100 steps count); validation, the preview, the best and
            the returned model then use the averaged weights. 0: off.
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
    ema: float = 0.0

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
    "ema": "[0, 1)",
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
