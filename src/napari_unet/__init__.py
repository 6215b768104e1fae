"""napari-unet: train and run the U-Net of Ronneberger et al. (2015) in napari.

The public API is imported lazily, so ``import napari_unet`` loads neither torch
nor Qt; the first use of a name imports the module that defines it.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("napari-unet")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

# public name -> module that defines it (torch-free modules marked "numpy")
_LAZY = {
    "UNetConfig": "config",  # numpy
    "ModelInfo": "config",  # numpy
    "UNet": "model",
    "save_model": "model_io",
    "load_model": "model_io",
    "ModelFileError": "model_io",
    "read_model_info": "model_io",
    "weight_map": "weights",  # numpy
    "weight_map_components": "weights",  # numpy
    "predict": "inference",
    "segment": "inference",
    "predict_iter": "inference",
    "segment_iter": "inference",
    "segment_dataset": "distributed",
    "train": "training",
    "train_iter": "training",
    "TrainSettings": "train_settings",
    "PRESETS": "train_settings",
    "StepRecord": "train_record",  # no torch
    "make_sample": "sample_data",  # numpy
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'napari_unet' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
