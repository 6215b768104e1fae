"""Where the network runs: CUDA, then Apple MPS, then CPU, unless the caller says otherwise.

``NAPARI_UNET_DEVICE`` (e.g. ``cpu`` or ``cuda:1``) overrides the automatic choice
for every caller that does not name a device itself.
"""

from __future__ import annotations

import os

import torch

ENV_VAR = "NAPARI_UNET_DEVICE"


def available_devices() -> list[str]:
    """Device names usable on this machine, best first (always ends with ``"cpu"``)."""
    names = (
        [f"cuda:{i}" for i in range(torch.cuda.device_count())]
        if torch.cuda.is_available()
        else []
    )
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        names.append("mps")
    return [*names, "cpu"]


def choose_device(device: str | torch.device | None = None) -> torch.device:
    """The device to run on: ``device`` if given, else ``$NAPARI_UNET_DEVICE``, else the best.

    Raises:
        ValueError: the requested device does not exist on this machine.
    """
    requested = device if device is not None else os.environ.get(ENV_VAR) or None
    if requested is None:
        return torch.device(available_devices()[0])
    try:
        chosen = torch.device(requested)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"unknown device {requested!r}: {error}") from None
    if chosen.type == "cuda":
        index = chosen.index or 0
        if not torch.cuda.is_available() or index >= torch.cuda.device_count():
            raise ValueError(
                f"device {requested!r} is not available (have: {available_devices()})"
            )
    elif chosen.type == "mps" and "mps" not in available_devices():
        raise ValueError(f"device {requested!r} is not available (have: {available_devices()})")
    elif chosen.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"unsupported device {requested!r} (use cpu, cuda[:N] or mps)")
    return chosen


def empty_cache(device: torch.device) -> None:
    """Give cached accelerator memory back after a run (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        torch.mps.empty_cache()
