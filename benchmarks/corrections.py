"""Corrections benchmark: a simulated user corrects k slices of each target volume, the model fine-tunes on them.

After adaptation (the engine's default recipe, as row ``uuds`` of ``run.py``), the k slices of each target
volume that the review takes first (``engine/review.py``, its default order) are replaced by their ground truth, the
model fine-tunes on them (``engine/finetune.py``), the volume is predicted again and the corrected slices keep
the user's labels; the whole volume is scored. The same with k slices drawn at random among the slices that
show anatomy, and (``uncertain_spread``) the review's order until 2026-12-01, on the same adapted models. k = 0 is the
adapted model as it is. Target labels play the user's corrections and score; they choose nothing.

Writes ``benchmarks/results/corrections_<protocol>.json`` (curves: Dice % as the mean over volumes and seeds)
and ``corrections_<protocol>.svg`` (Dice against corrected slices per volume, uncertainty-ranked and random).

    .venv/bin/python benchmarks/corrections.py --protocol C --seeds 0 1 2
"""
from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import PROTOCOLS, RESULTS, _train, git_commit, setup_protocol  # noqa: E402

from napari_uuds.engine.atomic import atomic_write  # noqa: E402
from napari_uuds.engine.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from napari_uuds.engine.config import (FINETUNE_EMA, FINETUNE_LR, FINETUNE_PARTS, PREDICTION_SETTINGS, TRAIN_PARTS,  # noqa: E402
                                       ModelConfig, TrainConfig)
from napari_uuds.engine.finetune import FINETUNE_STEPS, corrected_sampler  # noqa: E402
from napari_uuds.engine.infer import predict_volume  # noqa: E402
from napari_uuds.engine.job import AdaptJob  # noqa: E402
from napari_uuds.engine.metrics import score_classes  # noqa: E402
from napari_uuds.engine.review import (ORDERS, REVIEW_ENTROPIES, keep_corrections, rank_slices,  # noqa: E402
                                      review_entropy)

KS = (0, 1, 2, 4, 8)
#: uncertain: the review's order (engine/review.py, its default: peak since 2026-12-02, coverage before, spread until
#: 2026-12-01); uncertain_coverage / uncertain_spread / uncertain_peak: those orders by name; random: k slices that
#: show anatomy, drawn at random
#: uncertain_own / uncertain_shown: the review's default order on the network's own entropy (before the cross-slice
#: smoothing) / on the entropy shown (corrections round 5)
STRATEGIES = ("uncertain", "uncertain_coverage", "random", "uncertain_spread", "uncertain_peak", "uncertain_own",
              "uncertain_shown")
#: the review order each "uncertain" strategy takes (uncertain_topk: an earlier run's plain top-k, see --topk-from)
ORDER_OF = {"uncertain": ORDERS[0], "uncertain_coverage": "coverage", "uncertain_spread": "spread",
            "uncertain_topk": "score", "uncertain_peak": "peak", "uncertain_own": ORDERS[0],
            "uncertain_shown": ORDERS[0]}
#: the entropy a strategy's review reads where it is not the review's default (engine/review.py, REVIEW_ENTROPIES)
ENTROPY_OF = {"uncertain_own": "own", "uncertain_shown": "shown"}
#: with --average: the curve of each fine-tune's weight average is its curve's name with this after it (the name alone
#: keeps the same runs' last weights; corrections round 7 of docs/method.md)
AVERAGE_SUFFIX = "+average"


def anatomy_slices(prepared) -> list[int]:
    """Slices that show anatomy (as the target sampler counts them): where a user scrolling at random stops."""
    frac = (prepared.image > -0.95).float().mean(dim=(1, 2, 3))
    return torch.nonzero(frac >= 0.02).flatten().tolist()


def choose(strategy: str, k: int, pred, prepared, axis: int, chi: float, rng: np.random.Generator) -> list[int]:
    if strategy in ORDER_OF:
        entropy = review_entropy(pred, ENTROPY_OF.get(strategy, REVIEW_ENTROPIES[0]))
        return [s.index for s in rank_slices(entropy, pred.seg, axis, chi, order=ORDER_OF[strategy])[:k]]
    pool = anatomy_slices(prepared)
    return sorted(int(i) for i in rng.choice(pool, size=min(k, len(pool)), replace=False))


def dice_of(seg: np.ndarray, ref, spacing, classes: list[str]) -> float:
    return float(score_classes(seg, ref.data, spacing, classes)["dice"])


def corrected_dice(model, target, ref, slices: list[int], axis: int, classes: list[str]) -> float:
    """``target`` segmented again by ``model`` and scored, its corrected ``slices`` kept as the widget and `finetune`
    keep them (a painted piece stays whatever objects decides)."""
    keep = keep_corrections(np.zeros_like(ref.data), ref.data, slices, axis) > 0
    p = predict_volume(model, target.volume, norm=target.norm, keep=keep)
    return dice_of(keep_corrections(p.seg, ref.data, slices, axis), ref, target.volume.spacing, classes)


def finetune_decay(average: float) -> float:
    """The fine-tune's ``ema_decay``: ``--average``'s where given (each run scored both ways), else the engine's."""
    return average if average > 0 else FINETUNE_EMA


def scored_both_ways(model, average: float, scored):
    """After a fine-tune run with ``finetune_decay(average)``: (``scored()`` of its weight average, ``scored()`` of
    the same run's last weights, which the model then holds) with ``--average``; else (None, ``scored()`` of the
    model as the fine-tune left it). Corrections round 7 of docs/method.md."""
    if average <= 0:
        return None, scored()
    if model.last_iterate_state is None:
        raise SystemExit("the fine-tune kept no weight average")
    averaged = scored()
    model.load_state_dict(model.last_iterate_state)
    return averaged, scored()


def variant(text: str, steps: int) -> tuple[str, int, float | None]:
    """A fine-tune variant ``PARTS``, ``PARTS:STEPS`` or ``PARTS:STEPS:LR`` (what trains, for how many steps (default
    ``steps``), at which learning rate (default: the fine-tune's, ``FINETUNE_LR``))."""
    fields = text.split(":")
    parts, n, lr = (fields + ["", ""])[:3]
    try:
        rate = float(lr) if lr else None
    except ValueError:
        rate = -1.0
    if parts not in TRAIN_PARTS or (n and not n.isdigit()) or len(fields) > 3 or (rate is not None and not rate > 0):
        raise SystemExit(f"fine-tune variant {text!r}: expected PARTS, PARTS:STEPS or PARTS:STEPS:LR, PARTS one of "
                         f"{TRAIN_PARTS}, LR a number > 0")
    return parts, int(n) if n else steps, rate


def curve_name(strategy: str, parts: str, steps: int, default_steps: int, lr: float | None = None) -> str:
    """A curve's key: the strategy, with ``@parts`` (``:steps``, ``:lr``) where the fine-tune differs from the
    default's."""
    if parts == FINETUNE_PARTS and steps == default_steps and lr is None:
        return strategy
    return (f"{strategy}@{parts}" + (f":{steps}" if steps != default_steps or lr is not None else "")
            + (f":{lr:g}" if lr is not None else ""))


def adapted_folder(root: str | Path, protocol: str, seed: int, steps: int, cfg: ModelConfig) -> Path:
    """Where ``--adapted`` keeps a seed's adapted model: ``<protocol>_s<seed>_<steps>``, with ``_<size>px`` after it
    when its slices are not at the architecture's frame (``--image-size auto`` on a small scan, round 26)."""
    frame = ModelConfig.for_arch(cfg.arch).image_size
    return Path(root) / (f"{protocol}_s{seed}_{steps}" + (f"_{cfg.image_size}px" if cfg.image_size != frame else ""))


def adapted_model(cfg: ModelConfig, sources, targets, tcfg: TrainConfig, ctx: dict):
    """The seed's adapted model: trained here, or (``ctx["adapted"]``, ``--adapted DIR``) read from
    ``DIR/<protocol>_s<seed>_<steps>`` when an earlier run saved it there, else trained and saved there, so that
    fine-tune experiments on the same adapted models skip the adaptation (30-40 min a seed on one thread at 600
    steps). Returns (model, adaptation seconds, None or what was read: the folder and the commit that trained it)."""
    folder = adapted_folder(ctx["adapted"], ctx["protocol"], tcfg.seed, tcfg.steps, cfg) if ctx.get("adapted") else None
    if folder is not None and (folder / "config.json").exists():
        model, meta = load_checkpoint(folder, expect=cfg)
        # how a model predicts is today's default's, whenever it was trained: a model saved before a prediction default
        # changed (round 25) predicts as a fresh one
        for k in PREDICTION_SETTINGS:
            setattr(model.cfg, k, getattr(cfg, k))
        bench = meta.get("corrections_adapted", {})
        asked = {"seed": tcfg.seed, "steps": tcfg.steps, "batch_size": tcfg.batch_size, "threshold": tcfg.threshold}
        if {k: bench.get(k) for k in asked} != asked:
            raise SystemExit(f"{folder}: adapted with {bench}, not {asked}")
        print(f"  seed {tcfg.seed}: adapted model read from {folder} (trained at commit {bench.get('commit')})",
              flush=True)
        return model, float(bench.get("adapt_s", 0.0)), {"folder": str(folder), "commit": bench.get("commit")}
    model, train_s, _ = _train(cfg, sources, targets, tcfg)
    if folder is not None:
        save_checkpoint(model, folder, extra={"corrections_adapted": {
            "seed": tcfg.seed, "steps": tcfg.steps, "batch_size": tcfg.batch_size, "threshold": tcfg.threshold,
            "commit": git_commit(), "adapt_s": round(train_s, 1)}})
    return model, train_s, None


def run_seed(seed: int, ctx: dict) -> dict:
    cfg = ModelConfig(**ctx["model_kw"])
    axis = cfg.axis
    sources, targets, refs, classes, chi = ctx["sources"], ctx["targets"], ctx["refs"], ctx["class_names"], ctx["chi"]
    tcfg = TrainConfig(method="uuds", steps=ctx["steps"], batch_size=ctx["batch_size"], seed=seed, device="cpu",
                       threshold=chi)
    model, train_s, adapted_from = adapted_model(cfg, sources, targets, tcfg, ctx)
    adapted = copy.deepcopy(model.state_dict())
    steps_done = model.trained_steps
    preds = [predict_volume(model, t.volume, norm=t.norm, keep_own=True) for t in targets]  # the review's entropy
    base = [dice_of(p.seg, r, t.volume.spacing, classes) for p, r, t in zip(preds, refs, targets)]
    variants = [(*v, None)[:3] for v in ctx["variants"]]  # (parts, steps, lr); a rate left out is the fine-tune's
    runs = [(s, *v) for s in ctx["strategies"] for v in variants]
    # the curves' names, never the classes' (until 2026-12-02 they shared a variable: every class count but the
    # first was a missing class scored 100, docs/method.md "What a fine-tune trains")
    curve_names = [curve_name(s, p, n, ctx["finetune_steps"], lr) for s, p, n, lr in runs]
    average = float(ctx.get("average") or 0.0)  # also score each fine-tune's weight average (corrections round 7)
    shown = curve_names + ([n + AVERAGE_SUFFIX for n in curve_names] if average > 0 else [])
    out = {"adapt_s": round(train_s, 1), **({"adapted_from": adapted_from} if adapted_from else {}),
           "curves": {n: {"0": base} for n in shown}, "slices": {},
           "finetune_s": [], "predict_s": [], "finetune_s_by": {n: [] for n in curve_names}}
    print(f"  seed {seed}: adapted, Dice per volume {[round(d, 1) for d in base]}", flush=True)
    for (strategy, parts, n_steps, lr), name in zip(runs, curve_names):
        for k in ctx["ks"][1:]:  # sorted, 0 (the adapted model) first
            rng = np.random.default_rng([seed, k])
            chosen = [choose(strategy, k, p, t, axis, chi, rng) for p, t in zip(preds, targets)]
            items = [(t, r.data, c) for t, r, c in zip(targets, refs, chosen)]
            model.load_state_dict(adapted)
            model.trained_steps = steps_done
            job = AdaptJob(cfg, tcfg, sources, targets, model=model)
            lab = corrected_sampler(items, seed)
            t0 = time.perf_counter()
            for _ in job.finetune(lab, steps=n_steps, parts=parts, lr=FINETUNE_LR if lr is None else lr,
                                  ema_decay=finetune_decay(average)):
                pass
            ft_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            averaged, dice = scored_both_ways(model, average, lambda chosen=chosen: [
                corrected_dice(model, t, r, c, axis, classes) for t, r, c in zip(targets, refs, chosen)])
            if averaged is not None:
                out["curves"][name + AVERAGE_SUFFIX][str(k)] = [round(d, 3) for d in averaged]
            out["predict_s"].append(round(time.perf_counter() - t0, 1))
            out["finetune_s"].append(round(ft_s, 1))
            out["finetune_s_by"][name].append(round(ft_s, 1))
            out["curves"][name][str(k)] = [round(d, 3) for d in dice]
            out["slices"][f"{strategy}_{k}"] = chosen
            print(f"  seed {seed} {name} k={k}: Dice {[round(d, 1) for d in dice]} (fine-tune {ft_s:.0f} s)",
                  flush=True)
    return out


def summarise(runs: dict) -> dict:
    curves = {}
    first = next(iter(runs.values()))["curves"]
    for name in first:
        curves[name] = {k: round(float(np.mean([d for r in runs.values() for d in r["curves"][name][k]])), 2)
                        for k in first[name]}
    ft = [s for r in runs.values() for s in r["finetune_s"]]
    by = {n: [s for r in runs.values() for s in r.get("finetune_s_by", {}).get(n, [])] for n in curves}
    extra = {"finetune_s_by": {n: round(float(np.mean(v)), 1) for n, v in by.items() if v}} if len(curves) > 1 else {}
    return {"curves": curves, **extra, "finetune_s": round(float(np.mean(ft)), 1) if ft else None,
            "finetune_s_max": max(ft) if ft else None}


def svg_plot(doc: dict, path: Path) -> None:
    """Dice against corrected slices, every strategy (a dependency-free SVG)."""
    w, h, left, bottom, top, right = 560, 320, 56, 44, 28, 170
    ks = [int(k) for k in doc.get("ks", KS)]
    xs = {k: left + (w - left - right) * i / max(len(ks) - 1, 1) for i, k in enumerate(ks)}

    def y(d: float) -> float:
        return top + (h - top - bottom) * (1 - d / 100)

    colours = {"uncertain": "#d62728", "uncertain_spread": "#ff9896", "random": "#1f77b4"}
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">',
             f'<rect width="{w}" height="{h}" fill="white"/>',
             f'<text x="{left}" y="16">{doc["protocol"]}: Dice % after k corrected slices per volume '
             f'({len(doc["runs"])} seeds)</text>']
    for d in range(0, 101, 20):
        parts.append(f'<line x1="{left}" x2="{w - right}" y1="{y(d):.1f}" y2="{y(d):.1f}" stroke="#ddd"/>'
                     f'<text x="{left - 8}" y="{y(d) + 4:.1f}" text-anchor="end">{d}</text>')
    for k, x in xs.items():
        parts.append(f'<text x="{x:.1f}" y="{h - bottom + 16}" text-anchor="middle">{k}</text>')
    parts.append(f'<text x="{(left + w - right) / 2:.1f}" y="{h - 8}" text-anchor="middle">corrected slices per volume</text>')
    for i, (strategy, curve) in enumerate(doc["curves"].items()):
        pts = " ".join(f"{xs[k]:.1f},{y(curve[str(k)]):.1f}" for k in ks)
        c = colours.get(strategy, ("#2ca02c", "#9467bd", "#8c564b", "#e377c2")[i % 4])
        parts.append(f'<polyline points="{pts}" fill="none" stroke="{c}" stroke-width="2"/>')
        parts += [f'<circle cx="{xs[k]:.1f}" cy="{y(curve[str(k)]):.1f}" r="3" fill="{c}"/>' for k in ks]
        parts.append(f'<line x1="{w - right + 10}" x2="{w - right + 30}" y1="{top + 14 + 18 * i}" '
                     f'y2="{top + 14 + 18 * i}" stroke="{c}" stroke-width="2"/>'
                     f'<text x="{w - right + 36}" y="{top + 18 + 18 * i}">{strategy}</text>')
    parts.append("</svg>")
    atomic_write(path, lambda tmp: Path(tmp).write_text("\n".join(parts)))


#: what runs must share to be joined by ``--merge``
SAME = ("protocol", "steps", "finetune_steps", "variants", "batch_size", "model", "ks", "commit", "torch")


def merge(paths: list[str], results: Path, mixed_commits: bool = False) -> int:
    """Join runs of the same settings (seeds split over processes) into one ``corrections_<protocol>.json``;
    ``mixed_commits``: runs of other commits may join (say why in the docs: the engine must train the same)."""
    docs = [json.loads(Path(p).read_text()) for p in paths]
    same = [k for k in SAME if not (mixed_commits and k == "commit")]
    for d, p in zip(docs[1:], paths[1:]):
        differ = [k for k in same if d.get(k) != docs[0].get(k)]
        if differ:
            raise SystemExit(f"{p}: not the same settings as {paths[0]} ({', '.join(differ)})")
    runs = {}
    for d, p in zip(docs, paths):
        twice = set(runs) & set(d["runs"])
        if twice:
            raise SystemExit(f"{p}: seed(s) {sorted(twice)} already in another file")
        runs.update(d["runs"])
    runs = dict(sorted(runs.items(), key=lambda kv: int(kv[0])))
    doc = {**{k: docs[0][k] for k in ("protocol", "ks")}, **summarise(runs),
           **{k: docs[0][k] for k in ("device", "torch", "commit", "steps", "finetune_steps", "batch_size", "model")},
           **({"variants": docs[0]["variants"]} if "variants" in docs[0] else {}),
           "command": " | ".join(d["command"] for d in docs), "wall_s": [d["wall_s"] for d in docs],
           "merged_from": [str(p) for p in paths], "commits": sorted({d["commit"] for d in docs}), "runs": runs}
    results.mkdir(parents=True, exist_ok=True)
    out = results / f"corrections_{doc['protocol']}.json"
    atomic_write(out, lambda tmp: Path(tmp).write_text(json.dumps(doc, indent=1)))
    svg_plot(doc, results / f"corrections_{doc['protocol']}.svg")
    print(json.dumps(doc["curves"]), f"fine-tune {doc['finetune_s']} s")
    print(f"wrote {out}")
    return 0


def seed_means(files: list[Path]) -> dict:
    """{curve: {seed: {k: mean Dice over the volumes}}} of run files (seed and k as ints), the runs of several files
    joined: what the corrections rounds' gates read."""
    out: dict = {}
    for f in files:
        for s, r in json.loads(Path(f).read_text())["runs"].items():
            for name, c in r["curves"].items():
                out.setdefault(name, {}).setdefault(int(s), {}).update({int(k): float(np.mean(v)) for k, v in c.items()})
    return out


def mean_over(t: dict, name: str, seeds, ks) -> float:
    """The mean of :func:`seed_means`' table over the seeds and ks given."""
    return float(np.mean([t[name][s][k] for s in seeds for k in ks]))


def join_renamed(protocol: str, sources: list[Path], rename: dict[str, str] | list[dict[str, str]],
                 curve_meaning: dict[str, str], settings: dict) -> dict:
    """A headline file joined from runs of other strategies on the same adapted models (unlike :func:`merge`, which
    joins seeds of one setting): each seed's curves named in ``rename`` taken from ``sources`` under their new names,
    every curve on the same ks on every seed; ``settings`` (device, steps, fine-tune, ...) describe the runs.
    ``rename`` is one mapping for every source, or one per source (where a name means another fine-tune in another
    source: a run's ``uncertain`` is whatever fine-tune was the default at its commit)."""
    renames = rename if isinstance(rename, list) else [rename] * len(sources)
    if len(renames) != len(sources):
        raise SystemExit(f"{protocol}: {len(renames)} renamings for {len(sources)} sources")
    runs, commits, commands = {}, set(), []
    for path, mapping in zip(sources, renames):
        doc = json.loads(path.read_text())
        commits.add(doc["commit"])
        commands.append(doc["command"] if isinstance(doc["command"], str) else " | ".join(doc["command"]))
        for seed, run in doc["runs"].items():
            r = runs.setdefault(seed, {"curves": {}, "finetune_s": [], "adapt_s": run.get("adapt_s")})
            for name, curve in run["curves"].items():
                if name in mapping:
                    r["curves"].setdefault(mapping[name], {}).update(curve)
            r["finetune_s"] += run.get("finetune_s", [])
    ks = sorted({int(k) for r in runs.values() for c in r["curves"].values() for k in c})
    for seed, r in runs.items():
        for name, curve in r["curves"].items():
            missing = [k for k in ks if str(k) not in curve]
            if missing:
                raise SystemExit(f"{protocol} seed {seed} {name}: no k = {missing}")
    runs = dict(sorted(runs.items(), key=lambda kv: int(kv[0])))
    root = Path(__file__).resolve().parents[1]
    return {"protocol": protocol, **summarise(runs), "ks": ks, "curve_meaning": curve_meaning, **settings,
            "commits": sorted(commits), "command": " | ".join(commands),
            "merged_from": [str(p.relative_to(root)) if p.is_relative_to(root) else str(p) for p in sources],
            "runs": runs}


def write_headline(doc: dict, results: Path = RESULTS) -> None:
    """``corrections_<protocol>.json`` and its plot in ``results``."""
    out = results / f"corrections_{doc['protocol']}.json"
    atomic_write(out, lambda tmp: Path(tmp).write_text(json.dumps(doc, indent=1)))
    svg_plot(doc, results / f"corrections_{doc['protocol']}.svg")
    print(doc["protocol"], json.dumps(doc["curves"]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--protocol", choices=["A1", "A2", "C"], default=None, help="required unless --merge")
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    ap.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=TrainConfig.steps,
                    help="adaptation steps (default: the engine's; the committed results ran 200, rounds 4-11's default)")
    ap.add_argument("--finetune-steps", type=int, default=FINETUNE_STEPS)
    ap.add_argument("--ks", nargs="*", type=int, default=list(KS),
                    help="corrected slices per volume (0: the adapted model as it is)")
    ap.add_argument("--strategies", nargs="*", choices=STRATEGIES, default=list(STRATEGIES[:3]))
    ap.add_argument("--variants", nargs="*", default=[FINETUNE_PARTS], metavar="PARTS[:STEPS[:LR]]",
                    help="fine-tunes to compare on the same adapted models and slices: what trains (all | segmenter) "
                         "and, after a colon, its steps (default --finetune-steps), and after another its learning rate "
                         "(default the fine-tune's); a curve other than the default's is named "
                         "STRATEGY@PARTS[:STEPS[:LR]]")
    ap.add_argument("--adapted", default=None, metavar="DIR",
                    help="read each seed's adapted model from DIR/<protocol>_s<seed>_<steps> when a run saved it "
                         "there, else adapt and save it there (fine-tune experiments then skip the adaptation; the "
                         "JSON records the folder and the commit that trained it)")
    ap.add_argument("--average", type=float, default=0.0, metavar="DECAY",
                    help="score each fine-tune twice: its weight average over its second half (ema_decay DECAY) as "
                         "curve NAME+average, the same run's last weights as NAME (corrections round 7); without it "
                         "a fine-tune is the engine's default (FINETUNE_EMA) scored as it ends")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--results", default=str(RESULTS))
    ap.add_argument("--topk-from", default=None, metavar="JSON",
                    help="an earlier run whose 'uncertain' was the plain top-k order (before the review spread its "
                         "picks): its curves are kept as 'uncertain_topk' for the seeds it ran, beside this run's; its "
                         "'random' curve must equal this run's on those seeds (the runs are reproducible)")
    ap.add_argument("--merge", nargs="*", default=None, metavar="JSON",
                    help="instead of running: join these runs of the same settings (seeds split over processes) "
                         "into one file under --results")
    ap.add_argument("--mixed-commits", action="store_true",
                    help="with --merge: let runs of other commits join (when the engine trains the same)")
    args = ap.parse_args(argv)
    if args.merge:
        return merge(args.merge, Path(args.results), args.mixed_commits)
    if args.protocol is None:
        ap.error("--protocol is required")
    torch.set_num_threads(args.threads)
    proto = PROTOCOLS[args.protocol]
    data = Path(args.data)
    cfg, loaded = setup_protocol(data, proto)
    ctx = {"model_kw": {k: getattr(cfg, k) for k in cfg.__dataclass_fields__}, "steps": args.steps,
           "batch_size": args.batch_size, "chi": 0.5, "finetune_steps": args.finetune_steps,
           "ks": sorted(set([0, *args.ks])), "strategies": args.strategies,
           "variants": [variant(v, args.finetune_steps) for v in args.variants],
           "class_names": proto["classes"], "protocol": args.protocol, "adapted": args.adapted,
           "average": args.average, **loaded}
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    out = results / f"corrections_{args.protocol}.json"
    t0 = time.perf_counter()
    runs = {}
    old_commit = json.loads(Path(args.topk_from).read_text()).get("commit") if args.topk_from else None
    for seed in args.seeds:
        runs[str(seed)] = run_seed(seed, ctx)
        extra = {}
        if args.topk_from:
            old = json.loads(Path(args.topk_from).read_text())["runs"]
            same = {sd: old[sd]["curves"]["random"] == runs[sd]["curves"]["random"] for sd in old if sd in runs}
            extra = {"uncertain_topk": {sd: {"curve": {k: float(np.mean(v)) for k, v in old[sd]["curves"]["uncertain"].items()},
                                             "slices": {kk: vv for kk, vv in old[sd]["slices"].items()
                                                        if kk.split("_")[0] == "uncertain" and kk.split("_")[1].isdigit()},
                                             "commit": old_commit}
                                        for sd in old},
                     "topk_random_reproduced": same}
        doc = {"protocol": args.protocol, **summarise(runs), "ks": ctx["ks"], **extra,
               "device": f"cpu ({torch.get_num_threads()} thread(s), {platform.processor() or platform.machine()})",
               "torch": torch.__version__, "commit": git_commit(), "steps": args.steps,
               "finetune_steps": args.finetune_steps, "variants": args.variants, "batch_size": args.batch_size,
               **({"average": args.average} if args.average > 0 else {}),
               "model": "tiny", "review_entropy": {st: ENTROPY_OF.get(st, REVIEW_ENTROPIES[0]) for st in args.strategies
                                                   if st in ORDER_OF},
               "command": "python benchmarks/corrections.py " + " ".join(sys.argv[1:] if argv is None else argv),
               "wall_s": round(time.perf_counter() - t0, 1), "runs": runs}
        atomic_write(out, lambda tmp, d=doc: Path(tmp).write_text(json.dumps(d, indent=1)))
        svg_plot(doc, results / f"corrections_{args.protocol}.svg")
    print(json.dumps(doc["curves"]), f"fine-tune {doc['finetune_s']} s")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
