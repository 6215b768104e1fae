"""bioimage.io model packages: export (checked by bioimageio.core's own model test),
import (zip and folder) with the ModelInfo restored, round trip to the same labels,
the CLI, and packages napari-unet refuses without running anything from them."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import zipfile

import numpy as np
import pytest
import torch
import yaml

from napari_unet.bioimageio_export import export_bioimageio
from napari_unet.cli import main
from napari_unet.config import ModelInfo, UNetConfig
from napari_unet.inference import predict, segment
from napari_unet.model import UNet
from napari_unet.model_io import ModelFileError, load_model, read_model_info, save_model
from napari_unet.sample_data import make_sample

RUN = {"device": "cpu", "precision": "fp32", "channels_last": False, "batch_size": 1}


def tiny_model() -> UNet:
    """A tiny random U-Net whose stored threshold splits its foreground on the sample,
    so that its labels are not trivial; normalisation and post-processing differ from
    the defaults, so restoring them is visible."""
    torch.manual_seed(3)
    info = ModelInfo(normalization={"low": 2.0, "high": 99.0}, training={"gap": 1})
    model = UNet(UNetConfig(base_channels=4, depth=2), info).eval()
    probs = predict(model, sample_image(), tile_size=84, **RUN)
    threshold = round(float(np.quantile(probs[1], 0.6)), 4)
    model.info.postprocess = {"threshold": threshold, "expand": 2}
    return model


def sample_image() -> np.ndarray:
    return (make_sample((160, 160), n_objects=12, seed=5)[0] * 1000).astype(np.uint16)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(model, package zip) exported once for the module (torch on one thread)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    model = tiny_model()
    out = tmp_path_factory.mktemp("bioimageio") / "tiny.zip"
    export_bioimageio(
        model, out, name="tiny napari-unet test", description="a tiny random U-Net",
        authors=["test author"], image=sample_image(),
    )  # fmt: skip
    yield model, out
    torch.set_num_threads(threads)


def test_bioimageio_core_model_test_passes(exported):
    from bioimageio.core import test_model

    summary = test_model(exported[1])
    failed = [(d.name, [e.msg for e in d.errors]) for d in summary.details if d.errors]
    assert summary.status == "passed", failed
    tested = " ".join(d.name for d in summary.details)
    for weights in ("pytorch_state_dict", "torchscript", "onnx"):
        assert f"Reproduce test outputs from test inputs ({weights})" in tested


def test_package_describes_the_network_as_the_spec_wants(exported):
    model, out = exported
    with zipfile.ZipFile(out) as archive:
        rdf = yaml.safe_load(archive.read("rdf.yaml"))
        names = set(archive.namelist())
        readme = archive.read("README.md").decode()
        test_input = np.load(io.BytesIO(archive.read("test_input.npy")))
        test_output = np.load(io.BytesIO(archive.read("test_output.npy")))
    config = model.config
    assert rdf["format_version"].startswith("0.5")
    assert {"weights.pt", "weights_torchscript.pt", "weights.onnx", "cover.png"} <= names
    assert rdf["cite"][0]["doi"] == "10.1007/978-3-319-24574-4_28"
    assert rdf["license"] == "CC-BY-4.0" and "## Validation" in readme
    assert f"foreground > {model.info.postprocess['threshold']}" in readme
    y_in = rdf["inputs"][0]["axes"][2]
    assert y_in["size"] == {"min": config.min_input_size(), "step": config.pool_factor}
    y_out = rdf["outputs"][0]["axes"][2]
    assert y_out["size"]["offset"] == -config.shrink
    assert config.is_valid_input(test_input.shape[-1])
    assert test_output.shape[-1] == config.output_size(test_input.shape[-1])
    scale = next(p for p in rdf["inputs"][0]["preprocessing"] if p["id"] == "scale_range")
    assert scale["kwargs"]["min_percentile"] == model.info.normalization["low"]
    assert scale["kwargs"]["max_percentile"] == model.info.normalization["high"]
    arch = rdf["weights"]["pytorch_state_dict"]["architecture"]
    assert (arch["import_from"], arch["callable"]) == ("napari_unet.model", "UNet")
    assert arch["kwargs"]["config"] == config.to_dict()


@pytest.mark.parametrize("as_folder", [False, True], ids=["zip", "folder"])
def test_round_trip_restores_info_and_gives_the_same_labels(exported, tmp_path, as_folder):
    model, source = exported
    if as_folder:
        zipfile.ZipFile(source).extractall(tmp_path / "package")
        source = tmp_path / "package"
    loaded = load_model(source)
    assert loaded.config == model.config
    assert loaded.info.normalization == model.info.normalization
    assert loaded.info.postprocess == model.info.postprocess
    assert loaded.info.task == model.info.task
    assert read_model_info(source)[1].postprocess == model.info.postprocess
    image = sample_image()
    expected = segment(model, image, tile_size=84, **RUN)
    assert 1 < expected.max() < expected.size // 4  # not trivial
    np.testing.assert_array_equal(segment(loaded, image, tile_size=84, **RUN), expected)


def test_export_refuses_an_existing_file_unless_overwrite(exported, tmp_path):
    out = tmp_path / "taken.zip"
    out.write_bytes(b"mine")
    with pytest.raises(ValueError, match="already exists"):
        export_bioimageio(exported[0], out, name="tiny test", description="d", authors=["a"])
    assert out.read_bytes() == b"mine"


def test_cli_export_and_predict_with_the_package(exported, tmp_path, capsys):
    model, _ = exported
    save_model(model, tmp_path / "tiny.safetensors")
    out = tmp_path / "cli.zip"
    args = ["export", str(tmp_path / "tiny.safetensors"), "--to", "bioimageio", str(out)]
    assert main([*args, "--formats", "pytorch_state_dict"]) == 0
    assert "pytorch_state_dict" in capsys.readouterr().out
    assert main([*args, "--formats", "pytorch_state_dict"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    import tifffile

    tifffile.imwrite(tmp_path / "cells.tif", sample_image())
    predict_args = ["predict", "--images", str(tmp_path / "cells.tif"), "--tile-size", "84"]
    predict_args += ["--device", "cpu", "--batch-size", "1", "--precision", "fp32"]
    assert main([*predict_args, "--model", str(out), "--out", str(tmp_path / "a")]) == 0
    assert main([*predict_args, "--model", str(tmp_path / "tiny.safetensors"), "--out",
                 str(tmp_path / "b")]) == 0  # fmt: skip
    labels = tifffile.imread(tmp_path / "a" / "cells.tif")
    assert labels.max() > 1
    np.testing.assert_array_equal(labels, tifffile.imread(tmp_path / "b" / "cells.tif"))


# -- packages napari-unet refuses ----------------------------------------------------
def rewrite(source, target, change_rdf=None, files=None):
    """A copy of package ``source`` at ``target`` with its rdf.yaml changed by
    ``change_rdf(rdf)`` and members replaced by ``files`` (name -> bytes)."""
    files = dict(files or {})
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        for name in old.namelist():
            data = files.pop(name, None) or old.read(name)
            if name == "rdf.yaml" and change_rdf is not None:
                rdf = yaml.safe_load(data)
                change_rdf(rdf)
                data = yaml.safe_dump(rdf).encode()
            new.writestr(name, data)
        for name, data in files.items():
            new.writestr(name, data)
    return target


def test_package_without_state_dict_weights_names_what_it_needs(exported, tmp_path):
    def only_onnx(rdf):
        rdf["weights"] = {"onnx": rdf["weights"]["onnx"]}

    package = rewrite(exported[1], tmp_path / "onnx_only.zip", only_onnx)
    with pytest.raises(ModelFileError, match=r"no pytorch_state_dict weights \(it has: onnx\)"):
        load_model(package)


def test_package_of_another_architecture_is_refused_without_importing_it(exported, tmp_path):
    def other(rdf):
        arch = rdf["weights"]["pytorch_state_dict"]["architecture"]
        arch["import_from"], arch["callable"] = "os", "system"

    package = rewrite(exported[1], tmp_path / "other.zip", other)
    with pytest.raises(ModelFileError, match=r"needs the network os\.system.*cannot run"):
        load_model(package)


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_pickle_payload_in_the_weights_never_runs(exported, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    evil = pickle.dumps({"inc.0.weight": _Payload()})
    digest = hashlib.sha256(evil).hexdigest()

    def point_at_evil(rdf):
        rdf["weights"]["pytorch_state_dict"]["sha256"] = digest

    package = rewrite(exported[1], tmp_path / "evil.zip", point_at_evil, {"weights.pt": evil})
    with pytest.raises(ModelFileError, match="cannot be read safely"):
        load_model(package)
    assert not (tmp_path / "PWNED").exists()


def test_altered_weights_fail_their_checksum(exported, tmp_path):
    state = {k: v.clone() for k, v in exported[0].state_dict().items()}
    state["head.bias"] += 1.0
    buffer = io.BytesIO()
    torch.save(state, buffer)
    altered = {"weights.pt": buffer.getvalue()}
    package = rewrite(exported[1], tmp_path / "altered.zip", files=altered)
    with pytest.raises(ModelFileError, match="sha256"):
        load_model(package)


def test_weights_larger_than_the_network_needs_are_not_read(exported, tmp_path):
    def bigger(rdf):
        rdf["weights"]["pytorch_state_dict"].pop("sha256")

    huge = b"\0" * (8 * 2**20)
    package = rewrite(exported[1], tmp_path / "huge.zip", bigger, {"weights.pt": huge})
    with pytest.raises(ModelFileError, match=r"more than the .* MiB the described network needs"):
        load_model(package)


def test_a_zip_without_description_is_still_refused_as_before(tmp_path):
    path = tmp_path / "model.safetensors"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("data.pkl", b"not a model")
    with pytest.raises(ModelFileError, match="pickled PyTorch file"):
        load_model(path)
