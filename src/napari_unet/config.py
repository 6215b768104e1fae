"""Network configuration and the U-Net's size arithmetic (no torch needed).

The U-Net of Ronneberger et al. (2015) uses unpadded 3x3 convolutions, so every
level loses 4 px, and 2x2 max-pooling, which must see an even size. Valid input
edges for depth 4 are ``16 b + 124`` (b >= 4); the output is ``input - 184`` and
``92`` px of context are consumed on every side. Everything in the package that
needs a tile size asks this module instead of using ad-hoc numbers.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

TASKS = ("instance", "semantic")

#: Largest accepted value of each UNetConfig field: far beyond any useful network, small
#: enough that a network (or a model file claiming one) cannot ask for absurd memory.
LIMITS = {"in_channels": 256, "n_classes": 1024, "base_channels": 512, "depth": 8}
MAX_CLASSES = LIMITS["n_classes"]


@dataclass(frozen=True)
class UNetConfig:
    """Architecture of a U-Net; the defaults are the paper's network.

    Attributes:
        in_channels: image channels fed to the network.
        n_classes: output classes (softmax over this axis).
        base_channels: feature maps at the first level; doubled per level.
        depth: number of 2x2 poolings (4 in the paper: 64 -> 1024 channels).
        dropout: drop probability at the end of the contracting path.
    """

    in_channels: int = 1
    n_classes: int = 2
    base_channels: int = 64
    depth: int = 4
    dropout: float = 0.5

    def __post_init__(self) -> None:
        for name in ("in_channels", "n_classes", "base_channels", "depth"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"UNetConfig.{name} must be a positive integer, got {value!r}")
            if value > LIMITS[name]:
                raise ValueError(
                    f"UNetConfig.{name} is {value}, more than the {LIMITS[name]} supported"
                )
        if self.n_classes < 2:
            raise ValueError(f"UNetConfig.n_classes must be at least 2, got {self.n_classes}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"UNetConfig.dropout must be in [0, 1), got {self.dropout}")

    # -- serialisation -------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> UNetConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown UNetConfig fields: {sorted(unknown)}")
        return cls(**data)

    def check_channels(self, n_channels: int) -> None:
        """Raise ValueError unless an image with ``n_channels`` channels fits this network."""
        if n_channels != self.in_channels:
            raise ValueError(
                f"the model expects images with {self.in_channels} channel(s) but this image "
                f"has {n_channels}; choose the image (or channel axis) the model was trained on"
            )

    # -- size arithmetic -----------------------------------------------------------
    @property
    def pool_factor(self) -> int:
        """Total down-sampling, ``2**depth`` (16 at depth 4)."""
        return 2**self.depth

    @property
    def shrink(self) -> int:
        """Pixels lost from input to output edge (184 at depth 4)."""
        size = self.min_input_size()
        return size - self.output_size(size)

    @property
    def context_margin(self) -> int:
        """Context consumed on each side of a tile (92 px at depth 4)."""
        return self.shrink // 2

    def _walk(self, size: int) -> int | None:
        """Output edge for an input edge, or None where the size is not valid."""
        for _ in range(self.depth):
            size -= 4
            if size <= 0 or size % 2:
                return None
            size //= 2
        size -= 4
        if size <= 0:
            return None
        for _ in range(self.depth):
            size = 2 * size - 4
            if size <= 0:
                return None
        return size

    def is_valid_input(self, size: int) -> bool:
        """True when an input edge of ``size`` px passes every pooling evenly."""
        return self._walk(int(size)) is not None

    def output_size(self, size: int) -> int:
        """Output edge for a valid input edge; ValueError (naming neighbours) otherwise."""
        out = self._walk(int(size))
        if out is None:
            raise ValueError(self._invalid_message(size))
        return out

    def min_input_size(self) -> int:
        """Smallest valid input edge (188 at depth 4, giving a 4 px output)."""
        size = 1
        while self._walk(size) is None:
            size += 1
        return size

    def valid_input_sizes(self, low: int, high: int) -> list[int]:
        """All valid input edges in ``[low, high]``, ascending."""
        first = self.min_input_size()
        step = self.pool_factor
        start = max(first, first + -(-(low - first) // step) * step)
        return list(range(start, high + 1, step))

    def input_size_for_output(self, output: int) -> int:
        """Smallest valid input edge whose output edge is at least ``output`` px."""
        if output < 1:
            raise ValueError(f"wanted output size must be positive, got {output}")
        size = self.min_input_size()
        while self.output_size(size) < output:
            size += self.pool_factor
        return size

    def nearest_valid_inputs(self, size: int) -> tuple[int | None, int]:
        """Valid input edges at or just below (None if none) and just above ``size``."""
        first, step = self.min_input_size(), self.pool_factor
        if size < first:
            return (None, first)
        below = first + (size - first) // step * step
        return (below, below) if below == size else (below, below + step)

    def _invalid_message(self, size: int) -> str:
        below, above = self.nearest_valid_inputs(int(size))
        nearest = f"{below} or {above}" if below is not None else f"{above}"
        return (
            f"input size {size} px is not valid for a U-Net of depth {self.depth}: every "
            f"2x2 pooling must see an even size (valid: {self.min_input_size()} + "
            f"{self.pool_factor}k); nearest valid sizes: {nearest}"
        )


@dataclass
class ModelInfo:
    """What a trained model needs besides its weights to be used correctly.

    Attributes:
        task: "instance" (foreground/background, objects split by connected
            components) or "semantic" (one class per output channel).
        class_names: one name per output class, background first.
        normalization: per-image percentile normalisation, ``{"low": 1.0,
            "high": 99.8}`` percentiles mapped to 0 and 1.
        training: the training settings used (preset, tile size, ...).
        history: summary of training (iterations, seconds, validation metrics).
        postprocess: label settings chosen on validation data by training
            (``threshold``, ``expand`` px); segmenting uses them unless told otherwise.
    """

    task: str = "instance"
    class_names: list[str] = field(default_factory=lambda: ["background", "foreground"])
    normalization: dict[str, float] = field(default_factory=lambda: {"low": 1.0, "high": 99.8})
    training: dict[str, Any] = field(default_factory=dict)
    history: dict[str, Any] = field(default_factory=dict)
    postprocess: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        if len(self.class_names) < 2:
            raise ValueError(f"class_names needs at least 2 names, got {self.class_names!r}")
        low, high = self.normalization.get("low"), self.normalization.get("high")
        if low is None or high is None or not 0 <= low < high <= 100:
            raise ValueError(
                "normalization must give percentiles 0 <= low < high <= 100, "
                f"got {self.normalization!r}"
            )

    @classmethod
    def default_for(cls, n_classes: int) -> ModelInfo:
        """Info for an untrained network: instance task for 2 classes, else semantic."""
        if n_classes == 2:
            return cls()
        names = ["background", *(f"class {i}" for i in range(1, n_classes))]
        return cls(task="semantic", class_names=names)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelInfo:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})
