"""Run under torchrun by tests/test_ddp.py: train a tiny U-Net and write the losses.

Usage: torchrun --nproc-per-node N tests/_ddp_losses.py OUT.json BATCH_SIZE
Rank 0 writes ``{"losses": [...], "weights": {name: list}}`` to OUT.json.
"""

import json
import sys

import torch

from napari_unet import ddp
from napari_unet.augment import AugmentSettings
from napari_unet.progress import collect
from napari_unet.sample_data import make_sample
from napari_unet.train_settings import TrainSettings
from napari_unet.training import train_iter

#: deterministic but for the tile positions: no augmentation, no dropout, fp32
SETTINGS = TrainSettings(
    base_channels=8, depth=2, tile_size=60, iterations=4, minutes=None, val_fraction=0.0,
    precision="fp32", channels_last=False, augment=AugmentSettings.off(), dropout=0.0,
    preview_every_s=1e9, threads=1, device="cpu", seed=0,
)  # fmt: skip


def pairs():
    samples = [make_sample((64, 64), n_objects=6, seed=s) for s in range(3)]
    return [s[0] for s in samples], [s[1] for s in samples]


def losses_and_weights(batch_size: int, ranks=ddp.SINGLE):
    records, model = collect(
        train_iter(*pairs(), settings=SETTINGS.replace(batch_size=batch_size), ranks=ranks)
    )
    return [r.loss for r in records], model


if __name__ == "__main__":
    out, batch_size = sys.argv[1], int(sys.argv[2])
    ranks = ddp.ranks_from_environment()
    ddp.start(ranks, torch.device("cpu"))
    try:
        losses, model = losses_and_weights(batch_size, ranks)
    finally:
        ddp.stop()
    if ranks.is_main:
        weights = {k: v.flatten().tolist() for k, v in model.state_dict().items()}
        with open(out, "w") as file:
            json.dump({"losses": losses, "weights": weights}, file)
