"""The U-Net of Ronneberger, Fischer & Brox (MICCAI 2015), as in the paper's Fig. 1.

Contracting path: two unpadded 3x3 conv + ReLU per level, then 2x2 max-pool.
Expanding path: 2x2 up-convolution halving the channels, concatenation with the
centre-cropped skip ("copy and crop"), two unpadded 3x3 conv + ReLU. A 1x1 conv
maps to class logits. With the default :class:`UNetConfig` that is 23 conv
layers, 31,030,658 parameters, and a 572x572 input gives a 388x388 output.
"""

from __future__ import annotations

import math
from itertools import pairwise

import torch
from torch import nn

from .config import ModelInfo, UNetConfig


class DoubleConv(nn.Sequential):
    """Two unpadded 3x3 convolutions, each followed by a ReLU (loses 4 px)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size=3),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, kernel_size=3),
            nn.ReLU(inplace=True),
        )


class Down(nn.Sequential):
    """2x2 max-pool (stride 2), then a :class:`DoubleConv` doubling the channels."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.MaxPool2d(kernel_size=2, stride=2), DoubleConv(in_channels, out_channels)
        )


class Up(nn.Module):
    """2x2 up-convolution halving the channels, copy-and-crop skip, :class:`DoubleConv`."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, out_channels, kernel_size=2, stride=2)
        self.conv = DoubleConv(2 * out_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x)
        return self.conv(torch.cat([center_crop(skip, x.shape[-2:]), x], dim=1))


def center_crop(x: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """Crop the last two axes of ``x`` (N, C, H, W) to ``size`` around the centre."""
    top = (x.shape[-2] - size[0]) // 2
    left = (x.shape[-1] - size[1]) // 2
    return x[..., top : top + size[0], left : left + size[1]]


def fan_in(module: nn.Conv2d | nn.ConvTranspose2d) -> int:
    """Inputs feeding one output neuron (He et al.'s N) of a (transposed) convolution."""
    k_h, k_w = module.kernel_size
    if isinstance(module, nn.ConvTranspose2d):
        s_h, s_w = module.stride
        return module.in_channels * -(-k_h // s_h) * -(-k_w // s_w)
    return module.in_channels * k_h * k_w


class UNet(nn.Module):
    """U-Net mapping (N, in_channels, H, W) to (N, n_classes, H - s, W - s) logits.

    ``s`` is :attr:`UNetConfig.shrink` (184 px at depth 4). H and W must be valid
    input sizes (:meth:`UNetConfig.is_valid_input`); others raise ValueError.

    ``config`` may also be a plain dict of :class:`UNetConfig` fields, so that a
    bioimage.io package can name this class with JSON keyword arguments
    (``UNet(config={"base_channels": 16, "depth": 3, ...})``).

    Attributes:
        config: the architecture (saved in model files).
        info: task, normalisation and training summary (saved in model files).
    """

    def __init__(
        self, config: UNetConfig | dict | None = None, info: ModelInfo | None = None
    ) -> None:
        super().__init__()
        if isinstance(config, dict):
            config = UNetConfig.from_dict(config)
        self.config = config = config or UNetConfig()
        self.info = info = info or ModelInfo.default_for(config.n_classes)
        if len(info.class_names) != config.n_classes:
            raise ValueError(
                f"ModelInfo names {len(info.class_names)} classes but the network has "
                f"n_classes={config.n_classes}"
            )
        widths = [config.base_channels * 2**level for level in range(config.depth + 1)]

        self.inc = DoubleConv(config.in_channels, widths[0])
        self.downs = nn.ModuleList(Down(a, b) for a, b in pairwise(widths))
        self.dropout = nn.Dropout(config.dropout)
        self.ups = nn.ModuleList(Up(wide, narrow) for narrow, wide in pairwise(widths))[::-1]
        self.head = nn.Conv2d(widths[0], config.n_classes, kernel_size=1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """He initialisation (paper, Sec. 3): normal, std sqrt(2 / N), zero bias.

        N is the number of inputs of one output neuron: k * k * C_in for a
        convolution; for the 2x2 stride-2 up-convolution each output pixel sees
        one input pixel, so N = C_in there.
        """
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
                std = math.sqrt(2.0 / fan_in(module))
                nn.init.normal_(module.weight, mean=0.0, std=std)
                nn.init.zeros_(module.bias)

    def check_input(self, x: torch.Tensor) -> None:
        """Raise ValueError unless ``x`` is (N, in_channels, H, W) with valid H and W."""
        if x.ndim != 4:
            raise ValueError(f"UNet expects (N, C, H, W) input, got shape {tuple(x.shape)}")
        self.config.check_channels(x.shape[1])
        for size in x.shape[-2:]:
            if not self.config.is_valid_input(size):
                raise ValueError(self.config._invalid_message(size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        skips = [self.inc(x)]
        for down in self.downs:
            skips.append(down(skips[-1]))
        x = self.dropout(skips.pop())
        for up in self.ups:
            x = up(x, skips.pop())
        return self.head(x)
