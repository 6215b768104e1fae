"""``napari-unet demo``: the three widgets on the built-in sample, or a headless run.

``napari-unet demo`` opens napari with the generated sample image, its labels
and the Train, Segment and Weight-map widgets docked.

``napari-unet demo --headless`` needs no display and imports no Qt: it trains on
the sample for about a minute, segments a second sample generated with another
seed, writes that label image as TIFF and prints what it measured.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ._files import write_tiff_atomic

DEFAULT_OUT = "napari-unet-demo-labels.tif"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="open napari with the sample data and the widgets (or --headless: train, "
        "segment and report)",
        description=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--headless", action="store_true", help="no window: train, segment, write, report"
    )
    parser.add_argument(
        "--out", type=Path, default=Path(DEFAULT_OUT),
        help=f"label image written by --headless (default: {DEFAULT_OUT})",
    )  # fmt: skip
    parser.add_argument(
        "--minutes", type=float, default=1.0, help="training budget of --headless (default 1)"
    )
    parser.add_argument(
        "--iterations", type=int, default=None,
        help="training budget in steps instead of minutes (whichever comes first)",
    )  # fmt: skip
    parser.add_argument("--preset", default="fast", help="training preset (default: fast)")
    parser.add_argument(
        "--size", type=int, default=256, help="edge of the generated sample images in px"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.headless:
        return run_headless(args)
    return run_gui()


def run_gui() -> int:
    import napari

    from ..sample_data import sample_layers
    from ..widgets.segment_widget import SegmentWidget
    from ..widgets.train_widget import TrainWidget
    from ..widgets.weight_map_widget import WeightMapWidget

    viewer = napari.Viewer(title="napari-unet demo")
    for data, kwargs, kind in sample_layers():
        getattr(viewer, f"add_{kind}")(data, **kwargs)
    for widget, name in (
        (TrainWidget(viewer), "Train U-Net"),
        (SegmentWidget(viewer), "Segment"),
        (WeightMapWidget(viewer), "Weight map"),
    ):
        viewer.window.add_dock_widget(widget, name=name, area="right", tabify=True)
    napari.run()
    return 0


def run_headless(args: argparse.Namespace) -> int:
    import numpy as np
    import torch
    from tqdm import tqdm

    from ..inference import segment
    from ..metrics import average_precision, foreground_iou
    from ..progress import drain
    from ..sample_data import make_sample
    from ..training import PRESETS, train_iter

    if args.preset not in PRESETS:
        raise ValueError(f"unknown preset {args.preset!r}; choose one of {sorted(PRESETS)}")
    if args.minutes <= 0 or (args.iterations is not None and args.iterations < 1):
        raise ValueError("the training budget must be positive")
    if args.size < 64:
        raise ValueError(f"--size must be at least 64 px, got {args.size}")
    out = args.out
    if not out.parent.is_dir():
        raise ValueError(f"the folder of --out does not exist: {out.parent}")
    settings = PRESETS[args.preset].replace(minutes=args.minutes, iterations=args.iterations)
    shape = (args.size, args.size)
    n_objects = max(4, round(36 * args.size**2 / 256**2))
    image, labels = make_sample(shape, n_objects=n_objects, seed=0)
    test_image, test_labels = make_sample(shape, n_objects=n_objects, seed=1)
    print(
        f"napari-unet demo: training on a generated {shape[0]}x{shape[1]} sample "
        f"({labels.max()} touching cells), preset '{args.preset}', budget "
        f"{_budget(settings)}, torch {torch.__version__} with {torch.get_num_threads()} threads"
    )

    start = time.perf_counter()
    run = train_iter([image], [labels], settings=settings)
    with tqdm(total=100, unit="%", desc="training", leave=False, disable=None) as bar:

        def show(record) -> None:
            bar.update(round(100 * record["progress"]) - bar.n)
            bar.set_postfix(step=record["iteration"], loss=f"{record['loss']:.3f}")

        model = drain(run, show)
    train_seconds = time.perf_counter() - start
    steps = model.info.history["iterations"]

    start = time.perf_counter()
    predicted = segment(model, test_image)
    segment_seconds = time.perf_counter() - start
    write_tiff_atomic(out, predicted)

    ap50 = average_precision([test_labels], [predicted], iou=0.5)
    iou = foreground_iou(test_labels, predicted)
    print(f"trained:   {steps} steps in {train_seconds:.1f} s")
    print(f"segmented: a second sample (seed 1) in {segment_seconds:.2f} s")
    print(f"           {predicted.max()} objects found, {test_labels.max()} in its labels")
    print(f"AP@0.5:    {ap50:.3f}")
    print(f"IoU:       {iou:.3f} (foreground)")
    print(f"labels:    {out.resolve()}")
    return 0 if np.isfinite(ap50) else 1


def _budget(settings) -> str:
    parts = []
    if settings.minutes is not None:
        parts.append(f"{settings.minutes:g} min")
    if settings.iterations is not None:
        parts.append(f"{settings.iterations} steps")
    return " or ".join(parts)
