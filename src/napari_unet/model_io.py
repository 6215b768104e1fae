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
then renamed over the target, so a failure mid-save leaves the previous file
(:mod:`napari_unet.atomic_files`; abandoned temporary files are removed by the
next save). Loading checks the header's description against its tensor shapes
before building the network, so a small crafted file cannot claim a huge one.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .atomic_files import atomic_write, check_can_create
from .config import ModelInfo, UNetConfig
from .devices import choose_device
from .model import UNet

FORMAT = "napari-unet"
FORMAT_VERSION = 1
SUFFIX = ".safetensors"

# First bytes of pickle-based PyTorch files: zip archive (torch >= 1.6) or raw pickle.
_PICKLE_MAGIC = (b"PK\x03\x04", b"\x80")
_MAX_HEADER_BYTES = 100_000_000  # safetensors' own limit on the JSON header
_FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")


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
    with atomic_write(path) as tmp:
        try:
            save_file(tensors, tmp, metadata=metadata)
        except SafetensorError as err:  # e.g. a full disk: an OSError like any other
            raise _as_os_error(err, path) from err
        # mkstemp makes the file private (0600): give it the usual permissions instead
        os.chmod(tmp, path.stat().st_mode & 0o777 if path.exists() else 0o644)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
    return path


def content_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a model file's content: its metadata (keys sorted) and its tensors
    (name, dtype, shape and bytes, in name order). Two saves of one model give the same
    digest, although safetensors writes the metadata in a different order each time (so
    the files' own SHA-256 differ)."""
    digest = hashlib.sha256()
    with safe_open(str(path), framework="pt") as file:
        digest.update(json.dumps(file.metadata() or {}, sort_keys=True).encode())
        for name in sorted(file.keys()):
            tensor = file.get_tensor(name).contiguous()
            digest.update(f"{name} {tensor.dtype} {tuple(tensor.shape)}".encode())
            digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _as_os_error(error: SafetensorError, path: Path) -> OSError:
    """The OSError inside a safetensors write error (``IoError(Os { code: 28, ...``)."""
    found = re.search(r"code: (\d+)", str(error))
    if found is None:
        return OSError(f"could not write {path}: {error}")
    code = int(found.group(1))
    return OSError(code, os.strerror(code), str(path))


def save_model_or_rescue(model: UNet, path: str | os.PathLike) -> Path:
    """:func:`save_model`, keeping the model in the temp folder when ``path`` fails.

    Raises:
        OSError: ``path`` could not be written; the message names the rescue copy
            (``napari-unet-rescued-NAME-TIME.safetensors`` in the temp folder).
    """
    try:
        return save_model(model, path)
    except OSError as error:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        rescue = Path(tempfile.gettempdir()) / f"napari-unet-rescued-{Path(path).stem}-{stamp}"
        rescue = rescue.with_name(rescue.name + SUFFIX)
        reason = error.strerror or str(error)
        try:
            save_model(model, rescue)
        except OSError as second:
            raise OSError(
                f"could not save the model to {path} ({reason}) nor to {rescue} "
                f"({second.strerror or second})"
            ) from error
        raise OSError(
            f"could not save the model to {path} ({reason}); it was saved to {rescue} instead"
        ) from error


def model_file_bytes(config: UNetConfig) -> int:
    """Approximate size of a model file of ``config`` (float32 weights plus header)."""
    return 4 * sum(math.prod(shape) for shape in expected_tensors(config).values()) + 2**20


def check_model_destination(path: str | os.PathLike, config: UNetConfig, inputs=()) -> None:
    """Raise before any work if a model of ``config`` cannot be saved to ``path``.

    Refused: a folder, one of ``inputs`` (paths that must not be replaced), an existing
    file that is not a napari-unet model, a location that cannot be created or written
    (a probe file is created and removed), or less free space than the model needs.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a folder; give a model file name")
    if path.exists() and any(path.resolve() == Path(i).resolve() for i in inputs):
        raise ValueError(f"{path} is one of the input files; choose another model file name")
    if path.exists():
        try:
            _read_header(path)  # a model file (not a package nor a built-in name)
        except ModelFileError:
            raise ValueError(
                f"{path} exists and is not a napari-unet model; refusing to replace it "
                "(choose another model file name)"
            ) from None
    folder = check_can_create(path)
    need, free = model_file_bytes(config), shutil.disk_usage(folder).free
    if free < need:
        raise OSError(
            f"cannot save {path}: {folder} has {free / 2**20:.1f} MiB free but the model "
            f"needs about {need / 2**20:.1f} MiB"
        )


def expected_tensors(config: UNetConfig) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every weight of a network of ``config`` (nothing allocated)."""
    with torch.device("meta"):
        network = UNet(config, ModelInfo.default_for(config.n_classes))
    return {name: tuple(value.shape) for name, value in network.state_dict().items()}


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> UNet:
    """Rebuild the model saved in ``path`` on ``device``, in eval mode.

    ``path`` may also name a built-in model (``"nuclei"``, :mod:`napari_unet.models`)
    or a bioimage.io package, zip or folder (:mod:`napari_unet.bioimageio_import`).

    Raises:
        ModelFileError: one sentence naming the file and what is wrong with it
            (missing, not a model, a pickle file, truncated, from a newer version).
    """
    from .bioimageio_import import is_package, load_package
    from .models import resolve

    path = resolve(path)
    device = choose_device(device)  # one sentence for a device this machine lacks
    if is_package(path):
        return load_package(path, device)
    header = _read_header(path)
    config, info = _description(path, header["__metadata__"])
    _check_tensors(path, config, header)  # before building the network: no huge allocation
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
    """Config and info of a model file, built-in name or bioimage.io package, without
    reading its weights (cheap)."""
    from .bioimageio_import import is_package, read_package_info
    from .models import resolve

    path = resolve(path)
    if is_package(path):
        return read_package_info(path)
    return _description(path, _read_header(path)["__metadata__"])


def _description(path: Path, metadata: dict[str, str]) -> tuple[UNetConfig, ModelInfo]:
    """Config and info from a model file's metadata (ModelFileError if invalid)."""
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


def _check_tensors(path: Path, config: UNetConfig, header: dict[str, Any]) -> None:
    """ModelFileError unless the header's tensors are exactly those ``config`` needs."""
    stored = {
        name: (tuple(entry.get("shape", ())), entry.get("dtype") in _FLOAT_DTYPES)
        for name, entry in header.items()
        if name != "__metadata__" and isinstance(entry, dict)
    }
    check_tensor_shapes(path, stored, expected_tensors(config), "described in the same file")


def check_tensor_shapes(
    path: Path,
    found: dict[str, tuple[tuple[int, ...], bool]],
    expected: dict[str, tuple[int, ...]],
    described: str = "it describes",
) -> None:
    """ModelFileError unless ``found`` (name: (shape, is float)) holds exactly the
    ``expected`` float tensors (name: shape) of the network ``described``."""
    problem = f"the weights in {path} do not fit the network {described}"
    for name, shape in expected.items():
        entry = found.get(name)
        if entry is None or entry[0] != shape or not entry[1]:
            what = "is missing" if entry is None else f"has shape {entry[0]}"
            raise ModelFileError(f"{problem} (tensor {name!r} {what}, expected float {shape})")
    extra = sorted(set(found) - set(expected))
    if extra:
        raise ModelFileError(f"{problem} (unexpected tensor {extra[0]!r})")


def _read_header(path: Path) -> dict[str, Any]:
    """The safetensors header of a napari-unet model file, checked before any parsing;
    ``header["__metadata__"]`` holds the napari-unet metadata."""
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
    return header


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
