"""Screenshots of docs/widgets.md from the real app: ``xvfb-run -a python docs/screenshots.py``.

Writes docs/images/{docked,weight_map,training,segmented,ome_zarr}.png (``docked``
or ``ome_zarr`` alone, e.g. ``python docs/screenshots.py ome_zarr``, writes only that).
Training uses the "fast" preset with a 300-step budget and validation every 50 steps, so that the
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
    if names == ["ome_zarr"]:
        return ome_zarr(app)
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
    return ome_zarr(app)


def nuclei(shape: tuple[int, int], count: int, seed: int = 4):
    """Blurred bright disks (radius 6-13 px) on a noisy background: nucleus-like."""
    import numpy as np
    from scipy import ndimage
    from skimage.draw import disk

    rng = np.random.default_rng(seed)
    image = np.zeros(shape, np.float32)
    for _ in range(count):
        centre = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
        image[disk(centre, rng.uniform(6, 13), shape=shape)] = rng.uniform(0.4, 1.0)
    image = ndimage.gaussian_filter(image, 1.5) + rng.normal(0.05, 0.03, shape)
    return image.astype(np.float32)


def ome_zarr(app: QApplication) -> int:
    """5. an OME-Zarr opened with napari-ome-zarr, segmented into its own labels group."""
    import tempfile

    import zarr
    from ome_zarr.format import FormatV05
    from ome_zarr.writer import write_image

    path = Path(tempfile.mkdtemp(prefix="napari-unet-shot-")) / "cells.ome.zarr"
    image = nuclei((1024, 1024), 700)
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
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
