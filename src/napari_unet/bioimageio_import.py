"""Load a bioimage.io model package (zip file or folder) as a napari-unet model.

napari-unet runs a package's ``pytorch_state_dict`` weights when their architecture
is its own U-Net (``napari_unet.model.UNet``, as :mod:`napari_unet.bioimageio_export`
writes); any other package gets a one-sentence :class:`ModelFileError` naming what
it would need.

Safety: nothing in a package is run. The description is read with ``yaml.safe_load``;
no code named in it is imported (the architecture must be our own class, built
from its JSON ``config``); the torchscript and onnx weights (programs) are never
opened. The state dict is read with ``torch.load(weights_only=True)``: torch's
restricted unpickler, which only rebuilds tensors and plain containers and refuses
any other object, so a crafted file cannot run code; before that the file's size is
checked against what the described network needs and its sha256 against the
description, and afterwards every tensor's name and shape, as for model files.
Members are read with a size limit, and names leaving the package are refused.
"""

from __future__ import annotations

import hashlib
import io
import os
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any

from .config import ModelInfo, UNetConfig
from .model_io import ModelFileError, check_tensor_shapes

DESCRIPTION_NAMES = ("rdf.yaml", "bioimageio.yaml")
ARCHITECTURE = ("napari_unet.model", "UNet")
MAX_DESCRIPTION_BYTES = 10_000_000


def is_package(path: str | os.PathLike) -> bool:
    """True for a folder or zip file holding a bioimage.io description (rdf.yaml)."""
    path = Path(path)
    if path.is_dir():
        return any((path / name).is_file() for name in DESCRIPTION_NAMES)
    if not (path.is_file() and zipfile.is_zipfile(path)):
        return False
    try:
        with zipfile.ZipFile(path) as archive:
            return any(n in DESCRIPTION_NAMES for n in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def read_package_info(path: str | os.PathLike) -> tuple[UNetConfig, ModelInfo]:
    """Config and info of a package, without reading its weights (cheap)."""
    path = Path(path)
    with _Package(path) as package:
        config, info, _ = _describe(path, package.description())
    return config, info


def load_package(path: str | os.PathLike, device: str = "cpu"):
    """The package's U-Net with its ModelInfo, on ``device``, in eval mode.

    Raises:
        ModelFileError: one sentence: not a model package, weights we cannot run
            (naming what they need), damaged or altered weights.
    """
    from .devices import choose_device
    from .model import UNet
    from .model_io import expected_tensors, model_file_bytes

    path = Path(path)
    run_device = choose_device(device)
    with _Package(path) as package:
        config, info, weights = _describe(path, package.description())
        limit = 2 * model_file_bytes(config)
        data = package.read(_local_source(path, weights), limit, what="weights")
    _check_sha256(path, data, weights.get("sha256"))
    state = _read_state_dict(path, data)
    _check_state(path, state, expected_tensors(config))
    model = UNet(config, info)
    model.load_state_dict(state, strict=True)
    return model.to(run_device).eval()


class _Package:
    """Read-only access to the members of a package folder or zip, size-limited."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.archive = zipfile.ZipFile(path) if path.is_file() else None
        except (zipfile.BadZipFile, OSError) as err:
            raise ModelFileError(f"{path} is not a readable zip file ({err})") from None
        if self.archive is None and not path.is_dir():
            raise ModelFileError(f"model package {path} does not exist")

    def __enter__(self) -> _Package:
        return self

    def __exit__(self, *exc_info) -> None:
        if self.archive is not None:
            self.archive.close()

    def description(self) -> dict[str, Any]:
        import yaml

        for name in DESCRIPTION_NAMES:
            if self._exists(name):
                text = self.read(name, MAX_DESCRIPTION_BYTES, what="description")
                try:
                    data = yaml.safe_load(text)
                except yaml.YAMLError as err:
                    raise ModelFileError(f"{self.path} has a damaged {name} ({err})") from None
                if not isinstance(data, dict):
                    raise ModelFileError(f"{self.path}: {name} is not a model description")
                return data
        raise ModelFileError(f"{self.path} is not a bioimage.io package (no rdf.yaml)")

    def _exists(self, name: str) -> bool:
        if self.archive is not None:
            return name in self.archive.namelist()
        return (self.path / name).is_file()

    def read(self, name: str, limit: int, what: str) -> bytes:
        """The bytes of member ``name``; ModelFileError if absent or over ``limit``."""
        if not self._exists(name):
            raise ModelFileError(f"{self.path} lacks its {what} file {name}")
        if self.archive is not None:
            size = self.archive.getinfo(name).file_size
        else:
            size = (self.path / name).stat().st_size
        if size > limit:
            raise ModelFileError(
                f"the {what} file {name} in {self.path} is {size / 2**20:.1f} MiB, more than "
                f"the {limit / 2**20:.1f} MiB the described network needs"
            )
        if self.archive is not None:
            return self.archive.read(name)
        return (self.path / name).read_bytes()


def _describe(path: Path, rdf: dict[str, Any]) -> tuple[UNetConfig, ModelInfo, dict]:
    """Our config and info from a description, and its pytorch_state_dict entry."""
    if rdf.get("type") != "model":
        raise ModelFileError(f"{path} is a bioimage.io {rdf.get('type')!r}, not a model")
    weights = rdf.get("weights") or {}
    entry = weights.get("pytorch_state_dict")
    if not isinstance(entry, dict):
        formats = ", ".join(sorted(weights)) or "none"
        raise ModelFileError(
            f"{path} has no pytorch_state_dict weights (it has: {formats}); napari-unet runs "
            "only pytorch_state_dict weights of its own U-Net (napari_unet.model.UNet)"
        )
    arch = entry.get("architecture")
    found = (arch.get("import_from"), arch.get("callable")) if isinstance(arch, dict) else None
    if found != ARCHITECTURE:
        needs = ".".join(map(str, found)) if found else repr(arch)
        raise ModelFileError(
            f"{path} needs the network {needs}, which napari-unet cannot run: it loads only "
            "packages of its own U-Net (napari_unet.model.UNet), as `napari-unet export` writes"
        )
    try:
        config = UNetConfig.from_dict(dict((arch.get("kwargs") or {}).get("config") or {}))
        info = _info(rdf, config)
    except (TypeError, ValueError, AttributeError) as err:
        raise ModelFileError(f"{path} has an invalid model description ({err})") from None
    return config, info, entry


def _info(rdf: dict[str, Any], config: UNetConfig) -> ModelInfo:
    """The stored ModelInfo (``config.napari_unet``), else one from the preprocessing."""
    ours = ((rdf.get("config") or {}).get("napari_unet")) or {}
    if ours.get("config") not in (None, config.to_dict()):
        raise ValueError("its napari_unet config differs from the architecture's")
    if "info" in ours:
        info = ModelInfo.from_dict(ours["info"])
    else:
        info = ModelInfo.default_for(config.n_classes)
        for step in (rdf.get("inputs") or [{}])[0].get("preprocessing") or []:
            if step.get("id") == "scale_range":
                kwargs = step.get("kwargs") or {}
                info.normalization = {
                    "low": float(kwargs.get("min_percentile", 0.0)),
                    "high": float(kwargs.get("max_percentile", 100.0)),
                }
        info.__post_init__()  # validates the percentiles
    if len(info.class_names) != config.n_classes:
        raise ValueError(f"{len(info.class_names)} class names for {config.n_classes} classes")
    return info


def _local_source(path: Path, entry: dict) -> str:
    """The weights' file name inside the package (no URLs, no paths leaving it)."""
    source = str(entry.get("source", ""))
    parts = PurePosixPath(source).parts
    if not source or "://" in source or source.startswith("/") or ".." in parts:
        raise ModelFileError(
            f"the weights of {path} are not inside the package ({source!r}); download the "
            "whole package (zip) and load that"
        )
    return source


def _check_sha256(path: Path, data: bytes, expected: str | None) -> None:
    if expected and hashlib.sha256(data).hexdigest() != str(expected).lower():
        raise ModelFileError(
            f"the weights in {path} do not match their sha256 in the description "
            "(damaged or altered package)"
        )


def _read_state_dict(path: Path, data: bytes) -> dict:
    """A state dict via torch's restricted unpickler (tensors and containers only)."""
    import pickle

    import torch

    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, ValueError, EOFError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ModelFileError(
            f"the pytorch_state_dict weights of {path} cannot be read safely ({first})"
        ) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelFileError(f"the pytorch_state_dict weights of {path} are not a state dict")
    return state


def _check_state(path: Path, state: dict, expected: dict[str, tuple[int, ...]]) -> None:
    """ModelFileError unless ``state`` has exactly the expected float tensors."""
    found = {
        name: (tuple(tensor.shape), tensor.is_floating_point())
        for name, tensor in state.items()
        if hasattr(tensor, "shape")
    }
    if len(found) != len(state):
        odd = sorted(set(state) - set(found))[0]
        raise ModelFileError(f"the weights in {path} hold {odd!r}, which is not a tensor")
    check_tensor_shapes(path, found, expected)
