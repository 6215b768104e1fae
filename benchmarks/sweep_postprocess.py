"""Held-out scores of one model file over the grid of segmentation thresholds and growths.

An exploration, like ``sweep_tile_size.py``: it shows how much the label settings that
``train_iter`` tunes on its validation split (``ModelInfo.postprocess``) matter, on the
held-out split of ``bench_training.py accuracy`` (every 5th file in name order)::

    flock /tmp/napari-unet-cpu.lock python benchmarks/sweep_postprocess.py MODEL \\
        --data ../shared/data/isbi2012/train

Probabilities are computed once per image with ``inference.predict`` at its defaults;
each grid point is labelled with ``postprocess.labels_from_probabilities``, as
``segment`` does. The Rand error is ``skimage.metrics.adapted_rand_error`` (mean over
images), AP@0.5 counts TP/FP/FN over all images.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from bench_training import load_split
from napari_unet import metrics
from napari_unet.inference import predict
from napari_unet.model_io import load_model
from napari_unet.postprocess import TUNE_EXPANDS, TUNE_THRESHOLDS, labels_from_probabilities


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--data", required=True)
    parser.add_argument("--limit", type=int, help="use only the first N held-out images")
    args = parser.parse_args(argv)
    model = load_model(args.model)
    held_out = load_split(Path(args.data))[1][: args.limit]
    probabilities = [predict(model, image) for image, _ in held_out]
    truths = [labels for _, labels in held_out]
    print(f"{args.model}: {len(held_out)} held-out images; model's own choice: "
          f"{model.info.postprocess or 'none (defaults 0.5 and the gap)'}")  # fmt: skip
    rows = []
    print(f"{'threshold':>9s} {'grow px':>7s} {'AP@0.5':>7s} {'Rand err':>8s}")
    for threshold in TUNE_THRESHOLDS:
        for expand in TUNE_EXPANDS:
            preds = [
                labels_from_probabilities(p, expand=expand, threshold=threshold)
                for p in probabilities
            ]
            ap = metrics.average_precision(truths, preds, iou=0.5)
            rand = float(np.mean([metrics.rand_error(t, p) for t, p in zip(truths, preds)]))
            rows.append({"threshold": threshold, "expand": expand, "ap50": ap, "rand": rand})
            print(f"{threshold:9.1f} {expand:7d} {ap:7.3f} {rand:8.4f}")
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
