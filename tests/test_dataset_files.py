"""A folder or glob of TIFF files segmented by ``segment_dataset`` / ``napari-unet segment``:
one OME-Zarr per file with labels equal to ``segment`` on each file, and a re-run skips
the files already done."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import tifffile
import zarr

from napari_unet.cli import main
from napari_unet.dataset_files import image_files, is_file_set, output_name
from napari_unet.distributed import segment_dataset
from napari_unet.inference import predict, segment
from napari_unet.model_io import save_model
from test_distributed import EXACT, blobs, tiny

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Three TIFFs of different sizes, a model file and each file's reference labels."""
    root = tmp_path_factory.mktemp("tiffs")
    images = {"a.tif": blobs((150, 130), 0), "b.tiff": blobs((96, 160), 1),
              "c.ome.tif": blobs((120, 120), 2)}  # fmt: skip
    (root / "images").mkdir()
    for name, image in images.items():
        tifffile.imwrite(root / "images" / name, image)
    (root / "images" / "notes.txt").write_text("not an image")
    model = tiny()
    threshold = float(np.median(predict(model, images["a.tif"], **EXACT)[1]))
    reference = {
        output_name(root / name): segment(model, image, threshold=threshold, **EXACT)
        for name, image in images.items()
    }
    assert all(labels.max() > 3 for labels in reference.values())
    model_path = save_model(model, root / "tiny.safetensors")
    return {"root": root, "images": root / "images", "model_path": model_path,
            "threshold": threshold, "reference": reference}  # fmt: skip


def test_each_file_into_its_own_ome_zarr_equal_to_segment_and_rerun_skips(folder, tmp_path):
    out = tmp_path / "out"
    options = {"block_size": 64, "threshold": folder["threshold"], "cluster": "none", **EXACT}
    steps, messages = [], []
    targets = segment_dataset(folder["images"], folder["model_path"], out,
                              on_progress=lambda *s: steps.append(s), on_message=messages.append,
                              **options)  # fmt: skip
    assert sorted(p.name for p in out.iterdir()) == ["a.ome.zarr", "b.ome.zarr", "c.ome.zarr"]
    for target in targets:
        labels = target.level0(mode="r")[...]
        np.testing.assert_array_equal(labels, folder["reference"][target.store.split("/")[-1]])
    done = [d for d, _ in steps]
    assert done == sorted(done) and done[-1] == steps[-1][1] > 3  # one bar over all files
    assert sum(m.startswith("[") for m in messages) == 3

    messages.clear()
    again = segment_dataset(folder["images"], folder["model_path"], out,
                            on_message=messages.append, **options)  # fmt: skip
    assert [m for m in messages if "skipped" in m] == [
        f"{name}: already segmented into {out / output_name(out / name)}, skipped"
        for name in ("a.tif", "b.tiff", "c.ome.tif")
    ]
    assert [t.store for t in again] == [t.store for t in targets]


def test_cli_glob_resumes_only_the_missing_file(folder, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["segment", str(folder["images"] / "*.tif*"), "--model", str(folder["model_path"]),
            "--out", str(out), "--block-size", "64", "--threshold", str(folder["threshold"]),
            "--precision", "fp32", "--tile-size", "92", "--batch-size", "3", "--device", "cpu",
            "--cluster", "none"]  # fmt: skip
    assert main(argv) == 0
    assert capsys.readouterr().out.count("labels written to") == 3
    before = (out / "a.ome.zarr" / "labels" / "unet" / "0").stat().st_mtime_ns

    shutil.rmtree(out / "b.ome.zarr")
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "a.tif: already segmented" in err and "c.ome.tif: already segmented" in err
    assert "[1/1] b.tiff" in err
    assert (out / "a.ome.zarr" / "labels" / "unet" / "0").stat().st_mtime_ns == before

    labels = zarr.open_array(str(out / "b.ome.zarr" / "labels" / "unet" / "0"))[...]
    np.testing.assert_array_equal(labels, folder["reference"]["b.ome.zarr"])


def test_file_sets_recognised_and_bad_sets_refused(folder, tmp_path):
    assert is_file_set(folder["images"]) and is_file_set(str(folder["images"] / "*.tif"))
    assert not is_file_set(folder["images"] / "a.tif")
    assert [f.name for f in image_files(folder["images"])] == ["a.tif", "b.tiff", "c.ome.tif"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no TIFF files"):
        image_files(tmp_path / "empty")
    twins = tmp_path / "twins"
    twins.mkdir()
    for name in ("x.tif", "x.tiff"):
        tifffile.imwrite(twins / name, np.zeros((8, 8), np.uint8))
    with pytest.raises(ValueError, match=r"would both write x\.ome\.zarr"):
        image_files(twins)
    (tmp_path / "file.zarr").write_text("")
    with pytest.raises(ValueError, match="must be a folder"):
        segment_dataset(folder["images"], folder["model_path"], tmp_path / "file.zarr")
