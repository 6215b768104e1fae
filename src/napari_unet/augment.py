"""On-device data augmentation for U-Net training (torch).

One resampling per tile does it all, as in the paper: a random rotation, flip
and scale, plus a smooth elastic deformation from random displacement vectors on
a coarse 3x3 grid (std 10 px) upsampled bicubically to a dense field, applied
with :func:`torch.nn.functional.grid_sample` -- bicubic for the image, nearest
for the target and the weight map. Random tile positions give the shifts.
Gray-value changes (gamma, contrast, brightness, noise) follow on the image.
Everything runs batched on the training device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentSettings:
    """Augmentation strengths; ``AugmentSettings.off()`` disables everything.

    Attributes:
        elastic_std: std of the coarse-grid displacements, px (paper: 10).
        elastic_grid: coarse grid points per axis (paper: 3).
        rotate: random rotation by any angle.
        flip: random mirror.
        scale: (min, max) isotropic zoom factor, sampled log-uniformly.
        gamma: (min, max) gamma applied to the tile's intensity range.
        contrast: (min, max) factor around the tile's mean.
        brightness: max absolute offset (normalised intensity units).
        noise: max std of additive Gaussian noise (normalised units).
    """

    elastic_std: float = 10.0
    elastic_grid: int = 3
    rotate: bool = True
    flip: bool = True
    scale: tuple[float, float] = (0.8, 1.25)
    gamma: tuple[float, float] = (0.7, 1.4)
    contrast: tuple[float, float] = (0.75, 1.33)
    brightness: float = 0.1
    noise: float = 0.05

    @classmethod
    def off(cls) -> AugmentSettings:
        return cls(0.0, 3, False, False, (1.0, 1.0), (1.0, 1.0), (1.0, 1.0), 0.0, 0.0)

    def patch_size(self, input_size: int) -> int:
        """Edge of the source patch that covers any transformed input tile."""
        reach = input_size * (math.sqrt(2) if self.rotate else 1.0) * max(self.scale)
        return math.ceil(reach + 6 * self.elastic_std) + 2


def _uniform(n: int, low: float, high: float, generator, device) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator, device=device)


def sampling_grid(
    batch: int,
    input_size: int,
    patch_size: int,
    settings: AugmentSettings,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """(batch, S, S, 2) grid_sample coordinates into a (P, P) patch, centred.

    Output pixel ``u`` (px from the tile centre) samples the patch at
    ``A u + d(u)``: ``A`` a random rotation/flip/scale, ``d`` the elastic field.
    """
    size = input_size
    coords = torch.arange(size, device=device, dtype=torch.float32) - (size - 1) / 2
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    points = torch.stack([xx, yy], dim=-1).reshape(1, -1, 2)  # (1, S*S, [x, y])

    angle = (
        _uniform(batch, 0, 2 * math.pi, generator, device)
        if settings.rotate
        else torch.zeros(batch, device=device)
    )
    low, high = (math.log(s) for s in settings.scale)
    scale = torch.exp(_uniform(batch, low, high, generator, device))
    flip = (
        torch.where(torch.rand(batch, generator=generator, device=device) < 0.5, -1.0, 1.0)
        if settings.flip
        else torch.ones(batch, device=device)
    )
    cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
    matrix = torch.stack(
        [torch.stack([cos * flip, -sin], -1), torch.stack([sin * flip, cos], -1)], -2
    )  # (B, 2, 2) acting on [x, y]
    positions = (points @ matrix.transpose(1, 2)).reshape(batch, size, size, 2)

    if settings.elastic_std > 0:
        n = settings.elastic_grid
        coarse = settings.elastic_std * torch.randn(
            batch, 2, n, n, generator=generator, device=device
        )
        dense = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=True)
        positions = positions + dense.permute(0, 2, 3, 1)
    return positions / ((patch_size - 1) / 2)  # align_corners=True normalisation


def gray_value(images: torch.Tensor, settings: AugmentSettings, generator=None) -> torch.Tensor:
    """Random gamma, contrast, brightness and Gaussian noise per sample of (B, C, H, W)."""
    batch, device = images.shape[0], images.device
    shape = (batch, 1, 1, 1)
    if settings.gamma != (1.0, 1.0):
        low = images.amin(dim=(1, 2, 3), keepdim=True)
        span = (images.amax(dim=(1, 2, 3), keepdim=True) - low).clamp_min(1e-6)
        lg, hg = (math.log(g) for g in settings.gamma)
        gamma = torch.exp(_uniform(batch, lg, hg, generator, device)).view(shape)
        images = low + span * ((images - low) / span) ** gamma
    if settings.contrast != (1.0, 1.0):
        lc, hc = (math.log(c) for c in settings.contrast)
        factor = torch.exp(_uniform(batch, lc, hc, generator, device)).view(shape)
        mean = images.mean(dim=(1, 2, 3), keepdim=True)
        images = mean + (images - mean) * factor
    if settings.brightness > 0:
        b = settings.brightness
        images = images + _uniform(batch, -b, b, generator, device).view(shape)
    if settings.noise > 0:
        std = _uniform(batch, 0, settings.noise, generator, device).view(shape)
        noise = torch.randn(images.shape, generator=generator, device=device)
        images = images + std * noise
    return images


def augment(
    images: torch.Tensor,
    targets: torch.Tensor,
    weights: torch.Tensor,
    input_size: int,
    output_size: int,
    settings: AugmentSettings,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Deform a batch of source patches into network tiles.

    Args:
        images: (B, C, P, P) float32 patches centred on the tile centres,
            ``P >= settings.patch_size(input_size)``.
        targets: (B, P, P) integer class indices.
        weights: (B, P, P) float32 loss weights.
        input_size, output_size: network input edge S and output edge O.

    Returns:
        (B, C, S, S) float32 images, (B, O, O) int64 targets, (B, O, O) float32 weights,
        the targets/weights aligned with the centre of the network's output.
    """
    batch, patch = images.shape[0], images.shape[-1]
    grid = sampling_grid(batch, input_size, patch, settings, generator, images.device)
    tiles = F.grid_sample(
        images, grid, mode="bicubic", padding_mode="reflection", align_corners=True
    )
    margin = (input_size - output_size) // 2
    inner = grid[:, margin : margin + output_size, margin : margin + output_size]
    stacked = torch.stack([targets.to(torch.float32), weights.to(torch.float32)], 1)
    sampled = F.grid_sample(
        stacked, inner, mode="nearest", padding_mode="reflection", align_corners=True
    )
    tiles = gray_value(tiles, settings, generator)
    return tiles, sampled[:, 0].round().to(torch.int64), sampled[:, 1]
