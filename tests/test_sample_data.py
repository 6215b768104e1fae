"""The generated samples: reproducible, labelled 1..N, and of the size they claim."""

from __future__ import annotations

import numpy as np

from napari_unet.sample_data import make_nuclei


def test_generated_nuclei_are_reproducible_and_labelled_one_to_n():
    image, labels = make_nuclei(seed=3)
    again, _ = make_nuclei(seed=3)
    np.testing.assert_array_equal(image, again)
    assert image.dtype == np.float32 and labels.dtype == np.int32
    assert image.shape == labels.shape == (512, 512)
    ids = np.unique(labels[labels > 0])
    np.testing.assert_array_equal(ids, np.arange(1, labels.max() + 1))
    areas = np.bincount(labels.ravel())[1:]
    assert 150 <= np.median(areas) <= 700  # DSB-sized nuclei, the built-in model's scale
    inside, outside = image[labels > 0].mean(), image[labels == 0].mean()
    assert inside > 5 * outside  # bright nuclei on a dark background
