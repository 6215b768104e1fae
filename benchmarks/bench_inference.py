"""Inference throughput: a plain overlap-tile loop vs ``napari_unet.inference`` at defaults.

Both run in the same process on the same image with the same weights (the paper's
64-channel U-Net, seeded), side by side, each repeated; medians are reported.

* baseline (written out below, ``plain_predict``): 572 px input tiles, abutting 388 px
  output tiles, one tile per forward pass, fp32, contiguous memory, ``torch.no_grad``.
* product: ``predict(model, image)`` with every setting at its default, i.e. the
  settings :mod:`napari_unet.hardware` measured for this machine. The measurement
  itself runs first (fresh, not from a cache) and its time is reported apart
  (``measure_s``): a user pays it once per machine and network size.
* ``--grid``: every single setting the product could have picked, each timed once:
  fp32/bf16 x channels_last on/off x 572 px / largest tiles. The product should be
  within 10 % of the best of them.
* ``--compile``: the defaults with ``torch.compile(model)`` (inductor), timed after a
  first, compiling call whose time is reported apart.
* reference for label agreement: fp32, contiguous, the largest tile (for images up to
  1024 px one whole-image pass).

Label agreement of random weights says little (many pixels sit near the decision
boundary), so by default the net is first trained for ``--train-steps`` steps on the
generated sample (bright touching cells): its labels then have trained-like margins.
Throughput is output megapixels per second; GFLOP/s counts the convolutions actually
computed (mirrored context included) next to a measured ``torch.mm`` peak.

Run it alone on the machine (``flock /tmp/napari-unet-cpu.lock python
benchmarks/bench_inference.py --grid``); ``--smoke`` runs a tiny configuration in seconds.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from _machine import cpu_model
from napari_unet import hardware
from napari_unet.config import UNetConfig
from napari_unet.devices import choose_device
from napari_unet.inference import predict
from napari_unet.model import UNet
from napari_unet.normalization import normalize
from napari_unet.sample_data import make_sample
from napari_unet.tiling import auto_tile_size, tile_layout


def plain_predict(model: UNet, image: np.ndarray, tile: int = 572) -> np.ndarray:
    """The baseline: mirror the image, cut abutting output tiles, one fp32 pass each."""
    config = model.config
    out = config.output_size(tile)
    margin = config.context_margin
    height, width = image.shape
    rows, cols = -(-height // out), -(-width // out)
    x = normalize(image[None], **model.info.normalization)
    padded = np.pad(
        x,
        ((0, 0), (margin, rows * out - height + margin), (margin, cols * out - width + margin)),
        mode="reflect",
    )
    probs = np.empty((config.n_classes, rows * out, cols * out), dtype=np.float32)
    with torch.no_grad():
        for r in range(rows):
            for c in range(cols):
                crop = padded[None, :, r * out : r * out + tile, c * out : c * out + tile]
                logits = model(torch.from_numpy(np.ascontiguousarray(crop)))
                probs[:, r * out : (r + 1) * out, c * out : (c + 1) * out] = torch.softmax(
                    logits, dim=1
                )[0].numpy()
    return probs[:, :height, :width]


def forward_flops(config: UNetConfig, height: int, width: int) -> float:
    """FLOPs (2 per multiply-add) of one forward pass, counted on the meta device."""
    with torch.device("meta"):
        model = UNet(config)
        x = torch.empty(1, config.in_channels, height, width)
    with FlopCounterMode(display=False) as counter:
        model(x)
    return float(counter.get_total_flops())


def matmul_peak(dtype: torch.dtype, n: int, repeats: int) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * n**3 / statistics.median(times) / 1e9


def timed(fn, repeats: int):
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def sample_image(size: int) -> tuple[np.ndarray, np.ndarray]:
    """The generated 256 px sample, mirrored to ``size`` x ``size`` (cells keep their size)."""
    image, labels = make_sample((256, 256), seed=0)
    tile_image = np.block([[image, image[:, ::-1]], [image[::-1], image[::-1, ::-1]]])
    tile_labels = np.block([[labels, labels[:, ::-1]], [labels[::-1], labels[::-1, ::-1]]])
    reps = -(-size // 512)
    big = np.tile(tile_image, (reps, reps))[:size, :size]
    return np.ascontiguousarray(big), np.tile(tile_labels, (reps, reps))[:size, :size]


def quick_train(model: UNet, image: np.ndarray, labels: np.ndarray, steps: int, tile: int) -> None:
    """A few Adam steps on random tiles (foreground vs background) to get trained margins."""
    if steps <= 0:
        return
    config = model.config
    margin, out = config.context_margin, config.output_size(tile)
    x = normalize(image[None], **model.info.normalization)
    padded = np.pad(x, ((0, 0), (margin, margin), (margin, margin)), mode="reflect")
    rng = np.random.default_rng(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-4)
    model.train()
    for _ in range(steps):
        y0, x0 = rng.integers(0, image.shape[0] - out + 1, 2)
        crop = torch.from_numpy(
            np.ascontiguousarray(padded[None, :, y0 : y0 + tile, x0 : x0 + tile])
        )
        target = torch.from_numpy((labels[y0 : y0 + out, x0 : x0 + out] > 0).astype(np.int64))
        logits = model(crop)  # fp32: bf16 is emulated (slow) on CPUs without native bf16
        loss = torch.nn.functional.cross_entropy(logits.float(), target[None])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()


def cpu_flags_line() -> str:
    """The CPU's vector and reduced-precision flags that decide the settings."""
    wanted = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile")
    flags = hardware.cpu_flags()
    return " ".join(f"{name}{'+' if name in flags else '-'}" for name in wanted)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=1024, help="image edge (e.g. 1024, 4096)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--train-steps", type=int, default=30)
    parser.add_argument("--grid", action="store_true", help="also time every single setting")
    parser.add_argument(
        "--compile", action="store_true", help="also time defaults with torch.compile(model)"
    )
    parser.add_argument("--smoke", action="store_true", help="tiny net and image, 1 repeat")
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args(argv)

    config = UNetConfig()
    baseline_tile, mm_size = 572, 4096
    if args.smoke:
        config = UNetConfig(base_channels=4, depth=2)
        args.size, args.repeats, args.train_steps, baseline_tile, mm_size = 96, 1, 2, 60, 256
    torch.manual_seed(0)
    model = UNet(config).eval()
    image, labels = sample_image(args.size)
    quick_train(model, image, labels, args.train_steps, baseline_tile)

    start = time.perf_counter()
    choice = hardware.choose(model, choose_device(), remeasure=True)
    measure_s = time.perf_counter() - start
    chosen = choice.settings
    info = {
        "machine": cpu_model(),
        "flags": cpu_flags_line(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "repeats": args.repeats,
        "image": f"{args.size}x{args.size}",
        "net": f"base {config.base_channels}, depth {config.depth}",
        "train_steps": args.train_steps,
        "defaults": dataclasses.asdict(chosen),
        "measure_s": round(measure_s, 1),
        "why": choice.reason,
    }
    info["mm_gflops_fp32"] = matmul_peak(torch.float32, mm_size, args.repeats)
    info["mm_gflops_bf16"] = matmul_peak(torch.bfloat16, mm_size, args.repeats)
    megapixels = args.size * args.size / 1e6

    def flops_of(tile: int) -> float:
        layout = tile_layout(image.shape, tile, config)
        return len(layout) * forward_flops(config, *layout.tile_shape)

    # FLOPs actually computed: baseline 572 px tiles, product's default layout
    tiles_base = (-(-args.size // config.output_size(baseline_tile))) ** 2
    flops_base = tiles_base * forward_flops(config, baseline_tile, baseline_tile)
    default_tile = auto_tile_size(image.shape, config, chosen.max_tile)
    largest = max(chosen.max_tile, hardware._valid_near(config, max(hardware.TILE_TARGETS)))
    largest_tile = auto_tile_size(image.shape, config, largest)

    runs = {}
    seconds, base_probs = timed(lambda: plain_predict(model, image, baseline_tile), args.repeats)
    runs["baseline"] = (seconds, base_probs, flops_base)
    seconds, probs = timed(lambda: predict(model, image), args.repeats)
    runs["product"] = (seconds, probs, flops_of(default_tile))
    exact = {"precision": "fp32", "channels_last": False, "batch_size": 1}
    seconds, ref = timed(lambda: predict(model, image, tile_size=largest_tile, **exact), 1)
    runs["fp32 reference"] = (seconds, ref, flops_of(largest_tile))
    if args.grid:
        for precision in ("fp32", "bf16"):
            for channels_last in (False, True):
                for tile in sorted({baseline_tile, largest_tile}):
                    name = f"{tile} tiles, {precision}, {hardware.layout_name(channels_last)}"
                    kwargs = {"precision": precision, "channels_last": channels_last}
                    seconds, p = timed(
                        lambda kw=kwargs, t=tile: predict(
                            model, image, tile_size=t, batch_size=1, **kw
                        ),
                        1,
                    )
                    runs[name] = (seconds, p, flops_of(tile))
    if args.compile:
        compiled = torch.compile(model)
        start = time.perf_counter()
        predict(compiled, image)  # the first call compiles
        info["compile_first_call_s"] = round(time.perf_counter() - start, 1)
        seconds, p = timed(lambda: predict(compiled, image), args.repeats)
        runs["defaults + torch.compile"] = (seconds, p, flops_of(default_tile))

    reference_labels = ref.argmax(axis=0)
    rows = []
    base_seconds = runs["baseline"][0]
    for name, (seconds, p, flops) in runs.items():
        rows.append(
            {
                "run": name,
                "seconds": round(seconds, 3),
                "mpx_per_s": round(megapixels / seconds, 4),
                "speedup": round(base_seconds / seconds, 2),
                "gflops_per_s": round(flops / seconds / 1e9, 1),
                "label_agreement": float((p.argmax(axis=0) == reference_labels).mean()),
                "max_prob_diff": float(np.abs(p - ref).max()),
            }
        )
    grid = [row for row in rows if "tiles," in row["run"]]
    if grid:
        best = min(grid, key=lambda row: row["seconds"])
        product = next(row for row in rows if row["run"] == "product")
        info["best_single_setting"] = best["run"]
        info["product_vs_best_single"] = round(best["seconds"] / product["seconds"], 2)
    result = {"info": info, "rows": rows}
    print(json.dumps(info, indent=1))
    print(f"{'run':34s} {'s':>8s} {'Mpx/s':>8s} {'x':>6s} {'GFLOP/s':>8s} {'agree':>9s}")
    for row in rows:
        print(
            f"{row['run']:34s} {row['seconds']:8.2f} {row['mpx_per_s']:8.4f} "
            f"{row['speedup']:6.2f} {row['gflops_per_s']:8.1f} {row['label_agreement']:9.5f}"
        )
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=1)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
