"""Screenshots of test-time augmentation and "where to annotate next" for docs/widgets.md.

    xvfb-run -a -s "-screen 0 1400x900x24" python docs/screenshots_uncertainty.py

Writes docs/images/segment_uncertainty.png (the Segment widget with d4 TTA and the
"<image> uncertainty" layer) and docs/images/suggest_regions.png (the Train widget's
suggested regions), both with the built-in nuclei model on a DSB 2018 image it never saw
(from ../shared/data; the synthetic sample when the data is absent).
"""

from __future__ import annotations

import sys
from pathlib import Path

import napari
import numpy as np
import tifffile
from qtpy.QtWidgets import QApplication
from screenshots import wait  # docs/ is on the path when run as a script

from napari_unet.model_io import load_model
from napari_unet.models import describe
from napari_unet.sample_data import make_sample
from napari_unet.widgets.model_store import model_store
from napari_unet.widgets.segment_widget import SegmentWidget
from napari_unet.widgets.train_widget import TrainWidget

OUT = Path(__file__).parent / "images"
DSB = Path(__file__).resolve().parents[2] / "shared" / "data" / "dsb2018" / "train"
HELD_OUT_IMAGE = "07fb37aafa662660.tif"  # every 5th file in name order is held out
SIZE = (1300, 800)


def nuclei_pair() -> tuple[np.ndarray, np.ndarray]:
    if (DSB / "images" / HELD_OUT_IMAGE).exists():
        return tuple(tifffile.imread(DSB / kind / HELD_OUT_IMAGE) for kind in ("images", "labels"))
    return make_sample((520, 696), n_objects=60, seed=4)


def new_viewer(image: np.ndarray):
    viewer = napari.Viewer(title="napari-unet")
    viewer.window.resize(*SIZE)
    viewer.add_image(image, name="nuclei")
    model_store(viewer).set(load_model("nuclei"), describe("nuclei"))
    return viewer


def shoot(viewer, app, name: str) -> None:
    viewer.reset_view()
    wait(app, 0.8)
    viewer.screenshot(str(OUT / name), canvas_only=False)
    print("wrote", OUT / name)


def main() -> int:
    app = QApplication.instance() or QApplication(sys.argv)
    image, truth = nuclei_pair()

    viewer = new_viewer(image)
    segment = SegmentWidget(viewer)
    viewer.window.add_dock_widget(segment, name="Segment", area="right")
    segment.tta.mode.value = "d4"
    segment.segment()
    wait(app, until=lambda: not segment.busy)
    viewer.layers["nuclei segmentation"].contour = 1
    viewer.layers.selection.active = viewer.layers["nuclei uncertainty"]
    shoot(viewer, app, "segment_uncertainty.png")
    viewer.close()

    viewer = new_viewer(image)
    annotated = np.zeros(truth.shape, truth.dtype)
    annotated[:200, :260] = truth[:200, :260]  # the user painted the top-left corner
    viewer.add_labels(annotated, name="nuclei labels")
    corner = np.array([[-0.5, -0.5], [-0.5, 259.5], [199.5, 259.5], [199.5, -0.5]])
    region = viewer.add_shapes([corner], name="annotated", edge_color="cyan",
                               face_color="transparent", edge_width=3)  # fmt: skip
    train = TrainWidget(viewer)
    viewer.window.add_dock_widget(train, name="Train U-Net", area="right")
    train.region_layer.value = region
    train.suggester.size.value = 96
    train.suggester.count.value = 4
    train.suggester.suggest()
    wait(app, until=lambda: not train.suggester.busy)
    viewer.layers.selection.active = viewer.layers["nuclei suggested regions"]
    shoot(viewer, app, "suggest_regions.png")
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
