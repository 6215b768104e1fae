"""Fine-tuning the built-in model vs. training from scratch, on a few annotated images
of a kind the built-in model has not seen (ISBI 2012 EM slices by default).

Both arms train the same network (the built-in model's: ``fast`` preset, 16 base
channels, depth 3) with the same settings, seed and step budget on the same few
images; one starts from the built-in ``nuclei`` weights (``--start-from nuclei``), the
other from random ones. Snapshots at fixed steps are scored on held-out images with
one fixed post-processing for all (threshold 0.5, growth = the training gap), so the
curves compare networks, not tuning; the returned models (tuned as training tunes
them) are scored too. Steps fix the budget (the same work on any machine); the
minutes each took are reported beside them::

    python benchmarks/bench_finetune.py --data ../shared/data/isbi2012/train \
        --train slice00 slice01 slice02 --held-out slice15 slice16 slice17 slice18 slice19 \
        --steps 600 --json benchmarks/results/finetune_isbi.json \
        --plot docs/images/finetune_vs_scratch.png
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import tifffile

from _machine import cpu_model
from napari_unet import metrics
from napari_unet.postprocess import Postprocess
from napari_unet.predictor import Predictor
from napari_unet.progress import drain
from napari_unet.training import PRESETS, train_iter

ARMS = {"fine-tuned from nuclei": "nuclei", "from scratch": None}


def load(root: Path, names: list[str]) -> list[tuple[np.ndarray, np.ndarray]]:
    """(image, labels) pairs ``root/images/NAME.tif`` + ``root/labels/NAME.tif``."""
    return [
        (
            tifffile.imread(root / "images" / f"{n}.tif"),
            tifffile.imread(root / "labels" / f"{n}.tif"),
        )
        for n in names
    ]


def checkpoints(steps: int, count: int = 8) -> list[int]:
    """About ``count`` steps spread geometrically up to ``steps`` (early learning is fast)."""
    points = np.unique(np.geomspace(max(1, steps / 2 ** (count - 1)), steps, count).round())
    return [int(p) for p in points]


def score(model, held_out, post: Postprocess | None) -> dict[str, float]:
    """AP@0.5, AP@0.75 and the adapted Rand error (mean over images) on ``held_out``;
    ``post`` None: the model's own post-processing."""
    predictor = Predictor.prepare(model, device="cpu")
    post = post or predictor.postprocess()
    gts = [labels for _, labels in held_out]
    preds = [predictor.to_labels(predictor.probabilities(image), post) for image, _ in held_out]
    return {
        "ap50": metrics.average_precision(gts, preds, iou=0.5),
        "ap75": metrics.average_precision(gts, preds, iou=0.75),
        "rand_error": float(np.mean([metrics.rand_error(g, p) for g, p in zip(gts, preds)])),
    }


def run_arm(start_from, train_pairs, held_out, settings, marks) -> dict:
    """Train one arm; score the snapshots at ``marks`` and the returned model."""
    from napari_unet.model_io import load_model

    fixed = Postprocess(threshold=0.5, expand=settings.gap)
    snapshots: list[tuple[int, float, object]] = []
    if start_from is not None:
        snapshots.append((0, 0.0, load_model(start_from)))

    def keep(record) -> None:
        if record.iteration in marks and record.preview_model is not None:
            snapshots.append((record.iteration, record.elapsed, record.preview_model))

    images, labels = [p[0] for p in train_pairs], [p[1] for p in train_pairs]
    begin = time.perf_counter()
    final = drain(train_iter(images, labels, settings=settings, init_model=start_from), keep)
    seconds = time.perf_counter() - begin
    curve = []
    for step, elapsed, model in snapshots:
        curve.append(
            {"step": step, "minutes": elapsed / 60, **score(model.cpu(), held_out, fixed)}
        )
        print(f"    step {step:5d} ({elapsed / 60:5.2f} min): {curve[-1]}", flush=True)
    returned = score(final.cpu(), held_out, None) | {"postprocess": final.info.postprocess}
    print(f"    returned model: {returned}", flush=True)
    return {"curve": curve, "returned": returned, "train_seconds": seconds}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="folder with images/, labels/")
    parser.add_argument("--train", nargs="+", required=True, help="names annotated for training")
    parser.add_argument("--held-out", nargs="+", required=True, help="names scored")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--plot", type=Path)
    args = parser.parse_args(argv)
    marks = set(checkpoints(args.steps))
    settings = PRESETS["fast"].replace(
        iterations=args.steps, minutes=None, seed=args.seed, preview_every_s=0.0,
        val_every=None, val_every_s=None, device="cpu",
    )  # fmt: skip
    train_pairs, held_out = load(args.data, args.train), load(args.data, args.held_out)
    print(f"machine: {cpu_model()}; {len(train_pairs)} training, {len(held_out)} held-out")
    result = {
        "machine": cpu_model(), "data": str(args.data), "train": args.train,
        "held_out": args.held_out, "steps": args.steps, "seed": args.seed, "arms": {},
    }  # fmt: skip
    for name, start_from in ARMS.items():
        print(f"  {name}:", flush=True)
        result["arms"][name] = run_arm(start_from, train_pairs, held_out, settings, marks)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1, default=float))
    if args.plot:
        plot(result, args.plot)
    return 0


def plot(result: dict, path: Path) -> None:
    """AP@0.5 and Rand error against training minutes, one line per arm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for name, arm in result["arms"].items():
        minutes = [p["minutes"] for p in arm["curve"]]
        for ax, key in zip(axes, ("ap50", "rand_error")):
            ax.plot(minutes, [p[key] for p in arm["curve"]], "o-", label=name)
    axes[0].set_ylabel("held-out AP@0.5 (higher is better)")
    axes[1].set_ylabel("held-out Rand error (lower is better)")
    for ax in axes:
        ax.set_xlabel("minutes of training")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(
        f"{len(result['train'])} annotated images, {result['steps']} steps; {result['machine']}",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    sys.exit(main())
