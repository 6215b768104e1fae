"""Train widget: fine-tuning from the built-in nuclei model, the current model or a file."""

from __future__ import annotations

import pytest
import torch

from napari_unet.config import UNetConfig
from napari_unet.model import UNet
from napari_unet.model_io import load_model, save_model
from napari_unet.sample_data import make_sample
from napari_unet.training import PRESETS
from napari_unet.widgets import _dialogs
from napari_unet.widgets.model_store import model_store
from napari_unet.widgets.train_widget import TrainWidget

WAIT_MS = 180_000


@pytest.fixture
def viewer_with_cells(make_napari_viewer, monkeypatch):
    preset = PRESETS["fast"].replace(
        tile_size=124, batch_size=2, minutes=None, iterations=4, val_fraction=0.0,
        preview_every_s=1e9,
    )  # fmt: skip
    monkeypatch.setitem(PRESETS, "few steps", preset)
    image, labels = make_sample((128, 128), n_objects=10, seed=1)
    viewer = make_napari_viewer()
    viewer.add_image(image, name="cells")
    viewer.add_labels(labels, name="cells labels")
    return viewer


def train_from(viewer, qtbot, choice: str) -> TrainWidget:
    widget = TrainWidget(viewer)
    widget.preset.value = "few steps"
    widget.live_preview.value = False
    widget.start_from.value = choice
    widget.train()
    qtbot.waitUntil(lambda: not widget.busy, timeout=WAIT_MS)
    return widget


def test_fine_tune_the_builtin_nuclei_model(viewer_with_cells, qtbot):
    builtin = load_model("nuclei")
    train_from(viewer_with_cells, qtbot, "built-in nuclei")
    trained = model_store(viewer_with_cells).model
    assert trained is not None and trained.config == builtin.config
    assert trained.info.normalization == builtin.info.normalization
    assert trained.info.history["iterations"] == 4


def test_fine_tune_a_model_file_and_cancel_the_dialog(
    viewer_with_cells, qtbot, tmp_path, monkeypatch
):
    torch.manual_seed(0)
    path = tmp_path / "mine.safetensors"
    save_model(UNet(UNetConfig(base_channels=6, depth=2)), path)
    monkeypatch.setattr(_dialogs, "ask_open_model", lambda parent: None)
    widget = train_from(viewer_with_cells, qtbot, "file...")
    assert model_store(viewer_with_cells).model is None and not widget.busy  # cancelled
    monkeypatch.setattr(_dialogs, "ask_open_model", lambda parent: str(path))
    train_from(viewer_with_cells, qtbot, "file...")
    trained = model_store(viewer_with_cells).model
    assert trained.config.base_channels == 6 and trained.config.depth == 2
