"""Dice, ASSD and HD95 with voxel spacing, backed by MedPy (``medpy.metric.binary``).

An empty prediction or reference has no surface: its ASSD/HD95 are reported as ``None`` with
``empty_prediction``/``empty_reference`` set, never as a small distance.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from medpy.metric import binary


def score(pred: np.ndarray, ref: np.ndarray, spacing: tuple[float, ...] | None = None) -> dict[str, Any]:
    """Binary metrics of ``pred > 0`` against ``ref > 0``: Dice (%), ASSD (mm), HD95 (mm)."""
    p = np.asarray(pred) > 0
    r = np.asarray(ref) > 0
    if p.shape != r.shape:
        raise ValueError(f"prediction shape {p.shape} differs from reference shape {r.shape}")
    out: dict[str, Any] = {"dice": 100.0 * float(binary.dc(p, r)) if (p.any() or r.any()) else 100.0,
                           "assd_mm": None, "hd95_mm": None,
                           "empty_prediction": not p.any(), "empty_reference": not r.any(),
                           "pred_voxels": int(p.sum()), "ref_voxels": int(r.sum())}
    if p.any() and r.any():
        out["assd_mm"] = float(binary.assd(p, r, voxelspacing=spacing))
        out["hd95_mm"] = float(binary.hd95(p, r, voxelspacing=spacing))
    return out


def score_classes(pred: np.ndarray, ref: np.ndarray, spacing: tuple[float, ...] | None,
                  class_names: list[str]) -> dict[str, Any]:
    """One class: :func:`score` of ``pred > 0``. Several: :func:`score` per class value (1..K) under
    ``classes``, and at the top level the mean Dice and ASSD over classes (ASSD over the classes where
    both masks are non-empty, with the count of the others) and the whole-foreground scores."""
    if len(class_names) == 1:
        return score(pred, ref, spacing)
    per = {name: score(np.asarray(pred) == k, np.asarray(ref) == k, spacing)
           for k, name in enumerate(class_names, start=1)}
    whole = score(pred, ref, spacing)
    assd = [r["assd_mm"] for r in per.values() if r["assd_mm"] is not None]
    return {"dice": float(np.mean([r["dice"] for r in per.values()])),
            "assd_mm": float(np.mean(assd)) if assd else None,
            "hd95_mm": None, "assd_missing_classes": len(per) - len(assd),
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
