"""How long should adaptation train? Learning curves of one row, label-free statistics beside the target's score.

One run per (row, seed) trains to ``--steps`` with the warm-up fixed at ``--warmup`` steps, and at every ``--eval-at``
step records, for the rule of docs/method.md (round 6):

* ``source_seg``: the source's own L_seg (Eq. 8's source term), mean over the 50 training steps before the point:
  has the segmenter finished learning the labelled contrast? (label-free: the source's labels only)
* ``ratio``: the predicted target object volume over the source's object volume (label-free, as ``run.py``'s
  "target / source volume");
* ``dice``: the target's Dice % (scoring only: never a selection input).

A point before ``--steps`` scores the weights of that step (``"weights": "iterate"``); the last point scores what the
run ends with (``"weights": "final"``): the weight average where the recipe keeps one (``TrainConfig.ema_decay``,
applied when training ends), so a curve's earlier points are not what a run of that length would give.

    .venv/bin/python benchmarks/length.py --protocol C --rows uuds gin_only --seeds 0 1 2 --steps 1000 \\
        --eval-at 200 400 600 800

Writes ``benchmarks/results/length_<protocol>.json`` after every run (re-running skips runs already there).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as bench  # noqa: E402  (the quality benchmark: same protocols, loaders and rows)

from napari_uuds.engine.atomic import atomic_write  # noqa: E402
from napari_uuds.engine.config import LossWeights, ModelConfig, TrainConfig  # noqa: E402
from napari_uuds.engine.job import AdaptJob  # noqa: E402


def _config(row: str, seed: int, args) -> tuple[ModelConfig, TrainConfig, LossWeights]:
    tkw = dict(steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=seed, warmup_steps=args.warmup)
    if row in bench.SOURCE_ROWS:
        return ModelConfig(**args.model_kw), TrainConfig(mode="source_only", **bench.SOURCE_ROWS[row], **tkw), \
            LossWeights()
    method, mx, tx, wx = bench.ADAPT_ROWS[row]
    return ModelConfig(**{**args.model_kw, **mx}), TrainConfig(method=method, **tkw, **tx), LossWeights(**wx)


def run_curve(row: str, seed: int, args, data: dict) -> dict:
    cfg, tcfg, weights = _config(row, seed, args)
    job = AdaptJob(cfg, tcfg, data["sources"], data["targets"], weights)
    points, seg, t0, train_s = {}, [], time.perf_counter(), 0.0

    def point(step: int, losses: dict, which: str) -> None:
        nonlocal train_s, t0
        train_s += time.perf_counter() - t0
        vols = bench._evaluate(job.model, data["targets"], data["refs"], data["class_names"])
        pt = {"weights": which, "source_seg": round(float(np.mean(seg[-50:])), 4),
              "ratio": round(float(np.mean([v["pred_mm3"] for v in vols])) / data["source_mm3"], 3),
              "dice": round(float(np.mean([v["dice"] for v in vols])), 2),
              "dice_volumes": [v["dice"] for v in vols], "train_s": round(train_s, 1),
              "losses": {k: round(v, 4) for k, v in losses.items()}}
        points[str(step)] = pt
        print(f"    step {step} ({which}): source L_seg {pt['source_seg']:.3f} ratio {pt['ratio']:.2f} "
              f"(Dice {pt['dice']:.1f}) {pt['train_s']:.0f} s", flush=True)
        t0 = time.perf_counter()

    last: dict = {}
    for ev in job.train():
        if ev.kind != "step":
            continue
        seg.append(ev.losses["seg"])
        last = ev.losses
        if ev.step in args.eval_at and ev.step < args.steps:
            point(ev.step, ev.losses, "iterate")
            job.model.train()
    point(args.steps, last, "final")  # after train() has applied the weight average, as a run of this length ends
    return {"randomise_used": job.model.randomise_used, "guard": job.model.guard_report, "points": points}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--protocol", choices=sorted(bench.PROTOCOLS), default="C")
    ap.add_argument("--data", default=str(bench.ROOT.parent / "shared" / "data"))
    ap.add_argument("--rows", nargs="*", default=["uuds"], choices=[*bench.SOURCE_ROWS, *bench.ADAPT_ROWS])
    ap.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--eval-at", nargs="*", type=int, default=[200, 400, 600, 800])
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--results", default=str(bench.RESULTS))
    args = ap.parse_args(argv)
    args.eval_at = set(args.eval_at)

    proto = bench.PROTOCOLS[args.protocol]
    cfg, loaded = bench.setup_protocol(Path(args.data), proto)
    args.model_kw = {k: getattr(cfg, k) for k in cfg.__dataclass_fields__}
    data = {**loaded, "class_names": proto["classes"]}
    data["source_mm3"] = float(np.mean([(s.label_volume.data > 0).sum() * np.prod(s.volume.spacing)
                                        for s in data["sources"]]))
    out = Path(args.results) / f"length_{args.protocol}.json"
    settings = {"steps": args.steps, "warmup": args.warmup, "batch_size": args.batch_size, "lr": args.lr}
    doc = json.loads(out.read_text()) if out.exists() else {}
    if doc and any(doc.get(k) != v for k, v in settings.items()):
        doc = {}
    runs = doc.get("rows", {})
    for row in args.rows:
        for seed in args.seeds:
            if str(seed) in runs.get(row, {}):
                continue
            print(f"[{args.protocol}] {row} seed {seed}", flush=True)
            runs.setdefault(row, {})[str(seed)] = run_curve(row, seed, args, data)
            doc = {"protocol": args.protocol, "commit": bench.git_commit(), **settings,
                   "eval_at": sorted(args.eval_at | {args.steps}), "rows": runs,
                   "command": "python benchmarks/length.py " + " ".join(sys.argv[1:] if argv is None else argv)}
            atomic_write(out, lambda tmp, d=doc: Path(tmp).write_text(json.dumps(d, indent=1)))
    for row, by_seed in runs.items():
        for step in sorted({int(k) for r in by_seed.values() for k in r["points"]}):
            pts = [r["points"][str(step)] for r in by_seed.values() if str(step) in r["points"]]
            print(f"{row:10s} {step:5d}: source L_seg {np.mean([p['source_seg'] for p in pts]):.3f}  ratio "
                  + " / ".join(f"{p['ratio']:.2f}" for p in pts)
                  + f"  (Dice {np.mean([p['dice'] for p in pts]):.1f}; seeds {len(pts)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
