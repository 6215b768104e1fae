"""Self-describing, code-free model files (safetensors).

A model file is one safetensors file: the network's ``state_dict`` as tensors,
and in the header's string metadata (JSON text) everything needed to use them::

    format              "napari-unet"
    format_version      "1"
    napari_unet_version package version that wrote the file
    config              UNetConfig as JSON (architecture)
    info                ModelInfo as JSON (task, class names, normalisation,
                        training settings, training history)

safetensors stores raw tensor bytes behind a JSON header, so opening a file
never runs code, unlike a pickled ``torch.save`` file, which can run arbitrary
code when unpickled; such files are refused without being unpickled.
Saving is atomic: the file is written to a temporary file in the same folder,
then renamed over the target, so a failure mid-save leaves the previous file.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .config import ModelInfo, UNetConfig
from .model import UNet

FORMAT = "napari-unet"
FORMAT_VERSION = 1
SUFFIX = ".safetensors"

# First bytes of pickle-based PyTorch files: zip archive (torch >= 1.6) or raw pickle.
_PICKLE_MAGIC = (b"PK\x03\x04", b"\x80")
_MAX_HEADER_BYTES = 100_000_000  # safetensors' own limit on the JSON header


class ModelFileError(ValueError):
    """A file that cannot be loaded as a napari-unet model (message: one sentence)."""


def save_model(model: UNet, path: str | os.PathLike) -> Path:
    """Write ``model`` (weights, config, info) atomically to ``path``; returns the path.

    Raises:
        ValueError: when ``model.info`` holds values that are not JSON-serialisable.
    """
    from . import __version__

    path = Path(path)
    metadata = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "napari_unet_version": __version__,
        "config": json.dumps(model.config.to_dict()),
        "info": _to_json(model.info.to_dict()),
    }
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        # mkstemp makes the file private (0600): give it the usual permissions instead
        os.chmod(tmp, path.stat().st_mode & 0o777 if path.exists() else 0o644)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> UNet:
    """Rebuild the model saved in ``path`` on ``device``, in eval mode.

    Raises:
        ModelFileError: one sentence naming the file and what is wrong with it
            (missing, not a model, a pickle file, truncated, from a newer version).
    """
    path = Path(path)
    config, info = read_model_info(path)
    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            state = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118
    except (SafetensorError, OSError) as err:
        raise ModelFileError(f"{path} is damaged and its weights cannot be read ({err})") from err
    model = UNet(config, info)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ModelFileError(
            f"the weights in {path} do not fit the network described in the same file"
        ) from err
    return model.to(device).eval()


def read_model_info(path: str | os.PathLike) -> tuple[UNetConfig, ModelInfo]:
    """Config and info of a model file, without reading its weights (cheap)."""
    metadata = _read_metadata(Path(path))
    path = Path(path)
    try:
        version = int(metadata.get("format_version", ""))
    except ValueError:
        raise ModelFileError(f"{path} has no valid model format version") from None
    if version > FORMAT_VERSION:
        writer = metadata.get("napari_unet_version", "unknown")
        raise ModelFileError(
            f"{path} was written by a newer napari-unet ({writer}, model format {version}); "
            f"this version reads format {FORMAT_VERSION} and older: please upgrade napari-unet"
        )
    try:
        config = UNetConfig.from_dict(json.loads(metadata["config"]))
        info = ModelInfo.from_dict(json.loads(metadata["info"]))
    except (KeyError, TypeError, ValueError) as err:
        raise ModelFileError(f"{path} has an invalid model description ({err})") from err
    return config, info


def _read_metadata(path: Path) -> dict[str, str]:
    """The napari-unet metadata of a safetensors file, checked before any parsing."""
    if not path.is_file():
        what = "is a folder, not a model file" if path.is_dir() else "does not exist"
        raise ModelFileError(f"model file {path} {what}")
    size = path.stat().st_size
    with open(path, "rb") as f:
        prefix = f.read(8)
        header_size = int.from_bytes(prefix, "little") if len(prefix) == 8 else -1
        if not 2 <= header_size <= _MAX_HEADER_BYTES or f.read(1) != b"{":
            # only now: a safetensors header size may itself start with byte 0x80
            if prefix.startswith(_PICKLE_MAGIC):
                raise ModelFileError(
                    f"{path} is a pickled PyTorch file, which can run arbitrary code when "
                    f"opened, so it is refused: napari-unet only opens its own {SUFFIX} models"
                )
            raise ModelFileError(f"{path} is not a napari-unet model file (not safetensors)")
        if 8 + header_size > size:
            raise ModelFileError(f"{path} is truncated (incomplete file; save it again)")
        f.seek(8)
        try:
            header = json.loads(f.read(header_size))
            data_end = max(
                (int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"),
                default=0,
            )
        except (ValueError, TypeError, KeyError, IndexError, AttributeError):
            raise ModelFileError(f"{path} has a damaged header (not a model file)") from None
    if 8 + header_size + data_end > size:
        raise ModelFileError(f"{path} is truncated (incomplete file; save it again)")
    metadata = header.get("__metadata__") or {}
    if metadata.get("format") != FORMAT:
        raise ModelFileError(
            f"{path} is a safetensors file but not a napari-unet model (no model description)"
        )
    return metadata


def _to_json(data: dict[str, Any]) -> str:
    """JSON text of ``data``; numpy scalars/arrays and paths become plain values."""

    def plain(value: Any) -> Any:
        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, (np.ndarray, torch.Tensor)):
            return value.tolist()
        if isinstance(value, os.PathLike):
            return os.fspath(value)
        raise TypeError(type(value).__name__)

    try:
        return json.dumps(data, default=plain, allow_nan=True)
    except TypeError as err:
        raise ValueError(f"model info holds a value that cannot be saved: {err}") from err
