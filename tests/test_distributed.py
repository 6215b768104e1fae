"""Whole-dataset segmentation on a real dask LocalCluster (2 worker processes): labels
equal single-process ``segment`` id for id, a worker (or the only one) killed mid-run,
resume after an interruption, NGFF metadata read back by ome-zarr-py, bad input changing
nothing."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from scipy import ndimage

from napari_unet import ngff
from napari_unet.cli import main
from napari_unet.config import ModelInfo, UNetConfig
from napari_unet.distributed import WORK_FOLDER, segment_dataset
from napari_unet.inference import predict, segment
from napari_unet.model import UNet
from napari_unet.model_io import save_model

pytest.importorskip("distributed")
pytest.importorskip("ome_zarr")
from distributed.diagnostics.plugin import WorkerPlugin

# every setting given: nothing is measured; fp32 (bf16, the CPU default, is not exact)
EXACT = {"precision": "fp32", "device": "cpu", "tile_size": 92, "batch_size": 3,
         "channels_last": False}  # fmt: skip
SRC = str(Path(__file__).resolve().parents[1] / "src")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny(task="instance", in_channels=1, n_classes=2, seed=0) -> UNet:
    torch.manual_seed(seed)
    info = ModelInfo(task=task, class_names=[f"c{i}" for i in range(n_classes)])
    config = UNetConfig(in_channels=in_channels, n_classes=n_classes, base_channels=4, depth=2)
    return UNet(config, info).eval()


def blobs(shape, seed=0) -> np.ndarray:
    """uint16 image of bright blobs on a noisy background."""
    rng = np.random.default_rng(seed)
    smooth = ndimage.gaussian_filter(rng.random(shape), 4)
    bright = smooth > np.percentile(smooth, 60)
    return (bright * 100 + rng.random(shape) * 20).astype(np.uint16)


def write_ome(path: Path, image: np.ndarray, axes: str, version: str = "0.5") -> Path:
    from ome_zarr.format import FormatV04, FormatV05
    from ome_zarr.writer import write_image

    fmt = FormatV04() if version == "0.4" else FormatV05()
    root = zarr.open_group(str(path), mode="w", zarr_format=fmt.zarr_format)
    scale = {a: (0.5 if a == "y" else 0.25 if a == "x" else 1.0) for a in axes}
    units = {a: "micrometer" for a in axes if a in "yx"}
    write_image(image, root, axes=axes, fmt=fmt, scale_factors=(2,), scale=scale,
                axes_units=units)  # fmt: skip
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A tiny model file, a 300 x 260 OME-Zarr (NGFF 0.5) image, a threshold that gives
    many objects, and the reference labels of single-process ``segment``."""
    folder = tmp_path_factory.mktemp("distributed")
    torch.set_num_threads(1)
    model = tiny()
    model_path = save_model(model, folder / "tiny.safetensors")
    image = blobs((300, 260))
    foreground = predict(model, image, **EXACT)[1]
    threshold = float(np.median(foreground))
    reference = segment(model, image, threshold=threshold, **EXACT)
    assert reference.max() > 20  # many objects, many of them across block borders
    return {"folder": folder, "model": model, "model_path": model_path, "image": image,
            "threshold": threshold, "reference": reference}  # fmt: skip


@contextlib.contextmanager
def local_client(n_workers: int):
    """A Client of a LocalCluster of one-thread worker processes importing this
    checkout's code."""
    distributed = pytest.importorskip("distributed")
    previous = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (SRC, previous) if p)
    cluster = distributed.LocalCluster(
        n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=":0"
    )
    client = distributed.Client(cluster)
    try:
        yield client
    finally:
        client.close()
        cluster.close()
        if previous is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = previous


@pytest.fixture(scope="module")
def client():
    """A LocalCluster of 2 one-thread worker processes importing this checkout's code."""
    with local_client(2) as client:
        yield client


def run(data, image_path, out, **kwargs):
    options = {"block_size": 64, "threshold": data["threshold"], **EXACT, **kwargs}
    return segment_dataset(image_path, data["model_path"], out, **options)


def test_cluster_labels_equal_segment_and_read_back_as_ngff(data, client, tmp_path):
    image_path = write_ome(tmp_path / "image.zarr", data["image"], "yx")
    target = run(data, image_path, image_path, cluster=client)
    labels = target.level0(mode="r")[...]
    assert np.array_equal(labels, data["reference"])
    assert not (image_path / WORK_FOLDER).exists()

    from ome_zarr.io import parse_url
    from ome_zarr.reader import Label, Reader

    nodes = list(Reader(parse_url(str(image_path / "labels" / "unet")))())
    label_node = next(n for n in nodes if any(isinstance(s, Label) for s in n.specs))
    assert [a["name"] for a in label_node.metadata["axes"]] == ["y", "x"]
    assert label_node.metadata["axes"][0]["unit"] == "micrometer"
    scales = [t[0]["scale"] for t in label_node.metadata["coordinateTransformations"]]
    assert scales == [[0.5, 0.25], [1.0, 0.5]]
    assert np.array_equal(np.asarray(label_node.data[0]), data["reference"])
    assert np.array_equal(np.asarray(label_node.data[1]), data["reference"][::2, ::2])
    image_nodes = list(Reader(parse_url(str(image_path)))())
    assert "unet" in zarr.open_group(str(image_path / "labels")).attrs["ome"]["labels"]
    assert len(image_nodes) >= 2  # the image and, through labels/, its label image


class KillOnce(WorkerPlugin):
    """Kills its worker process when it starts a band task, once: only the worker that
    creates the flag file dies (created atomically: two workers starting band tasks at
    the same moment both saw no flag and both died)."""

    name = "kill-once"

    def __init__(self, flag):
        self.flag = flag

    def transition(self, key, start, finish, **kwargs):
        name = key[0] if isinstance(key, tuple) else str(key)
        if finish != "executing" or "run_band" not in name:
            return
        try:
            os.close(os.open(self.flag, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return
        os.kill(os.getpid(), signal.SIGKILL)


def kill_a_worker_once(client, flag) -> None:
    """Register :class:`KillOnce` (it stays registered but inert once the flag exists,
    also on restarts)."""
    import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    try:
        client.register_plugin(KillOnce(str(flag)))
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


def test_worker_killed_mid_run_recomputes_its_blocks(data, client, tmp_path):
    flag = tmp_path / "killed"
    kill_a_worker_once(client, flag)
    image_path = write_ome(tmp_path / "image.zarr", data["image"], "yx")
    target = run(data, image_path, tmp_path / "out.zarr", cluster=client)
    assert flag.exists()  # a worker really died during a task
    assert np.array_equal(target.level0(mode="r")[...], data["reference"])
    client.wait_for_workers(2, timeout=120)  # the nanny restarted it, for the next tests


def test_the_only_worker_killed_mid_run_computes_the_plan_again(data, tmp_path):
    """Every worker holding the plan dies: dask must be able to compute the plan again
    (scattered, it was lost with them and the run failed: 'already forgotten')."""
    flag = tmp_path / "killed"
    with local_client(1) as client:
        kill_a_worker_once(client, flag)
        image_path = write_ome(tmp_path / "image.zarr", data["image"], "yx")
        target = run(data, image_path, tmp_path / "out.zarr", cluster=client)
    assert flag.exists()
    assert np.array_equal(target.level0(mode="r")[...], data["reference"])


def test_resume_after_interruption_gives_identical_labels(data, client, tmp_path):
    image_path = write_ome(tmp_path / "image.zarr", data["image"], "yx", version="0.4")

    def interrupt(done, total):
        if done >= 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(data, image_path, image_path, cluster=client, on_progress=interrupt)
    assert ngff.existing_run(_target(image_path))["complete"] is False
    messages = []
    target = run(data, image_path, image_path, cluster=client, on_message=messages.append)
    resumed = [m for m in messages if m.startswith("resuming")]
    assert resumed and int(resumed[0].split()[1]) >= 3
    assert np.array_equal(target.level0(mode="r")[...], data["reference"])
    assert ngff.existing_run(target)["complete"] is True
    assert zarr.open_group(str(image_path)).attrs["multiscales"]  # still NGFF 0.4 (zarr v2)


def _target(image_path: Path) -> ngff.LabelTarget:
    return ngff.LabelTarget(str(image_path), "unet", (), (), (), ())


def test_stacks_and_semantic_models_in_one_process(data, tmp_path):
    stack = np.stack([blobs((150, 130), seed) for seed in range(3)])
    image_path = write_ome(tmp_path / "stack.zarr", stack, "zyx")
    steps = []
    target = run(data, image_path, image_path, on_progress=lambda *step: steps.append(step))
    done, totals = [d for d, _ in steps], {t for _, t in steps}
    assert done == sorted(done) and done[0] == 0 and len(totals) == 1
    assert done[-1] == totals.pop() == len(steps) - 1  # one step per task, bands and writes
    expected = segment(data["model"], stack, threshold=data["threshold"], **EXACT)
    assert expected.max() > 10
    assert np.array_equal(target.level0(mode="r")[...], expected)

    semantic = tiny(task="semantic", n_classes=3, seed=1)
    semantic_path = save_model(semantic, tmp_path / "semantic.safetensors")
    target = segment_dataset(image_path, semantic_path, tmp_path / "out.zarr", block_size=64,
                             name="classes", **EXACT)  # fmt: skip
    expected = segment(semantic, stack, **EXACT)
    assert len(np.unique(expected)) >= 2
    assert np.array_equal(target.level0(mode="r")[...], expected)


def test_test_time_augmentation_reaches_the_blocks(data, tmp_path):
    """Blocks run every tile once per flip, as the in-memory path does: the same labels
    as ``segment(..., tta="flips")``, which differ from those without TTA."""
    image_path = write_ome(tmp_path / "image.zarr", data["image"], "yx")
    target = run(data, image_path, tmp_path / "out.zarr", tta="flips")
    expected = segment(data["model"], data["image"], threshold=data["threshold"], tta="flips",
                       **EXACT)  # fmt: skip
    assert not np.array_equal(expected, data["reference"])
    assert np.array_equal(target.level0(mode="r")[...], expected)


def test_bad_input_one_sentence_and_nothing_changed(data, tmp_path, capsys):
    image_path = write_ome(tmp_path / "image.zarr", data["image"], "yx")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    bare = zarr.open_group(str(tmp_path / "bare.zarr"), mode="w")
    bare.create_array("x", shape=(4, 4), dtype="u1")
    rgb_model = save_model(tiny(in_channels=3), tmp_path / "rgb.safetensors")
    base = ["segment", str(image_path), "--model", str(data["model_path"]), "--block-size", "64",
            "--precision", "fp32", "--tile-size", "92", "--batch-size", "3"]  # fmt: skip
    cases = {
        "not an OME-Zarr image": ["segment", str(tmp_path / "bare.zarr"), "--model",
                                  str(data["model_path"]), "--out", str(tmp_path / "o.zarr")],
        "input channel": [*base[:3], str(rgb_model), *base[4:], "--out", str(image_path)],
        "cannot reach the dask scheduler": [*base, "--out", str(image_path), "--cluster",
                                            "tcp://127.0.0.1:1"],
    }  # fmt: skip
    for expected, argv in cases.items():
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and expected in err[0], err
    after = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert [p for p in after if "image.zarr" in str(p)] == [
        p for p in before if "image.zarr" in str(p)
    ]

    assert main([*base, "--out", str(image_path), "--threshold", "0.4"]) == 0
    capsys.readouterr()
    labels = zarr.open_array(str(image_path / "labels" / "unet" / "0"))[...]
    assert main([*base, "--out", str(image_path), "--threshold", "0.6"]) == 2
    assert "another model or other settings (threshold)" in capsys.readouterr().err
    taken = zarr.open_group(str(image_path / "labels")).create_group("cells")
    taken.create_array("0", shape=(2, 2), dtype="u1")
    assert main([*base, "--out", str(image_path), "--name", "cells"]) == 2
    assert "not made by napari-unet" in capsys.readouterr().err
    assert np.array_equal(zarr.open_array(str(image_path / "labels" / "unet" / "0"))[...], labels)
    assert main([*base, "--out", str(image_path), "--threshold", "0.6", "--overwrite"]) == 0
    assert "labels written" in capsys.readouterr().out


def test_ngff_04_five_axes_with_channels_keeps_axes_scale_and_units(data, tmp_path):
    rgb = tiny(in_channels=2, seed=2)
    model_path = save_model(rgb, tmp_path / "two.safetensors")
    image = np.stack([blobs((120, 100), 0), blobs((120, 100), 1)])[None, :, None]  # t c z y x
    image_path = write_ome(tmp_path / "image.zarr", image, "tczyx", version="0.4")
    source = ngff.open_source(image_path)
    assert source.axes == ("t", "c", "z", "y", "x") and source.version == "0.4"
    assert source.scale == (1.0, 1.0, 1.0, 0.5, 0.25)
    target = segment_dataset(image_path, model_path, image_path, block_size=48, **EXACT)
    expected = segment(rgb, image[0, :, 0], channel_axis=0, **EXACT)
    labels = target.level0(mode="r")
    assert labels.shape == (1, 1, 120, 100)
    assert np.array_equal(labels[0, 0], expected) and expected.max() > 0
    multiscale = zarr.open_group(str(image_path / "labels" / "unet")).attrs["multiscales"][0]
    assert [a["name"] for a in multiscale["axes"]] == ["t", "z", "y", "x"]
    assert multiscale["axes"][-1]["unit"] == "micrometer"
    assert multiscale["datasets"][0]["coordinateTransformations"][0]["scale"] == [1, 1, 0.5, 0.25]
    zarray = json.loads((image_path / "labels" / "unet" / "0" / ".zarray").read_text())
    assert zarray["dimension_separator"] == "/"  # NGFF 0.4 asks for nested chunk keys


def test_tiff_input_into_a_new_ome_zarr(data, tmp_path):
    import tifffile

    tiff = tmp_path / "image.tif"
    tifffile.imwrite(tiff, data["image"], tile=(64, 64))
    target = run(data, tiff, tmp_path / "out.zarr")
    assert np.array_equal(target.level0(mode="r")[...], data["reference"])
    into_tiff = ["segment", str(tiff), "--model", str(data["model_path"]), "--out", str(tiff)]
    assert main(into_tiff) == 2


def test_blocks_run_exactly_the_batches_of_the_whole_image_pass(data, tmp_path, monkeypatch):
    """A network's output may differ in the last bits with the batch size (CPU kernels
    for one tile differ from those for several), so the blocks must run the same
    batches of tiles as the whole-image pass, not batches of their own."""
    from napari_unet.predictor import Predictor

    batches = []
    forward = Predictor._forward

    def record(self, plane, tiles, lo_hi, check_finite):
        batches.append(tuple((t.out_rows.start, t.out_cols.start) for t in tiles))
        return forward(self, plane, tiles, lo_hi, check_finite)

    monkeypatch.setattr(Predictor, "_forward", record)
    settings = {**EXACT, "batch_size": 4}
    segment(data["model"], data["image"], threshold=data["threshold"], **settings)
    whole = set(batches)
    batches.clear()
    image_path = write_ome(tmp_path / "image.zarr", data["image"], "yx")
    run(data, image_path, image_path, **settings)
    assert len(whole) > 4 and any(len(b) < 4 for b in whole)  # a short last batch
    assert set(batches) == whole  # every block batch is a whole-image batch, and all ran


def test_an_unreachable_scheduler_leaves_no_thread_behind():
    """distributed's Client, failing to connect, leaves its IO-loop thread running (in a
    long napari session, or this test process, until exit); connect must not."""
    import threading

    from napari_unet.distributed import connect

    before = set(threading.enumerate())
    with pytest.raises(ValueError, match="cannot reach the dask scheduler at tcp://127"):
        connect("tcp://127.0.0.1:1")
    assert [t.name for t in set(threading.enumerate()) - before if t.is_alive()] == []
