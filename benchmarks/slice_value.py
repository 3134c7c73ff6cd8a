"""What one corrected slice is worth: every candidate slice corrected alone, each fine-tuned with several seeds.

A measuring stick for the review's order (issue 14, docs/method.md "What one slice is worth on the cord"): on an adapted model
(``corrections.py --adapted DIR`` saves and reads them), each slice of a set (every ``--stride``-th slice that shows
anatomy, and the review's first ``--review`` picks) is replaced by its ground truth, the model fine-tunes on it alone
(the default fine-tune, as ``corrections.py`` runs it at k = 1) with ``--ft-seeds`` fine-tune seeds, the volume is
predicted again and scored. Fine-tune seed 0 is ``corrections.py``'s own (the adaptation's seed), so its figures
reproduce that benchmark's k = 1 rows for the same slice.

It prints and writes, per target volume: each slice's Dice per fine-tune seed, its review score, the review's first
picks, and each slice's error at k = 0 (the voxels the adapted model gets wrong on it); then the spread between slices (what an order can
gain) against the spread between fine-tune seeds on one slice (what a single run's luck moves), the Spearman
correlation of the review's score and of the slice's error with its worth, and where the review's first pick lies.
Target labels play the user and score; nothing here chooses a default.

    .venv/bin/python benchmarks/slice_value.py --protocol C --seed 0 --adapted /work/cache/adapted --ft-seeds 0 1 \
        --out C_s0.json
    .venv/bin/python benchmarks/slice_value.py --protocol C --out C_s0_summary.json --merge C_s0.json
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parent))
from corrections import (adapted_model, anatomy_slices, corrected_dice, dice_of, finetune_decay,  # noqa: E402
                         scored_both_ways)
from run import PROTOCOLS, git_commit, setup_protocol  # noqa: E402

from napari_uuds.engine.atomic import atomic_write  # noqa: E402
from napari_uuds.engine.config import FINETUNE_LR, FINETUNE_PARTS, TrainConfig  # noqa: E402
from napari_uuds.engine.finetune import FINETUNE_STEPS, corrected_sampler  # noqa: E402
from napari_uuds.engine.infer import predict_volume  # noqa: E402
from napari_uuds.engine.job import AdaptJob  # noqa: E402
from napari_uuds.engine.review import rank_slices, review_entropy, slice_scores  # noqa: E402

CHI = 0.5


def slice_errors(seg: np.ndarray, ref: np.ndarray, axis: int) -> np.ndarray:
    """Voxels wrong per slice along ``axis`` (any label disagreement)."""
    wrong = np.moveaxis(np.asarray(seg) != np.asarray(ref), axis, 0)
    return wrong.reshape(wrong.shape[0], -1).sum(1)


def summary(values: dict[int, list[float]], score: np.ndarray, error: np.ndarray, picks: list[int],
            grid: list[int]) -> dict:
    """The spreads and correlations the module's docstring names, for one volume (``values``: slice -> Dice per
    fine-tune seed; ``grid``: the evenly spaced slices, which stand for a random pick)."""
    sl = sorted(values)
    v = np.array([values[i] for i in sl], np.float64)  # (slices, fine-tune seeds)
    mean = v.mean(1)
    r = v.shape[1]
    within = float(np.sqrt(v.var(1, ddof=1).mean())) if r > 1 else None
    g = np.array([values[i] for i in grid], np.float64).mean(1)
    between_raw = float(g.std(ddof=1)) if len(g) > 1 else 0.0
    # the part of the grid slices' spread their fine-tune luck does not explain (what choosing a slice can move)
    between = float(np.sqrt(max(between_raw ** 2 - (within or 0.0) ** 2 / r, 0.0)))
    out = {"slices": sl, "mean": [round(float(x), 3) for x in mean],
           "random_expected": round(float(g.mean()), 3), "grid_best": round(float(g.max()), 3),
           "grid_worst": round(float(g.min()), 3), "between_slices_sd": round(between, 3),
           "between_slices_sd_raw": round(between_raw, 3),
           "within_slice_sd": None if within is None else round(within, 3),
           "spearman_score_worth": None, "spearman_error_worth": None,
           "review_picks": {str(p): round(float(np.mean(values[p])), 3) for p in picks if p in values}}
    if len(sl) > 2:
        out["spearman_score_worth"] = round(float(stats.spearmanr(score[sl], mean).statistic), 3)
        out["spearman_error_worth"] = round(float(stats.spearmanr(error[sl], mean).statistic), 3)
    if picks and picks[0] in values:
        out["first_pick_minus_random"] = round(float(np.mean(values[picks[0]]) - g.mean()), 3)
        out["first_pick_percentile"] = round(float((g < np.mean(values[picks[0]])).mean() * 100), 1)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--protocol", choices=["A1", "A2", "C"], required=True)
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    ap.add_argument("--seed", type=int, default=0, help="the adaptation's seed (the adapted model)")
    ap.add_argument("--steps", type=int, default=TrainConfig.steps, help="adaptation steps")
    ap.add_argument("--adapted", default=None, metavar="DIR", help="as corrections.py's --adapted")
    ap.add_argument("--ft-seeds", nargs="*", type=int, default=[0, 1],
                    help="fine-tune seeds per slice (0: corrections.py's own, the adaptation's seed)")
    ap.add_argument("--stride", type=int, default=6, help="every stride-th anatomy slice is tried")
    ap.add_argument("--review", type=int, default=4, help="the review's first picks, tried too")
    ap.add_argument("--part", default="0/1", metavar="I/N",
                    help="run the I-th of N interleaved shares of the slices (processes side by side; join with "
                         "--merge)")
    ap.add_argument("--volumes", nargs="*", type=int, default=None, help="target volumes (default: all)")
    ap.add_argument("--finetune-steps", type=int, default=FINETUNE_STEPS)
    ap.add_argument("--average", type=float, default=0.0, metavar="DECAY",
                    help="score each fine-tune twice: its weight average over its second half (ema_decay DECAY) under "
                         "'values_average', the same run's last weights under 'values' (corrections round 7); without "
                         "it a fine-tune is the engine's default (FINETUNE_EMA) scored as it ends, under 'values'")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", required=True, help="JSON to write (rewritten after every fine-tune)")
    ap.add_argument("--merge", nargs="*", default=None, metavar="JSON", help="join these shares into --out")
    args = ap.parse_args(argv)
    if args.merge:
        return merge(args.merge, Path(args.out))
    torch.set_num_threads(args.threads)
    proto = PROTOCOLS[args.protocol]
    cfg, loaded = setup_protocol(Path(args.data), proto)
    sources, targets, refs, classes = loaded["sources"], loaded["targets"], loaded["refs"], proto["classes"]
    tcfg = TrainConfig(method="uuds", steps=args.steps, batch_size=8, seed=args.seed, device="cpu", threshold=CHI)
    ctx = {"adapted": args.adapted, "protocol": args.protocol}
    model, _, adapted_from = adapted_model(replace(cfg), sources, targets, tcfg, ctx)
    state, steps_done = copy.deepcopy(model.state_dict()), model.trained_steps
    axis = model.cfg.axis
    part, n_parts = (int(x) for x in args.part.split("/"))
    doc = {"protocol": args.protocol, "seed": args.seed, "ft_seeds": args.ft_seeds, "commit": git_commit(),
           "adapted_from": adapted_from, "finetune": FINETUNE_PARTS, "finetune_steps": args.finetune_steps,
           "average": args.average, "ema_decay": finetune_decay(args.average),
           "command": "python benchmarks/slice_value.py " + " ".join(sys.argv[1:] if argv is None else argv),
           "volumes": {}}
    for vi, (t, ref) in enumerate(zip(targets, refs)):
        if args.volumes is not None and vi not in args.volumes:
            continue
        pred = predict_volume(model, t.volume, norm=t.norm, keep_own=True)
        base = dice_of(pred.seg, ref, t.volume.spacing, classes)
        ent = review_entropy(pred)
        score, _ = slice_scores(ent, pred.seg, axis, CHI)
        error = slice_errors(pred.seg, ref.data, axis)
        picks = [s.index for s in rank_slices(ent, pred.seg, axis, CHI)][:args.review]
        grid = anatomy_slices(t)[::args.stride]
        todo = sorted(set(grid) | set(picks))[part::n_parts]
        rec = {"name": t.volume.name, "dice_k0": round(base, 3), "score": [round(float(x), 2) for x in score],
               "error": [int(x) for x in error], "review_picks": picks, "grid": grid, "values": {}, "finetune_s": []}
        doc["volumes"][str(vi)] = rec
        print(f"volume {vi} ({t.volume.name}): Dice {base:.1f} at k = 0; review picks {picks}; trying {todo}",
              flush=True)
        for i in todo:
            for r in args.ft_seeds:
                fseed = args.seed if r == 0 else args.seed + 1000 * r
                model.load_state_dict(state)
                model.trained_steps = steps_done
                job = AdaptJob(model.cfg, replace(tcfg, seed=fseed), sources, targets, model=model)
                t0 = time.perf_counter()
                for _ in job.finetune(corrected_sampler([(t, ref.data, [i])], fseed), steps=args.finetune_steps,
                                      parts=FINETUNE_PARTS, lr=FINETUNE_LR, ema_decay=finetune_decay(args.average)):
                    pass
                rec["finetune_s"].append(round(time.perf_counter() - t0, 1))
                da, d = scored_both_ways(model, args.average,
                                         lambda t=t, ref=ref, i=i: corrected_dice(model, t, ref, [i], axis, classes))
                note = ""
                if da is not None:
                    rec.setdefault("values_average", {}).setdefault(str(i), []).append(round(da, 3))
                    note = f", average {da:.2f}"
                rec["values"].setdefault(str(i), []).append(round(d, 3))
                print(f"  slice {i} fine-tune seed {r}: Dice {d:.2f}{note} (score {score[i]:.1f}, error {error[i]} "
                      "voxels)", flush=True)
                atomic_write(Path(args.out), lambda tmp: Path(tmp).write_text(json.dumps(doc, indent=1)))
    return 0


def merge(paths: list[str], out: Path) -> int:
    """Join the shares of one run (same protocol, seed, fine-tune seeds) and add each volume's summary."""
    docs = [json.loads(Path(p).read_text()) for p in paths]
    key = ("protocol", "seed", "ft_seeds", "finetune", "finetune_steps")
    if any(tuple(d[k] for k in key) != tuple(docs[0][k] for k in key) for d in docs):
        raise SystemExit("the shares differ in " + ", ".join(key))
    doc = {**docs[0], "commands": [d["command"] for d in docs], "volumes": {}}
    doc.pop("command")
    for d in docs:
        for vi, rec in d["volumes"].items():
            have = doc["volumes"].setdefault(vi, {**rec, "values": {}, "values_average": {}, "finetune_s": []})
            have["values"].update(rec["values"])
            have["values_average"].update(rec.get("values_average", {}))
            have["finetune_s"] += rec["finetune_s"]
    for vi, rec in doc["volumes"].items():
        values = {int(i): v for i, v in rec["values"].items() if len(v) == len(doc["ft_seeds"])}
        grid = [i for i in rec["grid"] if i in values]
        rec["summary"] = summary(values, np.asarray(rec["score"]), np.asarray(rec["error"]), rec["review_picks"],
                                 grid)
        print(f"volume {vi}: {json.dumps(rec['summary'])}")
        avg = {int(i): v for i, v in rec["values_average"].items() if len(v) == len(doc["ft_seeds"])}
        if avg:
            rec["summary_average"] = summary(avg, np.asarray(rec["score"]), np.asarray(rec["error"]),
                                             rec["review_picks"], [i for i in rec["grid"] if i in avg])
            print(f"volume {vi}, the weight average: {json.dumps(rec['summary_average'])}")
        elif not rec["values_average"]:
            rec.pop("values_average")
    atomic_write(out, lambda tmp: Path(tmp).write_text(json.dumps(doc, indent=1)))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
