"""Test-time augmentation: transforms map back exactly, predictions average the copies,
the uncertainty is their disagreement, and bad options give one clear error."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_unet import tta
from napari_unet.config import ModelInfo, UNetConfig
from napari_unet.inference import predict, segment
from napari_unet.model import UNet

#: every setting given, so no hardware measurement runs; fp32 is exact
FIXED = {"precision": "fp32", "device": "cpu", "channels_last": False, "batch_size": 2}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny(seed=0, n_classes=2, task="instance") -> UNet:
    torch.manual_seed(seed)
    info = ModelInfo(task=task, class_names=[f"c{i}" for i in range(n_classes)])
    return UNet(UNetConfig(n_classes=n_classes, base_channels=4, depth=2), info).eval()


class Pointwise(torch.nn.Module):
    """A flip- and rotation-equivariant "U-Net": foreground logit = 3 x the centre of
    the input tile (cropped by the U-Net's shrink), so any misaligned copy shows."""

    def __init__(self) -> None:
        super().__init__()
        self.config = UNetConfig(base_channels=4, depth=2)
        self.info = ModelInfo(task="instance", class_names=["background", "object"])
        self.gain = torch.nn.Parameter(torch.tensor(3.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        margin = self.config.shrink // 2
        centre = x[:, :1, margin:-margin, margin:-margin]
        return torch.cat([torch.zeros_like(centre), self.gain * centre], dim=1)


def structured(shape, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[-2], : shape[-1]]
    plane = np.sin(yy / 7.0) * np.cos(xx / 5.0) + 0.1 * xx / shape[-1]
    return (plane + 0.3 * rng.random(shape)).astype(np.float32)


@pytest.mark.parametrize("mode", list(tta.MODES))
def test_every_transform_is_undone_by_its_inverse_on_non_square_arrays(mode):
    array = np.arange(2 * 3 * 5 * 7).reshape(2, 3, 5, 7)
    for transform in tta.transforms(mode):
        assert np.array_equal(transform.invert(transform.apply(array)), array)


def test_the_modes_hold_distinct_transforms_of_the_square():
    square = np.arange(16).reshape(4, 4)
    for mode, count in (("none", 1), ("flips", 4), ("d4", 8)):
        images = {t.apply(square).tobytes() for t in tta.transforms(mode)}
        assert len(images) == count
    flips = {t.apply(square).tobytes() for t in tta.transforms("flips")}
    expected = {square[::a, ::b].tobytes() for a in (1, -1) for b in (1, -1)}
    assert flips == expected


@pytest.mark.parametrize("shape", [(130, 83), (2, 61, 150)])
@pytest.mark.parametrize("mode", ["flips", "d4"])
def test_an_equivariant_model_predicts_the_same_with_tta(shape, mode):
    model, image = Pointwise(), structured(shape)
    plain = predict(model, image, tile_size=60, **FIXED)
    augmented, uncertainty = predict(
        model, image, tile_size=60, tta=mode, with_uncertainty=True, **FIXED
    )
    np.testing.assert_allclose(augmented, plain, atol=1e-6)
    assert uncertainty.shape == shape and uncertainty.dtype == np.float32
    assert uncertainty.max() < 1e-6


def test_d4_maps_every_copy_of_a_real_unet_back_into_alignment():
    """One tile with symmetric mirror padding: TTA must equal predicting each transformed
    image separately and transforming the result back."""
    model = tiny(seed=1)
    image = structured((36, 52))  # valid output sizes: the padding is the margin on all sides
    copies = []
    for transform in tta.transforms("d4"):
        moved = np.ascontiguousarray(transform.apply(image))
        copies.append(transform.invert(predict(model, moved, tile_size=100, **FIXED)))
    augmented, uncertainty = predict(
        model, image, tile_size=100, tta="d4", with_uncertainty=True, **FIXED
    )
    stack = np.stack(copies)
    np.testing.assert_allclose(augmented, stack.mean(axis=0), atol=1e-5)
    np.testing.assert_allclose(uncertainty, stack.std(axis=0).max(axis=0), atol=1e-5)
    assert uncertainty.max() > 1e-3  # a random network is not equivariant
    plain = predict(model, image, tile_size=100, **FIXED)
    np.testing.assert_allclose(stack[0], plain, atol=1e-6)


@pytest.mark.parametrize("mode", ["none", "flips", "d4"])
def test_tta_labels_keep_the_spatial_shape_and_dtype(mode):
    model = tiny()
    for shape in [(70, 45), (2, 40, 63)]:
        labels = segment(model, structured(shape), tile_size=60, tta=mode, **FIXED)
        assert labels.shape == shape and labels.dtype == np.int32


def test_segment_returns_the_uncertainty_and_lazy_output_matches_memory():
    zarr = pytest.importorskip("zarr")
    model, image = tiny(), structured((90, 70))
    labels, uncertainty = segment(
        model, image, tile_size=60, tta="flips", with_uncertainty=True, **FIXED
    )
    assert uncertainty.shape == image.shape and 0 <= uncertainty.min() <= uncertainty.max() <= 0.5
    out = zarr.zeros(image.shape, chunks=(32, 32), dtype=np.int32)
    segment(model, image, tile_size=60, tta="flips", out=out, **FIXED)
    assert np.array_equal(out[...], labels)


def test_semantic_models_get_an_uncertainty_too():
    model, image = tiny(n_classes=3, task="semantic"), structured((50, 50))
    labels, uncertainty = segment(model, image, tta="d4", with_uncertainty=True, **FIXED)
    assert labels.shape == uncertainty.shape == image.shape


def test_unknown_tta_and_uncertainty_without_tta_are_clear_errors():
    model, image = tiny(), structured((40, 40))
    with pytest.raises(ValueError, match="unknown tta 'rot'"):
        predict(model, image, tta="rot", **FIXED)
    with pytest.raises(ValueError, match="needs test-time augmentation"):
        segment(model, image, with_uncertainty=True, **FIXED)


def test_cost_is_stated_in_passes():
    assert tta.cost("d4") == "8x slower" and tta.cost("flips") == "4x slower"
    assert tta.cost("none") == "no extra cost"
