"""Screenshots of docs/widgets.md from the real app: ``xvfb-run -a python docs/screenshots.py``.

Writes docs/images/{docked,weight_map,training,segmented}.png (name some of them,
e.g. ``python docs/screenshots.py docked``, to write only those). Training uses the
"fast" preset with a 300-step budget and validation every 50 steps, so that the
loss plot has a few validation points after a minute or two on a laptop CPU.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import napari
from qtpy.QtWidgets import QApplication

from napari_unet.commands.demo import open_demo
from napari_unet.sample_data import sample_layers
from napari_unet.training import PRESETS
from napari_unet.widgets.segment_widget import SegmentWidget
from napari_unet.widgets.train_widget import TrainWidget
from napari_unet.widgets.weight_map_widget import WeightMapWidget

OUT = Path(__file__).parent / "images"
SIZE = (1500, 980)


def wait(app: QApplication, seconds: float = 0.0, until=None, timeout: float = 600.0) -> None:
    """Run the event loop for ``seconds``, or until ``until()`` is true."""
    end = time.monotonic() + (timeout if until else seconds)
    while time.monotonic() < end and not (until and until()):
        app.processEvents()
        time.sleep(0.01)


def new_viewer():
    viewer = napari.Viewer(title="napari-unet")
    viewer.window.resize(*SIZE)
    for data, kwargs, kind in sample_layers():
        getattr(viewer, f"add_{kind}")(data, **kwargs)
    viewer.reset_view()
    return viewer


def shoot(viewer, app, name: str) -> None:
    wait(app, 0.5)
    path = OUT / name
    viewer.screenshot(str(path), canvas_only=False)
    print("wrote", path)


def main(names: list[str]) -> int:
    OUT.mkdir(exist_ok=True)
    app = QApplication.instance() or QApplication(sys.argv)
    PRESETS["fast"] = PRESETS["fast"].replace(val_every=50, val_every_s=None)

    # 1. the three widgets docked: `napari-unet demo` itself
    viewer = napari.Viewer(title="napari-unet demo")
    viewer.window.resize(*SIZE)
    open_demo(viewer)
    shoot(viewer, app, "docked.png")
    viewer.close()
    if names and not set(names) - {"docked"}:
        return 0

    # 2. the weight map of the sample's labels, with its terms
    viewer = new_viewer()
    weights = WeightMapWidget(viewer)
    viewer.window.add_dock_widget(weights, name="Weight map", area="right")
    weights.show_components.value = True
    weights.show_map()
    wait(app, until=lambda: not weights.busy and "cells labels border" in viewer.layers)
    viewer.layers["cells labels"].visible = False
    viewer.camera.zoom *= 1.3
    viewer.layers.selection.active = viewer.layers["cells labels weight map"]
    shoot(viewer, app, "weight_map.png")
    viewer.close()

    # 3. training in progress: loss curve, validation, live preview
    viewer = new_viewer()
    train = TrainWidget(viewer)
    viewer.window.add_dock_widget(train, name="Train U-Net", area="right")
    train.budget_unit.value = "iterations"
    train.budget.value = 300
    viewer.layers["cells labels"].visible = False  # the preview is the point here
    train.train()
    wait(app, until=lambda: len(train.plot.metric_points.get("AP@0.5", [])) >= 3)
    wait(app, 2.5)  # let the plot and the preview catch up
    shoot(viewer, app, "training.png")
    wait(app, until=lambda: not train.busy)

    # 4. one-click segmentation with the model just trained
    segment = SegmentWidget(viewer)
    viewer.window.add_dock_widget(segment, name="Segment", area="right", tabify=True)
    segment.segment()
    wait(app, until=lambda: not segment.busy)
    viewer.layers["cells labels"].visible = False
    viewer.layers["cells preview"].visible = False
    viewer.layers.selection.active = viewer.layers["cells segmentation"]
    shoot(viewer, app, "segmented.png")
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
