"""Corrections round 5's gate (docs/method.md): the review on the network's own entropy (U, ``uncertain_own``)
against today's review (the smoothed entropy, ``uncertain``) and random slices, on the same cached adapted models.
Reads the runs' JSON files (committed beside this script; C's review and random curves are round 25's) and prints U1
and U2 with the curves.

    python benchmarks/results/issue14/round5/gate.py
"""
import json
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
SEEDS = (0, 1, 2)


def table(files: list[Path]) -> dict:
    """{curve: {seed: {k: mean Dice over the volumes}}} of run files."""
    out: dict = {}
    for f in files:
        for s, r in json.loads(f.read_text())["runs"].items():
            for name, c in r["curves"].items():
                out.setdefault(name, {}).setdefault(int(s), {}).update(
                    {int(k): float(np.mean(v)) for k, v in c.items()})
    return out


def mean_over(t: dict, name: str, ks) -> float:
    return float(np.mean([t[name][s][k] for s in SEEDS for k in ks]))


def main() -> None:
    c = table([ROOT / "issue14/round25/corrections_C.json", HERE / "own_C.json"])
    a = table(sorted(HERE.glob("corrections_A1_seed*.json")) + sorted(HERE.glob("own_A1_seed*.json")))
    for proto, t in (("C", c), ("A1", a)):
        print(proto)
        for name in ("uncertain", "uncertain_own", "random"):
            per_k = {k: round(float(np.mean([t[name][s][k] for s in SEEDS])), 2) for k in (0, 1, 2, 4, 8)}
            print(f"  {name:14s} {per_k}", "per seed (k = 1-4)",
                  [round(float(np.mean([t[name][s][k] for k in (1, 2, 4)])), 2) for s in SEEDS])
    u_c, rev_c, rnd_c = (mean_over(c, n, (1, 2, 4, 8)) for n in ("uncertain_own", "uncertain", "random"))
    u_a, rev_a = (mean_over(a, n, (1, 2, 4)) for n in ("uncertain_own", "uncertain"))
    u1, u2 = u_c >= rnd_c and u_c >= rev_c, u_a >= rev_a - 1.0
    print(f"U1 (C, k = 1, 2, 4, 8: own {u_c:.2f} >= random {rnd_c:.2f} and >= today's review {rev_c:.2f}): "
          f"{'holds' if u1 else 'fails'}")
    print(f"U2 (A1, k = 1, 2, 4: own {u_a:.2f} >= today's review {rev_a:.2f} - 1.0): {'holds' if u2 else 'fails'}")


if __name__ == "__main__":
    main()
