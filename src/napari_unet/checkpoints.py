"""The files a training run keeps in its folder, and reading them back to resume.

- ``best.safetensors``: the best model by validation (on every improvement).
- ``last.safetensors``: the model after the latest step written (at every validation and
  at the end).
- ``last.train_state.pt``: what resuming needs besides the weights: the optimiser's
  state dict, the gradient scaler's, the step count, the optimiser's name and how many
  ranks trained. DistributedDataParallel keeps the optimiser state identical on every
  rank, so a run may resume on another number of ranks.

Every file is written atomically (:mod:`napari_unet.atomic_files`): a kill or a full
disk leaves the previous version intact. The state is written before the model, and
:func:`load_train_state` refuses a pair from different steps.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch

from .atomic_files import atomic_write
from .model import UNet

BEST_NAME = "best.safetensors"
LAST_NAME = "last.safetensors"
TRAIN_STATE_NAME = "last.train_state.pt"


def save_model_copy(model: UNet, path: Path) -> None:
    """Save a CPU copy atomically; a failure (e.g. a full disk) leaves older files intact.

    Raises:
        OSError: one sentence naming the file and the reason.
    """
    from .model_io import save_model

    snapshot = copy.deepcopy(model).to("cpu").to(memory_format=torch.contiguous_format)
    try:
        save_model(snapshot, path)
    except OSError as error:
        reason = error.strerror or str(error)
        raise OSError(f"could not save the model to {path}: {reason}") from error


def save_last(
    model: UNet,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    *,
    iteration: int,
    world_size: int,
    folder: Path,
    averaged: dict[str, Any] | None = None,
) -> None:
    """Write ``last.train_state.pt`` then ``last.safetensors`` into ``folder``;
    ``averaged``: the moving average of the weights (``AveragedModel.state_dict()``,
    with ``TrainSettings.ema``), kept so that a resumed run carries it on."""
    state = {
        "iteration": iteration,
        "optimizer_name": type(optimizer).__name__.lower(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "world_size": world_size,
    }
    if averaged is not None:
        state["ema"] = averaged
    path = folder / TRAIN_STATE_NAME
    try:
        with atomic_write(path) as temporary:
            torch.save(state, temporary)
    except OSError as error:
        raise OSError(f"could not save the training state to {path}: {error}") from error
    save_model_copy(model, folder / LAST_NAME)


def load_train_state(checkpoint: str | Path) -> tuple[Path, dict[str, Any]]:
    """The last model file and the training state of a run's ``checkpoint`` folder (or
    of its ``last.safetensors``).

    Raises:
        ValueError: a file is missing, or the two files are from different steps.
    """
    from .model_io import read_model_info

    checkpoint = Path(checkpoint)
    folder = checkpoint.parent if checkpoint.is_file() else checkpoint
    model_path, state_path = folder / LAST_NAME, folder / TRAIN_STATE_NAME
    for path in (model_path, state_path):
        if not path.is_file():
            raise ValueError(f"cannot resume from {checkpoint}: {path} does not exist")
    state = torch.load(state_path, map_location="cpu", weights_only=True)
    steps = read_model_info(model_path)[1].history.get("iterations")
    if steps != state["iteration"]:
        raise ValueError(
            f"cannot resume from {folder}: {LAST_NAME} is from step {steps} but "
            f"{TRAIN_STATE_NAME} from step {state['iteration']}"
        )
    return model_path, state
