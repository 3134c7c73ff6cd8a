"""Review (ranking slices by uncertainty) and learning from corrections (engine/review.py, engine/finetune.py)."""
import numpy as np
import pytest
import torch

from napari_uuds.engine.config import FINETUNE_EMA, ModelConfig, TrainConfig
from napari_uuds.engine.dataset import prepare_volume, samplers
from napari_uuds.engine.errors import UUDSError
from napari_uuds.engine.finetune import corrected_sampler, corrected_slices, finetune
from napari_uuds.engine.infer import predict_volume
from napari_uuds.engine.metrics import score
from napari_uuds.engine.model import UUDS
from napari_uuds.engine.review import (ORDERS, apply_corrections, coverage_order, edited_slices, keep_corrections,
                                       labelled_slices, rank_slices, slice_scores)
from napari_uuds.engine.train import train


def test_rank_counts_entropy_around_the_object_and_in_the_uncertain_region():
    ent = np.zeros((20, 20, 5), np.float32)
    seg = np.zeros((20, 20, 5), np.uint8)
    seg[8:12, 8:12, 1] = 1  # slice 1: an object with a faintly uncertain rim
    ent[7:13, 7:13, 1] = 0.2
    ent[2, 2, 1] = 0.3  # far from the object, under chi: does not count
    ent[0:4, 0:4, 3] = 0.9  # slice 3: no object predicted, but an uncertain blob (16 voxels)
    ent[:, :, 4] = 0.1  # slice 4: diffuse low entropy, no object: nothing that matters
    scores, counts = slice_scores(ent, seg, axis=2, chi=0.5, margin=1)
    assert scores[0] == 0 and scores[4] == 0 and counts[3] == 16
    # the object grown by a disc of radius 1 (a 6x6 square without its 4 corners), not the far voxel
    np.testing.assert_allclose(scores[1], 32 * 0.2, rtol=1e-6)
    np.testing.assert_allclose(scores[3], 16 * 0.9, rtol=1e-6)
    ranked = rank_slices(ent, seg, axis=2, chi=0.5, margin=1)
    assert [r.index for r in ranked] == [3, 1]
    assert [r.index for r in rank_slices(ent, seg, axis=2, chi=0.5, margin=1, exclude={3})] == [1]
    # another slicing axis ranks along it
    assert [r.index for r in rank_slices(np.moveaxis(ent, 2, 0), np.moveaxis(seg, 2, 0), axis=0, margin=1)] == [3, 1]


def _ring_volume(per_slice_rim: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """One object on every slice along axis 2, its rim as uncertain as ``per_slice_rim`` says."""
    n = len(per_slice_rim)
    ent, seg = np.zeros((24, 24, n), np.float32), np.zeros((24, 24, n), np.uint8)
    seg[9:15, 9:15] = 1
    for z, v in enumerate(per_slice_rim):
        ent[8:16, 8:16, z] = v
        ent[10:14, 10:14, z] = 0.0  # certain inside: the uncertainty is a rim, as on the cord
    return ent, seg


def test_coverage_order_tiles_flat_scores_from_the_middle_and_never_starts_at_an_end():
    # the cord's case: every slice as uncertain, give or take noise (docs/method.md, "Review order, round 2")
    rng = np.random.default_rng(0)
    ent, seg = _ring_volume(list(0.3 + 0.01 * rng.random(64)))
    picks = [r.index for r in rank_slices(ent, seg, axis=2, order="coverage")]
    assert sorted(picks) == list(range(64))  # every scored slice is in the review, once
    assert 24 <= picks[0] <= 40  # the middle of the extent first
    assert all(4 <= p <= 59 for p in picks[:3])  # no end slice among the first picks
    first4 = sorted(picks[:4])
    assert min(np.diff(first4)) >= 8  # they spread over the extent
    # the old orders stay selectable, and only known orders are
    by_score = [r.index for r in rank_slices(ent, seg, axis=2, order="score")]
    scores, _ = slice_scores(ent, seg, axis=2)
    assert by_score[0] == int(np.argmax(scores)) and set(by_score) == set(picks)
    assert set(r.index for r in rank_slices(ent, seg, axis=2, order="spread")) == set(picks)
    assert ORDERS[0] == "peak"  # corrections round 4 of docs/method.md
    default = [r.index for r in rank_slices(ent, seg, axis=2)]
    assert default == [r.index for r in rank_slices(ent, seg, axis=2, order="peak")] and sorted(default) == sorted(picks)
    with pytest.raises(ValueError, match="review order"):
        rank_slices(ent, seg, axis=2, order="entropy")


def test_coverage_order_goes_to_a_peak_first_and_counts_corrected_slices_as_covered():
    rim = [0.05] * 40
    rim[25:30] = [0.9] * 5  # a run of very uncertain slices (a tumour's hard part)
    ent, seg = _ring_volume(rim)
    picks = [r.index for r in rank_slices(ent, seg, axis=2)]
    assert 25 <= picks[0] <= 29
    # a slice the user corrected covers its neighbourhood: the next pick goes elsewhere, and it is not offered again
    after = [r.index for r in rank_slices(ent, seg, axis=2, exclude={picks[0]})]
    assert picks[0] not in after and abs(after[0] - picks[0]) > 2
    # coverage_order on its own: the gain of a slice is the uncovered score near it
    assert coverage_order([], np.zeros(3)) == []
    assert coverage_order([0, 1, 2, 3, 4], np.array([0, 0, 0, 0, 5.0]), sigma=0.5)[0] == 4


def test_edited_and_labelled_slices_and_keeping_corrections():
    shown = np.zeros((6, 7, 8), np.uint8)
    mine = shown.copy()
    mine[2, 3, 5] = 1
    mine[4, 0, 1] = 2
    assert edited_slices(mine, shown, axis=2) == [1, 5] and edited_slices(mine, shown, axis=0) == [2, 4]
    assert labelled_slices(mine, axis=1) == [0, 3]
    pred_seg = np.ones_like(shown)
    kept = keep_corrections(pred_seg, mine, [5], axis=2)
    assert kept[..., 5].sum() == 1 and kept[2, 3, 5] == 1 and (kept[..., :5] == 1).all()
    assert (pred_seg == 1).all()  # the prediction itself untouched

    class P:
        seg, entropy = np.ones_like(shown), np.full(shown.shape, 0.7, np.float32)
        own_entropy = np.full(shown.shape, 0.5, np.float32)  # the network's own, before smoothing (round 5)

    p = apply_corrections(P(), mine, [1], axis=2)
    assert (p.entropy[..., 1] == 0).all() and (p.entropy[..., 0] == 0.7).all() and p.seg[4, 0, 1] == 2
    assert (p.own_entropy[..., 1] == 0).all() and (p.own_entropy[..., 0] == 0.5).all()
    with pytest.raises(ValueError):
        edited_slices(mine, shown[:3], axis=2)


def _phantom(seed: int, inverted: bool):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from test_adaptation import phantom

    return phantom(seed, inverted)


def _phantom_task():
    """A disc phantom source and its contrast-inverted target, prepared at 64 px, with a fresh tiny model (seed 0)
    and their samplers: (target image, target label, prepared target, model config, model, source and target
    samplers)."""
    (si, sl), (ti, tl) = _phantom(1, False), _phantom(2, True)
    cfg = ModelConfig.for_arch("tiny", image_size=64, class_names=["disc"])
    src, tgt = [prepare_volume(si, 2, 64, sl)], prepare_volume(ti, 2, 64)
    torch.manual_seed(0)
    model = UUDS(cfg, seed=0)
    s, t = samplers(src, [tgt], 0.5, 0)
    return ti, tl, tgt, cfg, model, s, t


def test_corrected_slices_are_sliced_like_the_target():
    img, lab = _phantom(2, True)
    tp = prepare_volume(img, 2, 64, lab)
    x, y = corrected_slices(tp, lab.data, [3, 7])
    torch.testing.assert_close(x, tp.image[[3, 7]])
    assert torch.equal(y, tp.label[[3, 7]])
    with pytest.raises(UUDSError, match="slice 99 does not exist"):
        corrected_slices(tp, lab.data, [99])
    with pytest.raises(UUDSError, match="do not lie on the target's grid"):
        corrected_slices(tp, lab.data[:-1], [1])
    with pytest.raises(UUDSError, match="no corrected slice"):
        corrected_slices(tp, lab.data, [])


@pytest.mark.parametrize("parts", ["all", "segmenter"])
def test_fine_tuning_on_two_corrected_slices_lifts_the_target_dice(parts):
    """Source-only training fails on the contrast-inverted target; two corrected target slices and a short
    fine-tune must find the disc on the whole volume (corrected slices scored as the user's), whether it trains every
    module or the segmenter only."""
    ti, tl, tgt, cfg, model, s, t = _phantom_task()
    tcfg = TrainConfig(steps=40, batch_size=8, seed=0, mode="source_only", randomise="none")
    for _ in train(model, s, t, tcfg):
        pass
    before = predict_volume(model, ti, norm=tgt.norm)
    d0 = score(before.seg, tl.data)["dice"]
    slices = [4, 11]
    lab = corrected_sampler([(tgt, tl.data, slices)], 0)
    events = list(finetune(model, s, t, lab, TrainConfig(batch_size=8, seed=0, randomise="none"), steps=40,
                           parts=parts))
    assert events[-1].kind == "done" and model.trained_steps == 80
    # a fine-tune ends with the average of its second half (corrections round 7), 20 of its 40 steps
    assert (model.weight_average or {}).get("updates") == (20 if FINETUNE_EMA > 0 else None)
    assert all("tseg" in e.losses for e in events if e.kind == "step")
    after = apply_corrections(predict_volume(model, ti, norm=tgt.norm), tl.data, slices, 2)
    np.testing.assert_array_equal(after.seg[..., slices], tl.data[..., slices])  # the user's slices kept
    unedited = [k for k in range(ti.data.shape[2]) if k not in slices]
    d1 = score(after.seg[..., unedited], tl.data[..., unedited])["dice"]  # what the model learnt, on the others
    assert d0 < 20.0, d0
    assert d1 > d0 + 30.0, (d0, d1)


def test_segmenter_only_fine_tune_leaves_the_encoder_and_translator_as_they_were():
    """``parts="segmenter"``: only the segmentation prompt, SAM and the segmentation decoder change (the encoder's
    batch-norm statistics are read, not updated), the terms that train frozen parts are
    left out, every parameter trains again afterwards, and no partial optimiser state is left to resume from."""
    ti, tl, tgt, cfg, model, s, t = _phantom_task()
    base = dict(batch_size=4, seed=0, randomise="none", guard=False)
    for _ in train(model, s, t, TrainConfig(steps=2, warmup_steps=1, ema_decay=0.0, **base)):
        pass
    before = {k: v.clone() for k, v in model.state_dict().items()}
    syn_before, _ = model.infer(tgt.image[:2])
    lab = corrected_sampler([(tgt, tl.data, [4, 11])], 0)
    events = list(finetune(model, s, t, lab, TrainConfig(**base), steps=3, parts="segmenter"))
    assert events[-1].kind == "done" and model.trained_steps == 5
    steps = [e for e in events if e.kind == "step"]
    assert steps and all({"seg", "tseg"} <= set(e.losses) and not {"id", "bscl", "dd_s", "dd_ts"} & set(e.losses)
                         for e in steps)
    trained = ("seg_prompt.", "sam.", "seg_decoder.")
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(k.startswith(trained) for k in changed), sorted(changed)[:5]
    syn_after, _ = model.infer(tgt.image[:2])
    torch.testing.assert_close(syn_after, syn_before)  # the synthetic source is the adaptation's
    assert all(p.requires_grad for p in model.parameters()) and model.optimizer_state is None
    list(finetune(model, s, t, lab, TrainConfig(**base), steps=1, parts="all"))
    assert model.optimizer_state is not None  # a full fine-tune leaves its optimiser state, as adaptation does
    with pytest.raises(UUDSError, match="unknown training parts 'decoder'"):
        next(finetune(model, s, t, lab, TrainConfig(**base), steps=1, parts="decoder"))
    with pytest.raises(UUDSError, match="unknown training parts"):
        TrainConfig(train_parts="decoder")


def test_fine_tune_continues_the_runs_own_auto_decisions_and_keeps_their_record(tmp_path, monkeypatch):
    """A fine-tune trains with what the adaptation's ``auto`` settings decided (the source randomisation, the
    pseudo-label refinement), from the model in memory or from saved weights, without measuring the scans again; the
    record of how they were decided (W1, K) stays with the weights."""
    import napari_uuds.engine.train as train_mod
    from napari_uuds.engine import checkpoint as ckpt
    from napari_uuds.engine.finetune import inherit_decisions

    ti, tl, tgt, cfg, model, s, t = _phantom_task()
    base = dict(batch_size=2, seed=0, warmup_steps=1, ema_decay=0.0, guard=False)
    for _ in train(model, s, t, TrainConfig(steps=2, **base)):
        pass
    decided = {"randomise": model.randomise_used, "pseudo_refine": model.pseudo_refine_used}
    assert "raw_w1" in decided["randomise"] and "edge_agreement" in decided["pseudo_refine"]  # auto measured both
    ckpt.save_checkpoint(model, tmp_path / "w")
    loaded, meta = ckpt.load_checkpoint(tmp_path / "w")
    assert meta["pseudo_refine_used"] == decided["pseudo_refine"] and loaded.randomise_used == decided["randomise"]
    pinned = inherit_decisions(TrainConfig(**base), loaded)
    assert (pinned.randomise, pinned.pseudo_refine) == (decided["randomise"]["randomise"],
                                                       decided["pseudo_refine"]["pseudo_refine"])
    assert inherit_decisions(TrainConfig(pseudo_refine="none"), loaded).pseudo_refine == "none"  # asked for: kept
    assert inherit_decisions(TrainConfig(), UUDS(cfg, seed=0)) == TrainConfig()  # nothing decided yet: train decides
    modes = []
    for name in ("resolve_randomise", "resolve_pseudo_refine"):
        real = getattr(train_mod, name)
        monkeypatch.setattr(train_mod, name, lambda mode, *a, _real=real: (modes.append(mode), _real(mode, *a))[1])
    lab = corrected_sampler([(tgt, tl.data, [4])], 0)
    events = list(finetune(loaded, s, t, lab, TrainConfig(**base), steps=2))
    assert events[-1].kind == "done" and len(modes) == 2 and "auto" not in modes  # nothing measured again
    assert loaded.randomise_used == decided["randomise"] and loaded.pseudo_refine_used == decided["pseudo_refine"]


@pytest.mark.parametrize("lr", [1e-3, 1e-2])
def test_a_fine_tune_runs_at_the_learning_rate_it_is_given(lr):
    """``finetune(lr=...)`` (``napari-uuds finetune --lr``): Adam's first step moves a parameter by about the rate
    (sign of the gradient times lr), so the largest change after one step is the rate the optimiser was given."""
    ti, tl, tgt, cfg, model, s, t = _phantom_task()
    base = dict(batch_size=4, seed=0, randomise="none", guard=False)
    before = {k: v.clone() for k, v in model.named_parameters()}
    lab = corrected_sampler([(tgt, tl.data, [4, 11])], 0)
    list(finetune(model, s, t, lab, TrainConfig(lr=1e-4, **base), steps=1, lr=lr))
    moved = max(float((p.detach() - before[k]).abs().max()) for k, p in model.named_parameters())
    assert 0.5 * lr < moved <= 1.01 * lr


def test_a_fine_tune_with_a_weight_average_ends_with_it_and_keeps_its_last_weights():
    """``finetune(ema_decay=...)`` (corrections round 7, the default since): the model ends with the average of the
    fine-tune's second half, recorded, and ``last_iterate_state`` holds the last weights, which are those of the same
    fine-tune with ``ema_decay=0`` (its draws do not change)."""
    base = dict(batch_size=4, seed=0, randomise="none", guard=False)
    ends = []
    for decay in (0.0, 0.99):  # the same task twice: the same weights and samplers at the start
        ti, tl, tgt, cfg, model, s, t = _phantom_task()
        lab = corrected_sampler([(tgt, tl.data, [4, 11])], 0)
        list(finetune(model, s, t, lab, TrainConfig(**base), steps=4, ema_decay=decay))
        ends.append(model)
    plain, averaged = ends
    assert plain.weight_average is None and plain.last_iterate_state is None  # 0: the last weights
    assert averaged.weight_average is not None and averaged.weight_average["updates"] == 2
    for k, v in plain.state_dict().items():
        torch.testing.assert_close(averaged.last_iterate_state[k], v)
    moved = [k for k, v in averaged.state_dict().items() if v.is_floating_point()
             and not torch.equal(v, plain.state_dict()[k])]
    assert moved  # the model holds the average, not the last weights


def test_peak_order_moves_coverages_pick_to_the_highest_score_within_reach():
    """``order="peak"``: where coverage picks a slice beside a local peak of the score, the peak is taken instead; on
    flat scores it is the coverage order; every scored slice comes once."""
    idx = list(range(80))
    flat = np.ones(80)
    assert coverage_order(idx, flat, sigma=10, to_peak=True) == coverage_order(idx, flat, sigma=10)
    bump = flat.copy()
    bump[33] = 1.5
    assert coverage_order(idx, bump, sigma=10)[0] != 33
    peak = coverage_order(idx, bump, sigma=10, to_peak=True)
    assert peak[0] == 33 and sorted(peak) == idx
    ent, seg = _ring_volume([0.2] * 15 + [0.25] + [0.2] * 24)  # the review's own scores, sigma = 40 / 8 slices
    assert rank_slices(ent, seg, 2, order="coverage")[0].index == 16  # pulled one slice off the peak
    assert rank_slices(ent, seg, 2, order="peak")[0].index == 15
