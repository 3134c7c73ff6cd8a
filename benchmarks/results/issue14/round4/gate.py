"""Corrections round 4's gate (docs/method.md): the peak order against coverage and random slices, on the same
adapted models. Reads the runs' JSON files (paths below, as committed beside this script) and prints P1 and P2.

    python benchmarks/results/issue14/round4/gate.py
"""
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT.parent))
import corrections  # noqa: E402


def main() -> None:
    c = corrections.seed_means([ROOT / "issue14/finetune_parts/order_check/corrections_C_seed0.json",
               ROOT / "issue14/finetune_parts/order_check/corrections_C_seed2.json",
               HERE / "corrections_C_seed1.json", *sorted(HERE.glob("peak_C_seed*.json"))])
    a = corrections.seed_means([ROOT / "issue14/finetune_parts/corrections_A1.json", HERE / "corrections_A1_seed2.json",
               *sorted(HERE.glob("peak_A1_seed*.json"))])
    seeds = (0, 1, 2)
    for proto, t, ks in (("C", c, (1, 2, 4, 8)), ("A1", a, (1, 2, 4))):
        print(proto)
        for name in ("uncertain", "uncertain_peak", "random"):
            per_k = {k: round(float(np.mean([t[name][s][k] for s in seeds])), 2) for k in ks}
            print(f"  {name:15s} {per_k} mean {corrections.mean_over(t, name, seeds, ks):.2f}",
                  "per seed", [round(float(np.mean([t[name][s][k] for k in ks])), 2) for s in seeds])
    p_c, cov_c, rnd_c = (corrections.mean_over(c, n, seeds, (1, 2, 4, 8)) for n in ("uncertain_peak", "uncertain", "random"))
    p_a, cov_a = (corrections.mean_over(a, n, seeds, (1, 2, 4)) for n in ("uncertain_peak", "uncertain"))
    p1, p2 = p_c >= rnd_c and p_c >= cov_c, p_a >= cov_a - 1.0
    print(f"P1 (C: peak {p_c:.2f} >= random {rnd_c:.2f} and >= coverage {cov_c:.2f}): {'holds' if p1 else 'fails'}")
    print(f"P2 (A1: peak {p_a:.2f} >= coverage {cov_a:.2f} - 1.0): {'holds' if p2 else 'fails'}")


if __name__ == "__main__":
    main()
