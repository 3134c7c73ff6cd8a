"""TCSA-UDA terms against values worked out by hand, and the methods/modes in the training loop."""
import math

import numpy as np
import pytest
import torch

from napari_uuds.engine.config import LossWeights, ModelConfig, TrainConfig
from napari_uuds.engine.dataset import samplers
from napari_uuds.engine.errors import UUDSError
from napari_uuds.engine.losses import IGNORE_LABEL, loss_seg
from napari_uuds.engine.model import UUDS
from napari_uuds.engine.slices import SliceSampler
from napari_uuds.engine.tcsa import (PrototypeMemory, class_prototypes, loss_entropy, loss_proto_align,
                                     loss_vl_cov, relation_matrix, soft_class_weights)
from napari_uuds.engine.text_embed import class_text_relations, minilm_available
from napari_uuds.engine.train import train


def test_class_prototypes_by_hand():
    # two pixels: f0 = (1, 0), f1 = (0, 2); class 0 owns pixel 0, class 1 half of each
    feats = torch.tensor([[1.0, 0.0], [0.0, 2.0]]).view(1, 2, 1, 2)
    w = torch.tensor([[1.0, 0.0], [0.5, 0.5]]).view(1, 2, 1, 2)
    p, present = class_prototypes(feats, w)
    torch.testing.assert_close(p, torch.tensor([[1.0, 0.0], [0.5, 1.0]]))
    assert present.tolist() == [True, True]
    _, present = class_prototypes(feats, w * 0.4)  # 0.4 of a pixel's worth: absent
    assert present.tolist() == [False, False]


def test_relation_matrix_and_vl_cov_by_hand():
    p = torch.tensor([[1.0, 0.0], [0.5, 1.0]])
    r = relation_matrix(p)
    s = 0.5 / math.sqrt(1.25)
    torch.testing.assert_close(r, torch.tensor([[1.0, s], [s, 1.0]]))
    # text relation t = 0: 1 - (2 + 2 s t) / (sqrt(2 + 2 s^2) sqrt(2 + 2 t^2))
    txt = torch.eye(2)
    expect = 1 - 2 / (math.sqrt(2 + 2 * s * s) * math.sqrt(2))
    got = loss_vl_cov(p, torch.tensor([True, True]), txt)
    assert float(got) == pytest.approx(expect, rel=1e-5)
    assert float(got) == pytest.approx(0.0872, abs=1e-4)
    # equal relations: no loss; one class present: nothing to align
    assert float(loss_vl_cov(p, torch.tensor([True, True]), r)) == pytest.approx(0.0, abs=1e-6)
    assert float(loss_vl_cov(p, torch.tensor([True, False]), txt)) == 0.0


def test_vl_cov_gradient_moves_relations_towards_text():
    p = torch.tensor([[1.0, 0.0], [0.5, 1.0]], requires_grad=True)
    txt = torch.tensor([[1.0, 0.9], [0.9, 1.0]])
    opt = torch.optim.SGD([p], lr=0.5)
    before = float(relation_matrix(p.detach())[0, 1])
    for _ in range(50):
        opt.zero_grad()
        loss_vl_cov(p, torch.tensor([True, True]), txt).backward()
        opt.step()
    after = float(relation_matrix(p.detach())[0, 1])
    assert abs(after - 0.9) < abs(before - 0.9) / 4


def test_proto_align_by_hand():
    p = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    g = torch.tensor([[1.0, 0.0], [1.0, 1.0]])  # G_1 normalised: (0.7071, 0.7071)
    c = 1 / math.sqrt(2)
    row0 = math.log(1 + math.exp(c - 1))  # -log e^1 / (e^1 + e^c)
    row1 = math.log(1 + math.exp(-c))  # -log e^c / (e^0 + e^c)
    got = loss_proto_align(p, torch.tensor([True, True]), g, torch.tensor([True, True]), tau=1.0)
    assert float(got) == pytest.approx((row0 + row1) / 2, rel=1e-5)
    assert float(got) == pytest.approx(0.4791, abs=1e-4)
    # only class 0 present, memory of class 1 missing: softmax over valid classes only -> log 1 = 0
    got = loss_proto_align(p, torch.tensor([True, False]), g, torch.tensor([True, False]), tau=1.0)
    assert float(got) == pytest.approx(0.0, abs=1e-6)
    assert float(loss_proto_align(p, torch.tensor([False, False]), g, torch.tensor([True, True]))) == 0.0


def test_prototype_memory_ema():
    m = PrototypeMemory(2, 2, momentum=0.9)
    m.update(torch.tensor([[1.0, 0.0], [0.0, 0.0]]), torch.tensor([True, False]))
    assert m.valid.tolist() == [True, False]
    torch.testing.assert_close(m.g[0], torch.tensor([1.0, 0.0]))
    m.update(torch.tensor([[0.0, 1.0], [2.0, 2.0]]), torch.tensor([True, True]))
    torch.testing.assert_close(m.g, torch.tensor([[0.9, 0.1], [2.0, 2.0]]))  # EMA for 0, fresh for 1


def test_soft_class_weights_and_entropy():
    lab = torch.tensor([[[0, 1], [1, 1]]])
    w = soft_class_weights(lab, 2, (1, 1))
    torch.testing.assert_close(w.flatten(), torch.tensor([0.25, 0.75]))
    mask = torch.tensor([[[1, 1], [1, 0]]])
    torch.testing.assert_close(soft_class_weights(lab, 2, (1, 1), mask).flatten(), torch.tensor([0.25, 0.5]))
    assert float(loss_entropy(torch.full((1, 2, 2, 2), 0.5))) == pytest.approx(1.0)
    assert float(loss_entropy(torch.tensor([1.0, 0.0]).view(1, 2, 1, 1))) == pytest.approx(0.0, abs=1e-6)


def test_loss_seg_ignores_pixels():
    torch.manual_seed(0)
    logits = torch.randn(1, 2, 1, 4)
    full = torch.tensor([[[0, 1, 1, 0]]])
    part = torch.tensor([[[0, 1, IGNORE_LABEL, IGNORE_LABEL]]])
    ce = torch.nn.functional.cross_entropy(logits[..., :2], full[..., :2])
    p = logits[..., :2].softmax(1)
    dice = 1 - (2 * p[0, 1, 0, 1] + 1) / (1 + p[0, 1, 0, :2].sum() + 1)
    assert float(loss_seg(logits, part)) == pytest.approx(float(ce + dice), rel=1e-5)
    assert float(loss_seg(logits, torch.full_like(part, IGNORE_LABEL))) == 0.0


def test_clip_text_relations(tiny_cfg):
    model = UUDS(ModelConfig.for_arch("tiny", image_size=64, class_names=["cord", "csf"],
                                      class_descriptions=["the spinal cord", "cerebrospinal fluid"]))
    rel, used = class_text_relations(model, "clip")
    assert used == "clip" and rel.shape == (3, 3)
    torch.testing.assert_close(rel, rel.t())
    torch.testing.assert_close(rel.diagonal(), torch.ones(3))
    with pytest.raises(UUDSError, match="one description per class"):
        ModelConfig(class_names=["a", "b"], class_descriptions=["only one"])


@pytest.mark.skipif(not minilm_available(), reason="optional extra [tcsa] not installed")
def test_minilm_relations_are_semantic(tiny_cfg):
    model = UUDS(ModelConfig.for_arch("tiny", image_size=64, class_names=["a", "b", "c"],
                                      class_descriptions=["necrotic tumour core", "necrosis inside a glioma",
                                                          "a photograph of a cat"]))
    rel, used = class_text_relations(model, "minilm")
    assert used == "minilm"
    assert rel[1, 2] > rel[1, 3] + 0.2  # the two tumour descriptions are closer than tumour and cat


def _data(cfg, n_classes):
    """Synthetic volumes: bright discs of classes 1..K on noise (source) and the inverted contrast (target)."""
    g = torch.Generator().manual_seed(0)
    s = cfg.image_size
    yy, xx = torch.meshgrid(torch.arange(s), torch.arange(s), indexing="ij")
    imgs, labs = [], []
    for _ in range(6):
        lab = torch.zeros(s, s, dtype=torch.uint8)
        for k in range(1, n_classes + 1):
            cy, cx = torch.randint(10, s - 10, (2,), generator=g).tolist()
            lab[((yy - cy) ** 2 + (xx - cx) ** 2) < (4 + 2 * k) ** 2] = k
        img = lab.float() / n_classes + 0.1 * torch.randn(s, s, generator=g)
        imgs.append(img.clamp(-1, 1))
        labs.append(lab)
    src = torch.stack(imgs)[:, None]
    return SliceSampler([src], [torch.stack(labs)[:, None]], 0.5, 0), SliceSampler([-src], None, 0.0, 1)


@pytest.mark.parametrize("method,form", [("tcsa", "centre"), ("uuds+tcsa", "centre"), ("tcsa", "mpcl"),
                                         ("tcsa", "infonce")])
def test_training_with_tcsa_terms_multiclass(method, form):
    cfg = ModelConfig.for_arch("tiny", image_size=64, class_names=["a", "b", "c"],
                               use_domain_prompt=method != "tcsa", use_seg_prompt=method != "tcsa")
    torch.manual_seed(0)
    model = UUDS(cfg)
    src, tgt = _data(cfg, 3)
    tcfg = TrainConfig(steps=3, batch_size=4, warmup_steps=1, method=method, text_encoder="clip", threshold=1.0,
                       dd_warmup=True)
    events = list(train(model, src, tgt, tcfg, LossWeights(proto_form=form)))
    steps = [e for e in events if e.kind == "step"]
    # source terms from the start; the centre form has no source-only term (it compares the two domains' centres)
    assert "cov_s" in steps[0].losses and ("proto_s" in steps[0].losses) == (form != "centre")
    assert not ({"cov_t", "proto_t", "adv", "disc"} & set(steps[0].losses))
    # target terms after the warm-up: the adversarial term and its discriminator's loss; no direct entropy term
    assert {"cov_t", "proto_t", "adv", "disc"} <= set(steps[1].losses) and "ent" not in steps[1].losses
    assert "dd_s" not in steps[0].losses  # L_DD waits for the warm-up (dd_warmup)
    assert ("dd_s" in steps[1].losses) == (method == "uuds+tcsa")
    assert all(np.isfinite(v) for e in steps for v in e.losses.values())
    assert model(torch.zeros(2, 1, 64, 64), torch.zeros(2, 1, 64, 64)).logits_s.shape[1] == 4
    with pytest.raises(UUDSError, match="prototype form"):
        LossWeights(proto_form="arcface")


def test_source_only_mode_has_no_target_terms(tiny_cfg, cord):
    from napari_uuds.engine.dataset import load_source_pairs, load_targets

    src = load_source_pairs([cord["t2"]], [cord["t2_seg"]], 1, tiny_cfg.axis, tiny_cfg.image_size)
    tgt = load_targets([cord["t1"]], tiny_cfg.axis, tiny_cfg.image_size)
    s, t = samplers(src, tgt, 0.5, 0)
    t.sample = lambda *a, **k: (_ for _ in ()).throw(AssertionError("the target was read"))
    torch.manual_seed(0)
    events = list(train(UUDS(tiny_cfg), s, t, TrainConfig(steps=2, batch_size=2, warmup_steps=0, mode="source_only")))
    losses = [e.losses for e in events if e.kind == "step"]
    assert all(not ({"dd_s", "dd_ts", "useg"} & set(lo)) for lo in losses) and "seg" in losses[0]


def test_bad_method_mode_and_encoder():
    for kw in ({"method": "cyclegan"}, {"mode": "target"}, {"text_encoder": "bert"}, {"dd_flow": "detached"}):
        with pytest.raises(UUDSError, match="choose one of"):
            TrainConfig(**kw)


# -- issue 18: the authors' structure --------------------------------------------------------------------------------
def test_mpcl_by_hand_with_its_angular_margin():
    from napari_uuds.engine.tcsa import loss_mpcl

    centres = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    theta = 0.3  # one pixel at angle 0.3 from class 0's centre, labelled 0
    feats = torch.tensor([math.cos(theta), math.sin(theta)]).view(1, 2, 1, 1)
    labels = torch.zeros(1, 1, 1, dtype=torch.long)
    m, tau = 0.4, 0.5
    got = loss_mpcl(feats, labels, centres, torch.ones(1, 1, 1), m, tau=tau, base_tau=1.0)
    pos, neg = math.cos(theta + m) / tau, math.cos(math.pi / 2 - theta) / tau
    want = tau * -(pos - math.log(math.exp(pos) + math.exp(neg)))
    assert got.item() == pytest.approx(want, rel=1e-5)
    # the margin makes the same pixel cost more; unselected pixels cost nothing
    assert got > loss_mpcl(feats, labels, centres, torch.ones(1, 1, 1), 0.0, tau=tau, base_tau=1.0)
    assert loss_mpcl(feats, labels, centres, torch.zeros(1, 1, 1), m).item() == 0.0
    # an unseen centre is no negative: with class 1 unseen, the pixel's only logit is its own (loss 0)
    assert loss_mpcl(feats, labels, centres, torch.ones(1, 1, 1), m, valid=torch.tensor([True, False])).item() == 0.0


def test_centre_pseudo_labels_select_by_the_gap_between_the_two_nearest_centres():
    from napari_uuds.engine.tcsa import centre_pseudo_labels

    centres = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    feats = torch.tensor([[1.0, 0.05], [0.7, 0.72]]).t().reshape(1, 2, 1, 2)  # clear class 0; near the bisector
    labels, select = centre_pseudo_labels(feats, centres, threshold=0.25)
    assert labels.flatten().tolist() == [0, 1] and select.flatten().tolist() == [1.0, 0.0]
    # a centre never seen (class 1 here) is never chosen
    labels, select = centre_pseudo_labels(feats, centres, threshold=0.25, valid=torch.tensor([True, False]))
    assert labels.flatten().tolist() == [0, 0]


def test_class_centres_blend_and_the_centre_mse_pulls_target_features_to_the_source():
    from napari_uuds.engine.tcsa import ClassCentres, loss_centre_mse

    src, trg = ClassCentres(2, 3, momentum=0.5), ClassCentres(2, 3, momentum=0.5)
    present = torch.tensor([True, False])
    c, valid = src.blend(torch.tensor([[2.0, 0, 0], [9.0, 9, 9]]), present)  # class 1 absent: not taken
    assert torch.equal(c[0], torch.tensor([2.0, 0, 0])) and valid.tolist() == [True, False]
    c, _ = src.blend(torch.tensor([[4.0, 0, 0], [0.0, 0, 0]]), present)
    assert torch.allclose(c[0], torch.tensor([3.0, 0, 0]))  # 0.5 old + 0.5 batch
    p_t = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 0.0]], requires_grad=True)
    c_t, valid_t = trg.blend(p_t, present)
    loss = loss_centre_mse(c.detach(), c_t, valid & valid_t)
    assert loss.item() == pytest.approx((9 + 1) / 3)
    loss.backward()
    assert p_t.grad[0, 0] < 0 and p_t.grad[0, 1] > 0 and p_t.grad[1].abs().sum() == 0  # towards (3, 0, 0)


def test_the_discriminator_learns_to_tell_the_domains_and_its_generator_term_moves_only_the_segmenter():
    from napari_uuds.engine.discriminator import OutputAdversary, PatchDiscriminator, self_information

    probs = torch.tensor([0.9, 0.1]).view(1, 2, 1, 1)
    assert self_information(probs).sum().item() == pytest.approx(
        -(0.9 * math.log2(0.9) + 0.1 * math.log2(0.1)), rel=1e-5)  # its sum is the normalised entropy
    assert PatchDiscriminator(2, 8)(torch.zeros(2, 2, 64, 64)).shape == (2, 1, 6, 6)
    torch.manual_seed(0)
    adv = OutputAdversary(2, 8, torch.device("cpu"), lr=1e-3)
    confident = torch.zeros(4, 2, 32, 32)
    confident[:, 0] = 0.99
    confident[:, 1] = 0.01
    unsure = torch.full((4, 2, 32, 32), 0.5)
    first = adv.step(confident, unsure).item()
    for _ in range(30):
        last = adv.step(confident, unsure).item()
    assert last < first * 0.5  # confident maps (source) and unsure ones (target) are told apart
    adv.opt.zero_grad(set_to_none=True)
    logits_t = torch.zeros(4, 2, 32, 32, requires_grad=True)
    g = adv.generator_loss(logits_t.softmax(1))
    g.backward()
    assert logits_t.grad is not None and logits_t.grad.abs().sum() > 0
    assert all(p.grad is None for p in adv.disc.parameters())  # the discriminator is not moved by it
    assert all(p.requires_grad for p in adv.disc.parameters())  # and trains again at its own step


def test_the_text_conditioned_head_reads_the_modality_texts_and_travels_with_the_weights(tmp_path):
    from napari_uuds.engine import checkpoint as ckpt
    from napari_uuds.engine.text_head import SOURCE, TARGET

    cfg = ModelConfig.for_arch("tiny", image_size=64, class_names=["a", "b"], use_domain_prompt=False,
                               use_seg_prompt=False, text_head=True, source_modality="T2", target_modality="T1")
    assert cfg.text_head_dim > 0
    torch.manual_seed(0)
    model = UUDS(cfg)
    src, tgt = _data(cfg, 2)
    events = list(train(model, src, tgt, TrainConfig(steps=2, batch_size=4, warmup_steps=1, method="tcsa",
                                                     text_encoder="clip", threshold=1.0)))
    assert events[-1].kind == "done" and bool(model.text_head.text_ready)
    texts = model.text_head.class_text
    assert texts.shape == (2, 3, cfg.text_head_dim) and not torch.equal(texts[SOURCE], texts[TARGET])
    # the head's generated weights: the gradient reaches the text path and the controller
    model.train()
    out = model(torch.randn(2, 1, 64, 64), torch.randn(2, 1, 64, 64), None)
    (out.logits_s.sum() + out.logits_ts.sum()).backward()
    assert model.text_head.controller[-1].weight.grad.abs().sum() > 0
    assert model.text_head.text_to_vision[0].weight.grad.abs().sum() > 0  # (trained two steps: the controller moved)
    # with a trained controller, the class texts condition the prediction: the target's texts steer the target path
    model.eval()
    with torch.no_grad():
        model.text_head.controller[-1].weight.normal_(0, 0.05)
        x = torch.randn(1, 1, 64, 64)
        before = model.infer(x)[1]
        model.text_head.class_text[SOURCE].mul_(-1.0)
        assert torch.allclose(model.infer(x)[1], before)  # inference reads the target modality's row only
        model.text_head.class_text[TARGET].mul_(-1.0)
        assert not torch.allclose(model.infer(x)[1], before)
    ckpt.save_checkpoint(model, tmp_path / "run")
    back, _ = ckpt.load_checkpoint(tmp_path / "run")
    assert back.cfg.text_head and torch.equal(back.text_head.class_text, model.text_head.class_text)
    assert bool(back.text_head.text_ready)
