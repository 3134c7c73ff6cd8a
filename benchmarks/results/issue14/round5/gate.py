"""Corrections round 5's gate (docs/method.md): the review on the network's own entropy (U, ``uncertain_own``)
against today's review (the smoothed entropy, ``uncertain``) and random slices, on the same cached adapted models.
Reads the runs' JSON files (committed beside this script; C's review and random curves are round 25's) and prints U1
and U2 with the curves.

    python benchmarks/results/issue14/round5/gate.py
"""
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT.parent))
import corrections  # noqa: E402
SEEDS = (0, 1, 2)


def main() -> None:
    c = corrections.seed_means([ROOT / "issue14/round25/corrections_C.json", HERE / "own_C.json"])
    a = corrections.seed_means(sorted(HERE.glob("corrections_A1_seed*.json")) + sorted(HERE.glob("own_A1_seed*.json")))
    for proto, t in (("C", c), ("A1", a)):
        print(proto)
        for name in ("uncertain", "uncertain_own", "random"):
            per_k = {k: round(float(np.mean([t[name][s][k] for s in SEEDS])), 2) for k in (0, 1, 2, 4, 8)}
            print(f"  {name:14s} {per_k}", "per seed (k = 1-4)",
                  [round(float(np.mean([t[name][s][k] for k in (1, 2, 4)])), 2) for s in SEEDS])
    u_c, rev_c, rnd_c = (corrections.mean_over(c, n, SEEDS, (1, 2, 4, 8)) for n in ("uncertain_own", "uncertain", "random"))
    u_a, rev_a = (corrections.mean_over(a, n, SEEDS, (1, 2, 4)) for n in ("uncertain_own", "uncertain"))
    u1, u2 = u_c >= rnd_c and u_c >= rev_c, u_a >= rev_a - 1.0
    print(f"U1 (C, k = 1, 2, 4, 8: own {u_c:.2f} >= random {rnd_c:.2f} and >= today's review {rev_c:.2f}): "
          f"{'holds' if u1 else 'fails'}")
    print(f"U2 (A1, k = 1, 2, 4: own {u_a:.2f} >= today's review {rev_a:.2f} - 1.0): {'holds' if u2 else 'fails'}")


if __name__ == "__main__":
    main()
