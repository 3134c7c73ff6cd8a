"""Metrics by hand: Dice, ASSD and HD95 in mm with anisotropic spacing; empty masks; multi-class HD95."""
import numpy as np

from napari_uuds.engine.metrics import score, score_classes


def test_shifted_slab_distances_by_hand():
    """Two 1-voxel-thick planes 3 voxels apart along an axis of 2 mm spacing: every surface voxel lies 6 mm from
    the other surface, so ASSD = HD95 = 6 mm; Dice 0."""
    p = np.zeros((10, 10, 10), bool)
    r = np.zeros_like(p)
    p[2:8, 2:8, 3] = True
    r[2:8, 2:8, 6] = True
    s = score(p, r, (1.0, 1.0, 2.0))
    assert s["dice"] == 0.0 and s["assd_mm"] == 6.0 and s["hd95_mm"] == 6.0
    same = score(p, p, (1.0, 1.0, 2.0))
    assert same["dice"] == 100.0 and same["assd_mm"] == 0.0 and same["hd95_mm"] == 0.0


def test_dice_by_hand_and_empty_masks():
    p = np.zeros((6, 6, 6), np.uint8)
    r = np.zeros_like(p)
    p[0:2, 0:2, 0:2] = 1  # 8 voxels
    r[1:3, 0:2, 0:2] = 1  # 8 voxels, 4 shared
    assert score(p, r)["dice"] == 50.0
    e = score(np.zeros_like(p), r)
    assert e["dice"] == 0.0 and e["empty_prediction"] and e["assd_mm"] is None and e["hd95_mm"] is None
    assert score(np.zeros_like(p), np.zeros_like(r))["dice"] == 100.0


def test_multi_class_reports_hd95():
    p = np.zeros((12, 12, 12), np.uint8)
    p[2:6, 2:6, 2:6] = 1
    p[7:10, 7:10, 7:10] = 2
    r = p.copy()
    r[7:10, 7:10, 8:11] = 0
    r[7:10, 7:10, 8:11] = 2  # class 2 moved by one voxel along the last axis
    r[7:10, 7:10, 7] = 0
    out = score_classes(p, r, (1.0, 1.0, 1.0), ["a", "b"])
    assert out["classes"]["a"]["hd95_mm"] == 0.0 and out["classes"]["b"]["hd95_mm"] == 1.0
    assert out["hd95_mm"] == 0.5 and out["assd_missing_classes"] == 0
