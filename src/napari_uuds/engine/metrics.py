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


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and sd of each metric over volumes (None values skipped and counted)."""
    out: dict[str, Any] = {"n": len(rows)}
    for key in ("dice", "assd_mm", "hd95_mm"):
        vals = [r[key] for r in rows if r.get(key) is not None]
        out[f"{key}_mean"] = float(np.mean(vals)) if vals else None
        out[f"{key}_sd"] = float(np.std(vals)) if vals else None
        out[f"{key}_missing"] = len(rows) - len(vals)
    return out
