"""``napari-unet info``: the device, its instruction sets, the settings in use and why.

The settings (precision, memory format, largest tile, batch) are those
:mod:`napari_unet.hardware` measured for this machine and network size, and those of a
training step (:mod:`napari_unet.train_hardware`): read from the cache, or measured now
(a few seconds) the first time or with ``--remeasure``.
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "info",
        help="show the device, its instruction sets and the measured inference settings",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--model", type=Path, help="model file (default: a preset's network)")
    parser.add_argument(
        "--preset", default="fast", help="network of this training preset when no --model"
    )
    parser.add_argument("--device", help="cpu, cuda[:N] or mps (default: best available)")
    parser.add_argument(
        "--remeasure", action="store_true", help="measure again instead of using the cache"
    )
    parser.add_argument(
        "--training",
        action="store_true",
        help="also time training steps now if not cached (else shown once training ran)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from .. import __version__, hardware
    from ..devices import available_devices, choose_device
    from ..model import UNet
    from ..model_io import load_model
    from ..train_hardware import cached_training_choice, choose_training
    from ..training import PRESETS
    from ._files import drain_with_bar

    device = choose_device(args.device)
    if args.model is not None:
        model, network = load_model(args.model), f"file {args.model}"
    else:
        if args.preset not in PRESETS:
            raise ValueError(f"unknown preset {args.preset!r} (known: {', '.join(PRESETS)})")
        model, network = UNet(PRESETS[args.preset].config()), f"the {args.preset} preset's"
    config = model.config
    choice = drain_with_bar(
        hardware.choose_iter(model, device, remeasure=args.remeasure),
        "measuring this machine",
        "step",
    )
    training = cached_training_choice(config, device)
    if args.training or (args.remeasure and training is not None):
        training = choose_training(model, device, remeasure=args.remeasure)
    source = "read from the cache" if choice.from_cache else "measured now"
    rows = [
        (
            "napari-unet",
            f"{__version__} · torch {torch.__version__} · python {platform.python_version()}",
        ),
        ("device", f"{device} ({hardware.device_signature(device)})"),
        ("devices here", ", ".join(available_devices())),
        ("CPU", hardware.cpu_name()),
        ("instruction sets", hardware.instruction_sets()),
        ("network", f"{network}: base {config.base_channels} channels, depth {config.depth}"),
        ("settings", choice.settings.describe()),
        ("chosen", f"{source} ({choice.measured_at}), cached in {hardware.cache_path()}"),
        ("why", choice.reason),
        ("throughput", f"{choice.mpx_per_s:.3g} output Mpx/s (full tiles)"),
        *_training_rows(training),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:>{width}}  {value}", file=sys.stdout)
    return 0


def _training_rows(choice) -> list[tuple[str, str]]:
    """The training step's measured settings and why, e.g. ``"fp32, contiguous; fastest
    step 1 x 372 px tiles, 0.22 output Mpx/s"``."""
    if choice is None:
        return [("training", "not measured yet: at the first training run, or with --training")]
    settings = choice.settings
    line = (
        f"{settings.precision}, {settings.layout}; fastest step {settings.batch_size} x "
        f"{settings.max_tile} px tiles, {choice.mpx_per_s:.3g} output Mpx/s"
    )
    return [("training", line), ("training why", choice.reason)]
