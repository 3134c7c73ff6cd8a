"""Round 25: a slice read with its neighbours. The smoothing by hand, the same result whatever the slab size and in
the cohort's batches, nothing smoothed across thick slices, and the option saved and read back."""
import copy
import json

import nibabel as nib
import numpy as np
import pytest
import torch

from napari_uuds.engine import checkpoint as ckpt
from napari_uuds.engine.body import body_mask
from napari_uuds.engine.cohort import iter_cohort
from napari_uuds.engine.config import RECIPES, ModelConfig
from napari_uuds.engine.errors import UUDSError
from napari_uuds.engine.infer import VolumePrediction, iter_predict_volume, predict_volume, run_to_end
from napari_uuds.engine.review import apply_corrections, review_entropy, slice_scores
from napari_uuds.engine.losses import entropy_map
from napari_uuds.engine.volumes import load_volume, normalisation_params
from napari_uuds.engine.zsmooth import halo, smooth_probs, widen


@pytest.fixture()
def model(tiny_model):
    """The tiny model with a config of its own: these tests change its prediction settings, and ``tiny_model``'s
    config is the session's (conftest.tiny_cfg)."""
    tiny_model.cfg = copy.copy(tiny_model.cfg)
    return tiny_model


def test_binomial_by_hand_with_the_ends_standing_in_for_missing_neighbours():
    p = np.zeros((2, 1, 1, 5), np.float32)
    p[1, 0, 0] = [1.0, 0.0, 0.0, 1.0, 0.2]
    p[0] = 1 - p[1]
    q = smooth_probs(p, 2, 0, 5)
    np.testing.assert_allclose(q[1, 0, 0], [0.75, 0.25, 0.25, 0.55, 0.4], atol=1e-6)
    np.testing.assert_allclose(q.sum(0), 1.0, atol=1e-6)
    np.testing.assert_allclose(smooth_probs(p, 2, 1, 4), q[..., 1:4])  # a run's middle only
    assert widen(0, 4, 10, 1) == (0, 5) and widen(4, 8, 10, 1) == (3, 9) and widen(8, 10, 10, 1) == (7, 10)


def test_neighbours_vote_only_where_the_slices_lie_close():
    cfg = ModelConfig(smooth_z="binomial")
    assert halo(cfg, (1.0, 1.0, 1.0)) == 1 and halo(cfg, (0.5, 0.5, 1.0)) == 1
    assert halo(cfg, (0.5, 0.5, 1.01)) == 0 and halo(cfg, (1.0, 1.0, 5.0)) == 0
    assert halo(ModelConfig(smooth_z="none"), (1.0, 1.0, 1.0)) == 0
    with pytest.raises(UUDSError, match="unknown through-plane smoothing"):
        ModelConfig(smooth_z="gaussian")
    assert RECIPES["paper"][0]["smooth_z"] == "none" and ModelConfig().smooth_z == "binomial"  # round 25's default


def test_a_volume_predicts_as_its_plain_probabilities_smoothed_whatever_the_slab(model, cord):
    vol = load_volume(cord["t1"])
    axis = model.cfg.axis
    model.cfg.objects, model.cfg.smooth_z = "all", "none"  # the network's output itself, every piece
    raw = run_to_end(iter_predict_volume(model, vol, keep_probs=True))
    want = smooth_probs(raw.probs, axis, 0, vol.data.shape[axis])
    outside = ~body_mask(normalisation_params(vol.data).apply(vol.data), axis)  # nothing outside the body, again
    assert outside.any()
    want[:, outside] = 0.0
    want[0, outside] = 1.0
    model.cfg.smooth_z = "binomial"
    for bs in (3, 16):
        got = run_to_end(iter_predict_volume(model, vol, batch_size=bs, keep_probs=True))
        # (a batch of another size rounds the convolutions' sums differently: 1e-4 at most)
        np.testing.assert_allclose(got.probs, want, atol=2e-4)
        assert (got.seg == want.argmax(0)).mean() > 0.999
        np.testing.assert_allclose(got.entropy, entropy_map(torch.from_numpy(want)[None])[0].numpy(), atol=2e-4)
        np.testing.assert_allclose(got.synthetic, raw.synthetic, atol=2e-4)
    assert (got.seg != raw.seg).any()  # the untrained model's slices disagree: the vote changes some voxels


def test_the_review_can_read_the_networks_own_entropy_from_before_the_smoothing(model, cord):
    """Corrections round 5: a smoothed prediction made with ``keep_own`` keeps the entropy of the unsmoothed
    probabilities for the review, whatever the slab; an unsmoothed one, or one made without ``keep_own``, keeps none."""
    vol = load_volume(cord["t1"])
    axis = model.cfg.axis
    model.cfg.objects, model.cfg.smooth_z = "all", "none"
    raw = predict_volume(model, vol, keep_own=True)
    assert raw.own_entropy is None and review_entropy(raw, "own") is raw.entropy
    model.cfg.smooth_z = "binomial"
    assert predict_volume(model, vol).own_entropy is None  # not asked for: no fourth volume (the CLI, the cohort)
    for bs in (3, 16):
        got = predict_volume(model, vol, batch_size=bs, keep_own=True)
        assert got.own_entropy.dtype == np.float32 and got.own_entropy.shape == got.entropy.shape
        np.testing.assert_allclose(got.own_entropy, raw.entropy, atol=2e-4)
        assert np.abs(got.entropy - raw.entropy).max() > 0.05  # the smoothed entropy is another map
    assert review_entropy(got) is got.own_entropy and review_entropy(got, "shown") is got.entropy  # round 5's default
    with pytest.raises(ValueError, match="review entropy"):
        review_entropy(got, "smoothed")
    # the review's scores from the own entropy are the unsmoothed prediction's, and not the smoothed entropy's
    own_scores = slice_scores(got.own_entropy, got.seg, axis)[0]
    np.testing.assert_allclose(own_scores, slice_scores(raw.entropy, got.seg, axis)[0], rtol=1e-3, atol=0.01)
    assert not np.allclose(own_scores, slice_scores(got.entropy, got.seg, axis)[0], rtol=0.01)
    # one slab written into a volume (the widget's one-slice path), where one of the two was smoothed
    i = int(np.argmax((got.seg > 0).sum(axis=tuple(a for a in range(3) if a != axis))))
    at = tuple(slice(i, i + 1) if a == axis else slice(None) for a in range(3))
    smoothed_slab = VolumePrediction(got.synthetic[at].copy(), None, got.seg[at].copy(), got.entropy[at].copy(), None,
                                     got.own_entropy[at].copy())
    assert not np.array_equal(smoothed_slab.own_entropy, smoothed_slab.entropy)  # a put of the wrong map would show
    plain = copy.deepcopy(raw)
    plain.put(at, smoothed_slab)  # a smoothed slice into an unsmoothed volume: the rest's entropy is its own
    np.testing.assert_array_equal(plain.own_entropy[at], smoothed_slab.own_entropy)
    np.testing.assert_array_equal(plain.entropy[at], smoothed_slab.entropy)
    np.testing.assert_array_equal(np.delete(plain.own_entropy, i, axis), np.delete(raw.entropy, i, axis))
    smoothed = copy.deepcopy(got)
    smoothed.put(at, VolumePrediction(raw.synthetic[at].copy(), None, raw.seg[at].copy(), raw.entropy[at].copy()))
    np.testing.assert_array_equal(smoothed.own_entropy[at], raw.entropy[at])  # an unsmoothed slice: its own entropy
    # a corrected slice is certain in both maps
    apply_corrections(got, np.zeros_like(got.seg), [i], axis)
    assert np.take(got.entropy, i, axis).max() == 0 and np.take(got.own_entropy, i, axis).max() == 0


def test_thick_slices_are_read_alone(model, tmp_path):
    rng = np.random.default_rng(0)
    data = rng.random((24, 24, 9)).astype(np.float32)
    for z, name in ((1.0, "thin"), (5.0, "thick")):
        nib.save(nib.Nifti1Image(data, np.diag([1.0, 1.0, z, 1.0])), tmp_path / f"{name}.nii.gz")
    model.cfg.objects = "all"
    out = {}
    for name in ("thin", "thick"):
        vol = load_volume(tmp_path / f"{name}.nii.gz")
        for mode in ("none", "binomial"):
            model.cfg.smooth_z = mode
            out[name, mode] = predict_volume(model, vol)
    assert not np.allclose(out["thin", "none"].entropy, out["thin", "binomial"].entropy)
    np.testing.assert_array_equal(out["thick", "none"].entropy, out["thick", "binomial"].entropy)


def test_the_cohort_smooths_as_one_volume_does(model, tmp_path):
    rng = np.random.default_rng(2)
    paths = []
    for i, (shape, z) in enumerate((((24, 24, 7), 1.0), ((20, 28, 9), 5.0), ((16, 16, 6), 1.0))):
        paths.append(tmp_path / f"v{i}.nii.gz")
        nib.save(nib.Nifti1Image(rng.random(shape).astype(np.float32), np.diag([1.0, 1.0, z, 1.0])), paths[-1])
    model.cfg.smooth_z, model.cfg.objects = "binomial", "all"
    done = []
    for r in iter_cohort(model, paths, batch_size=5, progress=done.append):  # batches cut and join volumes
        one = predict_volume(model, load_volume(r.path), batch_size=4)
        np.testing.assert_allclose(r.prediction.entropy, one.entropy, atol=1e-4)
        assert (r.prediction.seg == one.seg).mean() > 0.999
        model.cfg.smooth_z = "none"
        alone = predict_volume(model, load_volume(r.path)).entropy
        model.cfg.smooth_z = "binomial"
        thick = r.path.name == "v1.nii.gz"  # 5 mm between slices: read alone, in a batch with thin ones
        assert np.allclose(r.prediction.entropy, alone, atol=1e-4) == thick
    assert sum(done) == 7 + 9 + 6  # every slice counted once, the halos' never


def test_the_setting_is_saved_and_an_older_config_reads_none(model, tmp_path, saved_without):
    model.cfg.smooth_z = "binomial"
    ckpt.save_checkpoint(model, tmp_path / "new")
    assert json.loads((tmp_path / "new" / "config.json").read_text())["model"]["smooth_z"] == "binomial"
    model, _ = ckpt.load_checkpoint(tmp_path / "new")
    assert model.cfg.smooth_z == "binomial"
    saved_without(model, tmp_path / "old", "smooth_z")
    assert ckpt.read_config(tmp_path / "old")["model"]["smooth_z"] == "none"
