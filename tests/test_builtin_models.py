"""The built-in ``nuclei`` model: shipped in the package, usable by name wherever a model
file is (load_model, CLI, Segment widget), exported as a bioimage.io package that
bioimageio.core's test passes; its stated accuracy is the one its training measured."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_unet import metrics
from napari_unet.cli import main
from napari_unet.inference import segment
from napari_unet.model_io import ModelFileError, load_model, read_model_info
from napari_unet.models import BUILTIN, builtin_path, describe, resolve
from napari_unet.sample_data import make_sample

RUN = {"device": "cpu", "precision": "fp32", "channels_last": False, "batch_size": 1}
RECORD = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "builtin_nuclei.json"


def nuclei_sample(seed: int = 2):
    """A generated fluorescence-like image (uint8) and its cell labels."""
    image, labels = make_sample((256, 256), n_objects=20, seed=seed)
    return (np.clip(image, 0, 1) * 255).astype(np.uint8), labels


def test_nuclei_is_shipped_small_and_resolves_by_name(tmp_path, monkeypatch):
    path = builtin_path("nuclei")
    assert path.is_file() and path.stat().st_size < 5 * 2**20
    monkeypatch.chdir(tmp_path)
    assert resolve("nuclei") == path
    assert builtin_path("no such model") is None
    assert resolve("x.safetensors") == Path("x.safetensors")
    (tmp_path / "nuclei").write_text("a file of the user's")  # a real file wins
    with pytest.raises(ModelFileError, match="nuclei is not a napari-unet model"):
        load_model("nuclei")


def test_nuclei_segments_a_generated_sample(one_torch_thread):
    model = load_model("nuclei")
    image, truth = nuclei_sample()
    labels = segment(model, image, tile_size=252, **RUN)
    assert labels.shape == image.shape and labels.max() >= 5
    assert metrics.average_precision(truth, labels, iou=0.5) > 0.5


def test_stated_accuracy_is_the_measured_one():
    """The held-out scores in the file are those the training script recorded."""
    held_out = read_model_info("nuclei")[1].history["held_out"]
    record = json.loads(RECORD.read_text())
    assert held_out["ap50"] == record["held_out"]["ap50"]
    assert held_out["ap75"] == record["held_out"]["ap75"]
    line = describe("nuclei")
    assert f"AP@0.5 {held_out['ap50']:.3f}" in line and "CC0" in line
    assert set(BUILTIN) == {"nuclei"}


def test_cli_predict_with_the_builtin_name(tmp_path, capsys, one_torch_thread):
    image, _ = nuclei_sample(seed=4)
    tifffile.imwrite(tmp_path / "nuclei_image.tif", image)
    argv = ["predict", "--model", "nuclei", "--images", str(tmp_path / "nuclei_image.tif")]
    argv += ["--out", str(tmp_path / "out"), "--tile-size", "252", "--device", "cpu"]
    assert main([*argv, "--batch-size", "1", "--precision", "fp32"]) == 0
    assert tifffile.imread(tmp_path / "out" / "nuclei_image.tif").max() >= 5


def test_exported_nuclei_package_passes_bioimageio_core_test(tmp_path, one_torch_thread):
    from bioimageio.core import test_model

    out = tmp_path / "nuclei.zip"
    argv = ["export", "nuclei", "--to", "bioimageio", str(out)]
    assert main([*argv, "--formats", "pytorch_state_dict"]) == 0
    summary = test_model(out)
    assert summary.status == "passed", [d.name for d in summary.details if d.errors]
    assert (
        load_model(out).info.history["held_out"]
        == read_model_info("nuclei")[1].history["held_out"]
    )


def test_segment_widget_offers_the_builtin_and_packages(make_napari_viewer, tmp_path, monkeypatch):
    from napari_unet.bioimageio_export import export_bioimageio
    from napari_unet.widgets import _dialogs
    from napari_unet.widgets.model_store import model_store
    from napari_unet.widgets.segment_widget import SegmentWidget

    viewer = make_napari_viewer()
    widget = SegmentWidget(viewer)
    widget.builtin_button.native.click()
    assert model_store(viewer).model.config == read_model_info("nuclei")[0]
    assert "built-in 'nuclei'" in widget.model_info.value
    package = export_bioimageio(
        load_model("nuclei"), tmp_path / "n.zip", name="nuclei package", description="d",
        authors=["a"], weight_formats=("pytorch_state_dict",),
    )  # fmt: skip
    monkeypatch.setattr(_dialogs, "ask_open_model", lambda parent: str(package))
    widget.load_button.native.click()
    assert "n.zip" in widget.model_info.value
    assert ".zip" in _dialogs.OPEN_FILTER


def test_cli_segment_block_by_block_with_the_builtin_name(tmp_path, one_torch_thread):
    import zarr

    image, _ = nuclei_sample(seed=6)
    tifffile.imwrite(tmp_path / "in.tif", image)
    argv = ["segment", str(tmp_path / "in.tif"), "--model", "nuclei", "--out"]
    argv += [str(tmp_path / "out.zarr"), "--tile-size", "252", "--batch-size", "1"]
    assert main([*argv, "--device", "cpu", "--precision", "fp32"]) == 0
    labels = np.asarray(zarr.open(str(tmp_path / "out.zarr" / "labels" / "unet" / "0"), mode="r"))
    expected = segment(load_model("nuclei"), image, tile_size=252, **RUN)
    assert labels.max() >= 5 and labels.max() == expected.max()


def test_segment_widget_exports_the_current_model_to_bioimageio(
    make_napari_viewer, qtbot, tmp_path, monkeypatch
):
    """Export... is off without a model; with one it writes a package in a worker that
    loads back as the same network, its test input cut from the chosen image."""
    import zipfile

    import torch

    from napari_unet.widgets import _dialogs
    from napari_unet.widgets.segment_widget import SegmentWidget

    viewer = make_napari_viewer()
    image, _ = nuclei_sample(seed=7)
    viewer.add_image(image, name="nuclei")
    widget = SegmentWidget(viewer)
    assert not widget.export_button.enabled
    widget.builtin_button.native.click()
    assert widget.export_button.enabled
    package = tmp_path / "mine.zip"
    monkeypatch.setattr(_dialogs, "ask_export_package", lambda parent: str(package))
    widget.export_button.native.click()
    assert widget.busy and not widget.export_button.enabled
    qtbot.waitUntil(lambda: not widget.busy, timeout=180_000)
    assert "exported mine.zip" in widget.status.value and widget.export_button.enabled
    restored = load_model(package)
    expected = load_model("nuclei")
    assert restored.config == expected.config
    for key, value in expected.state_dict().items():
        assert torch.equal(restored.state_dict()[key], value)
    with zipfile.ZipFile(package) as archive:
        test_input = np.load(archive.open("test_input.npy"))
    crop = test_input[0, 0]
    np.testing.assert_array_equal(crop, image[: crop.shape[0], : crop.shape[1]])
