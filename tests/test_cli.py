"""Command line: every bad input ends in one line naming the file and the problem, exit 2, nothing written."""
import json
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from napari_uuds.cli import main
from napari_uuds.engine.config import FINETUNE_EMA, FINETUNE_LR, FINETUNE_PARTS


def _nii(path, data, aff=None):
    nib.save(nib.Nifti1Image(data, np.eye(4) if aff is None else aff), path)
    return path


@pytest.fixture()
def vols(tmp_path):
    rng = np.random.default_rng(0)
    img = rng.random((24, 24, 12)).astype(np.float32)
    lab = np.zeros((24, 24, 12), np.uint8)
    lab[8:16, 8:16, 3:9] = 1
    d = tmp_path / "in"
    d.mkdir()
    return {"img": _nii(d / "img.nii.gz", img), "lab": _nii(d / "lab.nii.gz", lab),
            "tgt": _nii(d / "tgt.nii.gz", img[::-1].copy()), "dir": d, "rng": rng}


def _adapt(v, out, **over):
    args = {"--source": v["img"], "--source-label": v["lab"], "--target": v["tgt"], "--out": out,
            "--steps": 1, "--batch-size": 2, "--image-size": 64}
    args.update(over)
    argv = ["adapt", "--quiet"]
    for k, val in args.items():
        if val is True:  # a flag
            argv.append(k)
        elif val is not None:
            argv += [k, str(val)]
    return main(argv)


def _bad(v, case):
    d, rng = v["dir"], v["rng"]
    if case == "missing file":
        return {"--target": d / "nope.nii.gz"}, "nope.nii.gz: file not found"
    if case == "not NIfTI":
        (d / "notes.nii.gz").write_text("not an image")
        return {"--target": d / "notes.nii.gz"}, "notes.nii.gz: not a readable NIfTI file"
    if case == "4D volume":
        return {"--target": _nii(d / "4d.nii.gz", rng.random((8, 8, 8, 2)).astype(np.float32))}, "4d.nii.gz: expected a 3D volume"
    if case == "shape mismatch":
        return {"--source-label": _nii(d / "small.nii.gz", np.ones((24, 24, 10), np.uint8))}, "small.nii.gz: shape (24, 24, 10) does not match"
    if case == "affine mismatch":
        aff = np.eye(4)
        aff[:3, 3] = 5
        lab = np.asarray(nib.load(str(v["lab"])).dataobj)
        return {"--source-label": _nii(d / "moved.nii.gz", lab, aff)}, "moved.nii.gz: affine does not match"
    if case == "NaN voxels":
        x = rng.random((8, 8, 8)).astype(np.float32)
        x[1, 2, 3] = np.inf
        return {"--target": _nii(d / "inf.nii.gz", x)}, "inf.nii.gz: 1 voxels are NaN or Inf"
    if case == "constant image":
        return {"--target": _nii(d / "flat.nii.gz", np.full((8, 8, 8), 7, np.float32))}, "flat.nii.gz: constant image"
    if case == "empty label":
        return {"--source-label": _nii(d / "empty.nii.gz", np.zeros((24, 24, 12), np.uint8))}, "empty.nii.gz: label volume is empty"
    if case == "label values vs class names":
        lab = np.asarray(nib.load(str(v["lab"])).dataobj).copy()
        lab[0, 0, 0] = 3
        return {"--source-label": _nii(d / "three.nii.gz", lab)}, "three.nii.gz: label values [3] do not match the 1 class name"
    raise AssertionError(case)


CASES = ["missing file", "not NIfTI", "4D volume", "shape mismatch", "affine mismatch", "NaN voxels",
         "constant image", "empty label", "label values vs class names"]


@pytest.mark.parametrize("case", CASES)
def test_adapt_bad_input(vols, tmp_path, capsys, case):
    over, needle = _bad(vols, case)
    out = tmp_path / "out"
    assert _adapt(vols, out, **over) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("napari-uuds: error: ") and needle in err, err
    assert "\n" not in err and "Traceback" not in err
    assert not out.exists()


def test_existing_outputs_need_overwrite(vols, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "tgt_seg.nii.gz").write_bytes(b"a user's file")
    assert _adapt(vols, out) == 2
    err = capsys.readouterr().err.strip()
    assert "tgt_seg.nii.gz: output already exists" in err and "--overwrite" in err
    assert (out / "tgt_seg.nii.gz").read_bytes() == b"a user's file"
    assert sorted(p.name for p in out.iterdir()) == ["tgt_seg.nii.gz"]


def test_adapt_predict_evaluate_roundtrip(vols, tmp_path, capsys):
    out = tmp_path / "out"
    assert _adapt(vols, out, **{"--target-label": vols["lab"], "--class-name": "blob"}) == 0
    names = sorted(p.name for p in out.iterdir())
    assert {"model.safetensors", "config.json", "tgt_seg.nii.gz", "tgt_entropy.nii.gz", "tgt_synthetic.nii.gz",
            "metrics.json"} <= set(names)
    m = json.loads((out / "metrics.json").read_text())
    assert set(m["volumes"]["tgt"]) >= {"dice", "assd_mm", "hd95_mm"} and "dice_mean" in m["mean"]
    seg = nib.load(str(out / "tgt_seg.nii.gz"))
    report = m["objects"]["tgt"]  # what the default's objects auto did, with the scores it changed
    assert report["objects"] == "auto" and report["voxels"] - report["voxels_removed"] == (seg.get_fdata() > 0).sum()
    np.testing.assert_allclose(seg.affine, nib.load(str(vols["tgt"])).affine)
    # predict with the saved weights and a new threshold
    out2 = tmp_path / "pred"
    assert main(["predict", "--quiet", "--weights", str(out), "--image", str(vols["tgt"]), "--out", str(out2),
                 "--threshold", "0.2"]) == 0
    np.testing.assert_array_equal(np.asarray(nib.load(str(out2 / "tgt_seg.nii.gz")).dataobj),
                                  np.asarray(seg.dataobj))
    capsys.readouterr()
    j = tmp_path / "m.json"
    assert main(["evaluate", "--pred", str(vols["lab"]), "--label", str(vols["lab"]), "--json", str(j)]) == 0
    assert "Dice 100.00 %" in capsys.readouterr().out
    assert json.loads(j.read_text())["dice"] == 100.0


def test_predict_incompatible_weights(vols, tmp_path, capsys):
    out = tmp_path / "w"
    assert _adapt(vols, out) == 0
    cfg = json.loads((out / "config.json").read_text())
    cfg["model"]["class_names"] = ["a", "b"]
    (out / "config.json").write_text(json.dumps(cfg))
    capsys.readouterr()
    res = tmp_path / "res"
    assert main(["predict", "--quiet", "--weights", str(out), "--image", str(vols["tgt"]), "--out", str(res)]) == 2
    err = capsys.readouterr().err.strip()
    assert "model.safetensors: weights from an incompatible config" in err and "\n" not in err
    assert not res.exists()


def test_evaluate_reports_empty_prediction(vols, tmp_path, capsys):
    empty = _nii(tmp_path / "e.nii.gz", np.zeros((24, 24, 12), np.uint8))
    assert main(["evaluate", "--pred", str(empty), "--label", str(vols["lab"])]) == 0
    assert "ASSD n/a (empty prediction)" in capsys.readouterr().out


def test_console_script_exit_code_and_no_traceback(tmp_path):
    r = subprocess.run([sys.executable, "-m", "napari_uuds.cli", "evaluate", "--pred", str(tmp_path / "x.nii"),
                        "--label", str(tmp_path / "y.nii")], capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip() == f"napari-uuds: error: {tmp_path / 'x.nii'}: file not found"


def test_help_explains_every_option():
    r = subprocess.run([sys.executable, "-m", "napari_uuds.cli", "adapt", "--help"], capture_output=True, text=True)
    assert r.returncode == 0
    for opt in ("--source-label", "--target-label", "--clip-weights", "--threshold", "--no-uncertainty", "--overwrite"):
        assert opt in r.stdout


def test_resume_continues_from_saved_step(vols, tmp_path):
    first = tmp_path / "first"
    assert _adapt(vols, first, **{"--steps": 2}) == 0
    assert (first / "optimizer.pt").exists()
    second = tmp_path / "second"
    assert _adapt(vols, second, **{"--steps": 3, "--resume": first}) == 0
    meta = json.loads((second / "config.json").read_text())
    assert meta["trained_steps"] == 3
    assert meta["model"] == json.loads((first / "config.json").read_text())["model"]


def test_unusable_out_fails_before_training(vols, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    assert _adapt(vols, blocker / "out") == 2
    err = capsys.readouterr().err.strip()
    assert "cannot create the output folder" in err and "\n" not in err
    with pytest.raises(SystemExit) as exc:
        _adapt(vols, tmp_path / "o", **{"--lr": "-1"})
    assert exc.value.code == 2 and "--lr: must be a finite number > 0" in capsys.readouterr().err


@pytest.mark.parametrize("method", ["tcsa", "uuds+tcsa"])
def test_multiclass_label_map_and_tcsa_method(vols, tmp_path, capsys, method):
    """BraTS-like values {1, 2, 3, 4} mapped to three classes; per-class metrics; a TCSA method."""
    lab = np.zeros((24, 24, 12), np.uint8)
    lab[6:12, 6:12, 3:9], lab[12:18, 6:12, 3:9], lab[6:12, 12:18, 3:9], lab[12:18, 12:18, 3:9] = 1, 2, 3, 4
    lp = _nii(vols["dir"] / "brats_like.nii.gz", lab)
    out = tmp_path / "out"
    argv = ["adapt", "--quiet", "--source", str(vols["img"]), "--source-label", str(lp), "--target", str(vols["tgt"]),
            "--target-label", str(lp), "--out", str(out), "--steps", "2", "--batch-size", "2", "--image-size", "64",
            "--label-map", "1:1,3:1,2:2,4:3", "--method", method, "--text-encoder", "clip",
            "--class-name", "core", "--class-name", "oedema", "--class-name", "enhancing",
            "--class-description", "necrotic core", "--class-description", "swollen tissue",
            "--class-description", "bright rim", "--warmup-steps", "1"]
    assert main(argv) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert set(m["volumes"]["tgt"]["classes"]) == {"core", "oedema", "enhancing"}
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model"]["class_descriptions"] == ["necrotic core", "swollen tissue", "bright rim"]
    assert cfg["train"]["method"] == method
    assert cfg["model"]["use_domain_prompt"] is (method == "uuds+tcsa")
    # the authors' text-conditioned head, for the CLIP text tower's width, the target named after its file
    assert cfg["model"]["text_head"] is True and cfg["model"]["target_modality"] == "tgt"
    assert cfg["model"]["text_head_dim"] == 128 and cfg["loss_weights"]["proto_form"] == "centre"
    seg = np.asarray(nib.load(str(out / "tgt_seg.nii.gz")).dataobj)
    assert seg.max() <= 3
    # the weights predict again on their own (the class texts travel with them), and the ablation has no head
    assert main(["predict", "--quiet", "--weights", str(out), "--image", str(vols["tgt"]), "--out",
                 str(tmp_path / "again")]) == 0
    assert np.array_equal(np.asarray(nib.load(str(tmp_path / "again" / "tgt_seg.nii.gz")).dataobj), seg)
    assert main([*argv[:argv.index("--out") + 1], str(tmp_path / "plain"), *argv[argv.index("--out") + 2:],
                 "--no-text-head", "--proto-form", "mpcl"]) == 0
    plain = json.loads((tmp_path / "plain" / "config.json").read_text())
    assert plain["model"]["text_head"] is False and plain["loss_weights"]["proto_form"] == "mpcl"


def test_bad_label_map_and_descriptions(vols, tmp_path, capsys):
    assert _adapt(vols, tmp_path / "o", **{"--label-map": "1-1"}) == 2
    assert "--label-map: '1-1' is not VALUE:CLASS" in capsys.readouterr().err
    assert _adapt(vols, tmp_path / "o", **{"--class-description": "a", "--class-name": "x"}) == 0
    assert main(["adapt", "--quiet", "--source", str(vols["img"]), "--source-label", str(vols["lab"]), "--target",
                 str(vols["tgt"]), "--out", str(tmp_path / "o2"), "--class-description", "a", "--class-description",
                 "b", "--steps", "1", "--batch-size", "2", "--image-size", "64"]) == 2
    assert "2 class description(s) for 1 class(es)" in capsys.readouterr().err


def test_loss_weight_and_dd_flow_options_reach_the_run(vols, tmp_path, capsys):
    out = tmp_path / "out"
    assert _adapt(vols, out, **{"--alpha": 0.25, "--dd-flow": "split"}) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["loss_weights"]["alpha"] == 0.25 and cfg["train"]["dd_flow"] == "split"
    assert cfg["train"]["dd_warmup"] is False and cfg["loss_weights"]["dd_scale"] == "one"  # the defaults
    argv = ["adapt", "--quiet", "--dd-warmup", "--dd-scale", "tau", "--source", vols["img"], "--source-label", vols["lab"],
            "--target", vols["tgt"], "--out", str(tmp_path / "o3"), "--steps", "1", "--batch-size", "2",
            "--image-size", "64"]
    assert main([str(a) for a in argv]) == 0
    cfg = json.loads((tmp_path / "o3" / "config.json").read_text())
    assert cfg["train"]["dd_warmup"] is True and cfg["loss_weights"]["dd_scale"] == "tau"
    with pytest.raises(SystemExit) as exc:  # argparse: usage line + one error line, exit 2
        _adapt(vols, tmp_path / "o2", **{"--alpha": -1})
    assert exc.value.code == 2 and "--alpha: must be a finite number >= 0" in capsys.readouterr().err


def test_recipe_and_lever_options_reach_the_run(vols, tmp_path):
    out = tmp_path / "paper"
    assert _adapt(vols, out, **{"--recipe": "paper"}) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["train"]["recipe"] == "paper" and cfg["train"]["randomise"] == "none" and not cfg["train"]["guard"]
    assert cfg["train"]["randomise_invert"] == 0.0
    assert cfg["loss_weights"]["dd_form"] == "printed" and cfg["model"]["body_mask"] is False
    assert cfg["model"]["objects"] == "all" and cfg["model"]["smooth_z"] == "none"  # the paper's letter
    out = tmp_path / "default"
    assert _adapt(vols, out, **{"--randomise-p": 0.5}) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["train"]["recipe"], cfg["train"]["randomise"], cfg["train"]["randomise_p"]) == ("uuds", "auto", 0.5)
    assert cfg["train"]["randomise_invert"] == 0.5  # round 16's default
    assert cfg["model"]["objects"] == "auto"  # round 24's default
    assert cfg["loss_weights"]["dd_form"] == "infonce" and cfg["model"]["body_mask"] is True and cfg["train"]["guard"]
    argv = ["adapt", "--quiet", "--recipe", "paper", "--randomise", "gin", "--dd-form", "infonce", "--body-mask",
            "--useg-absent", "skip", "--randomise-into", "both", "--useg-form", "ce_balanced", "--useg-flow", "segmenter",
            "--pseudo-prior", "band", "--ema-decay", "0.5", "--tta", "d8", "--randomise-invert", "0.25",
            "--fine-skips", "--refine", "edges", "--objects", "largest", "--smooth-z", "binomial", "--pseudo-refine", "edges", "--source", vols["img"], "--source-label", vols["lab"], "--target", vols["tgt"], "--out",
            str(tmp_path / "mixed"), "--steps", "1", "--batch-size", "2", "--image-size", "64"]
    assert main([str(a) for a in argv]) == 0  # an explicit option wins over the recipe
    cfg = json.loads((tmp_path / "mixed" / "config.json").read_text())
    assert cfg["train"]["randomise"] == "gin" and cfg["loss_weights"]["dd_form"] == "infonce"
    assert cfg["train"]["randomise_invert"] == 0.25 and cfg["model"]["fine_skips"] is True
    assert cfg["model"]["refine"] == "edges" and cfg["train"]["pseudo_refine"] == "edges"
    assert cfg["model"]["objects"] == "largest" and cfg["model"]["smooth_z"] == "binomial"
    assert cfg["model"]["body_mask"] is True and cfg["train"]["guard"] is False
    assert cfg["loss_weights"]["useg_absent"] == "skip" and cfg["train"]["randomise_into"] == "both"
    assert cfg["loss_weights"]["useg_form"] == "ce_balanced" and cfg["train"]["useg_flow"] == "segmenter"
    assert cfg["train"]["pseudo_prior"] == "band"
    assert cfg["train"]["ema_decay"] == 0.5 and cfg["model"]["tta"] == "d8"
    assert cfg["pseudo_refine_used"] == {"pseudo_refine": "edges"}  # what the run did is kept with its weights


def test_mm_per_pixel_auto_is_recorded_and_outputs_stay_on_the_grid(vols, tmp_path):
    out = tmp_path / "mm"
    assert _adapt(vols, out, **{"--mm-per-pixel": "auto"}) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model"]["mm_per_pixel"] > 0
    seg = nib.load(str(out / "tgt_seg.nii.gz"))
    assert seg.shape == (24, 24, 12)
    np.testing.assert_allclose(seg.affine, nib.load(str(vols["tgt"])).affine)
    rc = main(["predict", "--quiet", "--weights", str(out), "--image", str(vols["img"]), "--out", str(tmp_path / "p")])
    assert rc == 0 and nib.load(str(tmp_path / "p" / "img_seg.nii.gz")).shape == (24, 24, 12)


def test_predict_post_processing_overrides_reach_the_cohort_path(vols, tmp_path):
    """`predict --objects largest` keeps the largest piece of the same prediction; `--refine edges` gives what the
    engine's own volume prediction gives with it (the cohort path ends each volume as predict_volume does)."""
    from napari_uuds.engine import checkpoint as ckpt
    from napari_uuds.engine.components import ONE_OBJECT_SHARE, keep_largest_object, keep_objects, largest_share
    from napari_uuds.engine.infer import predict_volume
    from napari_uuds.engine.volumes import load_volume

    out = tmp_path / "a"
    assert _adapt(vols, out) == 0
    seg = {}
    for name, opts in (("all", ["--objects", "all"]), ("largest", ["--objects", "largest"]),
                       ("auto", ["--objects", "auto"]), ("edges", ["--refine", "edges"]),
                       ("alone", ["--smooth-z", "none"])):
        rc = main(["predict", "--quiet", "--weights", str(out), "--image", str(vols["tgt"]), "--out",
                   str(tmp_path / name), *opts])
        assert rc == 0
        seg[name] = np.asarray(nib.load(str(tmp_path / name / "tgt_seg.nii.gz")).dataobj)
    assert (seg["all"] > 0).sum() > (seg["largest"] > 0).sum() > 0  # the untrained mask is in pieces
    np.testing.assert_array_equal(seg["largest"], keep_largest_object(seg["all"]))
    np.testing.assert_array_equal(seg["auto"], keep_objects(seg["all"], "auto"))  # decided on the volume itself
    assert largest_share(seg["all"]) >= ONE_OBJECT_SHARE  # the pruning branch: so --objects auto reached the path
    summary = json.loads((tmp_path / "largest" / "summary.json").read_text())
    assert {k: summary[k] for k in ("tta", "refine", "objects")} == {"tta": "none", "refine": "none",
                                                                      "objects": "largest"}  # what ran is recorded
    for name in ("all", "auto"):  # each volume's row says what went
        row = json.loads((tmp_path / name / "summary.json").read_text())["volumes"][0]
        removed = int((seg["all"] > 0).sum() - (seg[name] > 0).sum())
        assert (row["largest_share"], row["voxels_removed"]) == \
            ((None, None) if name == "all" else (round(largest_share(seg["all"]), 4), removed))
    assert "voxels_removed" in (tmp_path / "auto" / "summary.csv").read_text().splitlines()[0]
    cfg = json.loads((out / "config.json").read_text())["model"]
    assert (cfg["objects"], cfg["refine"]) == ("auto", "none")  # overrides, not saved (the default kept)
    model, _ = ckpt.load_checkpoint(out)
    model.cfg.refine = "edges"
    vol = load_volume(vols["tgt"])
    engine = vol.to_file_order(predict_volume(model, vol).seg)  # the file's voxel order, as the command writes it
    assert (engine != seg["auto"]).any()  # the refinement moved something (both keep the saved objects auto)
    np.testing.assert_array_equal(seg["edges"], engine)
    assert cfg["smooth_z"] == "binomial"  # round 25's default
    model.cfg.refine, model.cfg.smooth_z = "none", "none"  # --smooth-z reaches the cohort path too
    np.testing.assert_array_equal(seg["alone"], vol.to_file_order(predict_volume(model, vol).seg))
    assert (seg["alone"] != seg["auto"]).any()  # without the neighbours' vote some voxels change
    assert json.loads((tmp_path / "alone" / "summary.json").read_text())["smooth_z"] == "none"


def test_finetune_learns_from_corrected_slices_and_keeps_them(vols, tmp_path, capsys):
    """`finetune`: the corrected slices (labelled ones, or --slices) supervise a short run from saved weights; the new
    segmentation keeps them; the weights fine-tuned from stay as they were; bad input is one line."""
    a = tmp_path / "a"
    assert _adapt(vols, a) == 0
    lab = np.asarray(nib.load(str(vols["lab"])).dataobj)
    corr = np.zeros_like(lab)
    corr[..., 4] = lab[..., 4]
    corr[2:6, 2:6, 10] = 1  # a slice where the user drew an object the source labels do not have
    cpath = _nii(vols["dir"] / "corr.nii.gz", corr)
    before = (a / "model.safetensors").read_bytes()
    b = tmp_path / "b"
    argv = ["finetune", "--quiet", "--weights", str(a), "--image", str(vols["tgt"]), "--corrections", str(cpath),
            "--out", str(b), "--steps", "2"]
    assert main(argv + ["--target-label", str(cpath)]) == 0
    assert (a / "model.safetensors").read_bytes() == before
    cfg = json.loads((b / "config.json").read_text())
    assert cfg["finetune"]["slices"] == [4, 10] and cfg["trained_steps"] == 3 and cfg["finetune"]["from_step"] == 1
    seg = np.asarray(nib.load(str(b / "tgt_seg.nii.gz")).dataobj)
    np.testing.assert_array_equal(seg[..., [4, 10]], corr[..., [4, 10]])
    assert (np.asarray(nib.load(str(b / "tgt_entropy.nii.gz")).dataobj)[..., [4, 10]] == 0).all()
    np.testing.assert_array_equal(np.asarray(nib.load(str(b / "tgt_corrections.nii.gz")).dataobj), corr)
    assert json.loads((b / "metrics.json").read_text())["slices"] == [4, 10]
    # --slices names a slice corrected to "no object" (all zero) too
    c = tmp_path / "c"
    other = "all" if FINETUNE_PARTS == "segmenter" else "segmenter"
    assert main(argv[:-4] + ["--out", str(c), "--steps", "2", "--slices", "4", "0", "--parts", other,
                             "--lr", "0.002", "--ema-decay", "0.99"]) == 0
    assert json.loads((c / "config.json").read_text())["finetune"]["slices"] == [0, 4]
    # --ema-decay: the weights saved are the fine-tune's average over its second half (corrections round 7)
    assert json.loads((c / "config.json").read_text())["finetune"]["ema_decay"] == 0.99
    assert json.loads((c / "config.json").read_text())["weight_average"]["decay"] == 0.99
    assert cfg["finetune"]["ema_decay"] == FINETUNE_EMA and (cfg.get("weight_average") is not None) == (FINETUNE_EMA > 0)
    assert json.loads((c / "config.json").read_text())["finetune"]["parts"] == other
    assert json.loads((c / "config.json").read_text())["finetune"]["lr"] == 0.002
    assert cfg["finetune"]["parts"] == FINETUNE_PARTS
    assert cfg["finetune"]["lr"] == (FINETUNE_LR or cfg["train"]["lr"])
    assert not np.asarray(nib.load(str(c / "tgt_seg.nii.gz")).dataobj)[..., 0].any()
    capsys.readouterr()
    # the fine-tuned weights may not replace the ones they came from
    assert main(argv[:-4] + ["--out", str(a), "--overwrite"]) == 2
    assert "would replace an input (--weights)" in capsys.readouterr().err
    # no labelled voxel and no --slices
    empty = _nii(vols["dir"] / "empty_corr.nii.gz", np.zeros_like(lab))
    assert main(["finetune", "--weights", str(a), "--image", str(vols["tgt"]), "--corrections", str(empty),
                 "--out", str(tmp_path / "d")]) == 2
    assert "empty_corr.nii.gz: the corrections hold no labelled voxel" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(argv[:-4] + ["--out", str(tmp_path / "d"), "--ema-decay", "1"])
    assert "--ema-decay: must lie in [0, 1), not 1.0" in capsys.readouterr().err
    assert main(argv[:-4] + ["--out", str(tmp_path / "e"), "--slices", "12"]) == 2
    assert "--slices 12: the image has 12 slices along axis 2" in capsys.readouterr().err
    # weights that record no source (saved from the widget): the source must be given
    meta = json.loads((a / "config.json").read_text())
    meta.pop("sources"), meta.pop("source_labels")
    (a / "config.json").write_text(json.dumps(meta))
    assert main(argv[:-4] + ["--out", str(tmp_path / "f")]) == 2
    assert "give --source and --source-label" in capsys.readouterr().err
    assert main(argv[:-4] + ["--out", str(tmp_path / "f"), "--source", str(vols["img"]),
                             "--source-label", str(vols["lab"])]) == 0


def test_finetune_reads_a_widget_run_folder(vols, tmp_path, capsys):
    """`--corrections DIR`: the widget's run folder (corrections.nii.gz + corrections.json) names its slices, a slice
    corrected to "no object" included."""
    a = tmp_path / "a"
    assert _adapt(vols, a) == 0
    lab = np.asarray(nib.load(str(vols["lab"])).dataobj)
    run = tmp_path / "run"
    run.mkdir()
    corr = np.zeros_like(lab)
    corr[..., 5] = lab[..., 5]
    _nii(run / "corrections.nii.gz", corr)
    (run / "corrections.json").write_text(json.dumps({"slices": [0, 5], "axis": 2}))
    out = tmp_path / "b"
    assert main(["finetune", "--quiet", "--weights", str(a), "--image", str(vols["tgt"]), "--corrections", str(run),
                 "--out", str(out), "--steps", "1"]) == 0
    assert json.loads((out / "config.json").read_text())["finetune"]["slices"] == [0, 5]
    (run / "corrections.json").write_text(json.dumps({"slices": [0], "axis": 0}))
    assert main(["finetune", "--weights", str(a), "--image", str(vols["tgt"]), "--corrections", str(run),
                 "--out", str(tmp_path / "c")]) == 2
    assert "corrections.json: corrections drawn along axis 0; the weights slice along axis 2" in capsys.readouterr().err


def test_adapt_says_what_it_decided_before_training(vols, tmp_path, capsys):
    """The decisions the default takes from the data (source randomisation, pseudo-label refinement) are printed, with
    the figures they were taken on, and kept in config.json."""
    argv = ["adapt", "--source", vols["img"], "--source-label", vols["lab"], "--target", vols["tgt"],
            "--out", tmp_path / "o", "--steps", "1", "--batch-size", "2", "--image-size", "64"]
    assert main([str(a) for a in argv]) == 0
    start = [line for line in capsys.readouterr().err.splitlines() if "napari-uuds adapt: training uuds" in line]
    assert len(start) == 1, start
    cfg = json.loads((tmp_path / "o" / "config.json").read_text())
    k = cfg["pseudo_refine_used"]["edge_agreement"]["k"]
    refined = cfg["pseudo_refine_used"]["pseudo_refine"] == "edges"
    assert f"pseudo labels {'refined on the target' if refined else 'not refined'}" in start[0]
    assert f"edge agreement K {k:+.3f}" in start[0] and "source randomisation" in start[0]


def test_image_size_auto_fits_the_frame_to_small_scans(vols, tmp_path, capsys):
    """--image-size auto: 24 x 24 slices train at 64 px (the smallest frame), recorded in config.json; the log says why;
    --image-size N and a bad value behave as before."""
    out = tmp_path / "auto"
    assert main(["adapt", "--source", str(vols["img"]), "--source-label", str(vols["lab"]), "--target",
                 str(vols["tgt"]), "--out", str(out), "--steps", "1", "--batch-size", "2", "--image-size", "auto"]) == 0
    assert json.loads((out / "config.json").read_text())["model"]["image_size"] == 64
    assert "64 px slices (auto: the scans' slices are at most 24 voxels across)" in capsys.readouterr().err
    assert _adapt(vols, tmp_path / "fixed", **{"--image-size": 96}) == 0
    assert json.loads((tmp_path / "fixed" / "config.json").read_text())["model"]["image_size"] == 96
    for bad in ("50", "big"):
        with pytest.raises(SystemExit) as e:
            _adapt(vols, tmp_path / "bad", **{"--image-size": bad})
        assert e.value.code == 2
    assert "must be auto or" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
