"""Benchmark tools on made-up inputs: the GPU benchmark's plateau criterion, the seeds' agreement, the corrections merge."""
import sys
from pathlib import Path

import numpy as np
import pytest

from napari_uuds.engine.config import FINETUNE_PARTS

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
gpu_speed = pytest.importorskip("gpu_speed")


def test_plateau_found_where_the_loss_stops_falling():
    curve = [(s, 10.0 * 0.5 ** (s / 100)) for s in range(10, 401, 10)]  # halves every 100 steps
    curve += [(s, 0.625) for s in range(410, 801, 10)]  # flat from step 400
    # windows of 50 after step 0: the one ending at 400 still falls (mean 0.71, then 0.625); the first
    # flat window, 401-450, is followed by two equal ones
    assert gpu_speed.plateau_step(curve, 0, window=50, rel=0.02) == 450


def test_no_plateau_from_a_partial_window_or_a_falling_loss():
    falling = [(s, 10.0 - 0.01 * s) for s in range(10, 501, 10)]
    assert gpu_speed.plateau_step(falling, 0, window=50, rel=0.02) is None
    # two complete windows then one logged point of a third: not enough to judge
    short = [(s, 1.0) for s in range(10, 111, 10)]
    assert gpu_speed.plateau_step(short, 0, window=50, rel=0.02) is None
    # the steps up to `start` (the warm-up) are not looked at
    warm = [(s, 5.0) for s in range(10, 201, 10)] + [(s, 5.0 - 0.004 * (s - 200)) for s in range(210, 501, 10)]
    assert gpu_speed.plateau_step(warm, 200, window=50, rel=0.02) is None


def test_largest_object_copies_each_mask_beside_it_for_the_agreement_of_seeds(tmp_path):
    import agreement
    import largest_object

    a = np.zeros((10, 10, 4), np.uint8)
    a[1:4, 1:4] = 1
    b = a.copy()
    a[7:10, 7:10] = 1  # seed 0: the same object and a second piece of the same size, found after it
    b[7:9, 7:9, :2] = 1  # seed 1: a smaller second piece
    for seed, m in ((0, a), (1, b)):
        d = tmp_path / "A2" / f"uuds_s{seed}"
        d.mkdir(parents=True)
        np.savez_compressed(d / "pat0004.npz", seg=m)
    figures = largest_object.process(tmp_path / "A2", ["uuds"])
    assert figures["uuds"][0]["pat0004"] == {"pieces": 2, "largest_share": 0.5, "voxels": 72, "voxels_kept": 36,
                                             "voxels_auto": 72}  # half in each piece: auto keeps both
    assert figures["uuds"][1]["pat0004"]["voxels_kept"] == 36
    assert figures["uuds"][1]["pat0004"]["voxels_auto"] == 36  # 36 of 44 voxels (82 %) in the largest
    res = agreement.agreement(tmp_path / "A2")
    assert set(res) == {"uuds", "uuds_largest", "uuds_objauto"}
    assert res["uuds_largest"]["mean"] == 100.0 > res["uuds"]["mean"]  # both keep the first piece
    # seed 1 alone loses its second piece: 36 voxels shared of 72 and 36, the seeds agree less than before
    assert res["uuds_objauto"]["mean"] == pytest.approx(200 * 36 / (72 + 36), abs=0.01)
    assert res["uuds_objauto"]["mean"] < res["uuds"]["mean"]


def test_agreement_of_seeds_is_the_mean_pairwise_dice_of_their_masks(tmp_path):
    import agreement

    a = np.zeros((8, 8, 4), np.uint8)
    a[2:6, 2:6] = 1
    shifted = np.roll(a, 2, axis=0)  # the same size in another place: overlaps half
    for seed, m in ((0, a), (1, a), (2, shifted)):
        d = tmp_path / "C" / f"uuds_s{seed}"
        d.mkdir(parents=True)
        np.savez_compressed(d / "t1.npz", seg=m)
    lone = tmp_path / "C" / "lower_s0"
    lone.mkdir()
    np.savez_compressed(lone / "t1.npz", seg=a)
    res = agreement.agreement(tmp_path / "C")
    assert set(res) == {"uuds"}  # one seed has no pair
    assert res["uuds"]["pairs"] == 3 and res["uuds"]["volumes"]["t1"] == pytest.approx((100 + 50 + 50) / 3, abs=0.01)


def test_cross_section_ratio_reads_the_axial_axis_and_the_voxel_size(tmp_path):
    import agreement
    import nibabel as nib

    # the source: a 4 x 4 voxel object on 3 of 10 axial slices, voxels 0.5 x 0.5 x 2 mm, axial axis last (RAS)
    src = np.zeros((8, 8, 10), np.uint8)
    src[2:6, 2:6, 3:6] = 1
    nib.save(nib.Nifti1Image(src, np.diag([0.5, 0.5, 2.0, 1.0])), tmp_path / "src_seg.nii.gz")
    assert agreement.cross_section_mm2(src, np.diag([0.5, 0.5, 2.0, 1.0])) == pytest.approx(4.0)
    # the target: 1 mm voxels, the axial axis first (S along array axis 0); an 8-voxel cross-section on 7 slices
    tgt_aff = np.array([[0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1.0]])
    nib.save(nib.Nifti1Image(np.zeros((12, 6, 6), np.float32), tgt_aff), tmp_path / "t1.nii.gz")
    pred = np.zeros((12, 6, 6), np.uint8)
    pred[2:9, 1:3, 1:5] = 1
    for seed, m in ((0, pred), (1, np.zeros_like(pred))):
        d = tmp_path / "masks" / "C" / f"uuds_s{seed}"
        d.mkdir(parents=True)
        np.savez_compressed(d / "t1.npz", seg=m)
    cs = agreement.cross_sections(tmp_path / "masks" / "C", tmp_path / "src_seg.nii.gz", tmp_path / "t1.nii.gz")
    assert cs["source_mm2"] == pytest.approx(4.0)
    assert cs["rows"]["uuds"]["per_seed"] == {0: 2.0, 1: 0.0}  # an empty mask: ratio 0, |log| infinite
    assert cs["rows"]["uuds"]["median_abs_log"] == float("inf")


def test_corrections_runs_split_over_processes_are_joined_and_re_summarised(tmp_path):
    import json

    corrections = pytest.importorskip("corrections")
    ks = list(corrections.KS)

    def doc(seeds, dice, commit="abc"):
        runs = {str(sd): {"curves": {st: {str(k): [dice + sd, dice + sd + 2] for k in ks} for st in corrections.STRATEGIES},
                          "finetune_s": [10.0 + sd], "slices": {}, "adapt_s": 1.0, "predict_s": []} for sd in seeds}
        return {"protocol": "C", "ks": ks, "steps": 600, "finetune_steps": 100, "batch_size": 8, "model": "tiny",
                "commit": commit, "torch": "t", "device": "cpu", "command": f"seeds {seeds}", "wall_s": 5.0,
                "runs": runs, **corrections.summarise(runs)}
    a, b, c = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "c.json"
    a.write_text(json.dumps(doc([0, 1], 50.0)))
    b.write_text(json.dumps(doc([2], 60.0)))
    assert corrections.main(["--merge", str(b), str(a), "--results", str(tmp_path / "out")]) == 0
    joined = json.loads((tmp_path / "out" / "corrections_C.json").read_text())
    assert list(joined["runs"]) == ["0", "1", "2"]  # in seed order, whichever file came first
    # the mean over every volume of every seed: (50 + 52 + 51 + 53 + 62 + 64) / 6
    assert joined["curves"]["random"]["2"] == pytest.approx(55.33, abs=0.01)
    assert joined["finetune_s"] == pytest.approx(11.0) and (tmp_path / "out" / "corrections_C.svg").exists()
    c.write_text(json.dumps(doc([3], 60.0, commit="other")))
    with pytest.raises(SystemExit, match="not the same settings"):
        corrections.main(["--merge", str(a), str(c), "--results", str(tmp_path / "out")])
    assert corrections.main(["--merge", str(a), str(c), "--mixed-commits", "--results", str(tmp_path / "out")]) == 0
    assert json.loads((tmp_path / "out" / "corrections_C.json").read_text())["commits"] == ["abc", "other"]
    with pytest.raises(SystemExit, match="already in another file"):
        corrections.main(["--merge", str(a), str(a), "--results", str(tmp_path / "out")])


def test_a_headline_renames_each_source_by_its_own_mapping(tmp_path):
    """A run's "uncertain" is whatever fine-tune was the default at its commit: a per-source renaming keeps two runs'
    same-named curves apart, and every curve must have every k on every seed."""
    import json

    corrections = pytest.importorskip("corrections")

    def doc(path, curves):
        runs = {"0": {"curves": curves, "finetune_s": [1.0], "adapt_s": 1.0}}
        path.write_text(json.dumps({"protocol": "C", "commit": path.stem, "command": path.stem, "runs": runs}))
        return path
    old = doc(tmp_path / "old.json", {"uncertain": {"0": [80.0], "1": [85.0]}, "random": {"0": [80.0], "1": [84.0]}})
    new = doc(tmp_path / "new.json", {"uncertain": {"0": [80.0], "1": [90.0]},
                                      "uncertain@segmenter": {"0": [80.0], "1": [85.0]}})
    out = corrections.join_renamed("C", [old, new], [{"uncertain": "uncertain_segmenter"}, {"uncertain": "uncertain"}],
                                   {}, {})
    assert out["curves"]["uncertain"] == {"0": 80.0, "1": 90.0}
    assert out["curves"]["uncertain_segmenter"] == {"0": 80.0, "1": 85.0} and "random" not in out["curves"]
    assert out["commits"] == ["new", "old"]
    with pytest.raises(SystemExit, match="1 renamings for 2 sources"):
        corrections.join_renamed("C", [old, new], [{"uncertain": "uncertain"}], {}, {})
    short = doc(tmp_path / "short.json", {"uncertain": {"0": [80.0]}})
    with pytest.raises(SystemExit, match=r"no k = \[1\]"):
        corrections.join_renamed("C", [old, short], [{"random": "random"}, {"uncertain": "uncertain"}], {}, {})


def test_a_corrections_curve_does_not_depend_on_the_other_curves_run_beside_it():
    """The corrections benchmark scores each curve on the protocol's classes: the same seed, strategy and fine-tune
    give the same Dice whether another strategy ran beside it or not (until 2026-12-02 the curves' names replaced the
    classes' and each extra curve counted as a missing class scored 100)."""
    corrections = pytest.importorskip("corrections")
    ctx = _phantom_corrections_context()
    alone = corrections.run_seed(0, {**ctx, "strategies": ["uncertain"]})
    beside = corrections.run_seed(0, {**ctx, "strategies": ["uncertain", "random"]})
    assert alone["slices"]["uncertain_1"] == beside["slices"]["uncertain_1"]
    assert alone["curves"]["uncertain"] == beside["curves"]["uncertain"]
    assert beside["curves"]["random"]["0"] == alone["curves"]["uncertain"]["0"]


def test_corrections_reads_the_adapted_model_an_earlier_run_saved(tmp_path):
    """``--adapted DIR``: the first run adapts and saves each seed's model, a later one reads it and measures the same
    curves (the adaptation skipped); a model adapted with other settings is refused."""
    corrections = pytest.importorskip("corrections")
    ctx = {**_phantom_corrections_context(), "strategies": ["uncertain"], "protocol": "P", "adapted": str(tmp_path)}
    saved = corrections.run_seed(0, ctx)
    # the phantom's slices are at 64 px, not the tiny model's frame of 128: the folder's name says so (round 26)
    assert (tmp_path / "P_s0_6_64px" / "model.safetensors").exists() and "adapted_from" not in saved
    read = corrections.run_seed(0, ctx)
    assert read["adapted_from"]["folder"] == str(tmp_path / "P_s0_6_64px")
    assert read["curves"] == saved["curves"] and read["slices"] == saved["slices"]
    with pytest.raises(SystemExit, match="adapted with"):
        corrections.run_seed(0, {**ctx, "batch_size": 2})
    # a model saved before a prediction default changed (round 25's smoothing) predicts as today's default does
    import json

    from napari_uuds.engine.config import ModelConfig, TrainConfig
    meta = json.loads((tmp_path / "P_s0_6_64px" / "config.json").read_text())
    assert meta["model"]["smooth_z"] == "binomial"
    meta["model"]["smooth_z"] = "none"
    (tmp_path / "P_s0_6_64px" / "config.json").write_text(json.dumps(meta))
    cfg = ModelConfig(**ctx["model_kw"])
    model, _, _ = corrections.adapted_model(cfg, ctx["sources"], ctx["targets"],
                                            TrainConfig(steps=6, batch_size=4, seed=0, threshold=0.5), ctx)
    assert model.cfg.smooth_z == "binomial"


def _phantom_corrections_context() -> dict:
    """The corrections benchmark's context on the disc phantom (source, contrast-inverted target), 6 adaptation
    steps and 3 fine-tune steps: a few seconds a run."""
    sys.path.insert(0, str(Path(__file__).parent))
    from test_adaptation import phantom

    from napari_uuds.engine.config import ModelConfig
    from napari_uuds.engine.dataset import prepare_volume

    (si, sl), (ti, tl) = phantom(1, False), phantom(2, True)
    cfg = ModelConfig.for_arch("tiny", image_size=64, class_names=["disc"])
    return {"model_kw": {k: getattr(cfg, k) for k in cfg.__dataclass_fields__}, "steps": 6, "batch_size": 4,
            "chi": 0.5, "finetune_steps": 3, "ks": [0, 1], "variants": [(FINETUNE_PARTS, 3)], "class_names": ["disc"],
            "sources": [prepare_volume(si, 2, 64, sl)], "targets": [prepare_volume(ti, 2, 64)], "refs": [tl]}


def test_a_corrections_variant_names_its_learning_rate_and_runs_at_it(monkeypatch):
    """``--variants PARTS:STEPS:LR``: the fine-tune runs at that learning rate (the optimiser sees it), its curve is
    named for it, and a variant that is not PARTS[:STEPS[:LR]] is refused."""
    corrections = pytest.importorskip("corrections")
    assert corrections.variant("segmenter:50:3e-4", 50) == ("segmenter", 50, 3e-4)
    assert corrections.variant("all", 100) == ("all", 100, None)
    for bad in ("segmenter:50:0", "segmenter:50:x", "segmenter:1:2:3", "encoder"):
        with pytest.raises(SystemExit, match="fine-tune variant"):
            corrections.variant(bad, 50)
    seen = []
    real = corrections.AdaptJob.finetune

    def spy(self, *a, **kw):  # the rate the fine-tune runs at (engine/finetune.py: None is the job's own)
        seen.append(self.train_cfg.lr if kw.get("lr") is None else kw["lr"])
        return real(self, *a, **kw)

    monkeypatch.setattr(corrections.AdaptJob, "finetune", spy)
    ctx = {**_phantom_corrections_context(), "strategies": ["uncertain"],
           "variants": [(FINETUNE_PARTS, 3, None), (FINETUNE_PARTS, 3, 0.01)]}
    out = corrections.run_seed(0, ctx)  # the default fine-tune's curve keeps the strategy's name
    assert set(out["curves"]) == {"uncertain", f"uncertain@{FINETUNE_PARTS}:3:0.01"}
    assert seen == [corrections.FINETUNE_LR or corrections.TrainConfig.lr, 0.01]


def test_a_scoring_way_changes_only_what_it_names_and_the_model_ends_as_it_came():
    import types

    import torch

    import run

    cfg = types.SimpleNamespace(tta="none", refine="none", objects="all", smooth_z="none")
    net = torch.nn.Linear(1, 1)
    model = types.SimpleNamespace(cfg=cfg, state_dict=net.state_dict, load_state_dict=net.load_state_dict,
                                  last_iterate_state={k: v + 1 for k, v in net.state_dict().items()})
    seen = run.score_ways(model, {"three": ("ema", "d8", "edges"), "four": ("last", "none", "none", "largest"),
                                  "five": ("ema", "none", "none", None, "binomial")},
                          lambda m, name: (dict(vars(m.cfg)), float(net.bias)))
    bias = float(net.bias)
    assert seen["three"] == ({"tta": "d8", "refine": "edges", "objects": "all", "smooth_z": "none"}, bias)
    assert seen["four"] == ({"tta": "none", "refine": "none", "objects": "largest", "smooth_z": "none"}, bias + 1)
    assert seen["five"] == ({"tta": "none", "refine": "none", "objects": "all", "smooth_z": "binomial"}, bias)
    assert vars(cfg) == {"tta": "none", "refine": "none", "objects": "all", "smooth_z": "none"}


def test_a_protocol_is_framed_as_the_engine_frames_it():
    """``--image-size auto`` in the benchmark (round 26): the cord's slices at 64 px, every volume sliced again, the
    cache folder of a 64-px model named apart from the 128-px ones; at the model frame nothing changes."""
    run = pytest.importorskip("run")
    corrections = pytest.importorskip("corrections")
    data = Path(__file__).resolve().parents[1] / "sample_data"  # holds cord/, as the shared data does
    cfg, loaded = run.setup_protocol(data, run.PROTOCOLS["C"], image_size="auto", upper=True)
    assert cfg.image_size == 64
    assert all(p.image.shape[-2:] == (64, 64) for k in ("sources", "targets", "upper_sources") for p in loaded[k])
    assert corrections.adapted_folder("/c", "C", 2, 600, cfg) == Path("/c/C_s2_600_64px")
    cfg, loaded = run.setup_protocol(data, run.PROTOCOLS["C"], image_size=None)
    assert cfg.image_size == 128 and loaded["sources"][0].image.shape[-1] == 128
    assert corrections.adapted_folder("/c", "C", 2, 600, cfg) == Path("/c/C_s2_600")


def test_slice_worth_separates_the_slices_spread_from_the_fine_tunes_luck():
    from slice_value import slice_errors, summary

    # four grid slices whose worth differs (90, 92, 94, 96) and a review pick (7) worth 97; each fine-tuned twice,
    # one point apart: the fine-tune's luck is sd sqrt(0.5), the slices' own spread what the grid's spread leaves
    values = {0: [89.5, 90.5], 2: [91.5, 92.5], 4: [93.5, 94.5], 6: [95.5, 96.5], 7: [96.5, 97.5]}
    score = np.array([1.0, 0, 2.0, 0, 3.0, 0, 4.0, 5.0])
    error = np.array([40, 0, 30, 0, 20, 0, 10, 5])
    s = summary(values, score, error, picks=[7, 0], grid=[0, 2, 4, 6])
    assert s["within_slice_sd"] == pytest.approx(np.sqrt(0.5), abs=1e-3)
    raw = float(np.std([90, 92, 94, 96], ddof=1))
    assert s["between_slices_sd_raw"] == pytest.approx(raw, abs=1e-3)
    assert s["between_slices_sd"] == pytest.approx(np.sqrt(raw ** 2 - 0.5 / 2), abs=1e-3)
    assert s["random_expected"] == pytest.approx(93.0)
    assert s["first_pick_minus_random"] == pytest.approx(4.0)
    assert s["first_pick_percentile"] == 100.0
    assert s["spearman_score_worth"] == pytest.approx(1.0)
    assert s["spearman_error_worth"] == pytest.approx(-1.0)
    seg = np.zeros((3, 4, 5), np.uint8)
    ref = seg.copy()
    ref[1, :2, :] = 1
    assert slice_errors(seg, ref, axis=1).tolist() == [5, 5, 0, 0]


def test_corrections_scores_a_fine_tunes_weight_average_and_its_last_weights_on_one_run(monkeypatch):
    """``--average DECAY`` (corrections round 7): each fine-tune is scored with its weight average (curve
    NAME+average) and with its last weights (curve NAME), which are what a fine-tune without the average measures
    (the loop and its draws do not change); without ``--average`` a curve is the engine's default fine-tune."""
    corrections = pytest.importorskip("corrections")
    ctx = {**_phantom_corrections_context(), "strategies": ["uncertain"], "finetune_steps": 4,
           "variants": [(FINETUNE_PARTS, 4)]}
    default = corrections.run_seed(0, ctx)
    both = corrections.run_seed(0, {**ctx, "average": 0.99})
    assert set(both["curves"]) == {"uncertain", "uncertain" + corrections.AVERAGE_SUFFIX}
    assert both["curves"]["uncertain+average"]["0"] == both["curves"]["uncertain"]["0"]
    assert both["curves"]["uncertain+average"]["1"] != both["curves"]["uncertain"]["1"]
    same = "uncertain+average" if corrections.FINETUNE_EMA == 0.99 else "uncertain"
    assert both["curves"][same] == default["curves"]["uncertain"]
    monkeypatch.setattr(corrections, "FINETUNE_EMA", 0.0)  # a fine-tune that ends with its last weights
    assert both["curves"]["uncertain"] == corrections.run_seed(0, ctx)["curves"]["uncertain"]


def test_the_gpu_benchmarks_ddp_and_cohort_sections_measure_what_they_name(cord, tiny_cfg, tmp_path):
    """Issue 17's two GPU sections, run tiny on the CPU: the DDP path against the plain run (gloo, one process; the
    environment and the process group left as found) and a folder of volumes through ``napari-uuds predict``."""
    import argparse
    import os

    import nibabel as nib
    import torch

    from napari_uuds.engine.dataset import load_source_pairs, load_targets

    ctx = {"model_kw": {k: getattr(tiny_cfg, k) for k in tiny_cfg.__dataclass_fields__}, "device": torch.device("cpu"),
           "sources": load_source_pairs([cord["t2"]], [cord["t2_seg"]], 1, tiny_cfg.axis, tiny_cfg.image_size),
           "targets": load_targets([cord["t1"]], tiny_cfg.axis, tiny_cfg.image_size)}
    args = argparse.Namespace(batches=[2], ddp_repeats=1, log_every=2, smoke=True, cohort=3, cohort_batch=8)
    before = {k: os.environ.get(k) for k in ("RANK", "WORLD_SIZE", "MASTER_PORT", "TORCHELASTIC_RUN_ID")}
    ddp = gpu_speed.section_ddp(ctx, args)
    assert {k: os.environ.get(k) for k in before} == before and not torch.distributed.is_initialized()
    assert ddp["backend"] == "gloo" and [r["kind"] for r in ddp["runs"]] == ["plain", "ddp"]
    assert ddp["ddp_over_plain"] == pytest.approx(ddp["runs"][1]["step_ms"] / ddp["runs"][0]["step_ms"], rel=1e-3)
    co = gpu_speed.section_cohort(ctx, args)
    shapes = {tuple(nib.load(str(p)).shape) for p in gpu_speed.cohort_files(args)}
    assert (co["volumes"], co["segmented"], co["skipped"]) == (3, 3, 0)
    assert len(co["shapes"]) == len(shapes) == 2  # the sample's t1 and t2, cycled: t1, t2, t1
    along = [int(s.split("x")[tiny_cfg.axis]) for s in co["shapes"]]
    assert co["slices"] in (2 * along[0] + along[1], along[0] + 2 * along[1])
    assert co["slices_per_s"] == pytest.approx(co["slices"] / co["wall_s"], rel=0.01) and co["peak_rss_gib"] > 0


@pytest.mark.parametrize("channels_last", [False, True])
def test_the_upsampling_candidates_are_bilinear_x2_exactly(channels_last):
    """The GPU benchmark's two rewrites of the decoders' resize (section upsample) compute F.interpolate's values
    (bilinear, x2, align_corners=False, edges clamped) and keep the input's memory format."""
    import torch
    import torch.nn.functional as F

    torch.manual_seed(0)
    x = torch.randn(2, 5, 7, 9, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    want = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
    for fn in (gpu_speed.upsample_stencil, gpu_speed.upsample_conv_transpose):
        got = fn(x)
        assert got.shape == (2, 5, 14, 18) and torch.allclose(got, want, atol=1e-12), fn.__name__
        if channels_last:
            assert got.is_contiguous(memory_format=torch.channels_last), fn.__name__
