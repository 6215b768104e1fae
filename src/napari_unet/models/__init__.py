"""Models shipped inside the package, usable by name wherever a model file is.

``nuclei``: a U-Net (``fast`` preset: 16 base channels, depth 3) trained on the
fluorescence nuclei of the DSB 2018 stage 1 training set (CC0) by
``scripts/train_builtin_nuclei.py``; its training record and its accuracy on the
held-out images are stored in the file itself (``info.training``,
``info.history["held_out"]``) and shown by :func:`describe`.

No torch here: names are resolved to files, which :mod:`napari_unet.model_io` loads.
"""

from __future__ import annotations

import os
from pathlib import Path

FOLDER = Path(__file__).resolve().parent

#: name -> (file in this folder, one-line description, training data and licence)
BUILTIN: dict[str, tuple[str, str, str]] = {
    "nuclei": (
        "nuclei.safetensors",
        "nuclei in fluorescence images (2D, one channel)",
        "DSB 2018 stage 1 training images (fluorescence), CC0",
    ),
}


def builtin_path(name: str) -> Path | None:
    """The file of built-in model ``name``, or None when ``name`` is not one."""
    entry = BUILTIN.get(str(name))
    return FOLDER / entry[0] if entry else None


def resolve(source: str | os.PathLike) -> Path:
    """The model file for ``source``: an existing path as given, else a built-in name's
    file (a file called ``nuclei`` in the working folder wins over the built-in)."""
    path = Path(source)
    if not path.exists() and builtin_path(str(source)) is not None:
        return builtin_path(str(source))
    return path


def describe(name: str) -> str:
    """One line: what the built-in model is for, its data and licence, and the held-out
    accuracy stored in its file."""
    from ..model_io import read_model_info

    _, what, data = BUILTIN[name]
    held_out = read_model_info(builtin_path(name))[1].history.get("held_out") or {}
    scores = ", ".join(
        f"{label} {held_out[key]:.3f}"
        for key, label in (("ap50", "AP@0.5"), ("ap75", "AP@0.75"))
        if key in held_out
    )
    accuracy = f"; held-out {scores} on {held_out.get('images', '?')} images" if scores else ""
    return f"built-in '{name}': {what}; trained on {data}{accuracy}"
