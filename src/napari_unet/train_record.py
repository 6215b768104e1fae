"""The record :func:`napari_unet.training.train_iter` yields after each optimiser step
(torch-free, so that the CLI and the widgets can name it without importing torch)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .model import UNet


@dataclass(frozen=True)
class StepRecord:
    """One optimiser step of a training run.

    Attributes:
        iteration: steps done so far (1 after the first).
        loss: the step's weighted cross-entropy (per annotated pixel, unitless).
        lr: the learning rate the step used (0 for the closing validation record).
        elapsed: seconds since training started (data preparation excluded).
        progress: share of the budget used, 0..1.
        val: validation metrics (e.g. ``{"ap50", "iou", "rand_error"}``) when they
            were computed at this step, else None.
        best: the best validation score so far (see :func:`napari_unet.validation.score`),
            None before the first validation.
        preview_model: an eval-mode copy of the model, every ``preview_every_s``, else None.
        notice: a sentence, after a refresh whose data could not be used (training
            goes on with the previous data), else None.
    """

    iteration: int
    loss: float
    lr: float
    elapsed: float
    progress: float
    val: dict[str, float] | None = None
    best: float | None = None
    preview_model: UNet | None = None
    notice: str | None = None
