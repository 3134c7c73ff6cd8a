"""TCSA-UDA terms against values worked out by hand, and the methods/modes in the training loop."""
import math

import numpy as np
import pytest
import torch

from napari_uuds.engine.config import ModelConfig, TrainConfig
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


@pytest.mark.parametrize("method", ["tcsa", "uuds+tcsa"])
def test_training_with_tcsa_terms_multiclass(method):
    cfg = ModelConfig.for_arch("tiny", image_size=64, class_names=["a", "b", "c"],
                               use_domain_prompt=method != "tcsa", use_seg_prompt=method != "tcsa")
    torch.manual_seed(0)
    model = UUDS(cfg)
    src, tgt = _data(cfg, 3)
    tcfg = TrainConfig(steps=3, batch_size=4, warmup_steps=1, method=method, text_encoder="clip", threshold=1.0,
                       dd_warmup=True)
    events = list(train(model, src, tgt, tcfg))
    steps = [e for e in events if e.kind == "step"]
    assert {"cov_s", "proto_s"} <= set(steps[0].losses) and "cov_t" not in steps[0].losses
    assert {"cov_t", "proto_t", "ent"} <= set(steps[1].losses)  # target terms after the warm-up
    assert "dd_s" not in steps[0].losses  # L_DD waits for the warm-up (dd_warmup)
    assert ("dd_s" in steps[1].losses) == (method == "uuds+tcsa")
    assert all(np.isfinite(v) for e in steps for v in e.losses.values())
    assert model(torch.zeros(2, 1, 64, 64), torch.zeros(2, 1, 64, 64)).logits_s.shape[1] == 4


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
