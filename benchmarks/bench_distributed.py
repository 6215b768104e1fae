"""Whole-dataset segmentation: one process vs a dask LocalCluster, same OME-Zarr, same run.

An ``--size`` x ``--size`` OME-Zarr image (NGFF 0.5, bright blobs on noise) is segmented

* (a) by ``segment_iter(model, level0, out=zarr)`` in this process (torch using
  ``--threads`` threads, default: as many as workers in the largest cluster), and
* (b) by :func:`napari_unet.distributed.segment_dataset` on a ``LocalCluster`` of N
  one-thread worker processes, for each N in ``--workers`` (default 1 and 2),

with the same weights (seeded random U-Net of ``--base-channels`` / ``--depth``), the same
tile, batch and precision (fp32 by default), and a threshold at the median foreground
probability of a crop (random weights put all pixels near 0.5; the median gives many
objects). Reported: wall time and throughput (output megapixels per second, cluster
start-up excluded), (b)/(a), the scaling efficiency ``t(1 worker) / (N t(N workers))``,
peak resident memory of this process and of each worker (``ru_maxrss``), and whether
every run's labels equal (a)'s, id for id.

``--smoke`` runs a 256 px image with a tiny net in seconds (tests/test_benchmarks_smoke.py).
Run it alone on the machine: it measures throughput.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _machine import cpu_model


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=8192, help="image edge, px")
    parser.add_argument("--base-channels", type=int, default=64)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--workers", default="1,2", help="cluster sizes, comma-separated")
    parser.add_argument("--threads", type=int, help="torch threads of run (a)")
    parser.add_argument("--block-size", type=int, default=1024)
    parser.add_argument("--tile-size", type=int, help="input tile edge (default: measured)")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--folder", type=Path, help="work folder (default: a temporary one)")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--smoke", action="store_true", help="256 px, tiny net, seconds")
    args = parser.parse_args(argv)
    if args.smoke:
        args.size, args.base_channels, args.depth, args.block_size = 256, 4, 2, 64
        args.tile_size = args.tile_size or 92  # no measurement of the machine
    try:
        args.worker_counts = [int(n) for n in args.workers.split(",")]
    except ValueError:
        parser.error("--workers is a comma-separated list of worker counts, e.g. 1,2")
    return args


def peak_mib() -> float:
    """Peak resident memory of this process, MiB (VmHWM: unlike ``ru_maxrss`` it is not
    inherited from the parent of a spawned worker)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_data(folder: Path, args):
    """(model path, model, image path) with a seeded net and a blob image."""
    import torch
    import zarr
    from ome_zarr.format import FormatV05
    from ome_zarr.writer import write_image
    from scipy import ndimage

    from napari_unet.config import ModelInfo, UNetConfig
    from napari_unet.model import UNet
    from napari_unet.model_io import save_model

    torch.manual_seed(0)
    model = UNet(UNetConfig(base_channels=args.base_channels, depth=args.depth), ModelInfo())
    model_path = save_model(model.eval(), folder / "model.safetensors")
    rng = np.random.default_rng(0)
    image = zarr.open_group(str(folder / "image.zarr"), mode="w", zarr_format=3)
    edge = args.size
    pixels = np.empty((edge, edge), dtype=np.uint16)
    for y in range(0, edge, 1024):  # block by block: the image may not fit twice in memory
        part = ndimage.gaussian_filter(rng.random((min(1024, edge - y), edge)), 4)
        pixels[y : y + part.shape[0]] = (part > 0.52) * 100 + rng.random(part.shape) * 20
    write_image(pixels, image, axes="yx", fmt=FormatV05(), scale_factors=(),
                storage_options={"chunks": (1024, 1024)})  # fmt: skip
    return model_path, model, folder / "image.zarr"


def single_process(model, image_path: Path, folder: Path, settings: dict, threshold: float):
    import torch
    import zarr

    from napari_unet.inference import segment_iter
    from napari_unet.progress import drain

    level0 = zarr.open_array(str(image_path / "s0"), mode="r")
    out = zarr.create_array(store=str(folder / "single.zarr"), shape=level0.shape,
                            chunks=(1024, 1024), dtype=np.int32, fill_value=0)  # fmt: skip
    torch.set_num_threads(settings.pop("threads"))
    start = time.perf_counter()
    drain(segment_iter(model, level0, out=out, threshold=threshold, **settings))
    return time.perf_counter() - start, out


def on_cluster(model_path, image_path, folder, n_workers, settings, threshold, block_size):
    from distributed import Client, LocalCluster

    from napari_unet.distributed import segment_dataset

    cluster = LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                           dashboard_address=":0")  # fmt: skip
    client = Client(cluster)
    try:
        client.run(lambda: [__import__(f"napari_unet.{m}") for m in ("predictor", "distributed")])
        out = folder / f"cluster{n_workers}.zarr"
        start = time.perf_counter()
        target = segment_dataset(image_path, model_path, out, cluster=client, threshold=threshold,
                                 block_size=block_size, **settings)  # fmt: skip
        seconds = time.perf_counter() - start
        peaks = client.run(peak_mib)
        return seconds, target.level0(mode="r"), sorted(peaks.values())
    finally:
        client.close()
        cluster.close()


def main(argv=None) -> int:
    args = parse_args(argv)
    src = str(Path(__file__).resolve().parents[1] / "src")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))
    from napari_unet.inference import predict

    folder = args.folder or Path(tempfile.mkdtemp(prefix="bench-distributed-"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        model_path, model, image_path = make_data(folder, args)
        import zarr

        crop = zarr.open_array(str(image_path / "s0"), mode="r")[:512, :512]
        settings = {"precision": args.precision, "batch_size": args.batch_size,
                    "tile_size": args.tile_size, "device": "cpu",
                    "channels_last": False if args.smoke else None}  # fmt: skip
        threshold = float(np.median(predict(model, crop, **settings)[1]))
        threads = args.threads or max(args.worker_counts)
        seconds, single = single_process(
            model, image_path, folder, {**settings, "threads": threads}, threshold
        )
        megapixels = args.size**2 / 1e6
        reference = single[...]
        rows = [{"case": f"one process, {threads} thread(s)", "workers": 0, "seconds": seconds,
                 "mpx_per_s": megapixels / seconds, "identical": True,
                 "peak_mib": peak_mib()}]  # fmt: skip
        for n in args.worker_counts:
            seconds, labels, peaks = on_cluster(model_path, image_path, folder, n, settings,
                                                threshold, args.block_size)  # fmt: skip
            rows.append({"case": f"LocalCluster, {n} x 1 thread", "workers": n,
                         "seconds": seconds, "mpx_per_s": megapixels / seconds,
                         "identical": bool(np.array_equal(labels[...], reference)),
                         "worker_peak_mib": peaks})  # fmt: skip
        report(rows, args, int(reference.max()))
        if args.json:
            args.json.write_text(json.dumps(rows, indent=1))
        return 0 if all(r["identical"] for r in rows) else 1
    finally:
        if args.folder is None:
            shutil.rmtree(folder, ignore_errors=True)


def report(rows: list[dict], args, objects: int) -> None:
    print(f"machine: {cpu_model()}, {os.cpu_count()} logical CPUs")
    print(f"image {args.size}x{args.size}, U-Net base {args.base_channels} depth {args.depth}, "
          f"{args.precision}, batch {args.batch_size}, {objects} objects")  # fmt: skip
    print("| case | s | Mpx/s | vs one process | efficiency | identical | peak MiB |")
    print("|---|---|---|---|---|---|---|")
    base = rows[0]["seconds"]
    one = next((r["seconds"] for r in rows if r["workers"] == 1), None)
    for r in rows:
        n = r["workers"]
        efficiency = f"{one / (n * r['seconds']):.2f}" if n and one else "-"
        peak = r.get("peak_mib") or max(r["worker_peak_mib"])
        speed = base / r["seconds"]
        print(f"| {r['case']} | {r['seconds']:.1f} | {r['mpx_per_s']:.3f} | {speed:.2f} | "
              f"{efficiency} | {r['identical']} | {peak:.0f} |")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
