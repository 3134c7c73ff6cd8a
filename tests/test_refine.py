"""Round 18's boundary refinement (engine/refine.py): the image's own edges move a mask's boundary within a band."""

import numpy as np
import pytest
import torch
from scipy import ndimage

from napari_uuds.engine import checkpoint as ckpt
from napari_uuds.engine.config import ModelConfig, recipe_overrides
from napari_uuds.engine.errors import UUDSError
from napari_uuds.engine.refine import (BAND_VOXELS, PSEUDO_BAND_PX, edge_agreement, refine_pseudo_label,
                                      resolve_pseudo_refine, snap_slices_to_edges, snap_to_edges,
                                      source_slices_for_agreement)
from napari_uuds.engine.volumes import load_volume


def _cylinder(noise=0.1, seed=0):
    """A bright rod (radius 10 voxels) in a dark ring (to 13) on a grey background, with noise."""
    z, y, x = np.mgrid[:12, :48, :48]
    r = np.hypot(y - 24, x - 24)
    img = np.where(r < 10, 1.0, 0.0) + np.where((r >= 10) & (r < 13), -0.5, 0.0)
    return img + np.random.default_rng(seed).normal(0, noise, r.shape), r


def _dice(a, b):
    return 2 * (a & b).sum() / (a.sum() + b.sum())


@pytest.mark.parametrize("radius", [8.5, 11.5])
def test_a_boundary_within_the_band_moves_to_the_image_edge(radius):
    img, r = _cylinder()
    truth = r < 10
    seg = (r < radius).astype(np.uint8)
    out = snap_to_edges(seg, img)
    assert _dice(out > 0, truth) > 0.97 > _dice(seg > 0, truth) + 0.1
    far = np.abs(r - radius) > BAND_VOXELS + 0.5  # nothing outside the band changes
    np.testing.assert_array_equal(out[far], seg[far])


def test_edges_beyond_the_band_and_thin_parts_are_left_alone():
    img, r = _cylinder()
    seg = np.zeros(img.shape, np.uint8)
    seg[:, 2:4, 2:4] = 1  # a thin part with no seed once the band is cut away: kept as it is
    seg[r < 6] = 1  # the edge at 10 lies beyond the band (6 + 2): the boundary cannot jump to it
    out = snap_to_edges(seg, img)
    assert out[:, 2:4, 2:4].all()
    assert (out[(r >= 8.6) & (r < 20)] == 0).all() and out[r < 6 - BAND_VOXELS - 0.5].all()
    body = r < 40
    seg2 = (r < 11.5).astype(np.uint8)
    seg2[:, :2, :2] = 1  # outside the body: background whatever the walker says
    assert not snap_to_edges(seg2, img, body=body)[~body].any()
    assert snap_to_edges(np.zeros_like(seg), img).sum() == 0  # nothing to refine
    with pytest.raises(ValueError, match="same 3D grid"):
        snap_to_edges(seg[:, :, :5], img)


def test_refine_is_an_option_of_the_model_with_the_paper_and_old_configs_off(tiny_model, tmp_path, cord, predict_with, saved_without):
    assert ModelConfig(**recipe_overrides("paper")[0]).refine == "none"
    with pytest.raises(UUDSError, match="unknown refinement"):
        ModelConfig(refine="crf")
    vol = load_volume(cord["t1"])
    plain = predict_with(tiny_model, vol, refine="none", objects="all")  # the refinement alone, no piece removed
    refined = predict_with(tiny_model, vol, refine="edges", objects="all")
    np.testing.assert_array_equal(refined.entropy, plain.entropy)  # the network's uncertainty is not touched
    changed = refined.seg != plain.seg  # only within the band around the network's boundary (unit voxels here)
    obj = plain.seg > 0
    near = (ndimage.distance_transform_edt(obj) <= BAND_VOXELS) & obj | \
        (ndimage.distance_transform_edt(~obj) <= BAND_VOXELS) & ~obj
    assert not (changed & ~near).any()
    saved_without(tiny_model, tmp_path / "old", "refine")  # written before the option existed
    assert ckpt.read_config(tmp_path / "old")["model"]["refine"] == "none"


def test_pseudo_labels_move_to_each_slices_edges_and_the_moved_pixels_become_certain():
    import torch

    img, r = _cylinder()  # 12 slices along axis 0 of a bright rod in a dark ring
    truth = r < 10
    too_big = (r < 12).astype(np.int64)  # a pseudo label 2 pixels out, as the cord's ring of CSF
    out = snap_slices_to_edges(too_big, img)
    assert _dice(out > 0, truth) > 0.95 > _dice(too_big > 0, truth) + 0.05
    far = np.abs(r - 12) > PSEUDO_BAND_PX + 0.5
    np.testing.assert_array_equal(out[far], too_big[far])  # nothing outside the band changes
    # each slice on its own: a slice with no object, or no body, is left as it was
    empty = too_big.copy()
    empty[3] = 0
    body = np.ones(img.shape, bool)
    body[5] = False
    out2 = snap_slices_to_edges(empty, img, body)
    assert (out2[3] == 0).all() and np.array_equal(out2[5], empty[5]) and _dice(out2[7] > 0, truth[7]) > 0.95
    with pytest.raises(ValueError, match="same"):
        snap_slices_to_edges(too_big[:, :10], img)
    # as training uses it: tensors in, tensors out; only the moved pixels turn certain
    pl = torch.from_numpy(too_big)
    mask = torch.zeros(pl.shape)
    new_pl, new_mask = refine_pseudo_label(pl, mask, torch.from_numpy(img).float(), body_mask=False)
    moved = (new_pl != pl)
    assert moved.any() and bool((new_mask[moved] == 1).all()) and bool((new_mask[~moved] == 0).all())
    assert new_pl.dtype == pl.dtype
    # the path training takes: a bf16 batch, the body kept (background at -1 never becomes the object)
    bg = torch.from_numpy(img).to(torch.bfloat16)
    bg[:, :, 20:24] = -1.0  # a stripe of "air" across the rod: outside the body
    out_pl, _ = refine_pseudo_label(pl, mask, bg, body_mask=True)
    assert bool((pl[:, :, 20:24] == 1).any()) and bool((out_pl[:, :, 20:24] == 0).all())
    assert bool((out_pl[:, :, 28:] != pl[:, :, 28:]).any())  # elsewhere the boundary still moves
    with pytest.raises(ValueError, match="ignore value"):
        snap_slices_to_edges(np.full(img.shape, 255), img)


def _rod_slices(label_radius, n=6):
    """Slices of a bright rod (radius 12) with noise and a strip of background, and a label of ``label_radius``."""
    yy, xx = np.mgrid[:64, :64]
    r = np.hypot(yy - 32, xx - 30)
    img = np.clip(np.where(r < 12, 0.6, -0.2) + np.random.default_rng(0).normal(0, 0.05, (n, 64, 64)), -0.9, 1.0)
    img[:, :4] = -1.0
    return np.repeat((r < label_radius)[None], n, 0).astype(np.uint8), img


def test_edge_agreement_is_positive_where_labels_follow_the_edges_and_negative_where_they_do_not():
    follows = edge_agreement(*_rod_slices(12))
    assert follows.k > 0.05 and follows.keep > -0.01  # the walker keeps a right boundary and repairs moved ones
    assert follows.grow > 0.05 and follows.shrink > 0.05 and follows.slices == 6
    past, inside = edge_agreement(*_rod_slices(16)), edge_agreement(*_rod_slices(8))
    assert past.k < 0 and inside.k < 0  # labels 4 px past (or inside) the edge: the walker pulls away from them
    assert inside.keep < -0.05
    labels, img = _rod_slices(12)
    labels[:3] = 0  # slices without the object are not read
    assert edge_agreement(labels, img).slices == 3
    with pytest.raises(ValueError, match="no source slice holds the object"):
        edge_agreement(np.zeros_like(labels), img)


def test_auto_resolves_from_the_source_and_reads_at_most_the_cap_of_slices():
    from napari_uuds.engine.slices import SliceSampler

    def sampler(labels, img):
        return SliceSampler([torch.from_numpy(img)[:, None].float()],
                            None if labels is None else [torch.from_numpy(labels)[:, None]])
    labels, img = _rod_slices(12)
    mode, k = resolve_pseudo_refine("auto", sampler(labels, img))
    assert mode == "edges" and k.k > 0 and k.record()["slices"] == 6
    assert resolve_pseudo_refine("auto", sampler(_rod_slices(16)[0], img))[0] == "none"
    assert resolve_pseudo_refine("edges", None) == ("edges", None)  # asked for: nothing measured
    assert resolve_pseudo_refine("auto", sampler(None, img)) == ("none", None)  # no labels
    # an object too small to survive the resampling into the frame: nothing to measure, nothing refined
    assert resolve_pseudo_refine("auto", sampler(np.zeros_like(labels), img)) == ("none", None)
    many_labels = [np.zeros((40, 64, 64), np.uint8), labels]  # the first volume holds the object on 20 of 40 slices
    many_labels[0][10:30] = labels[0]
    many_images = [np.repeat(img[:1], 40, 0), img]
    picks = SliceSampler([torch.from_numpy(i)[:, None].float() for i in many_images],
                         [torch.from_numpy(lab)[:, None] for lab in many_labels]).foreground
    assert len(picks) == 26
    lab, im = source_slices_for_agreement(many_labels, many_images, picks, max_slices=5)
    assert lab.shape == im.shape == (5, 64, 64) and lab.reshape(5, -1).any(1).all()
