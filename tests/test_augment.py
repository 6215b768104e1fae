"""On-device augmentation: geometry keeps image and labels aligned; settings are honoured."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from napari_unet.augment import AugmentSettings, augment, gray_value, sampling_grid


def blobs(size: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    field = ndi.gaussian_filter(rng.normal(size=(size, size)), 6)
    return (field > 0).astype(np.int64)


def test_off_is_a_centre_crop():
    settings = AugmentSettings.off()
    patch = settings.patch_size(44)
    rng = np.random.default_rng(1)
    images = torch.from_numpy(rng.random((2, 1, patch, patch), dtype=np.float32))
    targets = torch.from_numpy(rng.integers(0, 2, (2, patch, patch)))
    weights = torch.from_numpy(rng.random((2, patch, patch), dtype=np.float32))
    x, y, w = augment(images, targets, weights, 44, 4, settings)
    start = (patch - 44) // 2
    torch.testing.assert_close(x, images[:, :, start : start + 44, start : start + 44])
    inner = start + 20
    assert torch.equal(y, targets[:, inner : inner + 4, inner : inner + 4])
    torch.testing.assert_close(w, weights[:, inner : inner + 4, inner : inner + 4])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_deformation_keeps_image_and_labels_aligned(seed):
    settings = AugmentSettings(gamma=(1, 1), contrast=(1, 1), brightness=0, noise=0)
    size, out = 92, 52
    patch = settings.patch_size(size)
    labels = torch.from_numpy(np.stack([blobs(patch, seed), blobs(patch, seed + 10)]))
    images = labels[:, None].float()
    generator = torch.Generator().manual_seed(seed)
    x, y, w = augment(images, labels, torch.ones(labels.shape), size, out, settings, generator)
    margin = (size - out) // 2
    image_inside = x[:, 0, margin : margin + out, margin : margin + out] > 0.5
    assert (image_inside == y.bool()).float().mean() > 0.97
    assert set(torch.unique(y).tolist()) <= {0, 1}
    assert torch.all(w == 1)
    # it did move things: the deformed tile differs from the plain centre crop
    start = (patch - size) // 2
    plain = images[:, :, start : start + size, start : start + size]
    assert (x - plain).abs().mean() > 0.05


def test_elastic_displacements_have_the_requested_scale():
    settings = AugmentSettings(rotate=False, flip=False, scale=(1, 1), elastic_std=10.0)
    grid = sampling_grid(200, 64, 101, settings, torch.Generator().manual_seed(0))
    plain = sampling_grid(1, 64, 101, AugmentSettings.off())
    displacement = (grid - plain) * 50  # back to px
    corners = displacement[:, [0, 0, -1, -1], [0, -1, 0, -1]]
    assert 8.5 < corners.std().item() < 11.5
    # smooth: neighbouring pixels move almost together
    assert (displacement[:, 1:] - displacement[:, :-1]).abs().max() < 3


def test_gray_value_changes_intensities_but_keeps_shape():
    images = torch.rand(4, 2, 16, 16)
    changed = gray_value(images, AugmentSettings(), torch.Generator().manual_seed(0))
    assert changed.shape == images.shape and not torch.allclose(changed, images)
    assert torch.equal(gray_value(images, AugmentSettings.off()), images)
