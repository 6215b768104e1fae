"""An OME-Zarr opened in napari (napari-ome-zarr) is segmented from the Segment widget
block by block into the file's own labels group, equal to ``segment`` on the in-memory
image, and shown lazily; a name already taken is replaced only after the user agreed, and
unfinished labels (a cancelled run) can be continued.
Other lazy images are labelled into a temporary zarr array, not into memory."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import zarr
from napari.layers import Image, Labels
from ome_zarr.io import parse_url
from ome_zarr.reader import Label, Reader

from napari_unet.inference import segment
from napari_unet.sample_data import make_sample
from napari_unet.widgets import _dialogs, segment_widget
from napari_unet.widgets.model_store import model_store
from napari_unet.widgets.segment_widget import SegmentWidget
from test_distributed import write_ome
from test_segment_widget import WAIT_MS, model_with_stored_postprocessing

pytest.importorskip("napari_ome_zarr")


def run(widget, qtbot):
    widget.segment()
    qtbot.waitUntil(lambda: not widget.busy, timeout=WAIT_MS)


def read_back(path):
    """Level 0 of the label image at ``path`` as ome-zarr-py's reader sees it."""
    nodes = list(Reader(parse_url(str(path)))())
    node = next(n for n in nodes if any(isinstance(s, Label) for s in n.specs))
    return np.asarray(node.data[0]), node.metadata


def test_ome_zarr_from_file_open_segmented_into_its_own_labels_group(
    make_napari_viewer, qtbot, tmp_path, monkeypatch
):
    image = make_sample((300, 280), n_objects=30, seed=3)[0]  # labels: levels 300 and 150 px
    path = write_ome(tmp_path / "cells.ome.zarr", image, "yx")
    model = model_with_stored_postprocessing()
    expected = segment(model, image)
    viewer = make_napari_viewer()
    viewer.open(str(path), plugin="napari-ome-zarr")
    layer = next(layer for layer in viewer.layers if isinstance(layer, Image))
    assert layer.multiscale and isinstance(layer.data[0], da.Array)  # lazy, as opened
    model_store(viewer).set(model, "test")
    widget = SegmentWidget(viewer)
    widget.image_layer.value = layer
    assert widget.ome_zarr.offered
    widget.ome_zarr.write.value = True
    widget.ome_zarr.label_name.value = "cells"
    run(widget, qtbot)

    out = viewer.layers[f"{layer.name} segmentation"]
    assert isinstance(out, Labels) and out.multiscale
    assert isinstance(out.data[0], zarr.Array)  # read from the file, not held in memory
    np.testing.assert_array_equal(out.data[0][...], expected)
    np.testing.assert_array_equal(out.scale, layer.scale)  # NGFF scale: 0.5, 0.25
    assert "written block by block to" in widget.status.value
    labels, metadata = read_back(path / "labels" / "cells")
    np.testing.assert_array_equal(labels, expected)
    assert metadata["coordinateTransformations"][0][0]["scale"] == [0.5, 0.25]

    # the name is taken: declined, nothing is written
    asked, errors = [], []
    monkeypatch.setattr(segment_widget, "show_error", errors.append)
    monkeypatch.setattr(_dialogs, "confirm_replace", lambda parent, what: asked.append(what))
    level0 = path / "labels" / "cells" / "0"
    stamps = sorted((p, p.stat().st_mtime_ns) for p in level0.rglob("*") if p.is_file())
    model.info.postprocess = {"threshold": 0.5, "expand": 0}  # other labels if it ran
    run(widget, qtbot)
    assert asked == [f"labels/cells in {path}"]
    assert errors == [f"labels/cells exists in {path}: nothing was written"]
    assert sorted((p, p.stat().st_mtime_ns) for p in level0.rglob("*") if p.is_file()) == stamps

    # agreed: replaced
    monkeypatch.setattr(_dialogs, "confirm_replace", lambda parent, what: True)
    run(widget, qtbot)
    replaced = segment(model, image)
    assert not np.array_equal(replaced, expected)
    np.testing.assert_array_equal(read_back(path / "labels" / "cells")[0], replaced)
    np.testing.assert_array_equal(
        viewer.layers[f"{layer.name} segmentation"].data[0][...], replaced
    )

    # reopened, napari-ome-zarr shows the image with its labels
    reopened = make_napari_viewer()
    reopened.open(str(path), plugin="napari-ome-zarr")
    assert any(isinstance(layer, Labels) and "cells" in layer.name for layer in reopened.layers)


def test_lazy_image_is_labelled_into_a_zarr_array_not_memory(make_napari_viewer, qtbot):
    image = make_sample((96, 110), n_objects=8, seed=3)[0]
    model = model_with_stored_postprocessing()
    viewer = make_napari_viewer()
    viewer.add_image(da.from_array(image, chunks=(48, 55)), name="lazy")
    model_store(viewer).set(model, "test")
    widget = SegmentWidget(viewer)
    assert not widget.ome_zarr.offered  # not from an OME-Zarr: nothing to write into
    run(widget, qtbot)
    labels = viewer.layers["lazy segmentation"].data
    assert isinstance(labels, zarr.Array)
    np.testing.assert_array_equal(labels[...], segment(model, image))


def test_channels_split_by_the_reader_segment_the_whole_ome_zarr_image(
    make_napari_viewer, qtbot, tmp_path, monkeypatch
):
    import torch

    from napari_unet.config import UNetConfig
    from napari_unet.model import UNet

    plane = make_sample((140, 120), n_objects=10, seed=5)[0]
    image = np.stack([plane, plane[::-1]])  # c, y, x
    path = write_ome(tmp_path / "two.ome.zarr", image, "cyx")
    torch.manual_seed(1)
    two_channels = UNet(UNetConfig(in_channels=2, base_channels=4, depth=2))
    viewer = make_napari_viewer()
    viewer.open(str(path), plugin="napari-ome-zarr")
    channel = next(layer for layer in viewer.layers if isinstance(layer, Image))
    assert channel.data[0].shape == (140, 120)  # napari-ome-zarr split the channels
    model_store(viewer).set(two_channels, "test")
    widget = SegmentWidget(viewer)
    widget.image_layer.value = channel
    assert widget.ome_zarr.offered
    widget.ome_zarr.write.value = True
    run(widget, qtbot)
    expected = segment(two_channels, image, channel_axis=0)
    np.testing.assert_array_equal(read_back(path / "labels" / "unet")[0], expected)

    # a one-channel model: refused with one sentence, or, unticked, this channel alone
    errors = []
    monkeypatch.setattr(segment_widget, "show_error", errors.append)
    one_channel = model_with_stored_postprocessing()
    model_store(viewer).set(one_channel, "test")
    run(widget, qtbot)
    assert errors == [
        "the OME-Zarr image has 2 channel(s) but the model takes 1; untick 'save into the "
        "OME-Zarr' to segment this layer alone"
    ]
    widget.ome_zarr.write.value = False
    run(widget, qtbot)
    labels = viewer.layers[f"{channel.name} segmentation"].data
    np.testing.assert_array_equal(labels[...], segment(one_channel, np.asarray(channel.data[0])))


@pytest.mark.parametrize("answer", ["continue", "replace", None])
def test_cancel_leaves_the_layers_and_the_next_run_offers_to_continue(
    make_napari_viewer, qtbot, tmp_path, monkeypatch, answer
):
    """Cancelled after its bands were computed, the run leaves unfinished labels; the next
    run asks whether to continue them (the computed bands are kept: "resuming: 1 of 1"),
    replace them, or leave them (nothing written)."""
    import threading

    from napari_unet import ngff

    image = make_sample((140, 120), n_objects=10, seed=6)[0]
    path = write_ome(tmp_path / "cells.ome.zarr", image, "yx")
    model = model_with_stored_postprocessing()
    viewer = make_napari_viewer()
    viewer.open(str(path), plugin="napari-ome-zarr")
    layers = list(viewer.layers)
    model_store(viewer).set(model, "test")
    started, gate = threading.Event(), threading.Event()
    job = segment_widget.segment_ome_zarr_job

    def gated(*args, **kwargs):
        """The job, held after its band (the whole image here) was computed."""
        run = job(*args, **kwargs)
        for item in run:
            yield item
            if item[0] >= 1:
                break
        started.set()
        gate.wait(WAIT_MS / 1000)
        return (yield from run)

    monkeypatch.setattr(segment_widget, "segment_ome_zarr_job", gated)
    widget = SegmentWidget(viewer)
    widget.ome_zarr.write.value = True
    widget.segment()
    qtbot.waitUntil(started.is_set, timeout=WAIT_MS)
    widget.cancel_button.native.click()
    gate.set()
    qtbot.waitUntil(lambda: not widget.busy, timeout=WAIT_MS)
    assert "cancelled" in widget.status.value and list(viewer.layers) == layers
    assert ngff.unfinished_run(path, "unet")  # begun, marked incomplete

    asked, errors, statuses = [], [], []
    monkeypatch.setattr(
        _dialogs, "ask_continue_or_replace", lambda parent, what: asked.append(what) or answer
    )
    monkeypatch.setattr(_dialogs, "confirm_replace", lambda *_: pytest.fail("asked to replace"))
    monkeypatch.setattr(segment_widget, "show_error", errors.append)
    monkeypatch.setattr(segment_widget, "segment_ome_zarr_job", job)
    shown = widget._progress

    def progress(item):  # the status line after each report from the job
        shown(item)
        statuses.append(widget.status.value)

    widget._progress = progress
    run(widget, qtbot)
    assert asked == [f"labels/unet in {path}"]
    if answer is None:
        assert errors == [f"labels/unet in {path} was left as it was: nothing was written"]
        assert ngff.unfinished_run(path, "unet") and list(viewer.layers) == layers
        return
    assert ("resuming: 1 of 1 bands already done" in statuses) == (answer == "continue")
    assert not ngff.unfinished_run(path, "unet")
    np.testing.assert_array_equal(read_back(path / "labels" / "unet")[0], segment(model, image))


def test_continuing_labels_of_another_model_says_to_replace_them(
    make_napari_viewer, qtbot, tmp_path, monkeypatch
):
    """Unfinished labels of another model: "Continue" fails with one sentence naming what
    differs, and the labels stay as they were."""
    from napari_unet import ngff
    from napari_unet.distributed import segment_dataset_iter
    from napari_unet.model_io import save_model
    from napari_unet.widgets import _workers

    image = make_sample((140, 120), n_objects=10, seed=6)[0]
    path = write_ome(tmp_path / "cells.ome.zarr", image, "yx")
    model = model_with_stored_postprocessing()
    other = save_model(model, tmp_path / "other.safetensors")
    run_other = segment_dataset_iter(path, other, path, cluster="none", threshold=0.3)
    next(run_other), next(run_other)  # labels created, a band computed, then stopped
    run_other.close()
    assert ngff.unfinished_run(path, "unet")

    viewer = make_napari_viewer()
    viewer.open(str(path), plugin="napari-ome-zarr")
    model_store(viewer).set(model, "test")
    errors = []
    monkeypatch.setattr(_dialogs, "ask_continue_or_replace", lambda *_: "continue")
    monkeypatch.setattr(_workers, "show_error", errors.append)
    widget = SegmentWidget(viewer)
    widget.ome_zarr.write.value = True
    run(widget, qtbot)
    assert len(errors) == 1 and errors[0].startswith(
        f"segmentation failed: labels/unet in {path} was begun with another model or other "
        "settings ("
    )
    assert "threshold" in errors[0] and "choose Replace" in errors[0]
    assert ngff.unfinished_run(path, "unet")


def test_test_time_augmentation_when_saving_into_the_ome_zarr(
    make_napari_viewer, qtbot, tmp_path, monkeypatch
):
    """The flips reach the blocks (the labels are segment's with TTA); the uncertainty
    layer, which that path does not make, is refused in one sentence."""
    image = make_sample((200, 180), n_objects=20, seed=5)[0]
    path = write_ome(tmp_path / "cells.ome.zarr", image, "yx")
    model = model_with_stored_postprocessing()
    viewer = make_napari_viewer()
    viewer.open(str(path), plugin="napari-ome-zarr")
    layer = next(layer for layer in viewer.layers if isinstance(layer, Image))
    model_store(viewer).set(model, "test")
    widget = SegmentWidget(viewer)
    widget.image_layer.value = layer
    widget.ome_zarr.write.value = True
    widget.tta.mode.value = "flips"
    errors = []
    monkeypatch.setattr(segment_widget, "show_error", errors.append)
    run(widget, qtbot)  # "also show uncertainty" is ticked
    assert errors == [
        "the uncertainty layer is not offered when saving into the OME-Zarr: untick one of the two"
    ]
    assert not (path / "labels").exists()
    widget.tta.show_uncertainty.value = False
    run(widget, qtbot)
    expected = segment(model, image, tta="flips")
    assert not np.array_equal(expected, segment(model, image))
    np.testing.assert_array_equal(
        read_back(path / "labels" / widget.ome_zarr.label_name.value)[0], expected
    )
