"""Review and corrections: which target slices a user should look at first, and which ones a user corrected.

A slice's *review score* is the entropy (Eq. 5, normalised to [0, 1]) summed over where it matters: the
predicted object grown by ``margin`` pixels in the slice's plane (its boundary, where a mask is most often
wrong), together with the uncertain region (entropy >= chi, Eq. 7's complement: an object the model half
sees but did not predict). Slices that score 0 (certain background everywhere) are left out. Summing, not
averaging, counts the voxels a correction can change. The entropy is the network's own, before round 25's cross-slice
smoothing (``review_entropy``, corrections round 5): a slice's score is its own uncertainty, not a share of its
neighbours'.

The review's order (``ORDERS``; docs/method.md, "Review order" and corrections round 4): ``peak`` (the default since
2026-12-02) is the coverage order with each pick moved to the highest-scoring slice within sigma of it. ``coverage``
(the default until then) is a greedy facility location: a correction teaches its slice's neighbourhood (a Gaussian of
sigma = L / 8 slices, L the scored extent), and each next slice is the one that covers the most uncertainty not yet covered; with flat scores it tiles the
extent from the middle out, with a peak it goes to the peak. ``spread``: by score, neighbours within r of a slice
taken waiting for a later pass (the order until 2026-12-01); ``score``: by score alone.

Corrections are whole slices: a slice the user edited is taken as labelled, all of it (the voxels the user
left alone were looked at and kept), and every other slice stays unlabelled.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

#: pixels the predicted object is grown by, in the slice's plane, before its entropy is summed
MARGIN = 3
#: the spread order's radius: r = round(scored slices / SPREAD_DIVISOR) (docs/method.md, "Review order")
SPREAD_DIVISOR = 16
#: the coverage order's reach of one correction: sigma = scored slices / COVERAGE_DIVISOR (docs/method.md,
#: "Review order, round 2")
COVERAGE_DIVISOR = 8
#: the coverage kernel's floor: K under it counts as 0 (beyond about 5.3 sigma)
KERNEL_FLOOR = 1e-6
#: the review's orders, the default first
ORDERS = ("peak", "coverage", "spread", "score")
#: which entropy the review reads (``REVIEW_ENTROPIES[0]`` the default; corrections round 5 of docs/method.md):
#: ``own`` (the default since 2026-12-02, round 5) = the network's own, before the cross-slice smoothing
#: (``VolumePrediction.own_entropy``); ``shown`` = the prediction's entropy, the layer's (smoothed across slices where
#: ``smooth_z`` is on, round 25), which the review read from round 25 to round 5
REVIEW_ENTROPIES = ("own", "shown")


def review_entropy(pred, which: str = REVIEW_ENTROPIES[0]) -> np.ndarray:
    """The entropy the review ranks ``pred``'s slices by (see ``REVIEW_ENTROPIES``). ``own`` falls back to the entropy
    shown where the prediction kept no own entropy: nothing was smoothed, or it was made without ``keep_own``."""
    if which not in REVIEW_ENTROPIES:
        raise ValueError(f"review entropy {which!r}: expected one of {REVIEW_ENTROPIES}")
    if which == "own" and pred.own_entropy is not None:
        return pred.own_entropy
    return pred.entropy


@dataclass(frozen=True)
class SliceScore:
    index: int  # along the model's slicing axis
    score: float  # entropy summed over the object's surroundings and the uncertain region
    uncertain_voxels: int  # voxels of the slice with entropy >= chi


def _moved(a: np.ndarray, axis: int) -> np.ndarray:
    return np.moveaxis(a, axis, 0)


def slice_scores(entropy: np.ndarray, seg: np.ndarray, axis: int, chi: float = 0.5,
                 margin: int = MARGIN) -> tuple[np.ndarray, np.ndarray]:
    """Per-slice review score and uncertain-voxel count along ``axis`` (see the module's docstring)."""
    if entropy.shape != seg.shape or entropy.ndim != 3:
        raise ValueError(f"entropy {entropy.shape} and segmentation {seg.shape} must be the same 3D grid")
    ent, obj = _moved(entropy, axis), _moved(seg, axis) > 0
    uncertain = ent >= chi
    if margin > 0 and obj.any():
        plane = np.zeros((1, 2 * margin + 1, 2 * margin + 1), bool)  # grow within each slice, never across
        yy, xx = np.mgrid[-margin:margin + 1, -margin:margin + 1]
        plane[0] = yy ** 2 + xx ** 2 <= margin ** 2
        obj = ndimage.binary_dilation(obj, structure=plane)
    region = obj | uncertain
    scores = (ent * region).reshape(ent.shape[0], -1).sum(1, dtype=np.float64)
    return scores, uncertain.reshape(ent.shape[0], -1).sum(1)


def spread_radius(n_scored: int) -> int:
    """r of the review order: slices closer than this to one already taken wait for the next pass."""
    return max(1, round(n_scored / SPREAD_DIVISOR))


def spread_order(indices: list[int], radius: int, near: set[int] | frozenset[int] = frozenset()) -> list[int]:
    """``indices`` (best first) reordered so that each pass takes the best slice more than ``radius`` slices away
    from every slice this pass took (the first pass also from the slices in ``near``: those already corrected);
    the slices passed over follow, in passes of their own."""
    out, rest, first = [], [i for i in indices if i not in near], True
    while rest:
        taken, left = (list(near) if first else []), []
        for i in rest:
            (taken if all(abs(i - j) > radius for j in taken) else left).append(i)
        out += [i for i in taken if i not in near]
        rest, first = left, False
    return out


def coverage_order(indices: list[int], scores: np.ndarray, near: set[int] | frozenset[int] = frozenset(),
                   sigma: float | None = None, to_peak: bool = False) -> list[int]:
    """``indices`` (the scored slices) in the order of a greedy facility location: each next slice is the one that adds
    most to V = sum_j scores[j] * max_{i taken} K(i - j), K(d) = exp(-d^2 / 2 sigma^2), sigma = max(1, len(indices) /
    COVERAGE_DIVISOR) by default, j over ``indices``; the slices in ``near`` (already corrected) count as taken.
    Ties: the higher score, then the lower index. ``to_peak``: each pick moves to the highest-scoring slice not yet
    taken within sigma of it (ties: the nearer to the pick, then the lower index), and that slice is the one taken."""
    if not indices:
        return []
    idx = np.asarray(indices)
    s = np.asarray(scores, np.float64)[idx]
    sigma = max(1.0, len(idx) / COVERAGE_DIVISOR) if sigma is None else float(sigma)

    def kernel(d: np.ndarray) -> np.ndarray:  # beyond about 5 sigma a correction covers nothing
        kd = np.exp(-(d ** 2) / (2 * sigma ** 2))
        return np.where(kd < KERNEL_FLOOR, 0.0, kd)

    k = kernel(idx[:, None] - idx[None, :])  # k[i, j]: how much taking i covers j
    covered = np.zeros(len(idx))
    for n in near:
        covered = np.maximum(covered, kernel(n - idx))
    free = np.array([int(i) not in near for i in idx])
    gains = np.maximum(k - covered[None, :], 0.0) @ s  # what taking each slice adds to V; kept up to date below
    out = []
    for _ in range(int(free.sum())):
        cand = np.flatnonzero(free)
        g = np.round(gains[cand], 9)
        cand = cand[g == g.max()]  # most gain, then the higher score, then the lower index
        i = int(cand[np.lexsort((idx[cand], -s[cand]))[0]])
        if to_peak:
            near_i = np.flatnonzero(free & (np.abs(idx - idx[i]) <= sigma))
            i = int(near_i[np.lexsort((idx[near_i], np.abs(idx[near_i] - idx[i]), -s[near_i]))[0]])
        free[i] = False
        new = np.maximum(covered, k[i])
        j = np.flatnonzero(new > covered)  # only the slices whose cover rose change anyone's gain
        if len(j):
            gains -= (np.maximum(k[:, j] - covered[j], 0.0) - np.maximum(k[:, j] - new[j], 0.0)) @ s[j]
        covered = new
        out.append(int(idx[i]))
    return out


def rank_slices(entropy: np.ndarray, seg: np.ndarray, axis: int, chi: float = 0.5, margin: int = MARGIN,
                exclude: set[int] | frozenset[int] = frozenset(), order: str = ORDERS[0]) -> list[SliceScore]:
    """Slices worth reviewing (score above 0), ``exclude`` (already corrected) left out, in the review's ``order``
    (one of ``ORDERS``, see the module's docstring): ``peak`` (the default: :func:`coverage_order` with ``to_peak``),
    ``coverage`` (:func:`coverage_order`), ``spread``
    (:func:`spread_order`, r = :func:`spread_radius` of the number of scored slices), ``score`` (highest first, ties:
    lower index first). The extent (L) counts every scored slice, the corrected ones included."""
    if order not in ORDERS:
        raise ValueError(f"review order must be one of {ORDERS}, not {order!r}")
    scores, counts = slice_scores(entropy, seg, axis, chi, margin)
    ranked = [i for i in sorted(range(len(scores)), key=lambda i: (-scores[i], i)) if scores[i] > 0]
    if order == "spread":
        ranked = spread_order(ranked, spread_radius(len(ranked)), set(exclude))
    elif order in ("coverage", "peak"):  # sigma from the extent, the corrected slices in it (entropy 0 once corrected)
        extent = len(set(ranked) | set(exclude))
        ranked = coverage_order(sorted(ranked), scores, set(exclude), max(1.0, extent / COVERAGE_DIVISOR),
                                to_peak=order == "peak")
    return [SliceScore(i, float(scores[i]), int(counts[i])) for i in ranked if i not in exclude]


def edited_slices(current: np.ndarray, shown: np.ndarray, axis: int) -> list[int]:
    """Slices along ``axis`` where the layer the user paints on differs from what the model showed."""
    if current.shape != shown.shape:
        raise ValueError(f"the edited layer {current.shape} and the prediction {shown.shape} differ in shape")
    diff = _moved(np.asarray(current) != np.asarray(shown), axis)
    return [int(i) for i in np.flatnonzero(diff.reshape(diff.shape[0], -1).any(1))]


def labelled_slices(mask: np.ndarray, axis: int) -> list[int]:
    """Slices along ``axis`` that hold any labelled voxel (what a corrections file counts as corrected)."""
    m = _moved(np.asarray(mask) > 0, axis)
    return [int(i) for i in np.flatnonzero(m.reshape(m.shape[0], -1).any(1))]


def keep_corrections(seg: np.ndarray, corrections: np.ndarray, slices, axis: int) -> np.ndarray:
    """``seg`` with the corrected ``slices`` replaced by the user's labels: a prediction never paints over them."""
    if seg.shape != corrections.shape:
        raise ValueError(f"corrections {corrections.shape} and segmentation {seg.shape} differ in shape")
    out = np.array(seg, copy=True)
    o, c = _moved(out, axis), _moved(np.asarray(corrections), axis)
    idx = list(slices)
    if idx:
        o[idx] = c[idx].astype(o.dtype)
    return out


def apply_corrections(pred, corrections: np.ndarray, slices, axis: int):
    """A :class:`~.infer.VolumePrediction` with the corrected ``slices`` set to the user's labels and their entropy
    to 0 (the user is certain there), in place; returns it."""
    idx = list(slices)
    pred.seg = keep_corrections(pred.seg, corrections, idx, axis)
    if idx:
        _moved(pred.entropy, axis)[idx] = 0.0
        if pred.own_entropy is not None:
            _moved(pred.own_entropy, axis)[idx] = 0.0
    return pred
