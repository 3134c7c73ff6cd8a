"""The fault suite: what a hostile tester did to the command line and the widget's controller, kept as tests.

Each case is one row of the fault matrix (issue "Nothing a user made is lost"): a run either finishes with finite
outputs or says, in one line, why it stopped and what it kept; a checkpoint folder is one consistent save or is
refused with a reason; SIGTERM behaves like Ctrl-C; no temporary file outlives a run. The count pytest prints at
the end (``pytest tests/test_faults.py``) is the matrix's score.
"""
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from napari_uuds.cli import main
from napari_uuds.engine import checkpoint as ckpt

from test_cli import _adapt, _nii, vols  # noqa: F401  (the fixture)


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def _one_line_error(capsys, needle: str) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    errors = [e for e in err if e.startswith("napari-uuds: error: ")]
    assert len(errors) == 1 and needle in errors[0], err
    assert not any("Traceback" in e for e in err)
    return errors[0]


def _no_temp_files(folder: Path) -> None:
    assert not [n for n in _files(folder) if n.startswith(".")], _files(folder)


def _finite_weights(folder: Path) -> bool:
    return all(torch.isfinite(t).all() for t in load_file(str(folder / ckpt.WEIGHTS)).values() if t.is_floating_point())


# -- non-finite numbers are refused, never saved and reported as success -------------------------------------------

@pytest.mark.parametrize("option,value,needle", [
    ("--alpha", "nan", "--alpha: must be a finite number >= 0"),
    ("--lr", "inf", "--lr: must be a finite number > 0"),
    ("--lr", "nan", "--lr: must be a finite number > 0"),
    ("--weight-decay", "inf", "--weight-decay: must be a finite number >= 0"),
    ("--seed", "-1", "--seed: must lie in 0 .. 4294967295"),
])
def test_non_finite_or_out_of_range_numbers_are_refused(vols, tmp_path, capsys, option, value, needle):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exc:  # argparse: usage + one error line, exit 2
        _adapt(vols, out, **{option: value})
    assert exc.value.code == 2 and needle in capsys.readouterr().err
    assert not out.exists()


def test_a_diverging_run_keeps_its_last_finite_weights_and_says_so(vols, tmp_path, capsys):
    out = tmp_path / "out"
    assert _adapt(vols, out, **{"--lr": 1e6, "--steps": 6}) == 2
    line = _one_line_error(capsys, "training diverged at step")
    assert "are kept" in line and "--lr" in line
    assert ckpt.WEIGHTS in _files(out) and _finite_weights(out)
    assert not [n for n in _files(out) if n.endswith(".nii.gz")]  # no prediction from a diverged run
    meta = json.loads((out / ckpt.CONFIG).read_text())
    assert meta["diverged"] and meta["trained_steps"] < 6
    _no_temp_files(out)


def test_damaged_weights_are_refused_by_predict(vols, tmp_path, capsys):
    out = tmp_path / "out"
    assert _adapt(vols, out) == 0
    raw = bytearray((out / ckpt.WEIGHTS).read_bytes())
    header = 8 + int.from_bytes(raw[:8], "little")
    raw[header + 4096: header + 4096 + 65536] = b"\xff" * 65536  # tensor bytes -> NaN; the header intact
    (out / ckpt.WEIGHTS).write_bytes(bytes(raw))
    assert main(["predict", "--quiet", "--weights", str(out), "--image", str(vols["tgt"]), "--out",
                 str(tmp_path / "p")]) == 2
    _one_line_error(capsys, "hold NaN or Inf values")
    assert not (tmp_path / "p").exists()


def test_a_layer_with_nan_voxels_is_refused_by_the_widgets_input_check():
    from napari_uuds.engine.errors import UUDSError
    from napari_uuds.gui.inputs import layer_volume

    data = np.random.default_rng(0).random((16, 16, 8)).astype(np.float32)
    data[1, 2, 3] = np.nan
    layer = SimpleNamespace(data=data, name="t1 (other reader)", metadata={}, scale=(1.0, 1.0, 1.0))
    with pytest.raises(UUDSError, match=r"target image 't1 \(other reader\)' holds 1 NaN or Inf voxels"):
        layer_volume(layer, "target image")


def test_non_finite_outputs_are_never_written(tmp_path):
    from napari_uuds.engine.errors import UUDSError
    from napari_uuds.engine.infer import VolumePrediction
    from napari_uuds.engine.pipeline import write_prediction
    from napari_uuds.engine.volumes import load_volume

    ref = load_volume(_nii(tmp_path / "ref.nii.gz", np.random.default_rng(0).random((8, 8, 8)).astype(np.float32)))
    ent = np.zeros((8, 8, 8), np.float32)
    ent[0, 0, 0] = np.nan
    pred = VolumePrediction(np.zeros_like(ent), np.zeros((2, 8, 8, 8), np.float32), np.zeros((8, 8, 8), np.uint8), ent)
    with pytest.raises(UUDSError, match="not finite"):
        write_prediction(pred, ref, tmp_path / "o", "ref", 0.5)
    assert not (tmp_path / "o").exists()


# -- writing the outputs never loses work ------------------------------------------------------------------------

def test_too_little_free_space_is_refused_before_training(vols, tmp_path, capsys, monkeypatch):
    import napari_uuds.engine.outfolder as outfolder

    monkeypatch.setattr(outfolder.shutil, "disk_usage", lambda p: SimpleNamespace(total=10 ** 9, used=10 ** 9, free=5 * 10 ** 6))
    out = tmp_path / "out"
    assert _adapt(vols, out) == 2
    _one_line_error(capsys, "MB free where the outputs go; they need about")
    assert not out.exists()


def test_a_file_size_limit_is_refused_before_training(vols, tmp_path):
    import resource

    out = tmp_path / "out"
    argv = [sys.executable, "-m", "napari_uuds.cli", "adapt", "--quiet", "--source", str(vols["img"]),
            "--source-label", str(vols["lab"]), "--target", str(vols["tgt"]), "--out", str(out), "--steps", "1",
            "--batch-size", "2", "--image-size", "64", "--device", "cpu"]
    limit = lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (2_000_000, 2_000_000))  # ulimit -f 1953  # noqa: E731
    res = subprocess.run(argv, capture_output=True, text=True, preexec_fn=limit, env={**os.environ, "HF_HUB_OFFLINE": "1"},
                         timeout=300)
    assert res.returncode == 2, res.stderr[-2000:]
    assert "the file size limit (ulimit -f) is 2.0 MB; the largest output needs up to" in res.stderr
    assert "Traceback" not in res.stderr and not out.exists()


def test_a_failing_save_rescues_the_weights_elsewhere(vols, tmp_path, capsys, monkeypatch):
    import errno
    import tempfile

    real = ckpt.save_model
    out = tmp_path / "out"
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the rescue folder lands here, not in the real /tmp

    def full_disk(model, path, metadata=None):
        if Path(path).parent == out:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(model, path, metadata=metadata)

    monkeypatch.setattr(ckpt, "save_model", full_disk)
    assert _adapt(vols, out) == 2
    line = _one_line_error(capsys, "could not write the weights (No space left on device); the weights were saved to")
    rescue = Path(line.split("saved to ")[1].split(" instead")[0])
    assert rescue.parent == tmp_path
    model, _ = ckpt.load_checkpoint(rescue)  # a complete, loadable set
    assert model.trained_steps == 1 and (rescue / ckpt.OPTIMIZER).exists()
    _no_temp_files(out)


def test_a_second_run_into_a_busy_folder_is_refused(vols, tmp_path, capsys):
    from napari_uuds.engine.outfolder import OutputLock

    out = tmp_path / "out"
    with OutputLock(out):
        assert _adapt(vols, out) == 2
        _one_line_error(capsys, f"another napari-uuds run (process {os.getpid()}) is writing here")
    assert _adapt(vols, out) == 0  # free again; the lock file went with the first run
    assert ".napari-uuds.lock" not in _files(out)


def test_outputs_never_replace_an_input(vols, tmp_path, capsys):
    d = vols["dir"]
    user_mask = _nii(d / "tgt_seg.nii.gz", np.asarray(nib.load(str(vols["lab"])).dataobj))  # hand-drawn, as a label
    before = user_mask.read_bytes()
    assert _adapt(vols, d, **{"--target-label": user_mask, "--overwrite": True}) == 2
    _one_line_error(capsys, "tgt_seg.nii.gz: writing here would replace an input (--target-label)")
    assert user_mask.read_bytes() == before


def test_an_interrupted_save_is_one_set_or_refused(vols, tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    assert _adapt(vols, a) == 0
    assert _adapt(vols, b, **{"--steps": 2}) == 0
    # killed after the weights' rename, before config.json's: new weights (and optimizer), old config
    torn = tmp_path / "torn"
    torn.mkdir()
    for name, src in ((ckpt.WEIGHTS, b), (ckpt.OPTIMIZER, b), (ckpt.CONFIG, a)):
        (torn / name).write_bytes((src / name).read_bytes())
    with pytest.warns(UserWarning, match="from another save"):
        model, meta = ckpt.load_checkpoint(torn)
    assert model.trained_steps == 2 and meta["save_id"] == json.loads((b / ckpt.CONFIG).read_text())["save_id"]
    assert _adapt(vols, tmp_path / "r", **{"--resume": torn, "--steps": 3}) == 0  # its own optimizer: resumes
    # killed after the optimizer's rename, before the weights': old weights and config, a newer optimizer
    (torn / ckpt.WEIGHTS).write_bytes((a / ckpt.WEIGHTS).read_bytes())
    (torn / ckpt.CONFIG).write_bytes((a / ckpt.CONFIG).read_bytes())
    capsys.readouterr()
    assert _adapt(vols, tmp_path / "r2", **{"--resume": torn, "--steps": 3}) == 2
    _one_line_error(capsys, "optimizer.pt: comes from another save than the weights")


def test_ctrl_c_in_training_then_again_in_the_save_keeps_the_weights(vols, tmp_path, capsys, monkeypatch):
    import napari_uuds.engine.job as job_mod  # the adapt job's training loop (engine/job.py)
    from napari_uuds.engine import atomic

    real_train, real_write = job_mod.train, atomic.atomic_write

    def interrupted_train(*a, **k):
        for ev in real_train(*a, **k):
            yield ev
            if ev.kind == "step" and ev.step == 2:
                raise KeyboardInterrupt  # Ctrl-C during training

    def write_with_second_ctrl_c(path, write, suffix=".tmp"):
        if Path(path).name == ckpt.WEIGHTS:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C again, as the save runs
        return real_write(path, write, suffix)

    monkeypatch.setattr(job_mod, "train", interrupted_train)
    monkeypatch.setattr(ckpt, "atomic_write", write_with_second_ctrl_c)
    out = tmp_path / "out"
    assert _adapt(vols, out, **{"--steps": 50}) == 130
    err = capsys.readouterr().err
    assert f"interrupted at step 2: weights saved to {out}" in err and f"--resume {out} --out {out}" in err
    model, _ = ckpt.load_checkpoint(out)
    assert model.trained_steps == 2 and (out / ckpt.OPTIMIZER).exists()
    _no_temp_files(out)
    # the resume command the message gives works as given (no --overwrite needed into its own folder)
    monkeypatch.setattr(job_mod, "train", real_train)
    monkeypatch.setattr(ckpt, "atomic_write", real_write)
    assert _adapt(vols, out, **{"--steps": 3, "--resume": out}) == 0
    assert json.loads((out / ckpt.CONFIG).read_text())["trained_steps"] == 3


def test_sigterm_behaves_like_ctrl_c(vols, tmp_path):
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "napari_uuds.cli", "adapt", "--source", str(vols["img"]), "--source-label",
            str(vols["lab"]), "--target", str(vols["tgt"]), "--out", str(out), "--steps", "100000", "--batch-size",
            "2", "--image-size", "64", "--device", "cpu"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
    chars: list[str] = []
    reader = threading.Thread(target=lambda: chars.extend(iter(lambda: proc.stderr.read(1), "")), daemon=True)
    reader.start()
    deadline = time.time() + 180
    while time.time() < deadline and not re.search(r"\| [1-9]\d*/100000", "".join(chars)):
        time.sleep(0.2)  # until the progress bar shows a step done, however loaded the machine is
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=120)
    reader.join(timeout=10)
    err = "".join(chars)
    assert proc.returncode == 130, err[-2000:]
    assert f"weights saved to {out}" in err
    model, _ = ckpt.load_checkpoint(out)
    assert model.trained_steps > 0
    assert sorted(_files(out)) == [ckpt.CONFIG, ckpt.WEIGHTS, ckpt.OPTIMIZER]  # no lock, no temp file left


def test_temp_files_a_killed_run_left_are_swept(vols, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    stale = [".model.safetensors.abcd1234.tmp", ".tgt_seg.nii.gz.x1y2z3w4.nii.gz", ".write-test.q9w8e7r6"]
    for n in stale:
        (out / n).write_bytes(b"half")
    (out / ".my-notes.tmp").write_text("a user's hidden file")  # not ours: kept
    assert main(["adapt", "--source", str(vols["img"]), "--source-label", str(vols["lab"]), "--target",
                 str(vols["tgt"]), "--out", str(out), "--steps", "1", "--batch-size", "2", "--image-size", "64",
                 "--quiet"]) == 0
    assert "removed 3 temporary file(s)" not in capsys.readouterr().err  # --quiet
    assert not set(stale) & set(_files(out)) and ".my-notes.tmp" in _files(out)


# -- a reason, not a traceback -------------------------------------------------------------------------------------

def test_evaluate_json_that_cannot_be_written(vols, tmp_path, capsys, monkeypatch):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    assert main(["evaluate", "--pred", str(vols["lab"]), "--label", str(vols["lab"]), "--json",
                 str(blocker / "m.json")]) == 2
    _one_line_error(capsys, "cannot create the output folder")

    def read_only(src, dst):
        raise PermissionError(13, "Permission denied", str(dst))

    monkeypatch.setattr(os, "replace", read_only)  # a read-only folder (the tests may run as root)
    assert main(["evaluate", "--pred", str(vols["lab"]), "--label", str(vols["lab"]), "--json",
                 str(tmp_path / "m.json")]) == 2
    _one_line_error(capsys, "m.json: could not write the metrics (Permission denied)")
    _no_temp_files(tmp_path)


def test_a_config_key_from_a_newer_version_is_ignored_on_resume(vols, tmp_path):
    out = tmp_path / "out"
    assert _adapt(vols, out) == 0
    meta = json.loads((out / ckpt.CONFIG).read_text())
    meta["model"]["a_future_option"] = 1
    (out / ckpt.CONFIG).write_text(json.dumps(meta))
    assert _adapt(vols, tmp_path / "r", **{"--resume": out, "--steps": 2}) == 0


# -- notes: decided and tested ---------------------------------------------------------------------------------------

def test_overwrite_removes_the_replaced_runs_outputs(vols, tmp_path):
    out = tmp_path / "out"
    other = _nii(vols["dir"] / "other.nii.gz", np.asarray(nib.load(str(vols["tgt"])).dataobj) * 2)
    argv = ["adapt", "--quiet", "--source", vols["img"], "--source-label", vols["lab"], "--target", vols["tgt"],
            "--target", other, "--target-label", vols["lab"], "--target-label", vols["lab"], "--out", out,
            "--steps", "1", "--batch-size", "2", "--image-size", "64"]
    assert main([str(a) for a in argv]) == 0
    assert "metrics.json" in _files(out) and "other_seg.nii.gz" in _files(out)
    assert _adapt(vols, out, **{"--overwrite": True}) == 0
    names = _files(out)
    assert "metrics.json" not in names and not [n for n in names if n.startswith("other_")]
    assert "tgt_seg.nii.gz" in names


def test_inconsistent_inputs_are_named(vols, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["adapt", "--quiet", "--source", vols["img"], "--source-label", vols["lab"], "--target", vols["tgt"],
            "--out", out, "--steps", "1", "--batch-size", "2", "--image-size", "64"]
    assert main([str(a) for a in argv + ["--class-name", "a", "--class-name", "b", "--class-name", "c"]]) == 2
    _one_line_error(capsys, "lab.nii.gz: 3 class names but no source label holds the value(s) [2, 3]")
    # qform and sform that disagree, and a tiny volume: legal, but said
    img = nib.Nifti1Image(np.random.default_rng(1).random((24, 24, 12)).astype(np.float32), np.eye(4))
    q = np.eye(4)
    q[0, 3] = 7.0
    img.set_qform(q, code=1)
    img.set_sform(np.eye(4), code=1)
    nib.save(img, str(vols["dir"] / "qs.nii.gz"))
    tiny = _nii(vols["dir"] / "tiny.nii.gz", np.random.default_rng(2).random((4, 4, 4)).astype(np.float32))
    tiny_lab = _nii(vols["dir"] / "tiny_lab.nii.gz", (np.arange(64).reshape(4, 4, 4) % 2).astype(np.uint8))
    argv = ["adapt", "--quiet", "--source", tiny, "--source-label", tiny_lab, "--target", vols["dir"] / "qs.nii.gz",
            "--out", tmp_path / "o2", "--steps", "1", "--batch-size", "2", "--image-size", "64"]
    assert main([str(a) for a in argv]) == 0
    err = capsys.readouterr().err
    assert "napari-uuds: warning: " in err and "qs.nii.gz: its qform and sform disagree (by up to 7 mm)" in err
    assert "tiny.nii.gz: a small volume (4 x 4 x 4 voxels)" in err


# -- the plugin leaves the napari process as it found it ---------------------------------------------------------------

def test_the_text_encoder_does_not_set_hf_hub_offline_for_the_process(monkeypatch, tiny_model):
    from napari_uuds.engine import text_embed

    if not text_embed.minilm_available():
        pytest.skip("the [tcsa] extra is not installed")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    text_embed._minilm.cache_clear()
    _, encoder = text_embed.class_text_relations(tiny_model, "minilm")
    assert encoder == "minilm" and "HF_HUB_OFFLINE" not in os.environ


def test_importing_the_gui_hides_triton_only_while_open_clip_loads():
    code = ("import sys; import napari_uuds.gui; "
            "print(sys.modules.get('triton', 'absent') is None, 'open_clip' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.stdout.split() == ["False", "True"], out.stderr[-2000:]
