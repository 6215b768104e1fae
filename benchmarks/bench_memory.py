"""Peak memory of segmenting large images: in memory (numpy) and lazy (zarr in, zarr out).

Every case runs in a fresh Python process, which resets its peak resident set size
just before the call (Linux: /proc/self/clear_refs, then ``VmHWM``) and reports the
RSS at that moment (the in-run baseline: interpreter, torch, model and, for numpy, the
input image), the peak during the call, and their difference: what the call itself
added. That is set beside the size of the input image and of a full float32
probability array ``(n_classes, Y, X)``, which an implementation that does not work
tile by tile holds at least. On CUDA the peak GPU memory
(``torch.cuda.max_memory_allocated``) is reported too.

Cases (``NAME:EDGE``, e.g. ``zarr-predict:16384``):

* ``numpy-segment``: ``segment(model, image)`` on a uint16 numpy image held in memory,
  int32 labels returned in memory.
* ``zarr-predict``: ``predict_iter(model, zarr_image, out=zarr_probabilities)``: the
  image is read and the float32 probabilities are written tile by tile.
* ``zarr-segment``: ``segment_iter(model, zarr_image, out=zarr_labels)``: read tile by
  tile, each tile's foreground written to a temporary zarr store, then labelled block by
  block into the zarr labels (:mod:`napari_unet.chunked_labels`); no plane is held.

The net is a narrow one (``base_channels=8``, depth 4, random init, seed 0): the
paper's 64-channel net would take hours on 268 Mpx on a small CPU. Activation memory
per tile scales with the width, so a 64-channel net adds about 8x more per tile, a
constant that does not grow with the image. The image is the generated sample
(mirrored into a seamless 1024 px block, repeated), intensities scaled to uint16.

    flock /tmp/napari-unet-cpu.lock python benchmarks/bench_memory.py
    python benchmarks/bench_memory.py --cases zarr-predict:8192 zarr-predict:16384
    python benchmarks/bench_memory.py --smoke        # seconds, 256-512 px images
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _machine import cpu_model

DEFAULT_CASES = [
    "numpy-segment:8192",
    "zarr-predict:8192",
    "zarr-segment:8192",
    "zarr-predict:16384",
    "zarr-segment:16384",
]
SMOKE_CASES = ["numpy-segment:300", "zarr-predict:300", "zarr-segment:300"]
KINDS = ("numpy-segment", "zarr-predict", "zarr-segment")
BLOCK = 1024  # edge of the repeated image block and of the zarr chunks, px
SMOKE_BLOCK = 128
MIB = 2**20


# -- the image ---------------------------------------------------------------------------
def image_block(edge: int = BLOCK) -> np.ndarray:
    """A seamless (edge, edge) uint16 block: the sample and its three mirror images."""
    from napari_unet.sample_data import make_sample

    half = edge // 2
    sample, _ = make_sample((half, half), n_objects=max(4, 36 * half**2 // 256**2), seed=0)
    block = np.block([[sample, sample[:, ::-1]], [sample[::-1], sample[::-1, ::-1]]])
    return (np.clip(block, 0, None) * 4000 + 100).astype(np.uint16)


def numpy_image(edge: int, block: np.ndarray) -> np.ndarray:
    reps = -(-edge // block.shape[0])
    return np.tile(block, (reps, reps))[:edge, :edge]


def write_zarr_image(path: Path, edge: int, block: np.ndarray):
    """The same image as :func:`numpy_image`, written chunk by chunk (never held whole)."""
    import zarr

    chunk = block.shape[0]
    image = zarr.create_array(
        store=str(path), shape=(edge, edge), chunks=(chunk, chunk), dtype=block.dtype
    )
    for y in range(0, edge, chunk):
        for x in range(0, edge, chunk):
            h, w = min(chunk, edge - y), min(chunk, edge - x)
            image[y : y + h, x : x + w] = block[:h, :w]
    return image


# -- one case, in its own process ----------------------------------------------------------
class Memory:
    """Resident set size of this process, in MiB.

    On Linux the peak (``VmHWM`` in /proc/self/status) is reset just before the call,
    via /proc/self/clear_refs, so it is the call's own peak; elsewhere
    ``ru_maxrss`` is used, whose peak may also include the setup before the call.
    """

    status = Path("/proc/self/status")

    def __init__(self) -> None:
        self.linux = self.status.exists()

    def _field(self, name: str) -> float:
        for line in self.status.read_text().splitlines():
            if line.startswith(name + ":"):
                return int(line.split()[1]) / 1024  # kB
        raise RuntimeError(f"{name} missing from {self.status}")

    def start(self) -> float:
        """Reset the peak; returns the current RSS."""
        if self.linux:
            Path("/proc/self/clear_refs").write_text("5")
            return self._field("VmRSS")
        return self.peak()

    def peak(self) -> float:
        if self.linux:
            return self._field("VmHWM")
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / MIB if sys.platform == "darwin" else peak / 1024


def run_case(kind: str, edge: int, workdir: Path, device: str | None, block: int) -> dict:
    """Run one case in this (fresh) process; returns its measurements."""
    import torch
    import zarr

    from napari_unet import hardware
    from napari_unet.chunked_labels import label_steps
    from napari_unet.config import UNetConfig
    from napari_unet.devices import choose_device
    from napari_unet.inference import predict_iter, segment_iter
    from napari_unet.model import UNet
    from napari_unet.predictor import LABEL_BLOCK_SIZE
    from napari_unet.progress import drain

    torch.manual_seed(0)
    model = UNet(UNetConfig(base_channels=8, depth=4)).eval()
    n_classes = model.config.n_classes
    hardware.choose(model, choose_device(device))  # the machine's settings, before measuring
    if kind == "numpy-segment":
        image = numpy_image(edge, image_block(block))
        out = None
    else:
        image = zarr.open_array(str(workdir / f"image_{edge}.zarr"), mode="r")
        chunk = image.chunks[-1]
        if kind == "zarr-predict":
            shape, chunks, dtype = (n_classes, edge, edge), (1, chunk, chunk), np.float32
        else:
            shape, chunks, dtype = (edge, edge), (chunk, chunk), np.int32
        out = zarr.create_array(
            store=str(workdir / f"{kind}_{edge}.zarr"), shape=shape, chunks=chunks, dtype=dtype
        )
    cuda = torch.device(device).type == "cuda" if device else torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()

    memory = Memory()
    before = memory.start()
    start = time.perf_counter()
    run = predict_iter if kind == "zarr-predict" else segment_iter
    steps = run(model, image, device=device, out=out)
    # segment (numpy or zarr) counts the labelling's blocks after the tiles
    labelling = label_steps((edge, edge), LABEL_BLOCK_SIZE) if kind != "zarr-predict" else 0
    tiles, tiles_seconds = 0, None

    def time_tiles(step) -> None:
        nonlocal tiles, tiles_seconds
        done, total = step
        tiles = total - labelling
        if done == tiles and tiles_seconds is None:
            tiles_seconds = time.perf_counter() - start

    result = drain(steps, time_tiles)
    seconds = time.perf_counter() - start
    after = memory.peak()

    # sanity: the result is complete (probabilities sum to 1 in the last corner)
    corner = np.asarray(result[..., -64:, -64:])
    if kind == "zarr-predict" and not np.allclose(corner.sum(axis=0), 1, atol=1e-3):
        raise RuntimeError("the probabilities written to zarr do not sum to 1")
    return {
        "case": kind,
        "edge": edge,
        "tiles": tiles,
        "seconds": seconds,
        "labelling_seconds": seconds - tiles_seconds,
        "rss_before_mib": before,
        "rss_peak_mib": after,
        "added_mib": after - before,
        "image_mib": edge * edge * 2 / MIB,
        "probabilities_mib": n_classes * edge * edge * 4 / MIB,
        "labels_mib": edge * edge * 4 / MIB,
        "gpu_peak_mib": torch.cuda.max_memory_allocated() / MIB if cuda else None,
    }


# -- driver ------------------------------------------------------------------------------
def parse_case(text: str) -> tuple[str, int]:
    kind, _, edge = text.partition(":")
    if kind not in KINDS or not edge.isdigit() or int(edge) < 2:
        raise argparse.ArgumentTypeError(
            f"a case is NAME:EDGE with NAME one of {', '.join(KINDS)}, got {text!r}"
        )
    return kind, int(edge)


def machine_line(device: str | None) -> str:
    import torch

    where = device or ("cuda" if torch.cuda.is_available() else "cpu")
    gpu = f", GPU {torch.cuda.get_device_name()}" if where.startswith("cuda") else ""
    return (
        f"machine: {cpu_model()}, {os.cpu_count()} logical cores{gpu}; device {where}; "
        f"python {platform.python_version()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; net base_channels=8 depth=4 (random init); "
        "each case once, in a fresh process"
    )


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", nargs="+", type=parse_case, help="NAME:EDGE ...")
    parser.add_argument("--device", default=None, help="cpu, cuda, mps (default: automatic)")
    parser.add_argument("--workdir", type=Path, help="folder for the zarr stores (default: temp)")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    parser.add_argument("--smoke", action="store_true", help="tiny images, seconds")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # NAME:EDGE, run in this process
    parser.add_argument("--block", type=int, default=BLOCK, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        kind, edge = parse_case(args.worker)
        print(json.dumps(run_case(kind, edge, args.workdir, args.device, args.block)))
        return []

    cases = args.cases or [parse_case(c) for c in (SMOKE_CASES if args.smoke else DEFAULT_CASES)]
    block_edge = SMOKE_BLOCK if args.smoke else args.block
    print(machine_line(args.device))
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="napari-unet-bench-memory-"))
    workdir.mkdir(parents=True, exist_ok=True)
    results = []
    try:
        block = image_block(block_edge)
        for edge in sorted({edge for kind, edge in cases if kind.startswith("zarr")}):
            write_zarr_image(workdir / f"image_{edge}.zarr", edge, block)
        print(
            "\n| case | image | tiles | time (s) | of which labelling (s) "
            "| RSS before (MiB) | peak RSS (MiB) "
            "| added (MiB) | image (MiB) | full float32 probabilities (MiB) "
            "| added / probabilities | GPU peak (MiB) |"
        )
        print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for kind, edge in cases:
            r = measure_in_subprocess(kind, edge, workdir, args.device, block_edge)
            results.append(r)
            gpu = "-" if r["gpu_peak_mib"] is None else f"{r['gpu_peak_mib']:.0f}"
            print(
                f"| {kind} | {edge}x{edge} | {r['tiles']} | {r['seconds']:.1f} "
                f"| {'-' if kind == 'zarr-predict' else format(r['labelling_seconds'], '.1f')} "
                f"| {r['rss_before_mib']:.0f} | {r['rss_peak_mib']:.0f} | {r['added_mib']:.0f} "
                f"| {r['image_mib']:.0f} | {r['probabilities_mib']:.0f} "
                f"| {r['added_mib'] / r['probabilities_mib']:.2f} | {gpu} |",
                flush=True,
            )
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return results


def measure_in_subprocess(kind: str, edge: int, workdir: Path, device: str | None, block: int):
    """Run one case in a fresh interpreter (nothing inherited from this one's memory)."""
    command = [sys.executable, __file__, "--worker", f"{kind}:{edge}", "--workdir", str(workdir)]
    command += ["--block", str(block)]
    if device:
        command += ["--device", device]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"case {kind}:{edge} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
