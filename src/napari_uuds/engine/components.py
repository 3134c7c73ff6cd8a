"""One object per volume: keep the largest connected piece of a predicted mask (rounds 23 and 24 of docs/method.md;
not in the paper).

A segmenter reads a volume slice by slice, so nothing in it knows that a tumour or a spinal cord is one object: a
prediction can fall into dozens of separate pieces. :func:`keep_largest_object` keeps the largest 26-connected piece
of the predicted object (every class > 0 together, so a multi-class tumour keeps its parts inside one whole) and makes
everything else background: the post-processing nnU-Net decides on its validation labels (Isensee et al., Nature
Methods 2021). ``ModelConfig.objects`` chooses (:func:`keep_objects`): ``all`` keeps every piece, ``largest`` the
largest always (round 23: it failed its gate, the seeds of BraTS FLAIR -> T1c keep different pieces), ``auto`` the
largest only where the prediction is already mostly one piece, at least :data:`ONE_OBJECT_SHARE` of its voxels
(round 24, decided per volume on the prediction itself). No label of the target is read.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

#: ``objects = "auto"`` keeps the largest piece of a volume's prediction where it holds at least this share of the
#: predicted object's voxels, and every piece otherwise (fixed by round 24's rule before any of its runs)
ONE_OBJECT_SHARE = 0.8


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
    return objects_kept(seg, "largest", keep)[0]


def _main_object(seg: np.ndarray, obj: np.ndarray, lab: np.ndarray, sizes: np.ndarray,
                 keep: np.ndarray | None) -> np.ndarray:
    """:func:`keep_largest_object` on a non-empty mask whose object ``obj`` is already in pieces (``lab``, ``sizes``)."""
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


def objects_kept(seg: np.ndarray, mode: str, keep: np.ndarray | None = None) -> tuple[np.ndarray, float | None]:
    """(``seg`` with what ``mode`` keeps of its object, the share of the object's voxels in its largest piece), the
    volume labelled once. ``mode`` (``ModelConfig.objects``): ``all``, every piece (``seg`` itself; the share is not
    computed, None); ``largest``, :func:`keep_largest_object`; ``auto``, the same where the largest piece holds at
    least :data:`ONE_OBJECT_SHARE` of the object's voxels, else every piece. ``keep``: painted voxels, as in
    :func:`keep_largest_object` (the share is the prediction's own, painted voxels counted as they lie in ``seg``).
    An empty mask: share None; ``largest`` returns a copy, ``auto`` ``seg`` itself."""
    if mode == "all":
        return seg, None
    if mode not in ("largest", "auto"):
        raise ValueError(f"objects must be all, largest or auto, not {mode!r}")
    seg = np.asarray(seg)
    obj = seg > 0
    if not obj.any():
        return (seg.copy() if mode == "largest" else seg), None
    box = _bounding_box(obj)  # everything outside is background: the pieces are found in the box alone
    lab, sizes = pieces(obj[box])
    share = float(sizes.max() / sizes.sum())
    if mode == "auto" and share < ONE_OBJECT_SHARE:
        return seg, share
    out = np.zeros_like(seg)
    out[box] = _main_object(seg[box], obj[box], lab, sizes, None if keep is None else np.asarray(keep, bool)[box])
    return out, share


def _bounding_box(obj: np.ndarray) -> tuple[slice, ...]:
    """The smallest box (one slice per axis) holding every True voxel of a non-empty ``obj``: a predicted tumour fills
    a few percent of its scan, and labelling the box instead of the scan keeps the widget's one-slice re-prediction
    quick on a large volume."""
    box = []
    for ax in range(obj.ndim):
        hit = np.flatnonzero(obj.any(axis=tuple(a for a in range(obj.ndim) if a != ax)))
        box.append(slice(int(hit[0]), int(hit[-1]) + 1))
    return tuple(box)


def keep_objects(seg: np.ndarray, mode: str, keep: np.ndarray | None = None) -> np.ndarray:
    """``seg`` with what ``mode`` keeps of its object: :func:`objects_kept` without the share."""
    return objects_kept(seg, mode, keep)[0]


def objects_reported(seg: np.ndarray, mode: str, keep: np.ndarray | None = None) -> tuple[np.ndarray, dict | None]:
    """:func:`objects_kept` with what it did to the volume, for the record (metrics.json, summary.json) and
    :func:`describe_objects`: (kept mask, {"objects": mode, "largest_share", "voxels" (predicted before),
    "voxels_removed"}); the report is None for ``all``."""
    if mode == "all":
        return seg, None
    before = int(np.count_nonzero(seg))
    out, share = objects_kept(seg, mode, keep)
    return out, {"objects": mode, "largest_share": None if share is None else round(share, 4), "voxels": before,
                 "voxels_removed": before - int(np.count_nonzero(out))}


def describe_objects(report: dict | None, painted: bool = False) -> str:
    """One line on what ``objects`` did to a volume (:func:`objects_reported`'s report), as the command line and the widget
    say it; ``painted``: the user's painted pieces were kept whatever was decided."""
    if report is None:
        return "every piece kept"
    share, removed, before = report["largest_share"], report["voxels_removed"], report["voxels"]
    if share is None:
        return "nothing predicted: no piece to keep or remove"
    if share == 1.0 and removed == 0:  # (a share rounded to 1.0 may still have lost a satellite voxel or two)
        return "the prediction is one piece: nothing removed"
    if report["objects"] == "auto" and share < ONE_OBJECT_SHARE:
        return f"every piece kept: the largest holds {share:.0%} of the prediction (under {ONE_OBJECT_SHARE:.0%})"
    return (f"largest object kept ({share:.0%} of the prediction): {removed} of {before} voxels in other"
            f"{', unpainted' if painted else ''} pieces became background")
