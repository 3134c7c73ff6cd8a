"""Nothing outside the body: the scan's background (air) is never foreground.

After normalisation (volumes.normalise) the background of a scan sits at -1: the most frequent low value of
skull-stripped and z-scored scans, and the noise floor below the 0.5th percentile of anatomy in raw ones.
The body is what lies above :data:`~.randomise.BACKGROUND`, with the holes of each slice filled (dark tissue
or fluid enclosed by anatomy is inside the body, not air).
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from .randomise import BACKGROUND


def body_mask(norm: np.ndarray, axis: int) -> np.ndarray:
    """Normalised (X, Y, Z) volume -> bool mask of the body, holes filled slice by slice along ``axis``."""
    m = np.asarray(norm) > BACKGROUND
    out = np.empty_like(m)
    for i in range(m.shape[axis]):
        idx = [slice(None)] * 3
        idx[axis] = i
        out[tuple(idx)] = ndimage.binary_fill_holes(m[tuple(idx)])
    return out
