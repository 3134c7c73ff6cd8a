"""torchrun + DDP on the CPU (gloo, 2 processes, tiny model): the run finishes with the ranks' weights identical,
writes what a single-process run writes (rank 0 only), stops on SIGTERM after one shared step with the weights
saved once, and resumes. One process under torchrun takes the DDP path and learns what the plain run learns."""
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from napari_uuds.cli import main
from napari_uuds.engine import checkpoint as ckpt
from napari_uuds.engine import distributed
from napari_uuds.engine.config import TrainConfig
from napari_uuds.engine.dataset import samplers
from napari_uuds.engine.distributed import RANK_SEED_STRIDE, DistContext, from_env
from napari_uuds.engine.model import UUDS
from napari_uuds.engine.train import TrainControl, train

from test_cli import vols  # noqa: F401  (the fixture)
from test_train import data  # noqa: F401  (the fixture)


def _args(v, out, steps):
    return ["adapt", "--source", str(v["img"]), "--source-label", str(v["lab"]), "--target", str(v["tgt"]),
            "--out", str(out), "--steps", str(steps), "--batch-size", "2", "--image-size", "64", "--device", "cpu",
            "--clip-weights", "none"]


def _torchrun(argv, n=2):
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(n),
            "-m", "napari_uuds", *argv]


ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def test_the_context_comes_from_torchruns_environment(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert not from_env().enabled and from_env().seed(7) == 7
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    assert not from_env().enabled  # torchrun sets both; WORLD_SIZE alone is not torchrun
    monkeypatch.setenv("RANK", "0")
    assert not from_env().enabled  # one process, not torchrun's (a variable left in a shell): the plain run
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "run")
    assert from_env().enabled and from_env().world_size == 1  # torchrun --nproc_per_node 1: the DDP path
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    ctx = from_env()
    assert (ctx.rank, ctx.world_size, ctx.local_rank, ctx.is_main) == (3, 4, 1, False)
    assert ctx.seed(7) == 7 + 3 * RANK_SEED_STRIDE != DistContext(1, 4).seed(7)  # each rank its own batches


def test_two_gloo_processes_train_in_step_and_write_what_one_process_writes(vols, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    assert main([*_args(vols, one, 3), "--quiet"]) == 0
    r = subprocess.run(_torchrun(_args(vols, two, 3)), capture_output=True, text=True, env=ENV, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert sorted(p.name for p in one.iterdir()) == sorted(p.name for p in two.iterdir())
    cfg = json.loads((two / ckpt.CONFIG).read_text())
    assert cfg["distributed"] == {"world_size": 2, "backend": "gloo", "weights_agree": True}
    assert cfg["trained_steps"] == 3 and "distributed" not in json.loads((one / ckpt.CONFIG).read_text())
    ref = nib.load(str(vols["tgt"]))
    for d in (one, two):
        seg = nib.load(str(d / "tgt_seg.nii.gz"))
        assert seg.shape == ref.shape and np.allclose(seg.affine, ref.affine)
    assert r.stdout.count("wrote ") == 1  # rank 0 alone prints and writes
    assert r.stderr.count("distributed: 2 processes (gloo), batch 2 per process (4 in all)") == 1


def test_sigterm_stops_every_rank_after_the_same_step_and_resume_finishes(vols, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.Popen(_torchrun(_args(vols, out, 100000)), stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            text=True, env=ENV, start_new_session=True)
    chars: list[str] = []
    reader = threading.Thread(target=lambda: chars.extend(iter(lambda: proc.stderr.read(1), "")), daemon=True)
    reader.start()
    deadline = time.time() + 300
    while time.time() < deadline and not re.search(r"\| [1-9]\d*/100000", "".join(chars)):
        time.sleep(0.2)  # until rank 0's progress bar shows a step done
    os.killpg(proc.pid, signal.SIGTERM)  # the launcher and both ranks, as a job scheduler's stop does
    proc.wait(timeout=300)
    reader.join(timeout=10)
    err = "".join(chars)
    assert f"weights saved to {out}" in err, err[-3000:]
    assert err.count("interrupted at step") == 1  # said (and saved) once, by rank 0
    cfg = json.loads((out / ckpt.CONFIG).read_text())
    assert cfg["interrupted"] and cfg["distributed"]["weights_agree"] and 0 < cfg["trained_steps"] < 100000
    assert sorted(p.name for p in out.iterdir()) == sorted([ckpt.CONFIG, ckpt.WEIGHTS, ckpt.OPTIMIZER])
    steps = cfg["trained_steps"]
    r = subprocess.run(_torchrun([*_args(vols, out, steps + 2), "--resume", str(out)]), capture_output=True,
                       text=True, env=ENV, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    cfg = json.loads((out / ckpt.CONFIG).read_text())
    assert cfg["trained_steps"] == steps + 2 and not cfg["interrupted"] and (Path(out) / "tgt_seg.nii.gz").exists()


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_one_process_under_torchrun_trains_through_ddp_to_the_plain_runs_weights(tiny_cfg, data, monkeypatch):  # noqa: F811
    """What ``torchrun --nproc_per_node 1`` does, in this process: the model is wrapped in DDP, the stop flag is
    shared through the process group, and with one rank the averaged gradients are the rank's own, so the weights
    end where the plain run's do (the DDP overhead on a GPU is measured by benchmarks/gpu_speed.py, section ddp)."""
    for k, v in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                 "MASTER_PORT": str(_free_port()), "TORCHELASTIC_RUN_ID": "test"}.items():
        monkeypatch.setenv(k, v)
    tcfg = TrainConfig(steps=3, batch_size=2, warmup_steps=1, device="cpu")

    def run(ctx, control=None):
        torch.manual_seed(0)
        model = UUDS(tiny_cfg)
        s, t = samplers(*data, tcfg.fg_fraction, tcfg.seed)
        events = list(train(model, s, t, tcfg, control=control, dist_ctx=ctx))
        return model, events

    plain, _ = run(distributed.SINGLE)
    ctx = distributed.init(from_env(), torch.device("cpu"))
    try:
        assert ctx.enabled and ctx.backend == "gloo" and torch.distributed.is_initialized()
        assert distributed.any_rank(True, ctx) and not distributed.any_rank(False, ctx)
        wrapped = []
        real_wrap = distributed.wrap
        monkeypatch.setattr(distributed, "wrap", lambda m, c, d: wrapped.append(real_wrap(m, c, d)) or wrapped[-1])
        ddp, events = run(ctx)
        assert type(wrapped[0]).__name__ == "DistributedDataParallel"
        assert events[-1].kind == "done"
        for (name, a), b in zip(plain.state_dict().items(), ddp.state_dict().values()):
            assert torch.allclose(a.float(), b.float(), rtol=1e-5, atol=1e-6), name
        torch.manual_seed(0)
        start = UUDS(tiny_cfg).state_dict()
        assert any(not torch.equal(a, b) for a, b in zip(start.values(), ddp.state_dict().values()))  # it trained
        control = TrainControl(tcfg.threshold)
        control.stop()
        _, events = run(ctx, control)  # the stop flag, shared through the group, ends it before a step
        assert events[-1].kind == "stopped" and events[-1].step == 0
    finally:
        distributed.close(ctx)
    assert not torch.distributed.is_initialized()
