"""Dice, ASSD and HD95 with voxel spacing, on MONAI's surface-distance code (``monai.metrics``, Apache-2.0).

The surfaces (a mask minus its erosion) and the distances between them, in mm, are MONAI's
(``get_mask_edges``, ``get_surface_distance``). ASSD is the mean and HD95 the 95th percentile of both directions'
distances together (prediction to reference and back): the definitions of MedPy's ``assd`` and ``hd95``, which this
module used before, so earlier benchmark figures stay comparable (the ASSD equals MONAI's symmetric
``compute_average_surface_distance``; MONAI's own HD95 would take the larger of two directed percentiles).
An empty prediction or reference has no surface: its ASSD/HD95 are reported as ``None`` with
``empty_prediction``/``empty_reference`` set, never as a small distance.
"""
from __future__ import annotations

from typing import Any

import numpy as np


def _directed_distances(p: np.ndarray, r: np.ndarray, spacing) -> tuple[np.ndarray, np.ndarray]:
    """Distances (mm) from every surface voxel of ``p`` to ``r``'s surface, and back."""
    from monai.metrics.utils import get_mask_edges, get_surface_distance

    ep, er = get_mask_edges(p, r, crop=True)
    sp = None if spacing is None else [float(v) for v in spacing]
    return (np.asarray(get_surface_distance(ep, er, spacing=sp), np.float64),
            np.asarray(get_surface_distance(er, ep, spacing=sp), np.float64))


def score(pred: np.ndarray, ref: np.ndarray, spacing: tuple[float, ...] | None = None) -> dict[str, Any]:
    """Binary metrics of ``pred > 0`` against ``ref > 0``: Dice (%), ASSD (mm), HD95 (mm)."""
    p = np.asarray(pred) > 0
    r = np.asarray(ref) > 0
    if p.shape != r.shape:
        raise ValueError(f"prediction shape {p.shape} differs from reference shape {r.shape}")
    both = int(p.sum()) + int(r.sum())
    out: dict[str, Any] = {"dice": 200.0 * float(np.logical_and(p, r).sum()) / both if both else 100.0,
                           "assd_mm": None, "hd95_mm": None,
                           "empty_prediction": not p.any(), "empty_reference": not r.any(),
                           "pred_voxels": int(p.sum()), "ref_voxels": int(r.sum())}
    if p.any() and r.any():
        d_pr, d_rp = _directed_distances(p, r, spacing)
        out["assd_mm"] = float(np.hstack([d_pr, d_rp]).mean())
        out["hd95_mm"] = float(np.percentile(np.hstack([d_pr, d_rp]), 95))
    return out


def score_classes(pred: np.ndarray, ref: np.ndarray, spacing: tuple[float, ...] | None,
                  class_names: list[str]) -> dict[str, Any]:
    """One class: :func:`score` of ``pred > 0``. Several: :func:`score` per class value (1..K) under
    ``classes``, and at the top level the mean Dice, ASSD and HD95 over classes (ASSD and HD95 over the classes
    where both masks are non-empty, with the count of the others) and the whole-foreground scores."""
    if len(class_names) == 1:
        return score(pred, ref, spacing)
    per = {name: score(np.asarray(pred) == k, np.asarray(ref) == k, spacing)
           for k, name in enumerate(class_names, start=1)}
    whole = score(pred, ref, spacing)
    assd = [r["assd_mm"] for r in per.values() if r["assd_mm"] is not None]
    hd95 = [r["hd95_mm"] for r in per.values() if r["hd95_mm"] is not None]
    return {"dice": float(np.mean([r["dice"] for r in per.values()])),
            "assd_mm": float(np.mean(assd)) if assd else None,
            "hd95_mm": float(np.mean(hd95)) if hd95 else None, "assd_missing_classes": len(per) - len(assd),
            "empty_prediction": whole["empty_prediction"], "empty_reference": whole["empty_reference"],
            "whole_foreground": whole, "classes": per}


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and sd of each metric over volumes (None values skipped and counted)."""
    out: dict[str, Any] = {"n": len(rows)}
    for key in ("dice", "assd_mm", "hd95_mm"):
        vals = [r[key] for r in rows if r.get(key) is not None]
        out[f"{key}_mean"] = float(np.mean(vals)) if vals else None
        out[f"{key}_sd"] = float(np.std(vals)) if vals else None
        out[f"{key}_missing"] = len(rows) - len(vals)
    return out
