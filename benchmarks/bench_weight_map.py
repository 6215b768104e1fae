"""Benchmark: napari_unet.weight_map against the plain per-object definition.

The plain version (one full-image Euclidean distance transform per object, then a sort
along the object axis) is written out below and run side by side in the same process,
on the same label images. Reported per data set: total time of each (median of the
repeats), their ratio, and the largest absolute difference of the weights. A scaling
run times weight_map alone on mosaics of ISBI slices up to 4096 x 4096 (thousands of
objects), where the plain version would take hours.

    python benchmarks/bench_weight_map.py                 # full run (ISBI + DSB + scaling)
    python benchmarks/bench_weight_map.py --limit 50      # first 50 images of each set
    python benchmarks/bench_weight_map.py --smoke         # seconds, generated labels

Run timings under ``flock /tmp/napari-unet-cpu.lock`` on a shared machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import scipy
from scipy import ndimage as ndi

from _machine import cpu_model
from napari_unet.sample_data import make_sample
from napari_unet.weights import weight_map

W0, SIGMA = 10.0, 5.0
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def plain_weight_map(labels: np.ndarray, w0: float = W0, sigma: float = SIGMA) -> np.ndarray:
    """The definition, written plainly: O(objects x pixels)."""
    foreground = labels > 0
    n_fg = np.count_nonzero(foreground)
    n_bg = labels.size - n_fg
    if n_fg and n_bg:
        w_bg, w_fg = min(n_fg, n_bg) / n_bg, min(n_fg, n_bg) / n_fg
    else:
        w_bg = w_fg = 1.0
    weight = np.where(foreground, w_fg, w_bg)
    ids = np.unique(labels[foreground])
    if len(ids) < 2:
        return weight
    distances = np.sort([ndi.distance_transform_edt(labels != i) for i in ids], axis=0)
    border = w0 * np.exp(-((distances[0] + distances[1]) ** 2) / (2 * sigma**2))
    return weight + np.where(foreground, 0.0, border)


def time_set(images: list[np.ndarray], repeats: int) -> dict:
    """Time both versions on a list of label images, interleaved, `repeats` times."""
    plain_times, fast_times, max_diff = [], [], 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        plain = [plain_weight_map(labels) for labels in images]
        plain_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        fast = [weight_map(labels, W0, SIGMA) for labels in images]
        fast_times.append(time.perf_counter() - start)
        max_diff = max(max_diff, *(np.abs(p - f).max() for p, f in zip(plain, fast)))
    plain_s, fast_s = statistics.median(plain_times), statistics.median(fast_times)
    return {
        "images": len(images),
        "pixels": sum(labels.size for labels in images),
        "objects": sum(len(np.unique(labels)) - 1 for labels in images),
        "plain_s": plain_s,
        "fast_s": fast_s,
        "ratio": plain_s / fast_s,
        "max_abs_diff": float(max_diff),
    }


def mosaic(slices: list[np.ndarray], tiles: int) -> np.ndarray:
    """A (tiles*H, tiles*W) label image from slices laid side by side, ids made unique."""
    rows, offset = [], 0
    for i in range(tiles):
        row = []
        for j in range(tiles):
            labels = slices[(i * tiles + j) % len(slices)].astype(np.int64)
            labels[labels > 0] += offset
            offset = max(offset, int(labels.max()))
            row.append(labels)
        rows.append(np.concatenate(row, axis=1))
    return np.concatenate(rows, axis=0)


def time_scaling(slices: list[np.ndarray], tile_counts: list[int], repeats: int) -> list[dict]:
    results = []
    for tiles in tile_counts:
        labels = mosaic(slices, tiles)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            weight_map(labels, W0, SIGMA)
            times.append(time.perf_counter() - start)
        seconds = statistics.median(times)
        results.append(
            {
                "shape": labels.shape,
                "objects": len(np.unique(labels)) - 1,
                "fast_s": seconds,
                "ns_per_pixel": seconds / labels.size * 1e9,
            }
        )
    return results


def load_labels(folder: Path, limit: int | None) -> list[np.ndarray]:
    import tifffile

    files = sorted(folder.glob("*.tif"))[:limit]
    if not files:
        raise SystemExit(f"no label images in {folder}")
    return [tifffile.imread(path) for path in files]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=None, help="shared data folder")
    parser.add_argument("--limit", type=int, default=None, help="first N images per set")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-scaling", action="store_true", help="skip the mosaic run")
    parser.add_argument("--smoke", action="store_true", help="tiny generated labels only")
    args = parser.parse_args(argv)

    print(
        f"machine: {cpu_model()}, {os.cpu_count()} logical cores; python "
        f"{platform.python_version()}, numpy {np.__version__}, scipy {scipy.__version__}; "
        f"single-threaded (scipy.ndimage); w0={W0}, sigma={SIGMA}; repeats={args.repeats}"
    )
    if args.smoke:
        samples = [make_sample((96, 96), n_objects=12, seed=s)[1] for s in range(3)]
        sets = {"generated 96x96": samples}
        scaling_slices, tile_counts = samples, [1, 2]
    else:
        data = args.data or Path(os.environ.get("NAPARI_UNET_SHARED_DATA", DEFAULT_DATA))
        sets = {
            "isbi2012/train": load_labels(data / "isbi2012/train/labels", args.limit),
            "dsb2018/train": load_labels(data / "dsb2018/train/labels", args.limit),
        }
        scaling_slices, tile_counts = sets["isbi2012/train"], [1, 2, 4, 8]

    print("\n| set | images | objects | plain (s) | weight_map (s) | ratio | max abs diff |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, images in sets.items():
        r = time_set(images, args.repeats)
        print(
            f"| {name} | {r['images']} | {r['objects']} | {r['plain_s']:.3f} | "
            f"{r['fast_s']:.3f} | {r['ratio']:.1f}x | {r['max_abs_diff']:.2e} |"
        )
    if args.no_scaling:
        return
    print("\nScaling (weight_map only; mosaics of the slices above, ids made unique):\n")
    print("| shape | objects | weight_map (s) | ns / pixel |")
    print("|---|---:|---:|---:|")
    for r in time_scaling(scaling_slices, tile_counts, args.repeats):
        shape = "x".join(map(str, r["shape"]))
        print(f"| {shape} | {r['objects']} | {r['fast_s']:.3f} | {r['ns_per_pixel']:.0f} |")


if __name__ == "__main__":
    main()
