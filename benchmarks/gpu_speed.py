"""Speed and memory of UUDS on a GPU (issue 4, part 2): figures printed and written as JSON.

Sections (``--sections``, run in the order given; by default this one; each is saved as soon as it ends, and one
that fails is recorded with its error while the others go on):

* ``throughput``: training slice pairs/s of the engine's own loop (:func:`napari_uuds.engine.train.train`,
  batches drawn by its samplers, every UUDS term on: no warm-up) at each ``--batches``, bf16 autocast and
  channels_last, then fp32 at the middle batch size; peak GPU memory of each. A UUDS step runs the image
  encoder on 4 x batch slices (two passes over source + target), so "encoder images/s" = 4 x pairs/s.
* ``ceiling``: the reference the issue names, open_clip's RN50 image tower alone, forward + backward, batch
  128 at 224 px, bf16 and fp32, on the same card: the goal is 40 % of it per encoder pass.
* ``inference``: one 240 x 240 x 155 volume (BraTS pat0004), slices to segmentation, entropy and
  synthetic source on the scan's grid, at two inference batch sizes.
* ``profile``: torch.profiler over 5 training steps at the middle batch size: the top operators by device
  time, the share of the wall time the GPU was busy, and where the copies and bilinear resizes are called from
  (``origins``: the calling operators and Python frames, forward or backward).
* ``plateau``: protocol A1 (T1c -> FLAIR) adapted until the total loss plateaus (criterion below) or the
  time budget ends; the loss curve, the wall time to the plateau, then Dice on the three target volumes.
* ``compile``: ``nn.Module.compile()`` (torch.compile) of the whole model, throughput at the middle batch.
* ``ddp`` (issue 17): the DDP path on one process (what ``torchrun --nproc_per_node 1`` runs: NCCL on a GPU, gloo on
  the CPU) against the plain run, same batch and steps, alternated plain/DDP ``--ddp-repeats`` times; the goal is a
  DDP step within 5 % of the plain one.
* ``upsample`` (issue 17): the decoders' x2 bilinear upsamplings (21.8 ms of a 150-ms step in the last profile,
  then in float32 under CUDA autocast): the shapes one training step upsamples, recorded from a forward pass, each
  timed forward + backward under the step's autocast with each of :data:`UPSAMPLERS`: ``F.interpolate`` in the
  map's dtype, in float32 (the engine's until 469ee09), and two exact rewrites of the same stencil
  (:func:`upsample_stencil`, :func:`upsample_conv_transpose`: the engine's on CUDA since); the ms a step each costs.
* ``upsample_step`` (issue 17): whole training steps at the largest batch with each of :data:`UPSAMPLERS` in the
  decoders, alternated; the rule that picks among them is in :func:`section_upsample_step`.
* ``layout`` (issue 17): whole training steps with the model channels-last throughout and with its decoders in
  the plain layout, alternated, then each at twice the batch; the rule is in :func:`section_layout`.
* ``cohort`` (issue 17): ``napari-uuds predict`` on a folder of ``--cohort`` volumes (the 240 x 240 x 155 BraTS
  scans of ``--data``, cycled; copied under new names) in a fresh interpreter: wall time from reading the first
  file to writing the summary, slices/s (each slice is one image segmented), peak GPU memory and peak resident
  memory of that process.

The CLIP weights are random (pretrained ones cannot be fetched here): speed does not depend on them.

    python benchmarks/gpu_speed.py --data ../shared/data --out benchmarks/results/gpu_speed.json
    python benchmarks/gpu_speed.py --smoke   # a tiny CPU run of every section (checks the script)
    python benchmarks/gpu_speed.py --report  # benchmarks/results/gpu_speed.md from the JSON files

``benchmarks/gpu_call.sh`` is the whole device call (wheels, data, these sections within one 10-minute command).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as qb  # noqa: E402  (the quality benchmark: protocols, loading, evaluation)

from napari_uuds.engine.atomic import atomic_write  # noqa: E402
from napari_uuds.engine.config import ModelConfig, TrainConfig  # noqa: E402
from napari_uuds.engine.dataset import samplers  # noqa: E402
import napari_uuds.engine.decoders as decoders  # noqa: E402
from napari_uuds.engine.decoders import is_channels_last  # noqa: E402
from napari_uuds.engine.infer import predict_volume  # noqa: E402
from napari_uuds.engine.model import UUDS  # noqa: E402
from napari_uuds.engine.train import TrainControl, resolve_device, train  # noqa: E402

SECTIONS = ["throughput", "ceiling", "inference", "profile", "plateau", "compile", "ddp", "cohort", "upsample",
            "upsample_step", "layout"]
#: plateau: the mean total loss over a window of WINDOW steps improves by less than PLATEAU_REL on the mean
#: over the next 2 windows (measured after the warm-up, whose end changes the loss)
WINDOW, PLATEAU_REL = 50, 0.02


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def peak_mib(dev: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated() / 2**20, 1) if dev.type == "cuda" else None


def reset_peak(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


class Report:
    def __init__(self, path: Path, doc: dict):
        self.path, self.doc = path, doc

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path, lambda tmp: Path(tmp).write_text(json.dumps(self.doc, indent=1)))

    def section(self, name: str, fn, *a, **kw) -> None:
        t = time.perf_counter()
        print(f"== {name}", flush=True)
        try:
            self.doc[name] = fn(*a, **kw)
        except Exception as exc:  # record and go on: one failing section must not lose the others
            self.doc.setdefault("errors", {})[name] = "".join(traceback.format_exception_only(type(exc), exc)).strip()
            traceback.print_exc()
        self.doc.setdefault("section_s", {})[name] = round(time.perf_counter() - t, 1)
        self.save()
        print(json.dumps({name: self.doc.get(name, self.doc.get("errors", {}).get(name))}), flush=True)


def _train_kw(**kw) -> dict:
    """TrainConfig keywords this checkout knows (the script also measures older checkouts)."""
    known = TrainConfig.__dataclass_fields__
    return {k: v for k, v in kw.items() if k in known}


def _model(ctx: dict, seed: int = 0) -> UUDS:
    torch.manual_seed(seed)
    return UUDS(ModelConfig(**ctx["model_kw"]), clip_weights=None, seed=seed)


def measure_training(ctx: dict, batch: int, *, amp: bool = True, channels_last: bool = True, warm: int = 10,
                     steps: int = 30, log_every: int = 10, compiled: bool = False, cudnn_benchmark: bool = False,
                     dist_ctx=None) -> dict:
    """``dist_ctx``: train through the engine's DDP path with this context (section ddp); None: the plain run."""
    dev = ctx["device"]
    model = _model(ctx)
    if compiled:
        model.compile()
    src, tgt = samplers(ctx["sources"], ctx["targets"], 0.5, 0)
    tcfg = TrainConfig(**_train_kw(steps=warm + steps, batch_size=batch, warmup_steps=0, amp=amp,
                                   channels_last=channels_last, device=str(dev), cudnn_benchmark=cudnn_benchmark))
    reset_peak(dev)
    t_first = time.perf_counter()
    t0 = first_s = None
    for ev in train(model, src, tgt, tcfg, log_every=log_every, **({"dist_ctx": dist_ctx} if dist_ctx else {})):
        if ev.kind == "step" and ev.step >= warm and t0 is None:  # the first logged step after the warm steps
            sync(dev)
            t0 = time.perf_counter()
            first_s = t0 - t_first
            steps = warm + steps - ev.step  # the steps left to time
    sync(dev)
    secs = time.perf_counter() - t0
    pairs = batch * steps / secs
    out = {"batch": batch, "amp_bf16": amp and dev.type == "cuda", "channels_last": channels_last,
           "data_on_device": getattr(tcfg, "data_on_device", None), "log_every": log_every,
           "cudnn_benchmark": getattr(tcfg, "cudnn_benchmark", None),
           "timed_steps": steps, "step_ms": round(1000 * secs / steps, 2), "pairs_per_s": round(pairs, 1),
           "encoder_images_per_s": round(4 * pairs, 1), "peak_mib": peak_mib(dev),
           "first_steps_s": round(first_s, 1)}
    del model
    reset_peak(dev)
    return out


def _mid_batch(args) -> int:
    """The middle of ``--batches``: the batch size of the variants, the profile and torch.compile."""
    return args.batches[len(args.batches) // 2]


def section_throughput(ctx: dict, args) -> dict:
    runs = [measure_training(ctx, b, log_every=args.log_every) for b in args.batches]
    if not args.no_variants:  # at the middle batch: events every step, cuDNN autotuning, no channels_last, fp32
        mid = _mid_batch(args)
        runs.append(measure_training(ctx, mid, log_every=1))
        runs.append(measure_training(ctx, mid, log_every=args.log_every, cudnn_benchmark=True))
        runs.append(measure_training(ctx, mid, log_every=args.log_every, channels_last=False))
        runs.append(measure_training(ctx, mid, amp=False, channels_last=False, log_every=args.log_every))
    return {"runs": runs}


def section_ceiling(ctx: dict, args) -> dict:
    import open_clip

    dev = ctx["device"]
    name, size, batch = ("RN50", 224, 128) if not args.smoke else ("uuds-tiny", 128, 8)
    if args.smoke:  # the engine's tiny config, registered with open_clip as building a tiny model does
        from napari_uuds.engine.backbone import _register_tiny

        _register_tiny()
    visual = open_clip.create_model(name, pretrained=None).visual.to(dev)
    visual.image_size = (size, size)
    out = {"model": f"open_clip {name} image tower", "batch": batch, "size": size}
    for prec in ("bf16", "fp32"):
        cl = torch.channels_last if dev.type == "cuda" else torch.contiguous_format
        visual.to(memory_format=cl)
        x = torch.randn(batch, 3, size, size, device=dev).contiguous(memory_format=cl)
        ac = torch.autocast("cuda", dtype=torch.bfloat16, enabled=prec == "bf16") if dev.type == "cuda" \
            else torch.autocast("cpu", enabled=False)
        reset_peak(dev)
        n = args.ceiling_steps
        for i in range(5 + n):
            if i == 5:
                sync(dev)
                t0 = time.perf_counter()
            with ac:
                y = visual(x)
            y.float().square().mean().backward()
            visual.zero_grad(set_to_none=True)
        sync(dev)
        out[f"{prec}_images_per_s"] = round(batch * n / (time.perf_counter() - t0), 1)
        out[f"{prec}_peak_mib"] = peak_mib(dev)
    return out


def section_inference(ctx: dict, args) -> dict:
    dev = ctx["device"]
    model = ctx.get("trained") or _model(ctx).to(dev)
    if dev.type == "cuda":
        model.to(memory_format=torch.channels_last)
    vol = ctx["targets"][0].volume
    out = {"volume": vol.name, "shape": list(vol.data.shape), "axis": model.cfg.axis, "runs": []}
    for bs in args.infer_batches:
        predict_volume(model, vol, batch_size=bs, norm=ctx["targets"][0].norm)  # warm
        reset_peak(dev)
        times = []
        for _ in range(3):
            sync(dev)
            t = time.perf_counter()
            predict_volume(model, vol, batch_size=bs, norm=ctx["targets"][0].norm)
            sync(dev)
            times.append(time.perf_counter() - t)
        out["runs"].append({"batch": bs, "seconds": [round(s, 3) for s in times],
                            "median_s": round(float(np.median(times)), 3), "peak_mib": peak_mib(dev)})
    return out


#: the operators the profiles named as the largest GPU costs beside the convolutions (gpu_speed.md)
TRACED = ("aten::copy_", "aten::upsample_bilinear2d", "aten::upsample_bilinear2d_backward")


def origins(events, key, steps: int, names=TRACED, top: int = 20, field: str = "ms_per_step", scale: float = 1e-3
            ) -> list[dict]:
    """The time a step of each operator in ``names`` by where it was called from: the operators between it and the
    nearest Python frame (``to`` / ``contiguous`` ...), then the first two frames of napari_uuds or open_clip, or
    the autograd node for what runs in the backward pass. ``key(event)``: its own time in microseconds (or another
    amount, reported as ``field`` after multiplying by ``scale``). "train.py(...): train" is the training loop itself
    (a generator's frame carries the line of its last ``yield``), reached directly or through torch (the optimiser)."""
    agg: dict[tuple[str, str], list[float]] = {}
    for e in events:
        if e.name not in names:
            continue
        ops, frames, q = [], [], e.cpu_parent
        while q is not None:
            if q.name.startswith("aten::") and not frames:
                ops.append(q.name[6:])
            elif ("napari_uuds" in q.name or "open_clip" in q.name) and len(frames) < 2:
                frames.append(q.name.split("/")[-1])
            elif q.name.startswith("autograd::engine") and not frames:
                frames.append("backward of " + q.name.split(": ")[-1])
            q = q.cpu_parent
        where = "/".join(ops[:2]) + (" | " if ops else "") + (" <- ".join(frames) or "(no Python frame)")
        row = agg.setdefault((e.name, where), [0, 0.0])
        row[0] += 1
        row[1] += key(e)
    rows = sorted(agg.items(), key=lambda kv: -kv[1][1])[:top]
    return [{"op": op, "from": where, "calls": round(n / steps, 1), field: round(amount * scale / steps, 3)}
            for (op, where), (n, amount) in rows]


def section_profile(ctx: dict, args) -> dict:
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile, schedule

    dev = ctx["device"]
    batch = _mid_batch(args)
    model = _model(ctx)
    src, tgt = samplers(ctx["sources"], ctx["targets"], 0.5, 0)
    tcfg = TrainConfig(**_train_kw(steps=12, batch_size=batch, warmup_steps=0, device=str(dev)))
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    active = 5
    with profile(activities=acts, schedule=schedule(wait=2, warmup=3, active=active, repeat=1)) as prof:
        t_active = None
        for ev in train(model, src, tgt, tcfg, log_every=1):
            if ev.kind == "step":
                if ev.step == 5:
                    sync(dev)
                    t_active = time.perf_counter()
                if ev.step == 5 + active:
                    sync(dev)
                    wall = time.perf_counter() - t_active
                prof.step()
    avg = prof.key_averages()
    # the origins from a second run with Python stacks (their recording slows the host, so the timed run above has
    # none: its wall time stays comparable with the earlier profiles')
    model = _model(ctx)
    src, tgt = samplers(ctx["sources"], ctx["targets"], 0.5, 0)
    with profile(activities=acts, schedule=schedule(wait=2, warmup=3, active=active, repeat=1), with_stack=True) as traced:
        for ev in train(model, src, tgt, tcfg, log_every=1):
            if ev.kind == "step":
                traced.step()

    def dev_self(e) -> float:
        return float(getattr(e, "self_device_time_total", getattr(e, "self_cuda_time_total", 0.0)) or 0.0)

    key = dev_self if dev.type == "cuda" else (lambda e: float(e.self_cpu_time_total))
    # GPU busy time: the kernel rows' own time, as the profiler's "Self CUDA time total" counts it (operator
    # rows and the step's GPU-side annotation would count the same time again)
    busy_us = sum(dev_self(e) for e in avg if e.device_type == DeviceType.CUDA and not e.key.startswith("ProfilerStep"))
    top = sorted((e for e in avg if not e.key.startswith("ProfilerStep")), key=key, reverse=True)[:15]
    table = avg.table(sort_by="self_cuda_time_total" if dev.type == "cuda" else "self_cpu_time_total", row_limit=25)
    if args.profile_table:
        Path(args.profile_table).write_text(table)
    return {"batch": batch, "steps": active, "wall_ms_per_step": round(1000 * wall / active, 2),
            "kernel_ms_per_step": round(busy_us / 1000 / active, 2) if dev.type == "cuda" else None,
            "gpu_busy_fraction": round(busy_us / 1e6 / wall, 3) if dev.type == "cuda" else None,
            "top": [{"op": e.key, "calls": int(e.count // active), "self_device_ms_per_step": round(dev_self(e) / 1000 / active, 3),
                     "self_cpu_ms_per_step": round(e.self_cpu_time_total / 1000 / active, 3)} for e in top],
            # where the copies and the bilinear resizes come from (the second run's Python frames)
            "origins": origins(traced.events(), key, active)}


def plateau_step(curve: list[tuple[int, float]], start: int, window: int = WINDOW, rel: float = PLATEAU_REL
                 ) -> int | None:
    """The end of the first complete window (of ``window`` steps, after ``start``) whose mean logged loss is
    improved on by less than ``rel`` (relative) by the better of the next two complete windows; None while
    no such window exists. A window is complete once a later step has been logged."""
    last = max((s for s, _ in curve), default=0)
    by_win: dict[int, list[float]] = {}
    for s, v in curve:
        if s > start:
            by_win.setdefault((s - start - 1) // window, []).append(v)
    done = [k for k in sorted(by_win) if start + (k + 1) * window <= last]  # complete windows only
    wins = [(start + (k + 1) * window, float(np.mean(by_win[k]))) for k in done]
    for i in range(len(wins) - 2):
        ahead = min(wins[i + 1][1], wins[i + 2][1])
        if wins[i][1] - ahead < rel * abs(wins[i][1]):
            return wins[i][0]
    return None


def section_plateau(ctx: dict, args, budget_s: float) -> dict:
    dev = ctx["device"]
    model = _model(ctx)
    src, tgt = samplers(ctx["sources"], ctx["targets"], 0.5, 0)
    warmup = args.plateau_warmup
    tcfg = TrainConfig(**_train_kw(steps=args.plateau_steps, batch_size=args.plateau_batch, warmup_steps=warmup,
                                   device=str(dev)))
    control = TrainControl(tcfg.threshold)
    curve, t0, stop_at, reason = [], time.perf_counter(), None, "steps"
    for ev in train(model, src, tgt, tcfg, control=control, log_every=args.log_every):
        if ev.kind != "step":
            continue
        curve.append((ev.step, round(ev.losses["total"], 4), round(time.perf_counter() - t0, 2)))
        p = plateau_step([(s, v) for s, v, _ in curve], warmup)
        if p is not None and stop_at is None:
            stop_at, reason = p, "plateau"
            control.stop()
        elif time.perf_counter() - t0 > budget_s and stop_at is None:
            reason = "time budget"
            control.stop()
    wall = time.perf_counter() - t0
    steps_done = curve[-1][0] if curve else 0
    t_plateau = next((t for s, _, t in curve if s >= stop_at), None) if stop_at else None
    model.eval()
    ctx["trained"] = model
    t = time.perf_counter()
    vols = qb._evaluate(model, ctx["targets"], ctx["refs"], ctx["class_names"])
    return {"protocol": ctx["protocol"], "batch": args.plateau_batch, "warmup_steps": warmup,
            "criterion": f"mean total loss over {WINDOW}-step windows after the warm-up improves by < "
                         f"{100 * PLATEAU_REL:.0f} % over the next two windows",
            "ended_by": reason, "plateau_step": stop_at, "wall_to_plateau_s": t_plateau,
            "steps_done": steps_done, "wall_s": round(wall, 1), "eval_s": round(time.perf_counter() - t, 1),
            "dice": [v["dice"] for v in vols], "dice_mean": round(float(np.mean([v["dice"] for v in vols])), 2),
            "assd_mm": [v["assd_mm"] for v in vols], "curve": curve}


def section_compile(ctx: dict, args) -> dict:
    t = time.perf_counter()
    r = measure_training(ctx, _mid_batch(args), log_every=args.log_every, compiled=True, warm=args.compile_warm)
    r["compile_and_warm_s"] = r.pop("first_steps_s")
    r["section_s"] = round(time.perf_counter() - t, 1)
    return r


def upsample_stencil(x: torch.Tensor) -> torch.Tensor:
    """x2 bilinear upsampling (align_corners=False) as its stencil: output 2i is 3/4 x[i] + 1/4 x[i-1], output 2i+1
    is 3/4 x[i] + 1/4 x[i+1], edges clamped; along W, then H. Channels-last input is worked on as NHWC, so the
    output keeps the input's memory format."""
    cl = is_channels_last(x)
    t = x.permute(0, 2, 3, 1) if cl else x  # dims of H and W: 1, 2 (NHWC) or 2, 3 (NCHW)
    h_dim = 1 if cl else 2

    def along(t: torch.Tensor, d: int) -> torch.Tensor:
        n = t.shape[d]
        left = torch.cat([t.narrow(d, 0, 1), t.narrow(d, 0, n - 1)], d)
        right = torch.cat([t.narrow(d, 1, n - 1), t.narrow(d, n - 1, 1)], d)
        shape = list(t.shape)
        shape[d] *= 2
        return torch.stack([torch.lerp(t, left, 0.25), torch.lerp(t, right, 0.25)], d + 1).reshape(shape)

    t = along(along(t, h_dim + 1), h_dim)
    return t.permute(0, 3, 1, 2) if cl else t


upsample_conv_transpose = decoders.upsample_conv_transpose  # the engine's on CUDA since gpu_speed_after-casts


def _interpolate_in_dtype(x: torch.Tensor) -> torch.Tensor:
    """``F.interpolate`` in the map's dtype (``decoders.interpolate``): the engine's on CUDA at 9f3be38."""
    return decoders.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


def _interpolate_autocast(x: torch.Tensor) -> torch.Tensor:
    """What the decoders did before ``decoders.upsample2x``: ``F.interpolate`` as autocast runs it (float32 on
    CUDA: a cast up before it; the next convolution casts the result back down)."""
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


#: the x2 upsamplings compared (keys as recorded in gpu_speed_after-casts.json): "engine", ``F.interpolate`` in the
#: map's dtype (the engine's at 9f3be38); the engine's before it (float32 under CUDA autocast); two rewrites of the
#: same stencil in the map's dtype, of which the transposed convolution is the engine's on CUDA since then
UPSAMPLERS = {"engine": _interpolate_in_dtype, "autocast_float32": _interpolate_autocast,
              "stencil": upsample_stencil, "conv_transpose": upsample_conv_transpose}


def _step_autocast(dev: torch.device):
    """The training step's autocast (bf16 on CUDA, none on the CPU), as ``train`` sets it."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" else torch.autocast("cpu", enabled=False)


def decoder_upsamplings(ctx: dict, batch: int) -> list[dict]:
    """Every x2 upsampling of the decoders in one training forward pass (shape, dtype, memory format, count)."""
    dev = ctx["device"]
    model = _model(ctx).to(dev)
    if dev.type == "cuda":
        model.to_channels_last()  # as train lays it out
    seen: dict[tuple, int] = {}
    real = decoders.upsample2x

    def spy(x):
        key = (tuple(x.shape), str(x.dtype).replace("torch.", ""), "channels_last" if is_channels_last(x) else "contiguous")
        seen[key] = seen.get(key, 0) + 1
        return real(x)

    size = model.cfg.image_size
    xs, xt = (torch.rand(batch, 1, size, size, device=dev) * 2 - 1 for _ in range(2))
    decoders.upsample2x = spy
    try:
        with _step_autocast(dev):
            model(xs, xt)
    finally:
        decoders.upsample2x = real
    del model
    return [{"shape": list(k[0]), "dtype": k[1], "format": k[2], "per_step": n} for k, n in seen.items()]


def section_upsample(ctx: dict, args) -> dict:
    """Each candidate on each recorded shape, forward + backward under the step's autocast, its output taken to
    the map's dtype (what the concatenation and the next convolution read): the ms a step each would cost."""
    dev = ctx["device"]
    batch = _mid_batch(args)
    calls = decoder_upsamplings(ctx, batch)
    reps = 3 if args.smoke else 20
    rows, total = [], {k: 0.0 for k in UPSAMPLERS}
    for c in calls:
        x0 = torch.randn(c["shape"], device=dev, dtype=getattr(torch, c["dtype"]))
        if c["format"] == "channels_last":
            x0 = x0.contiguous(memory_format=torch.channels_last)
        ref = F.interpolate(x0.float(), scale_factor=2, mode="bilinear", align_corners=False)
        row = {**c, "ms": {}, "max_abs_diff": {}}
        for name, fn in UPSAMPLERS.items():
            x = x0.detach().requires_grad_(True)
            with _step_autocast(dev):
                for i in range(reps + 3):
                    if i == 3:
                        sync(dev)
                        t0 = time.perf_counter()
                    y = fn(x).to(x.dtype)
                    y.backward(torch.ones_like(y))
                sync(dev)
                ms = 1000 * (time.perf_counter() - t0) / reps
                row["max_abs_diff"][name] = float((fn(x0).to(x0.dtype).float() - ref).abs().max())
            row["ms"][name] = round(ms, 3)
            total[name] += ms * c["per_step"]
        rows.append(row)
    return {"batch": batch, "forward_and_backward_ms_per_step": {k: round(v, 2) for k, v in total.items()},
            "calls": rows}


def _alternated(names: list[str], repeats: int):
    """(repeat, name) in the order the whole-step comparisons run them: every name once a repeat (a drift of the
    card's clocks falls on each), each repeat starting with another (so does a first run's cost)."""
    for rep in range(repeats):
        k = rep % len(names)
        for name in names[k:] + names[:k]:
            yield rep, name


def section_upsample_step(ctx: dict, args) -> dict:
    """Whole training steps at the largest ``--batches`` with each upsampling in the decoders (patched in for the
    run), alternated ``--upsample-repeats`` times; median ms a step each. Rule, written before any of these figures
    (and amended, still before any, after a review measured that CUDA's bfloat16 resize backward accumulates with
    bfloat16 atomics: relative error 0.0052 against 0.0017 for the float32 kernel rounded once, and not
    deterministic): ``conv_transpose`` (exact in bfloat16 forward, float32 accumulation both ways, deterministic)
    goes into ``decoders.upsample2x`` if its median step is within 2 % of ``engine``'s or shorter; else a candidate
    more than 2 % shorter than ``engine`` replaces it (``autocast_float32``: the previous engine); else ``engine``
    stays."""
    batch = max(args.batches)
    real = decoders.upsample2x
    runs = []
    try:
        for rep, name in _alternated(list(UPSAMPLERS), args.upsample_repeats):
            decoders.upsample2x = UPSAMPLERS[name]
            r = measure_training(ctx, batch, log_every=args.log_every)
            runs.append({"upsample": name, "repeat": rep, **r})
            print(f"  {name} {rep}: {r['step_ms']:.1f} ms a step", flush=True)
    finally:
        decoders.upsample2x = real
    med = {k: float(np.median([r["step_ms"] for r in runs if r["upsample"] == k])) for k in UPSAMPLERS}
    return {"batch": batch, "repeats": args.upsample_repeats, "step_ms": {k: round(v, 2) for k, v in med.items()},
            "over_engine": {k: round(v / med["engine"], 4) for k, v in med.items()},
            "rule": "conv_transpose if within 2 % of engine or shorter; else one > 2 % shorter than engine; else engine",
            "runs": runs}


def _all_channels_last(self):
    """Every 4-d weight channels-last, the decoders' too (``UUDS.to_channels_last`` until gpu_speed_after-convt)."""
    return self.to(memory_format=torch.channels_last)


#: the model layouts compared by section layout: every weight channels-last, and the engine's own
#: (``UUDS.to_channels_last``: the decoders plain, since gpu_speed_after-convt)
LAYOUTS = {"channels_last": _all_channels_last, "decoders_nchw": UUDS.to_channels_last}


def section_layout(ctx: dict, args) -> dict:
    """Whole training steps at the largest ``--batches`` with the model channels-last throughout (the engine until
    498646d) and with the decoders in the plain layout (the engine's since): their group norm returns plain maps,
    so channels-last decoder convolutions copy their input to channels-last and the norms copy it back, forward and
    backward (the profile of gpu_speed_after-casts: ``clone/contiguous`` copies, 28 ms a step). Alternated ``--upsample-repeats`` times, each
    repeat starting with another; then each layout once at twice that batch. Rule, written before these figures:
    the decoders go plain if their median step is more than 2 % shorter."""
    batch = max(args.batches)
    real = UUDS.to_channels_last
    runs = []
    try:
        for rep, name in _alternated(list(LAYOUTS), args.upsample_repeats):
            UUDS.to_channels_last = LAYOUTS[name]
            r = measure_training(ctx, batch, log_every=args.log_every)
            runs.append({"layout": name, "repeat": rep, **r})
            print(f"  {name} {rep}: {r['step_ms']:.1f} ms a step", flush=True)
        for name in LAYOUTS:
            UUDS.to_channels_last = LAYOUTS[name]
            r = measure_training(ctx, 2 * batch, log_every=args.log_every)
            runs.append({"layout": name, "repeat": 0, **r})
            print(f"  {name} at batch {2 * batch}: {r['step_ms']:.1f} ms a step", flush=True)
    finally:
        UUDS.to_channels_last = real
    med = {k: float(np.median([r["step_ms"] for r in runs if r["layout"] == k and r["batch"] == batch]))
           for k in LAYOUTS}
    return {"batch": batch, "repeats": args.upsample_repeats, "step_ms": {k: round(v, 2) for k, v in med.items()},
            "over_channels_last": {k: round(v / med["channels_last"], 4) for k, v in med.items()},
            "rule": "decoders plain if > 2 % shorter a step", "runs": runs}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def section_ddp(ctx: dict, args) -> dict:
    """The engine's DDP path with one process against the plain run (the issue's "within 5 %")."""
    from napari_uuds.engine import distributed

    dev = ctx["device"]
    batch = _mid_batch(args)
    env = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()),
           "TORCHELASTIC_RUN_ID": "gpu_speed"}  # what torchrun --nproc_per_node 1 sets
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    dctx = distributed.SINGLE
    runs = []
    try:
        dctx = distributed.init(distributed.from_env(), dev)
        for rep in range(args.ddp_repeats):  # alternated: a drift of the card's clocks falls on both
            for kind in ("plain", "ddp"):
                r = measure_training(ctx, batch, log_every=args.log_every, dist_ctx=dctx if kind == "ddp" else None)
                runs.append({"kind": kind, "repeat": rep, **r})
                print(f"  {kind} {rep}: {r['step_ms']:.1f} ms a step", flush=True)
    finally:
        distributed.close(dctx)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    med = {k: float(np.median([r["step_ms"] for r in runs if r["kind"] == k])) for k in ("plain", "ddp")}
    return {"batch": batch, "backend": dctx.backend, "world_size": 1, "repeats": args.ddp_repeats,
            "plain_step_ms": round(med["plain"], 2), "ddp_step_ms": round(med["ddp"], 2),
            "ddp_over_plain": round(med["ddp"] / med["plain"], 4), "goal": "ddp_over_plain <= 1.05", "runs": runs}


#: what the cohort probe runs in a fresh interpreter: the CLI's predict, then the process's own peaks
_COHORT_PROBE = """
import json, resource, sys, time
import torch
from napari_uuds.cli import main
t = time.perf_counter()
code = main(sys.argv[1:])
wall = time.perf_counter() - t
print(json.dumps({"exit": code, "wall_s": round(wall, 2),
                  "peak_gpu_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1) if torch.cuda.is_available() else None,
                  "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)}))
"""


def cohort_files(args) -> list[Path]:
    """The scans the cohort cycles through: every flair/t1c under ``--data``/brats (the sample's two scans with
    ``--smoke``)."""
    if args.smoke:
        return sorted((qb.ROOT / "sample_data" / "cord").glob("t[12].nii.gz"))
    return [p for p in sorted(Path(args.data).glob("brats/pat*/*.nii.gz")) if p.name in ("flair.nii.gz", "t1c.nii.gz")]


def section_cohort(ctx: dict, args) -> dict:
    from napari_uuds.engine.checkpoint import save_checkpoint

    dev = ctx["device"]
    scans = cohort_files(args)
    if not scans:
        raise FileNotFoundError(f"no scan for the cohort under {args.data}")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        folder = work / "cohort"
        folder.mkdir()
        for i in range(args.cohort):  # copies under new names: the CLI reads each as its own file
            src = scans[i % len(scans)]
            shutil.copyfile(src, folder / f"{i:02d}_{src.parent.name}_{src.name}")
        save_checkpoint(_model(ctx), work / "weights")
        cmd = [sys.executable, "-c", _COHORT_PROBE, "predict", "--quiet", "--weights", str(work / "weights"),
               "--image", str(folder), "--out", str(work / "out"), "--batch-size", str(args.cohort_batch),
               "--device", dev.type]
        r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        if r.returncode != 0:
            raise RuntimeError(f"napari-uuds predict failed ({r.returncode}): {r.stderr[-2000:]}")
        probe = json.loads(r.stdout.strip().splitlines()[-1])
        summary = json.loads((work / "out" / "summary.json").read_text())
    done = [v for v in summary["volumes"] if v["status"] == "segmented"]
    axis = ctx["model_kw"]["axis"]
    slices = sum(int(v["shape"].split("x")[axis]) for v in done)
    secs = [v["seconds"] for v in done]
    return {"volumes": args.cohort, "segmented": len(done), "skipped": summary["skipped"],
            "scans_cycled": [f"{p.parent.name}/{p.name}" for p in scans], "shapes": sorted({v["shape"] for v in done}),
            "batch": args.cohort_batch, "slices": slices, "wall_s": probe["wall_s"],
            "slices_per_s": round(slices / probe["wall_s"], 1), "volumes_per_s": round(len(done) / probe["wall_s"], 3),
            "volume_seconds_median": round(float(np.median(secs)), 2) if secs else None,
            "peak_gpu_mib": probe["peak_gpu_mib"], "peak_rss_gib": probe["peak_rss_gib"],
            "command": "napari-uuds " + " ".join(cmd[3:]).replace(str(work), "TMP")}


def _gib(mib: float | None) -> str:
    return "" if mib is None else f"{mib / 1024:.1f}"  # None: a CPU run (no device memory to read)


def write_markdown(results: Path) -> Path:
    """benchmarks/results/gpu_speed.md from every gpu_speed_*.json beside it (oldest commit first)."""
    docs = [json.loads(p.read_text()) for p in sorted(results.glob("gpu_speed_*.json"))]
    order = {"before": 0}
    docs.sort(key=lambda d: (order.get(d.get("label"), 1), d.get("label", "")))
    ceil = next((d["ceiling"] for d in docs if "ceiling" in d), None)
    lines = ["# GPU speed and memory (generated by `benchmarks/gpu_speed.py --report` from the JSON files beside this one)",
             "", "RN50 UUDS at 224 px, random CLIP weights (speed does not depend on them), protocol A1's slices, the "
             "engine's own training loop with every UUDS term on. A step runs the image encoder on 4 x batch slices, "
             "so encoder images/s = 4 x slice pairs/s.", ""]
    if ceil:
        lines += [f"Ceiling ({ceil['model']}, forward + backward, batch {ceil['batch']} at {ceil['size']} px, same card "
                  f"as the runs of call 1): bf16 {ceil['bf16_images_per_s']:.0f} images/s, fp32 "
                  f"{ceil['fp32_images_per_s']:.0f}. The goal, 40 % of it per encoder pass, is "
                  f"{0.4 * ceil['bf16_images_per_s']:.0f} encoder images/s.", ""]
    lines += ["| engine | card | batch | bf16 | channels_last | events every | step ms | slice pairs/s | encoder images/s "
              "| % of bf16 ceiling | peak GiB |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for d in docs:
        for r in d.get("throughput", {}).get("runs", []):
            pct = f"{100 * r['encoder_images_per_s'] / ceil['bf16_images_per_s']:.0f} %" if ceil else ""
            extra = "" if r.get("cudnn_benchmark") in (None, False) else " (cuDNN autotuning)"
            lines.append(f"| {d['label']} ({d['commit']}){extra} | {d['device']}, {d.get('machine', '').split(' (')[0]} | "
                         f"{r['batch']} | {'yes' if r['amp_bf16'] else 'no'} | {'yes' if r['channels_last'] else 'no'} | "
                         f"{r['log_every']} | {r['step_ms']:.0f} | {r['pairs_per_s']:.0f} | {r['encoder_images_per_s']:.0f} | "
                         f"{pct} | {_gib(r['peak_mib'])} |")
    for d in docs:
        if "inference" in d:
            inf = d["inference"]
            runs = ", ".join(f"{r['median_s']:.2f} s at batch {r['batch']} (peak {_gib(r['peak_mib'])} GiB)" for r in inf["runs"])
            lines += ["", f"Inference of one {' x '.join(map(str, inf['shape']))} volume ({d['label']}, {d['commit']}), "
                      f"from normalised slices to probabilities, segmentation, entropy and synthetic source on the scan's "
                      f"grid, median of 3: {runs}."]
    for d in docs:
        if "profile" in d:
            pr = d["profile"]
            top = "; ".join(f"{t['op'][:40]} {t['self_device_ms_per_step']:.1f} ms" for t in pr["top"]
                            if t["op"].startswith("aten::"))[:400]
            busy = pr.get("kernel_ms_per_step")
            lines += ["", f"Profile ({d['label']}, {d['commit']}, batch {pr['batch']}, {pr['steps']} steps under "
                      f"torch.profiler, {pr['wall_ms_per_step']:.0f} ms a step while profiled): "
                      + (f"{busy:.0f} ms of kernels a step. " if busy else "") + f"Top operators by GPU time a step: {top}."]
    for d in docs:
        if "plateau" in d:
            pl = d["plateau"]
            lines += ["", f"Adaptation run ({d['label']}, {d['commit']}), A1 at batch {pl['batch']}, warm-up {pl['warmup_steps']}: "
                      f"{pl['steps_done']} steps in {pl['wall_s']:.0f} s, ended by {pl['ended_by']}; target Dice "
                      f"{', '.join(f'{x:.1f}' for x in pl['dice'])} %."]
        for k, v in d.get("notes", {}).items():
            lines.append(f"Note ({d['label']}, {k}): {v}.")
    for d in docs:
        if "ddp" in d:
            dd = d["ddp"]
            lines += ["", f"DDP on one process ({d['label']}, {d['commit']}, {dd['backend']}, batch {dd['batch']}, median of "
                      f"{dd['repeats']} alternated runs each): {dd['ddp_step_ms']:.0f} ms a step against {dd['plain_step_ms']:.0f} "
                      f"ms for the plain run ({100 * (dd['ddp_over_plain'] - 1):+.1f} %; goal: within 5 %)."]
        if "cohort" in d:
            co = d["cohort"]
            gpu = f"peak GPU memory {co['peak_gpu_mib'] / 1024:.1f} GiB, " if co.get("peak_gpu_mib") else ""
            lines += ["", f"Cohort ({d['label']}, {d['commit']}): {co['segmented']} volumes of {', '.join(co['shapes'])} "
                      f"through `napari-uuds predict` on a folder at batch {co['batch']}: {co['wall_s']:.0f} s from the first "
                      f"read to the summary, {co['slices_per_s']:.0f} slices/s, {co['volume_seconds_median']:.1f} s per volume "
                      f"(median, reading to segmented), {gpu}peak resident memory {co['peak_rss_gib']:.1f} GiB."]
        if "upsample" in d:
            up = d["upsample"]
            per = ", ".join(f"{k} {v:.1f} ms" for k, v in up["forward_and_backward_ms_per_step"].items())
            lines += ["", f"The decoders' x2 resizes of one step ({d['label']}, {d['commit']}, batch {up['batch']}, "
                      f"{sum(c['per_step'] for c in up['calls'])} calls, forward + backward): {per}."]
        if "layout" in d:
            la = d["layout"]
            big = "; ".join(f"{r['layout']} at batch {r['batch']}: {r['step_ms']:.0f} ms, {r['encoder_images_per_s']:.0f} "
                            f"encoder images/s" + (f" ({100 * r['encoder_images_per_s'] / ceil['bf16_images_per_s']:.0f} % "
                                                   "of the ceiling)" if ceil else "")
                            for r in la["runs"] if r["batch"] != la["batch"])
            per = ", ".join(f"{k} {v:.0f} ms ({100 * (la['over_channels_last'][k] - 1):+.1f} %)" for k, v in la["step_ms"].items())
            lines += ["", f"Model layouts ({d['label']}, {d['commit']}, batch {la['batch']}, median of {la['repeats']} "
                      f"alternated runs each): {per}; {big}; rule: {la['rule']}."]
        if "upsample_step" in d:
            us = d["upsample_step"]
            pct = {k: "" if not ceil else f", {100 * 4 * us['batch'] * 1000 / v / ceil['bf16_images_per_s']:.0f} % of "
                   "the ceiling" for k, v in us["step_ms"].items()}
            per = ", ".join(f"{k} {v:.0f} ms ({100 * (us['over_engine'][k] - 1):+.1f} %{pct[k]})"
                            for k, v in us["step_ms"].items())
            lines += ["", f"Training steps with each x2 upsampling in the decoders ({d['label']}, {d['commit']}, batch "
                      f"{us['batch']}, median of {us['repeats']} alternated runs each; engine: F.interpolate in the "
                      f"map's dtype, autocast_float32: as CUDA autocast runs it): {per}; rule: {us['rule']}."]
    out = results / "gpu_speed.md"
    atomic_write(out, lambda tmp: Path(tmp).write_text("\n".join(lines) + "\n"))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(qb.ROOT.parent / "shared" / "data"))
    ap.add_argument("--protocol", default="A1", choices=["A1", "A2"])
    ap.add_argument("--out", default=str(qb.RESULTS / "gpu_speed.json"))
    ap.add_argument("--label", default="", help="a name for this checkout's figures (e.g. before)")
    ap.add_argument("--sections", nargs="*", default=SECTIONS, choices=SECTIONS)
    ap.add_argument("--batches", nargs="*", type=int, default=[16, 32, 64])
    ap.add_argument("--infer-batches", nargs="*", type=int, default=[16, 64])
    ap.add_argument("--log-every", type=int, default=10)
    ap.add_argument("--ceiling-steps", type=int, default=20)
    ap.add_argument("--plateau-batch", type=int, default=32)
    ap.add_argument("--plateau-steps", type=int, default=4000)
    ap.add_argument("--plateau-warmup", type=int, default=200)
    ap.add_argument("--compile-warm", type=int, default=10)
    ap.add_argument("--deadline", type=float, default=420.0, help="seconds for the whole script (plateau gets the rest)")
    ap.add_argument("--reserve", type=float, default=150.0, help="seconds kept for the sections after plateau")
    ap.add_argument("--profile-table", default=None, help="write torch.profiler's table to this text file")
    ap.add_argument("--no-variants", action="store_true", help="throughput: the --batches runs only")
    ap.add_argument("--commit", default=None, help="commit to record (default: this checkout's)")
    ap.add_argument("--ddp-repeats", type=int, default=2, help="ddp: plain/DDP pairs measured, alternated")
    ap.add_argument("--upsample-repeats", type=int, default=2, help="upsample_step: runs of each, alternated")
    ap.add_argument("--cohort", type=int, default=20, help="cohort: volumes in the folder")
    ap.add_argument("--cohort-batch", type=int, default=64, help="cohort: predict's --batch-size")
    ap.add_argument("--report", action="store_true", help="only regenerate gpu_speed.md from the JSON files")
    ap.add_argument("--smoke", action="store_true", help="tiny model, small sizes, on the CPU")
    args = ap.parse_args(argv)
    if args.report:
        print(write_markdown(Path(args.out).parent))
        return 0
    t_start = time.perf_counter()
    proto = qb.PROTOCOLS[args.protocol]
    names = proto["classes"]
    if args.smoke:
        args.batches, args.infer_batches, args.ceiling_steps = [2, 4], [8], 2
        args.plateau_steps, args.plateau_warmup, args.log_every, args.compile_warm = 8, 2, 2, 2
        args.ddp_repeats, args.upsample_repeats, args.cohort, args.cohort_batch = 1, 1, 3, 16
        cfg = ModelConfig.for_arch("tiny", image_size=64, class_names=names, source_modality=proto["source"].upper())
        device = torch.device("cpu")
    else:
        cfg = ModelConfig.for_arch("rn50", class_names=names, source_modality=proto["source"].upper())
        device = resolve_device("auto")
    data = Path(args.data)
    subjects = proto["train"][:1] if args.smoke else proto["train"]
    tests = proto["test"][:1] if args.smoke else proto["test"]
    proto_used = {**proto, "train": subjects, "test": tests}
    t = time.perf_counter()
    ctx = {"model_kw": {k: getattr(cfg, k) for k in cfg.__dataclass_fields__}, "device": device,
           "protocol": args.protocol, "class_names": names,
           "sources": qb._load(data, proto_used, subjects, proto["source"], cfg, True),
           "targets": qb._load(data, proto_used, tests, proto["target"], cfg, False),
           "refs": qb._reference_labels(data, proto_used, cfg)}
    load_s = time.perf_counter() - t
    gpu = torch.cuda.get_device_name() if device.type == "cuda" else None
    doc = {"label": args.label, "device": gpu or f"cpu ({torch.get_num_threads()} threads)",
           "torch": torch.__version__, "python": platform.python_version(), "commit": args.commit or qb.git_commit() or None,
           "command": "python benchmarks/gpu_speed.py " + " ".join(sys.argv[1:] if argv is None else argv),
           "model": cfg.arch, "image_size": cfg.image_size, "clip_weights": "random (speed only)",
           "data_load_s": round(load_s, 1)}
    rep = Report(Path(args.out), doc)
    rep.save()
    for name in dict.fromkeys(args.sections):  # in the order given (each once): the most wanted first
        if name == "plateau":
            left = args.deadline - (time.perf_counter() - t_start) - args.reserve
            rep.section(name, section_plateau, ctx, args, max(left, 10.0))
        else:
            rep.section(name, globals()[f"section_{name}"], ctx, args)
    doc["wall_s"] = round(time.perf_counter() - t_start, 1)
    rep.save()
    return 1 if doc.get("errors") else 0


if __name__ == "__main__":
    raise SystemExit(main())
