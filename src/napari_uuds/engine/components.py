"""One object per volume: keep the largest connected piece of a predicted mask (round 23 of docs/method.md; not in
the paper).

A segmenter reads a volume slice by slice, so nothing in it knows that a tumour or a spinal cord is one object: a
prediction can fall into dozens of separate pieces. :func:`keep_largest_object` keeps the largest 26-connected piece
of the predicted object (every class > 0 together, so a multi-class tumour keeps its parts inside one whole) and makes
everything else background: the post-processing nnU-Net decides on its validation labels (Isensee et al., Nature
Methods 2021). An option (``ModelConfig.objects = "largest"``), not the default: round 23 wrote an ``auto`` form
(:func:`resolve_objects`, from the source labels alone) that would have become the default had it passed its gates;
it failed them (on BraTS FLAIR -> T1c the seeds keep different pieces), so nothing calls it but its test. No label of
the target is read.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np
from scipy import ndimage

#: ``objects = "auto"`` keeps the largest piece where every source label holds at least this share of its object
#: voxels in its largest piece (fixed by round 23's rule before any run)
ONE_OBJECT_SHARE = 0.95


def pieces(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The pieces of a 2D or 3D boolean mask, those touching at a corner included (8- or 26-connectivity): (labelled
    array, voxels per piece (index 0 = piece 1))."""
    lab, n = ndimage.label(mask, np.ones((3,) * mask.ndim, bool))
    return lab, np.bincount(lab.ravel(), minlength=n + 1)[1:]


def keep_largest_object(seg: np.ndarray, keep: np.ndarray | None = None) -> np.ndarray:
    """``seg`` (integer classes, 0 background) with only its main object kept, every other voxel background.

    The object is every class > 0 together, and each class decides one piece of it: the piece of the whole that holds
    the class's own largest piece. A tumour whose classes nest inside one another keeps one piece (the largest,
    binary masks included); structures labelled as separate classes (a liver and a kidney) each keep theirs. ``keep``
    (boolean, the same grid): voxels the user painted as object; every piece that touches them is kept too, so a
    correction never loses the object it marks. An empty mask comes back unchanged (a copy). Ties keep the piece found
    first in C order."""
    seg = np.asarray(seg)
    obj = seg > 0
    if not obj.any():
        return seg.copy()
    lab, sizes = pieces(obj)
    kept = np.zeros(len(sizes) + 1, bool)
    classes = np.unique(seg[obj])
    if len(classes) == 1:
        kept[int(np.argmax(sizes)) + 1] = True
    else:
        for c in classes:
            own, own_sizes = pieces(seg == c)
            kept[lab[own == int(np.argmax(own_sizes)) + 1][0]] = True  # the whole's piece around the class's largest
    if keep is not None:
        kept[np.unique(lab[np.asarray(keep, bool) & obj])] = True
    kept[0] = False
    return np.where(kept[lab], seg, np.zeros((), seg.dtype))


def largest_share(label: np.ndarray) -> float | None:
    """The share of a label's object voxels (classes > 0 together) in its largest connected piece; None where the
    label is empty."""
    obj = np.asarray(label) > 0
    if not obj.any():
        return None
    _, sizes = pieces(obj)
    return float(sizes.max() / sizes.sum())


def resolve_objects(mode: str, labels: Iterable[np.ndarray | None]) -> tuple[str, list[float]]:
    """``mode`` as a decision: ``all`` or ``largest`` as asked; ``auto`` = ``largest`` where every non-empty source
    label (3D, on its own grid) holds at least :data:`ONE_OBJECT_SHARE` of its object in its largest piece, else
    ``all`` (and ``all`` where no label holds any object). Returns (decision, each label's share)."""
    if mode != "auto":
        return mode, []
    shares = [s for s in (largest_share(v) for v in labels if v is not None) if s is not None]
    one = bool(shares) and min(shares) >= ONE_OBJECT_SHARE
    return ("largest" if one else "all"), [round(s, 4) for s in shares]
