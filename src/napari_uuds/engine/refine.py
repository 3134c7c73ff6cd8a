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
import torch
from scipy import ndimage

from .losses import IGNORE_LABEL
from .randomise import BACKGROUND

#: half-width of the unlabelled band around the predicted boundary, in voxels of the target's finest spacing
BAND_VOXELS = 2.0
#: the random walker's edge penalty on the target standardised inside the band's box (skimage's default value)
BETA = 130.0
#: half-width of the band around a pseudo label's boundary, in pixels of the model's square slice (round 19: the
#: segmenter's coarsest skip is S/4, so one cell of it spans four pixels; three reach across most of one)
PSEUDO_BAND_PX = 3.0


def snap_to_edges(seg: np.ndarray, image: np.ndarray, spacing=(1.0, 1.0, 1.0), body: np.ndarray | None = None,
                  band_voxels: float = BAND_VOXELS, beta: float = BETA, mode: str = "cg_j") -> np.ndarray:
    """``seg`` (integer classes, 0 background) with the voxels within ``band_voxels`` of a class boundary
    re-assigned by a random walker on ``image`` (same grid). ``body``: voxels outside it stay background. ``mode``:
    the walker's solver (skimage's; "bf", a direct solve, is faster for a small band)."""
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
        walked = random_walker(crop, labels[box], beta=beta, mode=mode, spacing=spacing, tol=1e-4)
    out = seg.copy()
    out[box] = (walked - 1).astype(seg.dtype)
    if body is not None:
        out[~np.asarray(body, bool)] = 0
    return out


def snap_slices_to_edges(labels: np.ndarray, images: np.ndarray, body: np.ndarray | None = None,
                         band_px: float = PSEUDO_BAND_PX, beta: float = BETA) -> np.ndarray:
    """:func:`snap_to_edges` for a batch of 2D slices (B, H, W), each on its own (round 19's pseudo labels, refined on
    the model's square target slices before Eq. 8 reads them); ``body`` (B, H, W): pixels outside stay background."""
    labels, images = np.asarray(labels), np.asarray(images)
    if labels.shape != images.shape or labels.ndim != 3:
        raise ValueError(f"labels {labels.shape} and slices {images.shape} must be the same (B, H, W) batch")
    if (labels == IGNORE_LABEL).any():  # an unlabelled pixel is no class to seed from or snap to
        raise ValueError(f"pseudo labels with the ignore value {IGNORE_LABEL} cannot be refined")
    out = labels.copy()
    reach = int(np.ceil(band_px)) + 3  # the band and the walker's margin around the object
    for i in range(labels.shape[0]):
        b = None if body is None else np.asarray(body[i], bool)
        fg = labels[i] > 0
        if not fg.any() or (b is not None and not b.any()):
            continue
        rows, cols = np.nonzero(fg)
        box = (slice(max(int(rows.min()) - reach, 0), int(rows.max()) + reach + 1),
               slice(max(int(cols.min()) - reach, 0), int(cols.max()) + reach + 1))
        out[i][box] = snap_to_edges(labels[i][box][None], images[i][box][None], (1.0, 1.0, 1.0),
                                    None if b is None else b[box][None], band_px, beta, mode="bf")[0]
    return out


def refine_pseudo_label(pseudo, mask, slices, body_mask: bool = True, background: float = BACKGROUND):
    """Round 19's candidate (``TrainConfig.pseudo_refine = "edges"``): the target batch's pseudo label (B, H, W) refined
    on its slices (B, H, W, normalised, background -1) by :func:`snap_slices_to_edges`; the pixels whose label moved
    become certain in ``mask`` (B, H, W), so that Eq. 8 supervises them. ``body_mask``: nothing outside the body (pixels
    at or under ``background``) changes. Returns (pseudo, mask) as tensors on their devices, without gradient."""
    img = slices.detach().float().cpu().numpy()
    lab = pseudo.detach().cpu().numpy()
    new = snap_slices_to_edges(lab, img, img > background if body_mask else None)
    moved = torch.from_numpy(new != lab).to(mask.device)
    return torch.from_numpy(new).to(pseudo.device, pseudo.dtype), torch.where(moved, torch.ones_like(mask), mask)
