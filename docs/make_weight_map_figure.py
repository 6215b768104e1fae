"""Render docs/images/weight_map_isbi.png: the parts of the weight map of an ISBI slice.

PYTHONPATH=src python docs/make_weight_map_figure.py [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import tifffile
from skimage.color import label2rgb

from napari_unet.weights import weight_map_components

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parents[1] / "shared" / "data"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, default=None)
    args = parser.parse_args()
    data = args.data or Path(os.environ.get("NAPARI_UNET_SHARED_DATA", DEFAULT_DATA))
    crop = (slice(128, 384), slice(128, 384))
    image = tifffile.imread(data / "isbi2012/train/images/slice00.tif")[crop]
    labels = tifffile.imread(data / "isbi2012/train/labels/slice00.tif")[crop]
    parts = weight_map_components(labels, w0=10.0, sigma=5.0)

    panels = [
        ("EM image", image, "gray", None),
        ("instance labels", label2rgb(labels, bg_label=0), None, None),
        ("class weight $w_c$", parts.class_weight, "viridis", None),
        ("$d_1 + d_2$ (shown where $\\leq R$)", parts.d1 + parts.d2, "magma_r", (0, parts.cutoff)),
        ("border term $w_0 e^{-(d_1+d_2)^2/2\\sigma^2}$", parts.border, "viridis", None),
        ("weight $w = w_c$ + border", parts.total, "viridis", None),
    ]
    fig, axes = plt.subplots(2, 3, figsize=(12, 8.4), constrained_layout=True)
    for ax, (title, values, cmap, limits) in zip(axes.flat, panels):
        shown = np.ma.masked_invalid(values) if cmap else values
        im = ax.imshow(shown, cmap=cmap, clim=limits, interpolation="nearest")
        ax.set_title(title)
        ax.set_axis_off()
        if cmap and cmap != "gray":
            fig.colorbar(im, ax=ax, shrink=0.8)
    fig.suptitle(
        "ISBI 2012 slice 0, 256x256 crop: w0 = 10, sigma = 5 px, "
        f"cut-off R = {parts.cutoff:.1f} px"
    )
    out = HERE / "images" / "weight_map_isbi.png"
    fig.savefig(out, dpi=80)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
