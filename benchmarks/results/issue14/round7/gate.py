"""Corrections round 7's gate (docs/method.md, "What one corrected slice is worth, and corrections round 7"), A1 and A2
on the cord, from the merged slice_value.py runs beside this file (each fine-tune scored with its last weights and
with its weight average over the second half). A3 (the tumours) is not run here.

    python benchmarks/results/issue14/round7/gate.py
"""
import json
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
files = sorted(HERE.glob("slice_value_C_seed*.json"))
pairs = {"last": [], "average": []}  # (Dice) per (model, slice, fine-tune seed)
var = {"last": [], "average": []}  # per (model, slice): the variance over fine-tune seeds
for f in files:
    doc = json.loads(f.read_text())
    for rec in doc["volumes"].values():
        for arm, key in (("last", "values"), ("average", "values_average")):
            for v in rec[key].values():
                if len(v) == len(doc["ft_seeds"]):
                    pairs[arm] += v
                    var[arm].append(np.var(v, ddof=1))
within = {arm: float(np.sqrt(np.mean(v))) for arm, v in var.items()}
mean = {arm: float(np.mean(v)) for arm, v in pairs.items()}
a1 = within["average"] <= 0.8 * within["last"]
a2 = mean["average"] >= mean["last"] - 0.3
print(f"files: {[f.name for f in files]}; fine-tunes per arm: {len(pairs['last'])}")
print(f"within-slice sd: last weights {within['last']:.3f}, average {within['average']:.3f} "
      f"(ratio {within['average'] / within['last']:.3f}); A1 (<= 0.8): {'holds' if a1 else 'fails'}")
print(f"mean Dice: last weights {mean['last']:.3f}, average {mean['average']:.3f} "
      f"(difference {mean['average'] - mean['last']:+.3f}); A2 (>= -0.3): {'holds' if a2 else 'fails'}")
a1_files = sorted(HERE.glob("corrections_A1_seed*.json"))
tumours = {"last": [], "average": []}  # Dice per (seed, order, k, volume)
seeds = []
for f in a1_files:
    doc = json.loads(f.read_text())
    for seed, run in doc["runs"].items():
        seeds.append(seed)
        for order in ("uncertain", "random"):
            for k in ("1", "2", "4"):
                tumours["last"] += run["curves"][order][k]
                tumours["average"] += run["curves"][order + "+average"][k]
if sorted(seeds) == ["0", "1", "2"]:
    m = {arm: float(np.mean(v)) for arm, v in tumours.items()}
    a3 = m["average"] >= m["last"] - 0.5
    print(f"A1 seeds 0-2, k = 1, 2, 4, both orders: last weights {m['last']:.3f}, average {m['average']:.3f} "
          f"(difference {m['average'] - m['last']:+.3f}); A3 (>= -0.5): {'holds' if a3 else 'fails'}")
    print("choice:", "the fine-tune ends with its weight average" if (a1 and a2 and a3)
          else "the fine-tune keeps its last weights")
else:
    print(f"A3 (A1, the tumours): seeds {sorted(seeds)} of 0-2 run; not judged; the default stays the last weights")

# the measuring stick's reading (fixed before the runs): can any order show at three seeds that it beats random at k = 1?
for f in files:
    doc = json.loads(f.read_text())
    for vi, rec in doc["volumes"].items():
        for arm in ("summary", "summary_average"):
            sm = rec.get(arm)
            if sm is None:
                continue
            lead = sm["grid_best"] - sm["random_expected"]
            se2 = 2 * np.sqrt(2 * sm["within_slice_sd"] ** 2 + sm["between_slices_sd"] ** 2) / np.sqrt(3)
            print(f"{f.name} volume {vi} {arm}: random slice {sm['random_expected']:.2f}, best evenly spaced slice "
                  f"{sm['grid_best']:.2f} (lead {lead:.2f}), worst {sm['grid_worst']:.2f}; within {sm['within_slice_sd']:.2f}, "
                  f"between {sm['between_slices_sd']:.2f}; twice the SE of a 3-seed mean difference {se2:.2f}: "
                  f"{'an order can show a lead' if lead >= se2 else 'no order can show a lead at three seeds'}; "
                  f"review's first pick {sm.get('first_pick_minus_random', float('nan')):+.2f} against a random slice "
                  f"(percentile {sm.get('first_pick_percentile')}); Spearman score-worth {sm['spearman_score_worth']}, "
                  f"error-worth {sm['spearman_error_worth']}")
