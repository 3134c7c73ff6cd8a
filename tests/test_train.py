"""The training generator: events, stop flag, live threshold/prompt, reproducibility."""
import numpy as np
import pytest
import torch

from napari_uuds.engine.config import TrainConfig
from napari_uuds.engine.dataset import load_source_pairs, load_targets, samplers
from napari_uuds.engine.model import UUDS
from napari_uuds.engine.train import TrainControl, train


@pytest.fixture()
def data(cord, tiny_cfg):
    src = load_source_pairs([cord["t2"]], [cord["t2_seg"]], 1, tiny_cfg.axis, tiny_cfg.image_size)
    tgt = load_targets([cord["t1"]], tiny_cfg.axis, tiny_cfg.image_size)
    return src, tgt


def _run(cfg, data, tcfg, control=None):
    torch.manual_seed(0)
    model = UUDS(cfg)
    s, t = samplers(*data, tcfg.fg_fraction, tcfg.seed)
    return model, list(train(model, s, t, tcfg, control=control))


def test_events_and_losses(tiny_cfg, data):
    _, events = _run(tiny_cfg, data, TrainConfig(steps=4, batch_size=2, warmup_steps=2, preview_every=2,
                                                 dd_warmup=False))
    kinds = [e.kind for e in events]
    assert kinds[0] == "start" and kinds[-1] == "done"
    steps = [e for e in events if e.kind == "step"]
    assert [e.step for e in steps] == [1, 2, 3, 4]
    assert {"seg", "id", "bscl", "dd_s", "dd_ts", "total"} <= set(steps[0].losses)  # L_DD from step 0
    assert "useg" not in steps[1].losses and "useg" in steps[2].losses  # joins after the warm-up
    assert all(np.isfinite(v) for e in steps for v in e.losses.values())
    assert steps[-1].slices_per_s > 0
    prev = [e for e in events if e.kind == "preview"]
    assert len(prev) == 2 and set(prev[0].preview) == {"synthetic", "seg", "entropy", "certain"}
    assert prev[0].preview["seg"].shape == (tiny_cfg.image_size, tiny_cfg.image_size)


def test_dd_warmup_holds_domain_distillation_back(tiny_cfg, data):
    _, events = _run(tiny_cfg, data, TrainConfig(steps=3, batch_size=2, warmup_steps=2, dd_warmup=True))
    steps = [e for e in events if e.kind == "step"]
    for e in steps[:2]:  # the warm-up is pure source training
        assert {"seg", "id", "bscl"} <= set(e.losses) and not {"dd_s", "dd_ts", "useg"} & set(e.losses)
    assert {"dd_s", "dd_ts", "useg"} <= set(steps[2].losses)


def test_same_seed_same_losses(tiny_cfg, data):
    tc = TrainConfig(steps=2, batch_size=2, seed=3)
    a = [e.losses for e in _run(tiny_cfg, data, tc)[1] if e.kind == "step"]
    b = [e.losses for e in _run(tiny_cfg, data, tc)[1] if e.kind == "step"]
    assert a == b


def test_stop_ends_within_one_step_and_keeps_weights(tiny_cfg, data):
    torch.manual_seed(0)
    model = UUDS(tiny_cfg)
    before = model.seg_decoder.head.weight.detach().clone()
    s, t = samplers(*data, 0.5, 0)
    control = TrainControl()
    seen = []
    for ev in train(model, s, t, TrainConfig(steps=50, batch_size=2), control=control):
        seen.append(ev)
        if ev.kind == "step" and ev.step == 2:
            control.stop()
    assert seen[-1].kind == "stopped" and seen[-1].step == 2
    assert model.trained_steps == 2
    assert not torch.equal(before, model.seg_decoder.head.weight)


def test_threshold_and_prompt_read_while_running(tiny_cfg, data):
    torch.manual_seed(0)
    model = UUDS(tiny_cfg)
    s, t = samplers(*data, 0.5, 0)
    control = TrainControl(threshold=1.0)
    certain = []
    for ev in train(model, s, t, TrainConfig(steps=4, batch_size=2, warmup_steps=0), control=control):
        if ev.kind == "step":
            certain.append(ev.losses["certain"])
            control.threshold = 0.0  # nothing is certain from the next step on
            control.domain_prompt = "A scan of a {source} spine"
    assert certain[0] > 0.99 and certain[1:] == [0.0, 0.0, 0.0]
    assert model.domain_prompt.text == "A scan of a T2 spine"


def test_guard_holds_the_target_terms_back_and_says_so(tiny_cfg, data, monkeypatch):
    """A guard that trips (here: a band no ratio fits) drops L_DD and L_useg from the next step on, with one
    warning event; source terms go on."""
    import napari_uuds.engine.train as tr
    from napari_uuds.engine.guards import AdaptationGuard, GuardLimits

    monkeypatch.setattr(tr, "AdaptationGuard",
                        lambda frac: AdaptationGuard(frac, GuardLimits(ratio_low=1e9, ratio_high=2e9)))
    model, events = _run(tiny_cfg, data, TrainConfig(steps=4, batch_size=2, warmup_steps=1))
    steps = [e for e in events if e.kind == "step"]
    assert "dd_s" in steps[0].losses and "useg" in steps[1].losses  # before the guard's first look
    assert steps[1].message.startswith("warning at step 2")
    for e in steps[2:]:
        assert not {"dd_s", "dd_ts", "useg"} & set(e.losses) and {"seg", "id"} <= set(e.losses)
        assert e.message == ""  # said once
    assert model.guard_report["trips"] == 1 and model.guard_report["held_steps"] == 3


def test_no_guard_and_no_randomisation_in_the_paper_recipe(tiny_cfg, data):
    from napari_uuds.engine.config import recipe_overrides

    _, t, _ = recipe_overrides("paper")
    model, events = _run(tiny_cfg, data, TrainConfig(steps=3, batch_size=2, warmup_steps=1, **t))
    steps = [e for e in events if e.kind == "step"]
    assert model.guard_report is None and not any("target_fraction" in e.losses for e in steps)


def test_auto_randomisation_is_gin_or_none_exactly(tiny_cfg, data, cord):
    """randomise="auto" decides once, without a label or a random draw: on the cord (T2 -> T1, grey values
    far apart) it trains exactly as gin, with the T2 as its own target exactly as none."""
    def losses(d, mode):
        model, events = _run(tiny_cfg, d, TrainConfig(steps=3, batch_size=2, randomise=mode))
        return [e.losses for e in events if e.kind == "step"], model.randomise_used

    auto, used = losses(data, "auto")
    assert used["randomise"] == "gin" and used["raw_w1"] > 0.3
    assert auto == losses(data, "gin")[0]
    same = (data[0], load_targets([cord["t2"]], tiny_cfg.axis, tiny_cfg.image_size))
    auto, used = losses(same, "auto")
    assert used["randomise"] == "none" and used["raw_w1"] < 0.05
    assert auto == losses(same, "none")[0]


def test_randomised_slice_into_the_segmenter_changes_what_l_id_asks_for(tiny_cfg, data):
    """randomise_into="segmenter": L_id asks for the randomised slice (the translator passes it through); the
    default asks for the clean one. Same draws, so the first step's other terms agree and L_id differs."""
    a = [e.losses for e in _run(tiny_cfg, data, TrainConfig(steps=1, batch_size=2, randomise="gin",
                                                               randomise_p=1.0))[1] if e.kind == "step"][0]
    b = [e.losses for e in _run(tiny_cfg, data, TrainConfig(steps=1, batch_size=2, randomise="gin", randomise_p=1.0,
                                                               randomise_into="segmenter"))[1] if e.kind == "step"][0]
    assert a["seg"] == b["seg"] and a["id"] != b["id"]


def test_randomised_reconstruction_into_the_segmenter_changes_only_what_it_reads(tiny_cfg, data):
    """randomise_into="both": the translator reads the same randomised slice as the default and L_id asks for the
    clean one (same L_id at step 1), while the segmenter reads a second draw of GIN on the reconstruction (L_seg
    differs)."""
    def first(into):
        return [e.losses for e in _run(tiny_cfg, data, TrainConfig(steps=1, batch_size=2, randomise="gin",
                                                                    randomise_p=1.0, randomise_into=into))[1]
                if e.kind == "step"][0]

    a, b = first("translator"), first("both")
    assert a["id"] == b["id"] and a["seg"] != b["seg"]
