"""Screenshots of docs/widgets.md from the real app: ``xvfb-run -a python docs/screenshots.py``.

Writes docs/images/{docked,builtin_nuclei,weight_map,training,segmented,ome_zarr}.png
(name some of the shots, e.g. ``python docs/screenshots.py docked ome_zarr``, to take
only those).
Training uses the "fast" preset with a 300-step budget and validation every 50 steps, so that the
loss plot has a few validation points after a minute or two on a laptop CPU.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import napari
from qtpy.QtWidgets import QApplication

from napari_unet.commands.demo import open_builtin_demo, open_demo
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


def docked(app: QApplication) -> None:
    """The three widgets docked: `napari-unet demo` itself."""
    viewer = napari.Viewer(title="napari-unet demo")
    viewer.window.resize(*SIZE)
    open_demo(viewer)
    shoot(viewer, app, "docked.png")
    viewer.close()


def builtin(app: QApplication) -> None:
    """`napari-unet demo --model nuclei` after one click on Segment."""
    viewer = napari.Viewer(title="napari-unet demo")
    viewer.window.resize(*SIZE)
    open_builtin_demo(viewer, "nuclei")
    segment = next(w for n, w in viewer.window.dock_widgets.items() if n.startswith("Segment"))
    segment.segment()
    wait(app, until=lambda: not segment.busy)
    viewer.layers["nuclei labels"].visible = False
    viewer.layers.selection.active = viewer.layers["nuclei segmentation"]
    shoot(viewer, app, "builtin_nuclei.png")
    viewer.close()


def weight_map(app: QApplication) -> None:
    """The weight map of the sample's labels, with its terms."""
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


def training_and_segmented(app: QApplication) -> None:
    """Training in progress (loss curve, validation, live preview), then one-click
    segmentation with the model just trained."""
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

    segment = SegmentWidget(viewer)
    viewer.window.add_dock_widget(segment, name="Segment", area="right", tabify=True)
    segment.segment()
    wait(app, until=lambda: not segment.busy)
    viewer.layers["cells labels"].visible = False
    viewer.layers["cells preview"].visible = False
    viewer.layers.selection.active = viewer.layers["cells segmentation"]
    shoot(viewer, app, "segmented.png")
    viewer.close()


def ome_zarr(app: QApplication) -> None:
    """An OME-Zarr opened with napari-ome-zarr, segmented into its own labels group."""
    import tempfile

    import zarr
    from ome_zarr.format import FormatV05
    from ome_zarr.writer import write_image

    from napari_unet.sample_data import make_nuclei

    path = Path(tempfile.mkdtemp(prefix="napari-unet-shot-")) / "nuclei.ome.zarr"
    image = make_nuclei((1024, 1024), n_objects=480, seed=4)[0]
    root = zarr.open_group(str(path), mode="w", zarr_format=3)
    write_image(image, root, axes="yx", fmt=FormatV05(), scale_factors=(2, 4),
                scale={"y": 0.65, "x": 0.65}, axes_units={"y": "micrometer", "x": "micrometer"},
                storage_options={"chunks": (256, 256)})  # fmt: skip
    viewer = napari.Viewer(title="napari-unet")
    viewer.window.resize(1300, 800)
    viewer.open(str(path), plugin="napari-ome-zarr")
    segment = SegmentWidget(viewer)
    viewer.window.add_dock_widget(segment, name="Segment", area="right")
    segment.use_builtin()
    segment.ome_zarr.write.value = True
    segment.ome_zarr.label_name.value = "nuclei"
    segment.segment()
    wait(app, until=lambda: not segment.busy)
    viewer.layers[-1].opacity = 0.45
    viewer.reset_view()
    viewer.camera.zoom *= 1.5
    shoot(viewer, app, "ome_zarr.png")
    viewer.close()


SHOTS = {
    "docked": docked,
    "builtin": builtin,
    "weight_map": weight_map,
    "training": training_and_segmented,
    "ome_zarr": ome_zarr,
}


def main(names: list[str]) -> int:
    unknown = set(names) - set(SHOTS)
    if unknown:
        print(f"unknown screenshot(s) {sorted(unknown)}; choose from {sorted(SHOTS)}")
        return 2
    OUT.mkdir(exist_ok=True)
    app = QApplication.instance() or QApplication(sys.argv)
    PRESETS["fast"] = PRESETS["fast"].replace(val_every=50, val_every_s=None)
    for name in names or SHOTS:
        SHOTS[name](app)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
