"""Every loss against numbers worked out by hand (the comments show the arithmetic)."""
import math

import pytest
import torch

from napari_uuds.engine.config import LossWeights
from napari_uuds.engine.errors import UUDSError
from napari_uuds.engine.losses import (certain_mask, entropy_map, loss_bscl, loss_dd, loss_id, loss_seg,
                                       loss_useg, pseudo_label, total_loss)


def test_loss_dd_eq1_by_hand():
    # sim(s, T) = 1 -> d_s = 0 ; sim(t, T) = 0 -> d_t = 1 ; tau = 1
    # log(e^0 / (e^0 + e^1)) = -log(1 + e) = -1.313262
    s, t, td = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]]), torch.tensor([[2.0, 0.0]])
    assert loss_dd(s, t, td, tau=1.0).item() == pytest.approx(-math.log(1 + math.e), abs=1e-6)


def test_loss_dd_prefers_source_close_to_prompt():
    td = torch.tensor([[1.0, 0.0]])
    good = loss_dd(torch.tensor([[1.0, 0.1]]), torch.tensor([[-1.0, 0.2]]), td)
    bad = loss_dd(torch.tensor([[-1.0, 0.2]]), torch.tensor([[1.0, 0.1]]), td)
    assert good < bad
    # bounded below by log sigmoid(-2/tau)
    assert good.item() >= math.log(1 / (1 + math.exp(2 / 0.07))) - 1e-4


def test_loss_dd_batch_mean():
    # two pairs, tau = 0.5: pair 1 as above (d_s=0, d_t=1) -> log(1/(1+e^2)); pair 2 equal -> log(1/2)
    s = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    t = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    want = (math.log(1 / (1 + math.exp(2))) + math.log(0.5)) / 2
    assert loss_dd(s, t, torch.tensor([[1.0, 0.0]]), tau=0.5).item() == pytest.approx(want, abs=1e-6)


def test_loss_bscl_eq4_by_hand():
    # z0 = z1 = e1 (object), z2 = e2 (no object), tau = 1
    # anchor 0: log(e^1 / (e^1 + e^0)) = 1 - log(1 + e) = -0.313262 ; anchor 1 the same ; anchor 2 has no positive
    z = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    lab = torch.tensor([True, True, False])
    assert loss_bscl(z, lab, tau=1.0).item() == pytest.approx(math.log(1 + math.e) - 1, abs=1e-6)


def test_loss_bscl_two_positives():
    # 4 slices, two per category, orthogonal categories, tau = 1
    # anchor i: one positive (sim 1), two negatives (sim 0): -log(e / (e + 2)) = log(e + 2) - 1
    z = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    lab = torch.tensor([1, 1, 0, 0]).bool()
    assert loss_bscl(z, lab, tau=1.0).item() == pytest.approx(math.log(math.e + 2) - 1, abs=1e-6)


def test_loss_bscl_no_positive_is_zero():
    z = torch.eye(2)
    assert loss_bscl(z, torch.tensor([True, False])).item() == 0.0


def test_entropy_eq5_by_hand():
    p = torch.tensor([[0.5, 0.9, 1.0], [0.5, 0.1, 0.0]]).view(1, 2, 3)
    u = entropy_map(p, normalise=False)[0]
    # -(.5 ln .5 + .5 ln .5) = ln 2 ; -(.9 ln .9 + .1 ln .1) = 0.325083 ; -(1 ln(1 + 1e-9)) ~ 0
    assert u.tolist() == pytest.approx([math.log(2), 0.3250829734, 0.0], abs=1e-6)
    un = entropy_map(p)[0]
    assert un.tolist() == pytest.approx([1.0, 0.3250829734 / math.log(2), 0.0], abs=1e-6)


def test_pseudo_label_and_mask_eq6_eq7():
    # pixel 0: (0.9, 0.1) -> label 0, u = 0.468996 ; pixel 1: (0.4, 0.6) -> label 1, u = 0.970951
    p = torch.tensor([[0.9, 0.4], [0.1, 0.6]]).view(1, 2, 2)
    lab, mask = pseudo_label(p, chi=0.5)
    assert lab.tolist() == [[0, 1]]
    assert mask.tolist() == [[1.0, 0.0]]
    assert pseudo_label(p, chi=0.99)[1].tolist() == [[1.0, 1.0]]
    assert certain_mask(entropy_map(p), 0.4).tolist() == [[False, False]]


def test_loss_useg_eq8_by_hand():
    # fg probs (0.9, 0.8, 0.3, 0.6), pseudo (1, 1, 0, 1), mask (1, 1, 1, 0), no smoothing
    # inside the mask: sum(Y * Yhat) = 0.9 + 0.8 = 1.7 ; sum(Y) = 2 ; sum(Yhat) = 0.9 + 0.8 + 0.3 = 2.0
    # 1 - 2 * 1.7 / (2 + 2.0) = 0.15
    fg = torch.tensor([0.9, 0.8, 0.3, 0.6])
    probs = torch.stack([1 - fg, fg]).view(1, 2, 2, 2)
    pseudo = torch.tensor([1, 1, 0, 1]).view(1, 2, 2)
    mask = torch.tensor([1.0, 1.0, 1.0, 0.0]).view(1, 2, 2)
    assert loss_useg(probs, pseudo, mask, smooth=0.0).item() == pytest.approx(0.15, abs=1e-6)


def test_loss_useg_gradient_only_through_prediction():
    fg = torch.tensor([0.9, 0.8, 0.3, 0.6], requires_grad=True)
    probs = torch.stack([1 - fg, fg]).view(1, 2, 2, 2)
    lab, mask = pseudo_label(probs.detach(), 0.9)
    loss_useg(probs, lab, mask).backward()
    assert fg.grad is not None and fg.grad[3] == 0  # uncertain pixel 3 (u = 0.971) gets no gradient


def test_loss_seg_dice_plus_ce_by_hand():
    # one pixel, logits (0, ln 3) -> p_fg = 3/4, target 1
    # Dice: 1 - 2 * .75 / (1 + .75) = 0.142857 ; CE: -ln .75 = 0.287682
    logits = torch.tensor([0.0, math.log(3)]).view(1, 2, 1, 1)
    got = loss_seg(logits, torch.ones(1, 1, 1, 1, dtype=torch.long), smooth=0.0).item()
    assert got == pytest.approx(1 - 1.5 / 1.75 - math.log(0.75), abs=1e-6)


def test_loss_id_eq9_by_hand():
    # |0 - .5| + |1 - (-1)| = 2.5 over 2 pixels
    assert loss_id(torch.tensor([0.0, 1.0]), torch.tensor([0.5, -1.0])).item() == pytest.approx(1.25)


def test_total_loss_weights():
    t = {k: torch.tensor(v) for k, v in dict(dd_s=-1.0, dd_ts=-2.0, bscl=0.5, useg=0.25, seg=1.0, id=2.0).items()}
    w = LossWeights(alpha=2.0, beta=3.0, gamma=0.5, lam=0.1)
    assert w.dd_scale == "one"  # the default: Eq. 1-2 as printed
    # 2 * (-3) + 3 * .5 + .5 * (1.25) + .1 * 2 = -3.675
    assert total_loss(t, w).item() == pytest.approx(-3.675)
    # ablated terms count as zero
    assert total_loss({"seg": torch.tensor(1.0)}, w).item() == pytest.approx(0.5)
    # dd_scale tau multiplies L_DD by its temperature: 2 * 0.05 * (-3) + 1.5 + 0.625 + 0.2
    tw = LossWeights(alpha=2.0, beta=3.0, gamma=0.5, lam=0.1, tau_dd=0.05, dd_scale="tau")
    assert total_loss(t, tw).item() == pytest.approx(2.025)
    with pytest.raises(UUDSError, match="unknown L_DD scale 'half'"):
        LossWeights(dd_scale="half")


def test_loss_bscl_single_category_batch_is_zero():
    z = torch.nn.functional.normalize(torch.randn(8, 4), dim=1)
    assert loss_bscl(z, torch.ones(8, dtype=torch.bool)).item() == 0.0


def test_useg_skips_a_class_the_certain_pseudo_label_does_not_hold():
    """absent="skip": an object class with no certain pseudo-labelled pixel in the batch adds nothing, where the
    smoothed Dice (the default) pushes its probabilities towards 0; where the class is present both agree."""
    import torch

    from napari_uuds.engine.losses import loss_useg

    logits = torch.zeros(2, 2, 8, 8)
    logits[:, 1] = -1.0  # object probability 0.27 everywhere, below 0.5: the pseudo label is all background
    logits.requires_grad_(True)
    pseudo = torch.zeros(2, 8, 8, dtype=torch.long)
    mask = torch.ones(2, 8, 8)
    smooth = loss_useg(logits.softmax(1), pseudo, mask)
    (g,) = torch.autograd.grad(smooth, logits)
    assert smooth > 0.9 and (g[:, 1] > 0).all()  # descending it lowers the object logit everywhere
    skip = loss_useg(logits.softmax(1), pseudo, mask, absent="skip")
    assert skip == 0 and torch.autograd.grad(skip, logits, allow_unused=True)[0].abs().sum() == 0
    pseudo[0, 2:5, 2:5] = 1  # present: the same value either way
    p = logits.softmax(1)
    assert torch.allclose(loss_useg(p, pseudo, mask), loss_useg(p, pseudo, mask, absent="skip"))


def test_useg_ce_balanced_by_hand():
    """useg_form="ce_balanced": cross-entropy on the certain pixels, averaged per pseudo-labelled class, then over
    the classes present: one certain object pixel weighs as much as all the certain background."""
    import math

    from napari_uuds.engine.losses import loss_useg_ce_balanced

    logits = torch.zeros(1, 2, 2, 2)
    logits[0, 1, 0, 0] = math.log(3.0)  # p(object) = 0.75 at (0, 0); 0.5 elsewhere
    pseudo = torch.tensor([[[1, 0], [0, 0]]])
    mask = torch.tensor([[[1.0, 1.0], [1.0, 0.0]]])  # (1, 1) uncertain: it counts nowhere
    expected = 0.5 * (-math.log(0.75)) + 0.5 * (-math.log(0.5))  # object class: 1 pixel; background: 2, same nll
    assert loss_useg_ce_balanced(logits, pseudo, mask).item() == pytest.approx(expected, abs=1e-6)
    # a class with no certain pixel adds nothing (no push towards it or away from it)
    pseudo0 = torch.zeros(1, 2, 2, dtype=torch.long)
    assert loss_useg_ce_balanced(logits, pseudo0, mask).item() == pytest.approx(
        -(math.log(0.25) + 2 * math.log(0.5)) / 3, abs=1e-6)
    assert loss_useg_ce_balanced(logits, pseudo0, torch.zeros(1, 2, 2)).item() == 0.0


def test_pseudo_label_projected_into_the_source_size_band():
    """pseudo_prior="band": too little object -> the most probable body pixels become object (certain); too much ->
    only the most probable stay object, the rest background (certain); inside the band nothing changes."""
    from napari_uuds.engine.losses import project_pseudo_label

    body = torch.zeros(1, 4, 4, dtype=torch.bool)
    body[0, :, :2] = True  # 8 body pixels; source fraction 0.25 -> band 1-4 object pixels
    p_obj = torch.tensor([[0.1, 0.4, 0.0, 0.0], [0.3, 0.2, 0.0, 0.9], [0.05, 0.6, 0.0, 0.0], [0.7, 0.8, 0.0, 0.0]])
    probs = torch.stack([1 - p_obj, p_obj])[None]
    empty = torch.zeros(1, 4, 4, dtype=torch.long)
    mask = torch.zeros(1, 4, 4)
    # nothing in the pseudo label: the int(0.5 * 0.25 * 8) = 1 most probable body pixel becomes object;
    # (1, 3) has p 0.9 but lies outside the body
    pl, m = project_pseudo_label(probs, empty, mask, body, 0.25)
    assert pl.sum() == 1 and pl[0, 3, 1] == 1 and m[0, 3, 1] == 1 and m.sum() == 1
    # too much: all 8 body pixels object, band top 4 -> (3,1) 0.8, (3,0) 0.7, (2,1) 0.6, (0,1) 0.4 stay
    full = body.long()
    pl, m = project_pseudo_label(probs, full, mask, body, 0.25)
    assert pl.sum() == 4 and pl[0, 3, 1] == pl[0, 3, 0] == pl[0, 2, 1] == pl[0, 0, 1] == 1
    assert (m[body] == 1).all() and pl[0, 1, 0] == 0
    # inside the band: unchanged (the same tensors back)
    two = torch.zeros(1, 4, 4, dtype=torch.long)
    two[0, 3] = torch.tensor([1, 1, 0, 0])
    pl, m = project_pseudo_label(probs, two, mask, body, 0.25)
    assert pl is two and m is mask
    # "floor" (high = inf): too much is never cut, too little is raised as under "band"
    pl, m = project_pseudo_label(probs, full, mask, body, 0.25, high=float("inf"))
    assert pl is full and m is mask
    pl, m = project_pseudo_label(probs, empty, mask, body, 0.25, high=float("inf"))
    assert pl.sum() == 1 and pl[0, 3, 1] == 1
