"""Why does UUDS trail source-only training on A1? A diagnosis that never reads a target label.

Protocol A's source split (pat0001-0003) is cut once more: pat0001-0002 train, **pat0003's source
contrast (with its labels) validates**; the target volumes (pat0004-0006, unlabelled) are used as in
training. Every variant is trained with the same data, seed and steps, and scored on:

* ``source_val``: Dice % / ASSD mm on the held-out *source* volume, through the inference path
  (translate, re-encode, segment). A term that lowers it harms the segmenter itself.
* ``target_fg_ratio``: voxels predicted as object on the targets / voxels labelled object on the source
  volumes (a label-free sanity figure: far from 1 means over- or under-segmentation of the target).
* ``target_entropy``: mean normalised entropy of the target predictions inside the head.
* ``synthetic_w1`` / ``raw_target_w1``: 1-D Wasserstein distance between the intensities (inside the
  head) of the synthetic source made from the targets, or of the normalised targets themselves, and those
  of the training source volumes: does the translation bring the target's grey values to the source's?
* ``dd_floor_step``: the first step at which L_DD (Eq. 1) lies within 1 % of its floor (log sigmoid(-2 / tau)
  as printed, where it still pulls at full strength; under 0.01 in the InfoNCE form, where it has faded).

    .venv/bin/python benchmarks/source_validation.py --protocol A1 --steps 200 --seeds 0 1

Writes ``benchmarks/results/source_validation_<protocol>.json`` (resumable, like ``run.py``).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import wasserstein_distance

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as bench  # noqa: E402  (the quality benchmark: same protocols and loaders)

from napari_uuds.engine.atomic import atomic_write  # noqa: E402
from napari_uuds.engine.config import TTAS, LossWeights, ModelConfig, TrainConfig  # noqa: E402
from napari_uuds.engine.dataset import samplers  # noqa: E402
from napari_uuds.engine.infer import predict_volume  # noqa: E402
from napari_uuds.engine.metrics import score_classes  # noqa: E402
from napari_uuds.engine.model import UUDS  # noqa: E402
from napari_uuds.engine.train import train  # noqa: E402

#: variant -> (method, ModelConfig overrides, TrainConfig overrides, LossWeights overrides): the quality
#: benchmark's adaptation rows (the candidates of the default recipe, docs/method.md) and source-only training.
VARIANTS: dict[str, tuple[str, dict, dict, dict]] = {
    "source_only": ("uuds", {}, {"mode": "source_only", "randomise": "none"}, {}),
    "gin_only": ("uuds", {}, {"mode": "source_only", "randomise": "gin"}, {}),
    # uuds_gin_mm re-slices the volumes (run.py does it); neither it nor the size prior was a candidate
    **{k: v for k, v in bench.ADAPT_ROWS.items() if k not in ("uuds_gin_mm", "uuds_gin_size_log")},
}


#: the ways one run is scored (weights x test-time augmentation, round 13; the refined boundary, round 18; the largest
#: object, rounds 23-24; every piece kept, round 24's default off). Each way changes only what its name says: the rest is
#: the model's own (since round 24 the default model keeps objects "auto", so for it ``ema`` and ``ema_auto`` are the
#: same; the paper recipe's keeps "all")
WAYS = ["last", "last_d8", "ema", "ema_d8", "ema_edges", "ema_largest", "ema_auto", "ema_all", "ema_smooth_z"]


def run_variant(name: str, seed: int, ctx: dict) -> dict:
    method, mkw, tkw, wkw = VARIANTS[name]
    cfg = ModelConfig(**{**ctx["model_kw"], **mkw})
    tcfg = TrainConfig(method=method, steps=ctx["steps"], batch_size=ctx["batch_size"], seed=seed, lr=ctx["lr"],
                       **({"warmup_steps": ctx["warmup"]} if ctx.get("warmup") is not None else {}), **tkw)
    weights = LossWeights(**wkw)
    torch.manual_seed(seed)
    model = UUDS(cfg, clip_weights=None, seed=seed)
    src, tgt = samplers(ctx["train"], ctx["targets"], tcfg.fg_fraction, seed, tcfg.contrast_invert, tcfg.zoom)
    # the floor of Eq. 1: log sigmoid(-2 / tau) as printed, 0 in the InfoNCE form ("within 1 %": under 0.01)
    printed = weights.dd_form == "printed"
    floor = math.log(1.0 / (1.0 + math.exp(2.0 / weights.tau_dd))) if printed else 0.0
    dd_floor_step, trace, curve = None, [], {}
    val = ctx["val"]
    t0 = time.perf_counter()
    for ev in train(model, src, tgt, tcfg, weights):
        if ev.kind != "step":
            continue
        if ev.step in ctx.get("eval_at", ()) and ev.step < ctx["steps"]:  # the learning curve, label-free
            p = predict_volume(model, val.volume, norm=val.norm)
            curve[str(ev.step)] = round(score_classes(p.seg, val.label_volume.data, val.volume.spacing,
                                                      ctx["class_names"])["dice"], 2)
        dd = ev.losses.get("dd_s")
        if dd is not None and dd_floor_step is None and (dd <= 0.99 * floor if printed else dd < 0.01):
            dd_floor_step = ev.step
        if ev.step % 25 == 0:
            trace.append({"step": ev.step, **{k: round(v, 4) for k, v in ev.losses.items()}})
    secs = time.perf_counter() - t0
    paired = {}
    own = "ema" + ("" if model.cfg.tta == "none" else "_" + model.cfg.tta)
    if model.last_iterate_state is not None:  # round 13: the same run scored four ways (weights x inference)
        ways = {w + ("" if tta == "none" else "_" + tta): (w, tta, "none") for w in ("last", "ema") for tta in TTAS}
        ways["ema_edges"] = ("ema", "none", "edges")  # round 18: the boundary refined on the image's own edges
        ways["ema_largest"] = ("ema", "none", "none", "largest")  # round 23: the largest connected object only
        ways["ema_auto"] = ("ema", "none", "none", "auto")  # round 24: the same where it holds 80 % of the prediction
        ways["ema_all"] = ("ema", "none", "none", "all")  # every piece (the default until round 24)
        ways["ema_smooth_z"] = ("ema", "none", "none", None, "binomial")  # round 25: a slice with its neighbours
        ways = {k: v for k, v in ways.items() if not ctx.get("ways") or k in ctx["ways"] or k == own}
        paired = bench.score_ways(model, ways, lambda m, _way: _score(m, ctx))
    scores = paired[own] if paired else _score(model, ctx)  # what the run ended with: its average, its own tta
    return {"train_s": round(secs, 1), **scores, "dd_floor_step": dd_floor_step,
            "pseudo_refine_used": model.pseudo_refine_used, "trace": trace,
            **({"paired": paired} if paired else {}),
            # the curve's points before the last score the weights of their step (the iterate), the last what the
            # run ended with (its weight average where the recipe keeps one)
            **({"source_val_curve": {**curve, str(ctx["steps"]): scores["source_val_dice"]},
                "source_val_curve_weights": "iterate, then the run's own at the last point"} if curve else {})}


def _score(model: UUDS, ctx: dict) -> dict:
    """The held-out source's Dice / ASSD and the label-free target figures of a trained model."""
    val = ctx["val"]
    pred = predict_volume(model, val.volume, norm=val.norm)
    sv = score_classes(pred.seg, val.label_volume.data, val.volume.spacing, ctx["class_names"])
    fg_t, ent_t, w_syn, w_raw = [], [], [], []
    rng = np.random.default_rng(0)
    src_vals = _sample(np.concatenate([s.norm.apply(s.volume.data)[_head(s.volume.data)] for s in ctx["train"]]), rng)
    for tp in ctx["targets"]:
        p = predict_volume(model, tp.volume, norm=tp.norm)
        head = _head(tp.volume.data)
        fg_t.append(float((p.seg > 0).sum()))
        ent_t.append(float(p.entropy[head].mean()))
        w_syn.append(wasserstein_distance(_sample(p.synthetic[head], rng), src_vals))
        w_raw.append(wasserstein_distance(_sample(tp.norm.apply(tp.volume.data)[head], rng), src_vals))
    src_fg = float(np.mean([(s.label_volume.data > 0).sum() for s in ctx["train"] + [val]]))
    return {"source_val_dice": round(sv["dice"], 2),
            "source_val_assd_mm": None if sv["assd_mm"] is None else round(sv["assd_mm"], 2),
            "target_fg_ratio": round(float(np.mean(fg_t)) / src_fg, 3),
            "target_entropy": round(float(np.mean(ent_t)), 4),
            "synthetic_w1": round(float(np.mean(w_syn)), 4), "raw_target_w1": round(float(np.mean(w_raw)), 4)}


def _head(raw: np.ndarray) -> np.ndarray:
    """Voxels inside the head (BraTS background is the volume minimum)."""
    return raw > raw.min()


def _sample(v: np.ndarray, rng: np.random.Generator, n: int = 200_000) -> np.ndarray:
    v = np.asarray(v, dtype=np.float32).ravel()
    return v if v.size <= n else rng.choice(v, n, replace=False)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--protocol", choices=["A1", "A2"], default="A1")
    ap.add_argument("--data", default=str(bench.ROOT.parent / "shared" / "data"))
    ap.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--seeds", nargs="*", type=int, default=[0])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--eval-at", nargs="*", type=int, default=[],
                    help="also score the held-out source at these steps (a label-free learning curve)")
    ap.add_argument("--warmup", type=int, default=None,
                    help="warm-up steps before the target terms join (default: the engine's, min(50, --steps / 4))")
    ap.add_argument("--ways", nargs="*", default=None, choices=WAYS,
                    help="score only these ways of each run (and the one it ended with; default: all)")
    ap.add_argument("--results", default=str(bench.RESULTS))
    args = ap.parse_args(argv)

    proto = bench.PROTOCOLS[args.protocol]
    data = Path(args.data)
    names = proto["classes"]
    cfg = bench.protocol_config(proto)
    sources = bench._load(data, proto, proto["train"], proto["source"], cfg, True)
    ctx = {"model_kw": {k: getattr(cfg, k) for k in cfg.__dataclass_fields__}, "steps": args.steps,
           "batch_size": args.batch_size, "lr": args.lr, "class_names": names, "eval_at": set(args.eval_at),
           "warmup": args.warmup, "ways": args.ways,
           "train": sources[:-1], "val": sources[-1],
           "targets": bench._load(data, proto, proto["test"], proto["target"], cfg, False)}
    out = Path(args.results) / f"source_validation_{args.protocol}.json"
    settings = {"steps": args.steps, "batch_size": args.batch_size, "lr": args.lr,
                **({"warmup": args.warmup} if args.warmup is not None else {}),
                "objects": cfg.objects}  # round 24's default: a file written with every piece kept starts afresh
    doc = json.loads(out.read_text()) if out.exists() else {}
    if doc and any(doc.get(k) != v for k, v in settings.items()):
        doc = {}
    runs = doc.get("variants", {})
    commit = bench.git_commit()
    for name in args.variants:
        for seed in args.seeds:
            if str(seed) in runs.get(name, {}):
                continue
            print(f"[{args.protocol}] {name} seed {seed}", flush=True)
            res = run_variant(name, seed, ctx)
            print("    " + " ".join(f"{k}={v}" for k, v in res.items() if k != "trace"), flush=True)
            runs.setdefault(name, {})[str(seed)] = res
            doc = {"protocol": args.protocol, "train": proto["train"][:-1], "validation": proto["train"][-1],
                   "validation_contrast": proto["source"], "targets": proto["test"], "commit": commit,
                   "torch": torch.__version__, "threads": torch.get_num_threads(),
                   "command": "python benchmarks/source_validation.py " + " ".join(sys.argv[1:] if argv is None else argv),
                   **settings, "variants": runs}
            atomic_write(out, lambda tmp, d=doc: Path(tmp).write_text(json.dumps(d, indent=1)))
    for name, by_seed in runs.items():
        d = [r["source_val_dice"] for r in by_seed.values()]
        f = [r["target_fg_ratio"] for r in by_seed.values()]
        print(f"{name:22s} source-val Dice {np.mean(d):5.1f} (seeds {len(d)})  target fg ratio {np.mean(f):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
