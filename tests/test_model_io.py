"""Model files: complete round trip, never running code, clear errors, atomic save."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import napari_unet
from napari_unet import model_io
from napari_unet.config import ModelInfo, UNetConfig
from napari_unet.model import UNet
from napari_unet.model_io import ModelFileError, load_model, read_model_info, save_model


def small_model(seed: int = 0, **config) -> UNet:
    torch.manual_seed(seed)
    config = UNetConfig(**{"base_channels": 4, "depth": 2, **config})
    return UNet(config)


def outputs(model: UNet) -> torch.Tensor:
    size = model.config.min_input_size()
    x = torch.rand(
        2, model.config.in_channels, size, size, generator=torch.Generator().manual_seed(1)
    )
    with torch.no_grad():
        return model.eval()(x)


def test_round_trip_keeps_outputs_config_and_info(tmp_path):
    info = ModelInfo(
        task="semantic",
        class_names=["background", "cell", "border"],
        normalization={"low": 2.0, "high": 99.5},
        training={"preset": "paper", "tile_size": 252, "w0": 10.0, "flips": [True, False]},
        history={"iterations": 1200, "seconds": 301.5, "val": {"ap50": 0.81, "rand": None}},
    )
    torch.manual_seed(0)
    model = UNet(UNetConfig(in_channels=2, n_classes=3, base_channels=4, depth=2), info)
    path = save_model(model, tmp_path / "sub" / "cells.safetensors")

    loaded = load_model(path)
    assert loaded.config == model.config
    assert loaded.info == model.info
    assert not loaded.training
    assert torch.equal(outputs(loaded), outputs(model))
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)
    assert read_model_info(path) == (model.config, model.info)


def test_file_records_format_and_package_version(tmp_path):
    path = save_model(small_model(), tmp_path / "m.safetensors")
    with safe_open(path, framework="pt") as f:
        metadata = f.metadata()
    assert metadata["format"] == "napari-unet"
    assert metadata["format_version"] == str(model_io.FORMAT_VERSION)
    assert metadata["napari_unet_version"] == napari_unet.__version__


def test_public_api_names():
    assert napari_unet.save_model is save_model
    assert napari_unet.load_model is load_model
    assert issubclass(napari_unet.ModelFileError, ValueError)


def test_numpy_values_in_info_are_saved_as_plain_numbers(tmp_path):
    model = small_model()
    model.info.history.update(loss=np.float32(0.25), best=np.int64(7), curve=np.arange(3))
    loaded = load_model(save_model(model, tmp_path / "m.safetensors"))
    assert loaded.info.history == {"loss": 0.25, "best": 7, "curve": [0, 1, 2]}


def test_unsaveable_info_is_a_clear_error_and_writes_nothing(tmp_path):
    model = small_model()
    model.info.training["callback"] = object()
    with pytest.raises(ValueError, match="cannot be saved"):
        save_model(model, tmp_path / "m.safetensors")
    assert list(tmp_path.iterdir()) == []


class Payload:
    """Unpickling this object runs code: it writes ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('payload ran')",))


@pytest.mark.parametrize(
    "write",
    [
        pytest.param(lambda obj, path: torch.save(obj, path), id="torch.save"),
        pytest.param(
            lambda obj, path: torch.save(obj, path, _use_new_zipfile_serialization=False),
            id="torch.save-legacy",
        ),
        pytest.param(lambda obj, path: path.write_bytes(pickle.dumps(obj)), id="pickle"),
    ],
)
@pytest.mark.parametrize("name", ["model.pt", "model.safetensors"])
def test_malicious_pickle_is_refused_and_its_payload_never_runs(tmp_path, request, write, name):
    marker = tmp_path / "pwned.txt"
    path = tmp_path / name
    state = dict(small_model().state_dict())
    write({"state_dict": state, "config": Payload(marker)}, path)

    with pytest.raises(ModelFileError, match=r"pickled PyTorch file.*refused"):
        load_model(path)
    with pytest.raises(ModelFileError, match="pickled"):
        read_model_info(path)
    assert not marker.exists()

    # the file is really malicious: unpickling it unsafely runs the payload
    with open(path, "rb") as f:
        if "torch" in request.node.callspec.id:
            torch.load(f, weights_only=False)
        else:
            pickle.load(f)
    assert marker.read_text() == "payload ran"


@pytest.mark.parametrize("keep", [0.999, 0.5, 0.01])
def test_truncated_file_is_a_clear_error(tmp_path, keep):
    path = save_model(small_model(), tmp_path / "m.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(ModelFileError, match=r"m\.safetensors is truncated"):
        load_model(path)


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"abc",
        np.random.default_rng(0).bytes(5000),
        b"this is a text file, not a model\n" * 10,
        b"\x10\x00\x00\x00\x00\x00\x00\x00{not json!!!!!!}",
    ],
    ids=["empty", "tiny", "random", "text", "bad-header"],
)
def test_garbage_file_is_a_clear_error(tmp_path, content):
    path = tmp_path / "m.safetensors"
    path.write_bytes(content)
    with pytest.raises(ModelFileError, match=r"m\.safetensors .*not a (napari-unet )?model"):
        load_model(path)


def test_safetensors_file_that_is_not_a_model(tmp_path):
    path = tmp_path / "other.safetensors"
    save_file({"weight": torch.zeros(3)}, path)
    with pytest.raises(ModelFileError, match="safetensors file but not a napari-unet model"):
        load_model(path)


def write_with_metadata(path, model: UNet, **changes) -> None:
    metadata = {
        "format": "napari-unet",
        "format_version": "1",
        "napari_unet_version": "0.1.0",
        "config": model_io.json.dumps(model.config.to_dict()),
        "info": model_io.json.dumps(model.info.to_dict()),
        **changes,
    }
    save_file(model.state_dict(), path, metadata=metadata)


def test_newer_format_version_asks_to_upgrade(tmp_path):
    path = tmp_path / "future.safetensors"
    write_with_metadata(path, small_model(), format_version="2", napari_unet_version="9.0")
    with pytest.raises(
        ModelFileError, match=r"newer napari-unet \(9\.0, model format 2\).*upgrade"
    ):
        load_model(path)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"format_version": "one"}, "no valid model format version"),
        ({"config": '{"depth": 0}'}, "invalid model description"),
        ({"config": '{"padding": 1}'}, "invalid model description"),
        ({"info": "{not json"}, "invalid model description"),
        ({"config": '{"base_channels": 8, "depth": 2}'}, "do not fit the network described"),
    ],
)
def test_damaged_description_is_a_clear_error(tmp_path, changes, message):
    path = tmp_path / "m.safetensors"
    write_with_metadata(path, small_model(), **changes)
    with pytest.raises(ModelFileError, match=message):
        load_model(path)


def test_missing_file_or_folder(tmp_path):
    with pytest.raises(ModelFileError, match="does not exist"):
        load_model(tmp_path / "nope.safetensors")
    with pytest.raises(ModelFileError, match="is a folder"):
        load_model(tmp_path)


def test_failed_save_leaves_the_previous_file_intact(tmp_path, monkeypatch):
    path = tmp_path / "m.safetensors"
    first = small_model(seed=0)
    save_model(first, path)
    before = path.read_bytes()

    def crash_mid_write(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"\x00" * 100)  # some bytes reach the disk, then the write fails
        raise OSError("No space left on device")

    monkeypatch.setattr(model_io, "save_file", crash_mid_write)
    with pytest.raises(OSError, match="No space left"):
        save_model(small_model(seed=1), path)
    with pytest.raises(OSError):
        save_model(small_model(seed=1), tmp_path / "new.safetensors")

    assert path.read_bytes() == before
    assert torch.equal(outputs(load_model(path)), outputs(first))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]  # no temp files


def test_save_overwrites_and_keeps_permissions(tmp_path):
    path = tmp_path / "m.safetensors"
    save_model(small_model(seed=0), path)
    assert path.stat().st_mode & 0o777 == 0o644
    path.chmod(0o640)
    second = small_model(seed=1)
    save_model(second, path)
    assert path.stat().st_mode & 0o777 == 0o640
    assert torch.equal(outputs(load_model(path)), outputs(second))


def test_load_on_a_device_in_eval_mode(tmp_path):
    path = save_model(small_model(), tmp_path / "m.safetensors")
    model = load_model(path, device=torch.device("cpu"))
    assert next(model.parameters()).device.type == "cpu"
    assert not model.training


def test_a_header_size_whose_first_byte_looks_like_pickle_still_loads(tmp_path):
    """A safetensors file starts with its header size (little-endian): one in 256
    sizes has 0x80, pickle's first byte, there; such a model must load all the same."""
    model = UNet(UNetConfig(base_channels=4, depth=2))
    path = tmp_path / "m.safetensors"
    for pad in range(0, 4096, 8):
        model.info.history = {"note": "x" * pad}
        save_model(model, path)
        if path.read_bytes()[:1] == b"\x80":
            break
    assert path.read_bytes()[:1] == b"\x80"
    assert load_model(path).info.history == model.info.history


def test_two_saves_of_one_model_have_the_same_content_digest(tmp_path):
    """Resuming labels checks the model by this digest: safetensors orders a file's
    metadata differently on each save, so the files' own hashes may differ."""
    from napari_unet.model_io import content_sha256

    torch.manual_seed(0)
    model = UNet(UNetConfig(base_channels=4, depth=2))
    first = save_model(model, tmp_path / "a.safetensors")
    second = save_model(model, tmp_path / "b.safetensors")
    assert content_sha256(first) == content_sha256(second)
    with torch.no_grad():
        next(model.parameters()).add_(1e-3)
    assert content_sha256(save_model(model, tmp_path / "c.safetensors")) != content_sha256(first)
    model.info.postprocess = {"threshold": 0.4}
    changed = save_model(model, tmp_path / "d.safetensors")
    assert content_sha256(changed) != content_sha256(tmp_path / "c.safetensors")
