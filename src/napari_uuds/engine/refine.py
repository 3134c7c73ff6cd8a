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
from dataclasses import asdict, dataclass

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
#: round 20's error model: a label's boundary moved this many pixels out and in (inside the band of PSEUDO_BAND_PX)
AGREEMENT_SHIFT_PX = 2
#: round 20: at most this many source slices (those holding the object, evenly spaced) are read for K
AGREEMENT_MAX_SLICES = 256


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


@dataclass(frozen=True)
class EdgeAgreement:
    """Round 20's K (:func:`edge_agreement`) and its three parts (Dice change from refining, pooled over slices)."""
    k: float
    keep: float  # the label itself: Dice(refined L, L) - 1, never above 0
    grow: float  # L dilated by AGREEMENT_SHIFT_PX: Dice(refined, L) - Dice(dilated, L)
    shrink: float  # L eroded by AGREEMENT_SHIFT_PX: the same for the eroded label
    slices: int

    def record(self) -> dict:
        return {key: (round(v, 4) if isinstance(v, float) else v) for key, v in asdict(self).items()}


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = float(a.sum() + b.sum())
    return 2.0 * float((a & b).sum()) / total if total else 1.0


def edge_agreement(labels: np.ndarray, images: np.ndarray, shift_px: int = AGREEMENT_SHIFT_PX,
                   band_px: float = PSEUDO_BAND_PX, background: float = BACKGROUND) -> EdgeAgreement:
    """Round 20's statistic K: do a source's labels follow its image's edges? ``labels`` (B, H, W; 0 background,
    any class > 0 is the object, the ignore value is background) and ``images`` (B, H, W; normalised, background at
    or under ``background``): the source's slices in the model's frame. The binary label L and L with its boundary
    moved ``shift_px`` pixels out and in (a disk, inside the body) are each refined as round 19 refines a pseudo label
    (:func:`snap_slices_to_edges`); K is the mean of the three Dice changes towards L. K > 0: the walker moves wrong
    boundaries towards the labels by more than it moves the right one away."""
    from skimage.morphology import disk

    labels, images = np.asarray(labels), np.asarray(images, np.float32)
    if labels.shape != images.shape or labels.ndim != 3:
        raise ValueError(f"labels {labels.shape} and slices {images.shape} must be the same (B, H, W) batch")
    body = images > background
    truth = (labels > 0) & (labels != IGNORE_LABEL) & body
    keep = truth.reshape(len(truth), -1).any(1)
    truth, images, body = truth[keep], images[keep], body[keep]
    if not len(truth):
        raise ValueError("no source slice holds the object: the labels' edge agreement is undefined")
    se = disk(shift_px)[None]  # in-plane only: each slice on its own
    grown = ndimage.binary_dilation(truth, se) & body
    shrunk = ndimage.binary_erosion(truth, se, border_value=1)
    parts = []
    for version in (truth, grown, shrunk):
        refined = snap_slices_to_edges(version.astype(np.uint8), images, body, band_px) > 0
        parts.append(_dice(refined, truth) - _dice(version, truth))
    return EdgeAgreement(float(np.mean(parts)), *(float(p) for p in parts), slices=int(len(truth)))


def source_slices_for_agreement(labels: list, images: list, picks: list[tuple[int, int]],
                                max_slices: int = AGREEMENT_MAX_SLICES):
    """The source's (labels, images) as (B, H, W) numpy stacks for :func:`edge_agreement`: the slices ``picks``
    ((volume, slice) pairs holding the object: a source ``SliceSampler``'s ``foreground``), at most ``max_slices`` of
    them, evenly spaced over the cohort; ``labels`` and ``images``: per volume, (n, 1, S, S) or (n, S, S) tensors or
    arrays."""
    if len(picks) > max_slices:
        picks = [picks[int(j)] for j in np.linspace(0, len(picks) - 1, max_slices).round().astype(int)]

    def take(stack, v, i):
        x = stack[v][i]
        x = x.detach().cpu().float().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, np.float32)
        return x.reshape(x.shape[-2:])
    return (np.stack([take(labels, v, i) for v, i in picks]).astype(np.uint8),
            np.stack([take(images, v, i) for v, i in picks]).astype(np.float32))


def resolve_pseudo_refine(mode: str, source) -> tuple[str, EdgeAgreement | None]:
    """``auto`` (round 20) -> ``edges`` where the source's labels follow its edges (K > 0), else ``none``; other
    modes unchanged (K not computed). ``source``: the source's ``SliceSampler`` (its labels, images and the slices
    that hold the object). No labels (source-only data), or no slice of the model's frame holding the object (a label
    too small to survive the resampling): ``none``."""
    if mode != "auto":
        return mode, None
    if source.labels is None or not source.foreground:
        return "none", None
    agreement = edge_agreement(*source_slices_for_agreement(source.labels, source.images, source.foreground))
    return ("edges" if agreement.k > 0 else "none"), agreement
