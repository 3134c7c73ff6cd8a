"""Rounds 23-24's one object per volume (engine/components.py): the largest connected piece of a predicted object."""

import numpy as np
import pytest

from napari_uuds.engine import checkpoint as ckpt
from napari_uuds.engine.components import (ONE_OBJECT_SHARE, describe_objects, keep_largest_object, keep_objects,
                                           largest_share, objects_kept, objects_reported)
from napari_uuds.engine.config import ModelConfig
from napari_uuds.engine.errors import UUDSError
from napari_uuds.engine.infer import finish_seg, predict_volume
from napari_uuds.engine.volumes import load_volume


def _two_pieces():
    """A 6x6x6 block of class 1 with a class-2 core, a 2x2x2 block elsewhere, and one voxel touching the big
    block at a corner only (26-connected to it)."""
    seg = np.zeros((16, 16, 16), np.uint8)
    seg[1:7, 1:7, 1:7] = 1
    seg[3:5, 3:5, 3:5] = 2
    seg[10:12, 10:12, 10:12] = 1
    seg[7, 7, 7] = 1
    return seg


def test_the_largest_piece_is_kept_with_its_classes_and_the_rest_is_background():
    seg = _two_pieces()
    out = keep_largest_object(seg)
    assert out.dtype == seg.dtype and out.shape == seg.shape
    assert not out[10:12, 10:12, 10:12].any()  # the small piece is gone
    assert out[7, 7, 7] == 1  # touching at a corner is one piece (26-connectivity)
    np.testing.assert_array_equal(out[:8, :8, :8], seg[:8, :8, :8])  # the kept piece keeps every class
    assert (out == 2).sum() == 8


def test_separate_classes_keep_a_piece_each_and_painted_pieces_are_never_dropped():
    seg = np.zeros((20, 20, 20), np.uint8)
    seg[1:9, 1:9, 1:9] = 1  # a liver, say
    seg[12:15, 12:15, 12:15] = 2  # a kidney, elsewhere: its own class keeps its own piece
    seg[17:19, 1:3, 1:3] = 1  # a speck of class 1
    seg[1:3, 17:19, 17:19] = 2  # a speck of class 2
    out = keep_largest_object(seg)
    assert (out == 1).sum() == 512 and (out == 2).sum() == 27
    painted = np.zeros(seg.shape, bool)
    painted[18, 2, 2] = True  # the user marked the class-1 speck as object
    out = keep_largest_object(seg, keep=painted)
    assert (out == 1).sum() == 512 + 8 and (out == 2).sum() == 27
    binary = (seg > 0).astype(np.uint8)  # one class: the largest piece only, whatever the other pieces are
    assert (keep_largest_object(binary) > 0).sum() == 512


def test_an_empty_mask_and_a_single_piece_come_back_unchanged():
    empty = np.zeros((4, 4, 4), np.uint8)
    np.testing.assert_array_equal(keep_largest_object(empty), empty)
    one = _two_pieces()
    one[10:12, 10:12, 10:12] = 0
    np.testing.assert_array_equal(keep_largest_object(one), one)


def test_auto_keeps_the_largest_piece_only_where_it_holds_most_of_the_prediction():
    seg = _two_pieces()
    share = largest_share(seg)
    assert share == pytest.approx((216 + 1) / (216 + 1 + 8)) and share >= ONE_OBJECT_SHARE == 0.8
    assert largest_share(np.zeros((3, 3, 3))) is None
    assert keep_objects(seg, "all") is seg
    np.testing.assert_array_equal(keep_objects(seg, "auto"), keep_largest_object(seg))  # 96 % in one piece
    np.testing.assert_array_equal(keep_objects(seg, "largest"), keep_largest_object(seg))
    # a second piece of half the first's voxels: 67 % in the largest, below the share, every piece is kept
    split = np.zeros((30, 30, 30), np.uint8)
    split[:10, :10, :10] = 1
    split[20:, 20:, 20:25] = 1  # 500 voxels beside 1000
    assert largest_share(split) < ONE_OBJECT_SHARE
    np.testing.assert_array_equal(keep_objects(split, "auto"), split)
    assert (keep_objects(split, "largest") > 0).sum() == 1000
    painted = np.zeros(split.shape, bool)
    painted[25, 25, 22] = True  # a painted voxel in the smaller piece keeps it whatever is decided
    np.testing.assert_array_equal(keep_objects(split, "largest", painted), split)
    two_painted = np.zeros(seg.shape, bool)
    two_painted[10, 10, 10] = True  # auto removes pieces (96 %) but not a painted one
    np.testing.assert_array_equal(keep_objects(seg, "auto", two_painted), seg)
    empty = np.zeros((4, 4, 4), np.uint8)
    np.testing.assert_array_equal(keep_objects(empty, "auto"), empty)


def test_objects_kept_gives_the_share_it_decided_on():
    seg, split = _two_pieces(), np.zeros((30, 30, 30), np.uint8)
    split[:10, :10, :10] = 1
    split[20:, 20:, 20:25] = 1
    for mask in (seg, split):
        for mode in ("largest", "auto"):
            out, share = objects_kept(mask, mode)
            assert share == pytest.approx(largest_share(mask))  # the share of the prediction, before anything goes
            pruned = mode == "largest" or share >= ONE_OBJECT_SHARE
            assert (out > 0).sum() == ((keep_largest_object(mask) > 0).sum() if pruned else (mask > 0).sum())
    out, share = objects_kept(seg, "all")
    assert out is seg and share is None  # every piece: nothing labelled
    assert objects_kept(np.zeros((3, 3, 3)), "largest")[1] is None
    one = np.zeros((5, 5, 5), np.uint8)
    one[1:3, 1:3, 1:3] = 1
    assert describe_objects(objects_reported(one, "auto")[1]) == \
        "the prediction is one piece: nothing removed"
    assert describe_objects(objects_reported(one * 0, "auto")[1]).startswith("nothing predicted")
    assert describe_objects(objects_reported(one, "all")[1]) == "every piece kept"
    big = np.zeros((40, 40, 40), np.uint8)
    big[:35, :35, :35] = 1
    big[39, 39, 39] = 1  # one voxel apart: the share rounds to 1.0, and the voxel still goes
    said = describe_objects(objects_reported(big, "auto")[1])
    assert said == f"largest object kept (100% of the prediction): 1 of {int(big.sum())} voxels in other pieces became background"
    with pytest.raises(ValueError, match="all, largest or auto"):
        objects_kept(seg, "biggest")


def test_objects_is_an_option_of_the_model_applied_after_prediction(tiny_model, tmp_path, cord, predict_with, saved_without):
    with pytest.raises(UUDSError, match="unknown objects setting"):
        ModelConfig(objects="biggest")
    vol = load_volume(cord["t1"])
    assert tiny_model.cfg.objects == "auto"  # round 24's default
    plain = predict_with(tiny_model, vol, objects="all")
    kept = predict_with(tiny_model, vol, objects="largest")
    np.testing.assert_array_equal(kept.entropy, plain.entropy)  # the network's uncertainty is not touched
    np.testing.assert_array_equal(kept.seg, keep_largest_object(plain.seg))
    assert 0 < (kept.seg > 0).sum() < (plain.seg > 0).sum()  # the untrained model's mask is in pieces: some went
    assert not ((kept.seg > 0) & (plain.seg == 0)).any()  # only removes
    # after the boundary refinement, on what it left (infer.finish_seg's order)
    both = predict_with(tiny_model, vol, objects="largest", refine="edges")
    refined = predict_with(tiny_model, vol, objects="all", refine="edges")
    assert (tiny_model.cfg.objects, tiny_model.cfg.refine) == ("auto", "none")
    np.testing.assert_array_equal(both.seg, keep_largest_object(refined.seg))
    auto = predict_volume(tiny_model, vol)  # the default: decided on the volume's own prediction
    np.testing.assert_array_equal(auto.seg, keep_objects(plain.seg, "auto"))
    assert plain.objects is None  # every piece: nothing to report
    assert auto.objects == {"objects": "auto", "largest_share": round(largest_share(plain.seg), 4),
                            "voxels": int((plain.seg > 0).sum()),
                            "voxels_removed": int((plain.seg > 0).sum() - (auto.seg > 0).sum())}
    # finish_seg, where every volume prediction ends, takes either branch of auto as the share says
    norm = None  # unused without a refinement
    for mask, pruned in ((_two_pieces(), True), (np.pad(_two_pieces(), ((0, 0), (0, 0), (0, 8)), mode="wrap"), False)):
        share = largest_share(mask)
        assert (share >= ONE_OBJECT_SHARE) == pruned
        out, report = finish_seg(ModelConfig(objects="auto"), mask, mask, norm, (1.0, 1.0, 1.0))
        np.testing.assert_array_equal(out, keep_largest_object(mask) if pruned else mask)
        assert (out != mask).any() == pruned
        assert (report["voxels_removed"] > 0) == pruned and report["largest_share"] == round(share, 4)
        said = describe_objects(report)
        assert said.startswith("largest object kept (96% of the prediction): 8 of 225 voxels") if pruned else \
            said == "every piece kept: the largest holds 49% of the prediction (under 80%)"
    saved_without(tiny_model, tmp_path / "old", "objects")  # written before the option existed
    assert ckpt.read_config(tmp_path / "old")["model"]["objects"] == "all"


def test_pieces_found_in_the_objects_box_give_what_the_whole_volume_gives():
    """objects_kept labels only the box around the object: padding the volume with background (the box then lies
    elsewhere in a larger scan) changes nothing, painted pieces and the classes' own pieces included."""
    rng = np.random.default_rng(3)
    seg = np.zeros((20, 24, 18), np.uint8)
    for _ in range(9):  # blobs of three classes, some touching, some apart
        z, y, x = rng.integers(2, 16, 3)
        seg[z:z + rng.integers(1, 5), y:y + rng.integers(1, 6), x:x + rng.integers(1, 4)] = rng.integers(1, 4)
    keep = np.zeros(seg.shape, bool)
    keep[tuple(np.argwhere(seg > 0)[-1])] = True  # a painted voxel, in the last piece in C order
    pad = ((3, 5), (0, 7), (6, 1))
    for mode in ("largest", "auto"):
        out, share = objects_kept(seg, mode, keep)
        big, big_share = objects_kept(np.pad(seg, pad), mode, np.pad(keep, pad))
        assert share == big_share
        np.testing.assert_array_equal(big[3:-5, :-7, 6:-1], out)
        outside = np.ones(big.shape, bool)
        outside[3:-5, :-7, 6:-1] = False
        assert not big[outside].any()
    assert (objects_kept(seg, "largest")[0] > 0).sum() < (seg > 0).sum()  # pieces went: the test reached the pruning
