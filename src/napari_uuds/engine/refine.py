"""Boundary refinement on the target's own image (round 18 of docs/method.md; not in the paper).

The network reads the target only through its encoder (finest map S/4) and a translation; the target's own edges
at full resolution never decide where a mask ends. :func:`snap_to_edges` lets them: a band of ``band`` voxels on
both sides of the predicted boundary is unlabelled, everything else keeps its predicted class as a seed, and a
random walker on the target image (Grady, IEEE TPAMI 2006; ``skimage.segmentation.random_walker``) assigns the
band to the seed a walker from each band voxel most likely reaches first, i.e. the boundary moves to the strongest
image edge inside the band. Parts of the mask too thin to keep a seed after the band is cut away stay as they are.
No label is read, and nothing outside the band changes.
"""
from __future__ import annotations

import warnings

import numpy as np
from scipy import ndimage

#: half-width of the unlabelled band around the predicted boundary, in voxels of the target's finest spacing
BAND_VOXELS = 2.0
#: the random walker's edge penalty on the target standardised inside the band's box (skimage's default value)
BETA = 130.0


def snap_to_edges(seg: np.ndarray, image: np.ndarray, spacing=(1.0, 1.0, 1.0), body: np.ndarray | None = None,
                  band_voxels: float = BAND_VOXELS, beta: float = BETA) -> np.ndarray:
    """``seg`` (integer classes, 0 background) with the voxels within ``band_voxels`` of a class boundary
    re-assigned by a random walker on ``image`` (same grid). ``body``: voxels outside it stay background."""
    from skimage.segmentation import random_walker

    seg = np.asarray(seg)
    if seg.shape != np.shape(image) or seg.ndim != 3:
        raise ValueError(f"segmentation {seg.shape} and image {np.shape(image)} must be the same 3D grid")
    if not seg.any() or not (seg == 0).any():
        return seg.copy()
    spacing = tuple(float(s) for s in spacing)
    width = band_voxels * min(spacing)
    classes = np.unique(seg)
    band = np.zeros(seg.shape, bool)
    for c in classes:  # within `width` mm of the boundary of any class, on either side
        inside = seg == c
        band |= inside & (ndimage.distance_transform_edt(inside, sampling=spacing) <= width)
    if body is not None:
        band &= np.asarray(body, bool)
    labels = seg.astype(np.int32) + 1  # seeds: 1 background, c + 1 class c; 0: the band, to be decided
    labels[band] = 0
    for c in classes[classes > 0]:  # a class part with no seed left keeps its predicted voxels (seeded)
        parts, n = ndimage.label(seg == c)
        seeded = np.unique(parts[(labels == c + 1) & (parts > 0)])
        lost = np.isin(parts, np.setdiff1d(np.arange(1, n + 1), seeded))
        labels[lost] = c + 1
    if not (labels == 0).any():
        return seg.copy()
    box = tuple(slice(max(int(i.min()) - 2, 0), int(i.max()) + 3) for i in np.nonzero(labels == 0))
    crop = np.asarray(image, np.float64)[box]
    crop = (crop - crop.mean()) / max(float(crop.std()), 1e-8)
    present = np.unique(labels[box])
    if len(present[present > 0]) < 2:  # one seed class in the box: nothing to decide between
        return seg.copy()
    with warnings.catch_warnings():  # probabilities a little outside [0, 1] from the solver's tolerance: harmless
        warnings.filterwarnings("ignore", message="The probability range is outside")
        walked = random_walker(crop, labels[box], beta=beta, mode="cg_j", spacing=spacing, tol=1e-4)
    out = seg.copy()
    out[box] = (walked - 1).astype(seg.dtype)
    if body is not None:
        out[~np.asarray(body, bool)] = 0
    return out
