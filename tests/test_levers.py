"""The adaptation levers of the default recipe: GIN source randomisation, L_DD's InfoNCE form, the body mask,
the collapse and drift guards, and the recipes that bundle them (docs/method.md)."""
import math

import numpy as np
import pytest
import torch

from napari_uuds.engine.body import body_mask
from napari_uuds.engine.config import RECIPES, LossWeights, ModelConfig, TrainConfig, recipe_overrides
from napari_uuds.engine.errors import UUDSError
from napari_uuds.engine.guards import AdaptationGuard, GuardLimits, batch_statistics, object_fraction
from napari_uuds.engine.losses import loss_dd
from napari_uuds.engine.randomise import gin


def _slices(b=6, s=32):
    yy, xx = np.mgrid[:s, :s]
    x = np.full((b, 1, s, s), -1.0, np.float32)
    body = ((yy - s / 2) / (s / 2.5)) ** 2 + ((xx - s / 2) / (s / 3)) ** 2 < 1
    disc = (yy - s / 2) ** 2 + (xx - s / 2) ** 2 < (s / 8) ** 2
    x[:, 0][:, body] = -0.2
    x[:, 0][:, disc] = 0.9
    return torch.from_numpy(x), body, disc


# -- GIN ------------------------------------------------------------------------------------------------
def test_gin_keeps_background_and_range_and_changes_contrast():
    x, body, disc = _slices()
    out = gin(x, np.random.default_rng(0), p=1.0)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert torch.all(out[:, 0][:, torch.from_numpy(~body)] == -1.0)  # air stays air
    inside = out[:, 0][:, torch.from_numpy(body)]
    assert inside.min() >= -0.95 - 1e-5 and inside.max() <= 1.0 + 1e-5  # anatomy stays above the background
    assert not torch.allclose(out, x)
    # the disc-minus-tissue contrast takes both signs across draws: inversions happen
    contrast = [float(o[0][torch.from_numpy(disc)].mean() - o[0][torch.from_numpy(body & ~disc)].mean())
                for o in gin(x.repeat(8, 1, 1, 1), np.random.default_rng(1), p=1.0)]
    assert min(contrast) < 0 < max(contrast)


def test_gin_is_reproducible_and_p_zero_is_identity():
    x, _, _ = _slices()
    a = gin(x, np.random.default_rng(5), p=0.5)
    b = gin(x, np.random.default_rng(5), p=0.5)
    assert torch.equal(a, b)
    changed = [not torch.equal(a[i], x[i]) for i in range(x.shape[0])]
    assert 0 < sum(changed) < x.shape[0] or x.shape[0] < 3  # p = 0.5: some slices drawn, some not
    assert torch.equal(gin(x, np.random.default_rng(5), p=0.0), x)


def test_gin_invert_balances_the_polarity_and_zero_draws_nothing_extra():
    """Round 16: inverted randomised slices show the disc darker than the tissue in most draws, where plain GIN keeps
    the source's polarity (brighter) in most; invert=0 is the plain function, draw for draw."""
    x, body, disc = _slices(b=64)
    disc_t, rest = torch.from_numpy(disc), torch.from_numpy(body & ~disc)

    def brighter(out):  # the fraction of slices whose disc is brighter than the tissue around it
        return float(np.mean([float(o[0][disc_t].mean() > o[0][rest].mean()) for o in out]))

    plain = gin(x, np.random.default_rng(3), p=1.0)
    assert brighter(plain) > 0.6  # alpha * h + (1 - alpha) * x: the source's polarity wins most draws
    assert brighter(gin(x, np.random.default_rng(3), p=1.0, invert=1.0)) < 0.4  # the mix partner inverted
    half = brighter(gin(x, np.random.default_rng(3), p=1.0, invert=0.5))
    assert 0.3 < half < 0.7
    r0, r1 = np.random.default_rng(9), np.random.default_rng(9)
    assert torch.equal(gin(x, r0, p=0.8, invert=0.0), gin(x, r1, p=0.8))
    assert r0.random() == r1.random()  # the same stream afterwards: nothing extra drawn
    out = gin(x, np.random.default_rng(3), p=1.0, invert=1.0)
    assert torch.all(out[:, 0][:, torch.from_numpy(~body)] == -1.0)  # the background is not inverted
    with pytest.raises(UUDSError, match="inversion"):
        TrainConfig(randomise_invert=1.5)


# -- L_DD forms --------------------------------------------------------------------------------------------
def test_loss_dd_infonce_by_hand_and_fades():
    # sim(s, T) = 1, sim(t, T) = 0, tau = 1: -log(e^1 / (e^1 + e^0)) = log(1 + e^-1) = 0.313262
    s, t, td = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]]), torch.tensor([[2.0, 0.0]])
    assert loss_dd(s, t, td, tau=1.0, form="infonce").item() == pytest.approx(math.log(1 + math.exp(-1)), abs=1e-6)
    # the gradient with respect to sim(s, T) fades once the domains are apart, where the printed form's does not
    grads = {}
    for form in ("infonce", "printed"):
        a = torch.tensor([[1.0, 0.3]], requires_grad=True)
        loss_dd(a, torch.tensor([[-1.0, 0.0]]), torch.tensor([[1.0, 0.0]]), 0.07, form).backward()
        grads[form] = a.grad.abs().sum().item()
    assert grads["infonce"] < 1e-6 < grads["printed"]
    with pytest.raises(ValueError):
        loss_dd(s, t, td, form="other")


# -- body mask --------------------------------------------------------------------------------------------
def test_body_mask_fills_enclosed_dark_tissue():
    vol = np.full((20, 20, 3), -1.0, np.float32)
    vol[4:16, 4:16, :] = 0.5
    vol[8:12, 8:12, :] = -1.0  # dark fluid enclosed by anatomy: inside the body
    m = body_mask(vol, axis=2)
    assert m[10, 10, 1] and m[5, 5, 1] and not m[1, 1, 1]


def test_prediction_is_background_outside_the_body(tiny_model):
    from napari_uuds.engine.infer import assemble

    geom_vol = np.full((16, 16, 4), -1.0, np.float32)
    geom_vol[4:12, 4:12] = 0.3
    from napari_uuds.engine.slices import to_square

    sl, geom = to_square(geom_vol, 2, 64, fill=-1.0, mode="bilinear")
    probs = torch.zeros(4, 2, 64, 64)
    probs[:, 1] = 1.0  # a model that calls everything foreground
    pred = assemble(sl, probs, geom, body_mask(geom_vol, 2))
    assert pred.seg[0, 0, 0] == 0 and pred.seg[8, 8, 2] == 1
    assert pred.entropy[0, 0, 0] == pytest.approx(0.0, abs=1e-6)


# -- guards ----------------------------------------------------------------------------------------------------
def test_guard_trips_on_collapse_and_clears():
    g = AdaptationGuard(source_fraction=0.1, limits=GuardLimits(momentum=0.0))
    assert g.update(1, 0.1, 0.05, 0.05) == "" and not g.held
    msg = g.update(2, 0.001, 0.05, 0.05)  # the target's object shrinks to 1 % of the source's
    assert g.held and msg.startswith("warning at step 2") and "0.01 times the source's" in msg
    assert g.update(3, 0.002, 0.05, 0.05) == ""  # still held, said once
    assert "resume" in g.update(4, 0.12, 0.05, 0.05) and not g.held
    assert g.update(5, 0.9, 0.05, 0.05).startswith("warning")  # a blob 9 times the source's
    rep = g.report()
    assert rep["trips"] == 2 and rep["held_steps"] == 3


def test_guard_drift_limit_is_the_untranslated_targets_distance():
    g = AdaptationGuard(source_fraction=0.1, limits=GuardLimits(momentum=0.0))
    assert g.update(1, 0.1, 0.5, 0.6) == ""  # far, but closer than the raw target: no drift
    assert "drifts" in g.update(2, 0.1, 0.5, 0.1)  # further than the raw target and than 0.3


def test_batch_statistics_and_source_fraction():
    x, body, disc = _slices(b=2)
    seg = torch.from_numpy(np.stack([disc, disc])).long()
    stats = batch_statistics(seg, x, x, x)
    assert stats[0].item() == pytest.approx(disc.sum() / body.sum(), rel=1e-6)
    assert stats[1].item() == pytest.approx(0.0, abs=1e-6) and stats[2].item() == pytest.approx(0.0, abs=1e-6)
    lab = seg[:, None].to(torch.uint8)
    assert object_fraction([lab], [x]) == pytest.approx(disc.sum() / body.sum(), rel=1e-6)


# -- recipes --------------------------------------------------------------------------------------------------
def test_recipes_paper_is_the_letter_and_uuds_the_defaults():
    m, t, w = recipe_overrides("paper")
    assert ModelConfig(**m).body_mask is False
    tc, lw = TrainConfig(**t), LossWeights(**w)
    assert (tc.randomise, tc.guard, tc.recipe, lw.dd_form, tc.pseudo_prior) == ("none", False, "paper", "printed",
                                                                                  "none")
    assert tc.ema_decay == 0.0  # the letter ends with the last step's weights
    d = (ModelConfig(), TrainConfig(), LossWeights())
    assert (d[0].body_mask, d[1].randomise, d[1].guard, d[2].dd_form) == (True, "auto", True, "infonce")
    assert (d[1].pseudo_prior, d[1].steps, d[1].warmup) == ("band", 600, 50)  # round 12
    assert (d[1].ema_decay, d[0].tta) == (0.99, "none")  # round 13: the weight average yes, test-time augmentation no
    assert set(RECIPES) == {"uuds", "paper"}
    with pytest.raises(UUDSError):
        recipe_overrides("magic")
    with pytest.raises(UUDSError):
        TrainConfig(randomise="curves")
    with pytest.raises(UUDSError):
        LossWeights(dd_form="other")


def test_automatic_warmup_is_fifty_steps_or_a_quarter_of_a_shorter_run():
    """Round 12: min(50, steps / 4), so that a short run (30 steps in the widget) still reaches its target terms;
    an explicit warm-up is kept as given."""
    assert [TrainConfig(steps=n).warmup for n in (30, 100, 200, 600, 2500)] == [7, 25, 50, 50, 50]
    assert TrainConfig(steps=600, warmup_steps=150).warmup == 150 and TrainConfig(steps=10, warmup_steps=0).warmup == 0


def test_size_prior_is_zero_in_the_band_and_pulls_back_outside():
    from napari_uuds.engine.losses import loss_size

    body = torch.ones(1, 10, 10, dtype=torch.bool)
    probs = torch.zeros(1, 2, 10, 10)
    probs[:, 0] = 1.0
    probs[0, :, :2, :5] = torch.tensor([0.0, 1.0]).view(2, 1, 1)  # 10 % of the body is object
    assert loss_size(probs, body, 0.1).item() == 0.0  # ratio 1
    assert loss_size(probs, body, 0.025).item() == pytest.approx(math.log(4 / 2) ** 2, rel=1e-5)  # 4 times
    assert loss_size(probs, body, 0.4).item() == pytest.approx(math.log(0.5 / 0.25) ** 2, rel=1e-5)  # a quarter
    p = probs.clone().requires_grad_(True)
    loss_size(p, body, 0.025).backward()
    assert p.grad[0, 0, 0, 0] < 0  # more background where object was predicted


# -- pass-specific batch-norm statistics (round 4's candidate) ---------------------------------------------------
def test_pass_bn_keeps_a_second_set_of_statistics_and_survives_a_checkpoint(tmp_path, saved_without):
    from napari_uuds.engine import checkpoint as ckpt
    from napari_uuds.engine.model import UUDS
    from napari_uuds.engine.passnorm import PassBatchNorm2d

    torch.manual_seed(0)
    cfg = ModelConfig.for_arch("tiny", image_size=64, class_names=["disc"], pass_bn=True)
    model = UUDS(cfg)
    bns = [m for m in model.clip.visual.modules() if isinstance(m, PassBatchNorm2d)]
    assert bns and all(torch.equal(m.running_mean, m.running_mean_translated) for m in bns)
    model.train()
    xs, xt = torch.rand(4, 1, 64, 64) * 2 - 1, torch.rand(4, 1, 64, 64) - 1
    model(xs, xt)  # pass 1 on raw slices, pass 2 on translated ones
    assert any(not torch.allclose(m.running_mean, m.running_mean_translated) for m in bns)
    model.eval()
    with torch.no_grad():
        syn, logits = model.infer(xt)
    ckpt.save_checkpoint(model, tmp_path / "w")
    back, _ = ckpt.load_checkpoint(tmp_path / "w")
    with torch.no_grad():
        syn2, logits2 = back.infer(xt)
    torch.testing.assert_close(logits2, logits)  # the translated statistics are saved and used again
    for m in bns:  # inference's pass 2 reads the translated set: changing it changes the segmentation
        m.running_mean_translated.add_(1.0)
    with torch.no_grad():
        assert not torch.allclose(model.infer(xt)[1], logits)
        torch.testing.assert_close(model.infer(xt)[0], syn)  # pass 1 (the translation) reads the raw set only
    assert ModelConfig().pass_bn and not ModelConfig(**recipe_overrides("paper")[0]).pass_bn  # default; not the letter's
    # a checkpoint written before the option existed (no key in config.json) is read as it was trained: off
    off = UUDS(ModelConfig.for_arch("tiny", image_size=64, class_names=["disc"], pass_bn=False))
    assert not any(isinstance(m, PassBatchNorm2d) for m in off.modules())
    old_model, _ = ckpt.load_checkpoint(saved_without(off, tmp_path / "old", "pass_bn"))
    assert old_model.cfg.pass_bn is False


# -- round 17: the translator reads the slice at S/2 and S/1 ------------------------------------------------------------
def test_fine_skips_read_the_slice_at_full_resolution_and_survive_a_checkpoint(tmp_path, saved_without):
    """The encoder's finest map is S/4; with fine skips the image decoder's S/1 stage reads the slice's own pixels
    through trained weights, and the setting travels with the weights (an older config.json reads as off)."""
    from napari_uuds.engine import checkpoint as ckpt
    from napari_uuds.engine.decoders import ImageDecoder
    from napari_uuds.engine.model import UUDS

    with pytest.raises(ValueError, match="pass image"):
        ImageDecoder(16, 32, fine=True)(torch.zeros(1, 16, 2, 2))
    plain = UUDS(ModelConfig.for_arch("tiny", image_size=64, class_names=["disc"]))
    torch.manual_seed(0)
    model = UUDS(ModelConfig.for_arch("tiny", image_size=64, class_names=["disc"], fine_skips=True))
    first = model.image_decoder.stages[4].body[0]  # the S/1 stage's first convolution; its last input is the slice
    assert first.in_channels == plain.image_decoder.stages[4].body[0].in_channels + 1
    assert model.image_decoder.stages[3].body[0].in_channels == plain.image_decoder.stages[3].body[0].in_channels + 1
    model.train()
    xs, xt = torch.rand(4, 1, 64, 64) * 2 - 1, torch.rand(4, 1, 64, 64) - 1
    out = model(xs, xt)
    (out.rec_s - xs).abs().mean().backward()  # L_id's form: the gradient reaches the weights reading the slice
    assert first.weight.grad[:, -1].abs().sum() > 0
    model.eval()
    x = torch.rand(1, 1, 64, 64) * 2 - 1
    with torch.no_grad():
        before = model.infer(x)[0]
        first.weight[:, -1] += 0.5  # only the weights on the slice's own channel change
        assert before.sub(model.infer(x)[0]).abs().max() > 1e-4
    assert not ModelConfig(**recipe_overrides("paper")[0]).fine_skips  # the paper's letter has no such skip
    ckpt.save_checkpoint(model, tmp_path / "w")
    back, _ = ckpt.load_checkpoint(tmp_path / "w")
    assert back.cfg.fine_skips is True
    with torch.no_grad():
        torch.testing.assert_close(back.infer(x)[0], model.infer(x)[0])
    saved_without(plain, tmp_path / "old", "fine_skips")  # written before the option existed
    assert ckpt.read_config(tmp_path / "old")["model"]["fine_skips"] is False
    assert ckpt.load_checkpoint(tmp_path / "old")[0].cfg.fine_skips is False


# -- round 13: the weights a run ends with, and test-time augmentation ------------------------------------------------
def test_weight_average_is_a_running_mean_then_an_ema_of_the_steps_after_its_start():
    from napari_uuds.engine.train import WeightAverage

    lin = torch.nn.Linear(1, 1, bias=False)
    avg = WeightAverage(lin, decay=0.75, start=2)
    for step in range(1, 8):  # the weight equals the step number; steps 1-2 lie before the start
        lin.weight.data.fill_(float(step))
        avg.update(step)
    # steps 3, 4, 5: their mean (4.0); then EMA weight 1 - 0.75: 4 + (6 - 4) / 4 = 4.5; 4.5 + (7 - 4.5) / 4 = 5.125
    last = avg.apply()
    assert lin.weight.item() == pytest.approx(5.125)  # a plain mean of 3..7 would be 5.0
    assert last["weight"].item() == 7.0 and avg.report() == {"decay": 0.75, "from_step": 3, "updates": 5}
    assert WeightAverage(lin, 0.9, start=10).apply() is None  # nothing averaged yet: the weights stay


def test_one_step_of_an_average_lerps_every_float_at_once_and_copies_the_counts():
    """_move_towards runs one multi-tensor lerp (one kernel launch per group on a GPU, not one per tensor): the same
    values as a lerp_ of each floating tensor; the batch-norm counts take the current values."""
    from napari_uuds.engine.train import _move_towards

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Linear(5, 3))
    average = {k: torch.randn_like(v) if v.is_floating_point() else v.clone() for k, v in net.state_dict().items()}
    net(torch.randn(2, 2, 7, 7))  # moves the running statistics and the count
    want = {k: (a.clone().lerp_(net.state_dict()[k], 0.3) if a.is_floating_point() else net.state_dict()[k].clone())
            for k, a in average.items()}
    _move_towards(average, net.state_dict(), 0.3)
    assert all(torch.equal(average[k], want[k]) for k in want)
    assert average["1.num_batches_tracked"].item() == 1


def _cord_runs(cord, configs: list[TrainConfig]) -> list[tuple]:
    """(model, logged losses) of one tiny cord run per config, each from the same seed and the same batches."""
    from napari_uuds.engine.dataset import load_source_pairs, load_targets, samplers
    from napari_uuds.engine.model import UUDS
    from napari_uuds.engine.train import train

    cfg = ModelConfig.for_arch("tiny", image_size=64, class_names=["cord"], source_modality="T2")
    src = load_source_pairs([cord["t2"]], [cord["t2_seg"]], 1, cfg.axis, cfg.image_size)
    tgt = load_targets([cord["t1"]], cfg.axis, cfg.image_size)
    runs = []
    for tcfg in configs:
        torch.manual_seed(0)
        model = UUDS(cfg)
        s, t = samplers(src, tgt, 0.5, 0)
        runs.append((model, [e.losses for e in train(model, s, t, tcfg) if e.kind == "step"]))
    return runs


def test_training_with_the_weight_average_trains_the_same_and_ends_with_the_average(cord):
    (plain, plain_losses), (averaged, averaged_losses) = _cord_runs(
        cord, [TrainConfig(steps=4, batch_size=2, ema_decay=decay) for decay in (0.0, 0.9)])
    assert averaged_losses == plain_losses  # the average draws nothing and moves no gradient
    assert plain.last_iterate_state is None and plain.weight_average is None
    assert averaged.weight_average == {"decay": 0.9, "from_step": 3, "updates": 2}
    for k, v in plain.state_dict().items():  # the last step's weights are the plain run's, kept for scoring
        assert torch.equal(averaged.last_iterate_state[k], v)
    w = "seg_decoder.head.weight"
    assert not torch.equal(averaged.state_dict()[w], plain.state_dict()[w])  # it ends with the average
    with pytest.raises(UUDSError, match="EMA decay"):
        TrainConfig(ema_decay=1.0)


def test_d8_test_time_augmentation_makes_the_prediction_follow_a_rotated_slice(tmp_path, saved_without):
    from napari_uuds.engine import checkpoint as ckpt
    from napari_uuds.engine.infer import predict_slices
    from napari_uuds.engine.model import UUDS

    torch.manual_seed(0)
    model = UUDS(ModelConfig.for_arch("tiny", image_size=64, class_names=["disc"], tta="d8")).eval()
    x = torch.rand(2, 1, 64, 64) * 2 - 1
    rot = lambda t: torch.rot90(t, 1, dims=(-2, -1))  # noqa: E731
    _, p = predict_slices(model, x)
    _, p_rot = predict_slices(model, rot(x))
    torch.testing.assert_close(p_rot, rot(p), atol=1e-5, rtol=1e-4)  # the average over the group is equivariant
    model.cfg.tta = "none"
    _, q = predict_slices(model, x)
    _, q_rot = predict_slices(model, rot(x))
    assert (q_rot - rot(q)).abs().max() > 1e-3  # an untrained network alone is not
    assert not torch.allclose(p, q)
    model.cfg.tta = "d8"
    ckpt.save_checkpoint(model, tmp_path / "w")  # saved with the weights; a config without the key reads as none
    assert ckpt.load_checkpoint(tmp_path / "w")[0].cfg.tta == "d8"
    assert ckpt.load_checkpoint(saved_without(model, tmp_path / "old", "tta"))[0].cfg.tta == "none"
    with pytest.raises(UUDSError, match="test-time augmentation"):
        ModelConfig(tta="d4")


# -- round 15: a mean teacher labels the target --------------------------------------------------------------------
def test_mean_teacher_copies_then_averages_and_never_moves_the_student():
    from napari_uuds.engine.train import MeanTeacher

    class Lin(torch.nn.Linear):
        optimizer_state = None
        last_iterate_state = None

    lin = Lin(1, 1, bias=False)
    lin.optimizer_state = {"big": torch.zeros(3)}  # never copied into the teacher
    teacher = MeanTeacher(lin, decay=0.75, start=2)
    for step in range(1, 8):  # the weight equals the step number; step 1 lies before the start
        lin.weight.data.fill_(float(step))
        teacher.update(step)
    # steps 2, 3, 4, 5: copy then running mean (3.5); then EMA 1 - 0.75: 3.5 + (6 - 3.5) / 4 = 4.125; + (7 - 4.125) / 4
    assert teacher.net.weight.item() == pytest.approx(4.125 + (7 - 4.125) / 4)
    assert lin.weight.item() == 7.0 and lin.optimizer_state is not None and teacher.net.optimizer_state is None
    assert not teacher.net.weight.requires_grad and not teacher.net.training
    assert teacher.report() == {"decay": 0.75, "from_step": 2, "updates": 6}


def test_training_with_a_mean_teacher_labels_the_target_from_the_warm_up_on(cord):
    (plain, plain_losses), (taught, taught_losses) = _cord_runs(
        cord, [TrainConfig(steps=5, batch_size=2, ema_decay=0.0, teacher_decay=decay, warmup_steps=2, guard=False)
               for decay in (0.0, 0.9)])
    assert taught_losses[:2] == plain_losses[:2]  # before the warm-up's end nobody labels the target
    assert taught_losses[2]["useg"] != plain_losses[2]["useg"]  # from then on the teacher does
    assert taught.teacher_report == {"decay": 0.9, "from_step": 2, "updates": 4} and plain.teacher_report is None
    with pytest.raises(UUDSError, match="teacher decay"):
        TrainConfig(teacher_decay=1.0)


def test_training_with_refined_pseudo_labels_changes_only_the_target_term_and_is_recorded(cord):
    (plain, plain_losses), (refined, refined_losses) = _cord_runs(
        cord, [TrainConfig(steps=4, batch_size=2, ema_decay=0.0, warmup_steps=2, guard=False, pseudo_refine=p)
               for p in ("none", "edges")])
    assert refined_losses[:2] == plain_losses[:2]  # before the warm-up's end no pseudo label is read
    assert refined_losses[2]["useg"] != plain_losses[2]["useg"]  # the target's term reads the refined label
    assert TrainConfig().pseudo_refine == "auto" and TrainConfig(**recipe_overrides("paper")[1]).pseudo_refine == "none"
    with pytest.raises(UUDSError, match="pseudo-label refinement"):
        TrainConfig(pseudo_refine="crf")


def _rod_past_its_edge(tmp_path):
    """A bright rod (radius 12) whose label reaches 4 voxels past its edge (as a whole tumour's oedema does on
    T1c), as NIfTI files: (image, label)."""
    import nibabel as nib

    yy, xx = np.mgrid[:64, :64]
    r = np.hypot(yy - 32, xx - 30)
    img = np.where(r < 12, 0.6, -0.2)[..., None] + np.random.default_rng(0).normal(0, 0.05, (64, 64, 8))
    img[:4] = -1.0
    lab = np.repeat((r < 16)[..., None], 8, 2).astype(np.uint8)
    paths = tmp_path / "rod.nii.gz", tmp_path / "rod_seg.nii.gz"
    for data, path in zip((img.astype(np.float32), lab), paths):
        nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    return paths


def test_automatic_refinement_decides_from_the_source_labels_and_trains_as_the_mode_it_chose(cord, tmp_path):
    base = dict(steps=4, batch_size=2, ema_decay=0.0, warmup_steps=2, guard=False)
    (edges, edges_losses), (auto, auto_losses) = _cord_runs(
        cord, [TrainConfig(**base, pseudo_refine=p) for p in ("edges", "auto")])
    assert auto_losses == edges_losses  # the cord's labels follow its edges: auto refines, the same run
    used = auto.pseudo_refine_used
    assert used["pseudo_refine"] == "edges" and used["edge_agreement"]["k"] > 0
    assert edges.pseudo_refine_used == {"pseudo_refine": "edges"}  # asked for: nothing measured
    image, label = _rod_past_its_edge(tmp_path)
    rod = {"t2": image, "t2_seg": label, "t1": cord["t1"]}
    (plain, plain_losses), (auto, auto_losses) = _cord_runs(
        rod, [TrainConfig(**base, pseudo_refine=p) for p in ("none", "auto")])
    assert auto_losses == plain_losses  # labels past the edges: auto does not refine, the default's run
    assert auto.pseudo_refine_used["pseudo_refine"] == "none" and auto.pseudo_refine_used["edge_agreement"]["k"] < 0
    for k, v in plain.state_dict().items():
        assert torch.equal(auto.state_dict()[k], v)
    (only, _), = _cord_runs(cord, [TrainConfig(**base, mode="source_only", pseudo_refine="auto")])
    assert only.pseudo_refine_used == {"pseudo_refine": "none"}  # no target: nothing to refine, nothing measured
