"""A slice read with its neighbours (round 25 of docs/method.md; not in the paper).

The network segments each slice on its own. With ``ModelConfig.smooth_z = "binomial"`` a slice's class probabilities
become 1/4 of the slice before, 1/2 its own and 1/4 of the slice after along the slicing axis, before the argmax and
the entropy; a slice at the volume's end stands in for its missing neighbour. Predictions run a slab of slices at a
time, so each slab is predicted with one slice more on either side (its halo) and cut back afterwards: the result is
the same whatever the slab size. Where the scan's slices lie more than twice its in-plane voxel apart (a clinical
thick-slice stack) the neighbours are too far to vote and nothing is smoothed.
"""
from __future__ import annotations

import numpy as np

#: the binomial kernel [1, 2, 1] / 4 (round 25's rule fixes it)
KERNEL = (0.25, 0.5, 0.25)
#: neighbours vote only where the slice spacing is at most this many times the smallest in-plane voxel
MAX_SPACING_RATIO = 2.0


def halo(cfg, spacing) -> int:
    """Slices a slab needs on either side for ``cfg``'s smoothing of a scan with voxel ``spacing`` (canonical
    order): 1 with ``binomial`` where the slices lie close enough, else 0."""
    if cfg.smooth_z == "none":
        return 0
    through = float(spacing[cfg.axis])
    in_plane = min(float(s) for i, s in enumerate(spacing) if i != cfg.axis)
    return 1 if through <= MAX_SPACING_RATIO * in_plane else 0


def widen(a: int, b: int, n: int, h: int) -> tuple[int, int]:
    """Slices [a, b) of a volume of n slices with ``h`` more on either side, inside the volume."""
    return max(0, a - h), min(n, b + h)


def smooth_probs(probs: np.ndarray, axis: int, lo: int, hi: int) -> np.ndarray:
    """Class probabilities (C, X, Y, Z) of a run of slices along ``axis`` (0-2, of the volume) -> the smoothed
    probabilities of its slices [lo, hi). The array's first and last slices repeat where a neighbour is missing:
    callers widen a slab by :func:`halo` so that this happens only at the volume's ends."""
    ax = axis + 1
    pad = [(0, 0)] * probs.ndim
    pad[ax] = (1, 1)
    p = np.pad(probs, pad, mode="edge")

    def take(start: int) -> np.ndarray:
        return np.take(p, np.arange(start, start + hi - lo), axis=ax)

    # slice j of the array sits at j + 1 in the padded one
    out = KERNEL[0] * take(lo) + KERNEL[1] * take(lo + 1) + KERNEL[2] * take(lo + 2)
    return out.astype(np.float32, copy=False)
