"""Tile-size sweep: ``predict`` at default precision (bf16, channels_last) per input tile edge.

Usage: ``flock /tmp/napari-unet-cpu.lock env PYTHONPATH=src python
benchmarks/sweep_tile_size.py 1024``; prints tiles, seconds (best of 2) and output Mpx/s.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_inference import sample_image
from napari_unet.model import UNet
from napari_unet.predict import predict
from napari_unet.tiling import tile_layout


def main(size: int) -> None:
    torch.manual_seed(0)
    model = UNet().eval()
    image, _ = sample_image(size)
    for tile in [572, 764, 892, 1052, 1212] + ([1532] if size > 1024 else []):
        layout = tile_layout(image.shape, tile, model.config)
        times = []
        for _ in range(2):
            start = time.perf_counter()
            predict(model, image, tile_size=tile)
            times.append(time.perf_counter() - start)
        best = min(times)
        print(
            f"{tile:5d} {len(layout):3d} tiles {best:7.2f} s {size * size / 1e6 / best:.4f} Mpx/s"
        )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1024)
