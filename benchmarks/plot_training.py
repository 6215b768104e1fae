"""Pictures for docs/training.md: augmented samples, annotation modes, AP vs minutes.

python benchmarks/plot_training.py augmentation docs/images/augmentation_preview.png
python benchmarks/plot_training.py modes docs/images/annotation_modes.png
python benchmarks/plot_training.py curve docs/images/ap_vs_minutes.png dsb.json [more.json]
python benchmarks/plot_training.py seeds docs/images/auto_3seeds.png dsb.json isbi.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch

from napari_unet.augment import AugmentSettings, augment
from napari_unet.data import prepare_planes, region_mask
from napari_unet.sample_data import make_sample


def augmentation(path: str) -> None:
    """Top: one source tile; below: augmented inputs with their target outline and weights."""
    image, labels = make_sample((448, 448), n_objects=80, seed=3)
    (plane,), _, _ = prepare_planes([image], [labels])
    settings = AugmentSettings()
    size, out = 188, 100  # input/output of the default net (depth 3)
    patch = settings.patch_size(size)
    start = (448 - patch) // 2
    crop = np.s_[start : start + patch, start : start + patch]
    n = 5
    images = torch.from_numpy(plane.image[(slice(None), *crop)][None].repeat(n, 0))
    targets = torch.from_numpy(plane.target[crop][None].repeat(n, 0).astype(np.int64))
    weights = torch.from_numpy(plane.weight[crop][None].repeat(n, 0))
    generator = torch.Generator().manual_seed(1)
    x, y, w = augment(images, targets, weights, size, out, settings, generator)
    plain, _, _ = augment(images[:1], targets[:1], weights[:1], size, out, AugmentSettings.off())
    margin = (size - out) // 2
    fig, axes = plt.subplots(3, n + 1, figsize=(2.2 * (n + 1), 6.8))
    columns = [(plain[0, 0], None, None, "no augmentation")]
    columns += [(x[i, 0], y[i], w[i], f"sample {i + 1}") for i in range(n)]
    for col, (tile, target, weight, title) in enumerate(columns):
        axes[0, col].imshow(tile, cmap="gray")
        axes[0, col].add_patch(
            plt.Rectangle((margin, margin), out, out, fill=False, color="yellow", lw=1)
        )
        axes[0, col].set_title(title, fontsize=9)
        if target is not None:
            axes[1, col].imshow(tile[margin:-margin, margin:-margin], cmap="gray")
            axes[1, col].contour(target, levels=[0.5], colors="lime", linewidths=0.7)
            axes[2, col].imshow(weight, cmap="magma")
    axes[1, 0].text(0.5, 0.5, "output region\n+ target outline", ha="center", va="center")
    axes[2, 0].text(0.5, 0.5, "weight map\n(nearest)", ha="center", va="center")
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(
        "Augmented training tiles: elastic (3x3 grid, std 10 px, bicubic), rotation, flip, "
        "scale, gamma/contrast/noise",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def modes(path: str) -> None:
    """Instance labels with an annotated rectangle, and semantic scribbles, with their weights."""
    image, labels = make_sample((256, 256), n_objects=40, seed=5)
    rectangle = np.array([[20, 20], [20, 150], [140, 150], [140, 20]])
    mask = region_mask(labels.shape, [rectangle])
    partial = np.where(mask, labels, 0)
    (inst,), _, _ = prepare_planes([image], [partial], [mask])
    scribbles = np.zeros_like(labels, dtype=np.uint8)
    rng = np.random.default_rng(0)
    ys, xs = np.nonzero((labels == 0) & (rng.random(labels.shape) < 0.002))
    for y, x in zip(ys, xs):
        scribbles[max(0, y - 2) : y + 3, max(0, x - 6) : x + 7] = 1
    for obj in range(1, labels.max() + 1, 3):
        yy, xx = np.nonzero(labels == obj)
        keep = np.abs(yy - yy.mean()) < 2
        scribbles[yy[keep], xx[keep]] = 2
    scribbles[labels == 0] = np.where(scribbles[labels == 0] == 2, 0, scribbles[labels == 0])
    (sem,), _, _ = prepare_planes([image], [scribbles], mode="semantic")
    fig, axes = plt.subplots(2, 3, figsize=(10.5, 7))
    axes[0, 0].imshow(image, cmap="gray")
    axes[0, 0].imshow(np.ma.masked_equal(partial, 0), cmap="tab20", alpha=0.5)
    axes[0, 0].plot(*np.r_[rectangle, rectangle[:1]][:, ::-1].T, color="yellow")
    axes[0, 0].set_title("instance: objects painted\ninside an annotated rectangle", fontsize=9)
    axes[0, 1].imshow(inst.target, cmap="gray")
    axes[0, 1].set_title("target: objects eroded by the 1 px gap", fontsize=9)
    axes[0, 2].imshow(inst.weight, cmap="magma")
    axes[0, 2].set_title("weight: class balance + border term,\n0 outside the region", fontsize=9)
    axes[1, 0].imshow(image, cmap="gray")
    axes[1, 0].imshow(np.ma.masked_equal(scribbles, 0), cmap="cool", alpha=0.8)
    axes[1, 0].set_title(
        "semantic scribbles: 1 = background,\n2 = class, 0 = unannotated", fontsize=9
    )
    axes[1, 1].imshow(np.ma.masked_where(sem.weight == 0, sem.target), cmap="cool")
    axes[1, 1].set_title("target classes (annotated pixels only)", fontsize=9)
    axes[1, 2].imshow(sem.weight, cmap="magma")
    axes[1, 2].set_title("weight: class balance only,\n0 where not annotated", fontsize=9)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def curve(path: str, *results: str) -> None:
    """Held-out score against training minutes for each benchmark JSON (the last point
    of a curve is the model train_iter returns: the best by its internal validation)."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for result in results:
        data = json.loads(Path(result).read_text())
        minutes = [point["minutes"] for point in data["curve"]]
        name = data["data"].rstrip("/").split("/")[-2]
        gap, seed = data["settings"].get("gap", 1), data["settings"].get("seed", 0)
        name = f"{name} (gap {gap})" if gap != 1 else name
        name = f"{name} (seed {seed})" if seed else name
        select_by = data["settings"].get("select_by", "ap50")
        name = f"{name} (select by {select_by})" if select_by != "ap50" else name
        if "dsb" in name:
            ax.plot(minutes, [p["ap50"] for p in data["curve"]], "o-", label=f"{name}: AP@0.5")
        else:
            ax.plot(minutes, [1 - p["rand_error"] for p in data["curve"]], "s-",
                    label=f"{name}: 1 - Rand error")  # fmt: skip
    ax.axhline(0.8, color="gray", ls=":", lw=1, label="DSB target: AP 0.80")
    ax.axhline(0.95, color="gray", ls="--", lw=1, label="ISBI target: Rand error 0.05")
    ax.set_xlabel("training time on the 2-core CPU (minutes)")
    ax.set_ylabel("held-out score")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


#: issue #16's targets for 10 minutes with the CLI defaults: (metric, target)
TARGETS = {"dsb2018": ("ap50", 0.85), "isbi2012": ("rand_error", 0.04)}


def seeds(path: str, *results: str) -> None:
    """One panel per multi-seed ``bench_training.py accuracy`` JSON: the held-out score
    of each seed's snapshots against minutes, its returned model (the best by internal
    validation) as a star, and the issue's target."""
    fig, axes = plt.subplots(1, len(results), figsize=(7.2 * len(results), 3.8), squeeze=False)
    for ax, result in zip(axes[0], results):
        data = json.loads(Path(result).read_text())
        name = data["data"].rstrip("/").split("/")[-2]
        metric, target = next((v for k, v in TARGETS.items() if k in name), ("ap50", None))
        for run in data["runs"]:
            points = run["curve"]
            minutes, values = [p["minutes"] for p in points], [p[metric] for p in points]
            label = f"seed {run['seed']} ({run['steps']} steps)"
            line = ax.plot(minutes[:-1], values[:-1], "o-", alpha=0.7, label=label)
            ax.plot(
                points[-1]["minutes"], points[-1][metric], "*", ms=14, color=line[0].get_color()
            )
        summary = data["summary"][metric]
        if target is not None:
            ax.axhline(target, color="gray", ls="--", lw=1, label=f"target {target}")
        mean = f"returned, mean of {len(data['runs'])}: {summary['mean']:.3f}"
        ax.axhline(summary["mean"], color="black", ls=":", lw=1, label=mean)
        start = data["runs"][0].get("started_from") or "a new network"
        ax.set_title(f"{name}, CLI defaults (start: {start})", fontsize=9)
        cpu = data["machine"].split(", torch")[0]  # the record's CPU, as lscpu names it
        ax.set_xlabel(f"training minutes ({cpu})")
        label = {"ap50": "held-out AP@0.5 (higher is better)",
                 "rand_error": "held-out Rand error (lower is better)"}[metric]  # fmt: skip
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.suptitle("snapshots (dots) and the model training returns (stars)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    what, *args = sys.argv[1:]
    {"augmentation": augmentation, "modes": modes, "curve": curve, "seeds": seeds}[what](*args)
