"""Per-image percentile intensity normalisation (numpy only).

Training and prediction use the same function with the percentiles stored in
the model (:attr:`ModelInfo.normalization`), so a model sees at prediction time
the intensities it was trained on.
"""

from __future__ import annotations

import numpy as np

# Percentiles of a lazy (dask/zarr) image are estimated from at most this many pixels.
MAX_SAMPLE_PIXELS = 4_000_000


def percentile_range(plane, low: float = 1.0, high: float = 99.8) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel intensities at the ``low``/``high`` percentiles.

    Args:
        plane: (C, Y, X) array-like (numpy, dask or zarr); large arrays are
            subsampled on a regular grid.

    Returns:
        lo, hi: float32 arrays of shape (C, 1, 1).
    """
    step = max(1, int(np.ceil(np.sqrt(plane.shape[-2] * plane.shape[-1] / MAX_SAMPLE_PIXELS))))
    sample = np.asarray(plane[:, ::step, ::step], dtype=np.float32)
    lo, hi = np.percentile(sample.reshape(sample.shape[0], -1), [low, high], axis=1)
    return lo[:, None, None].astype(np.float32), hi[:, None, None].astype(np.float32)


def normalize(plane, low: float = 1.0, high: float = 99.8, lo_hi=None) -> np.ndarray:
    """Map each channel of a (C, Y, X) plane so its ``low``/``high`` percentiles become 0/1.

    ``lo_hi`` reuses ranges from :func:`percentile_range` (e.g. computed once for a
    lazy image that is then normalised tile by tile). Constant channels map to 0.
    """
    lo, hi = lo_hi if lo_hi is not None else percentile_range(plane, low, high)
    scale = np.where(hi > lo, hi - lo, 1.0).astype(np.float32)
    return (np.asarray(plane, dtype=np.float32) - lo) / scale
