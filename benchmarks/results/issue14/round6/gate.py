"""Corrections round 6's gate (docs/method.md, "Corrections round 6"): W (every module fine-tuned) against D (the
segmenter), on the same adapted models and slices. Reads the runs' JSON files in this folder
(corrections_<protocol>_seed<N>.json) and prints W1-W3 (W4, the time, is finetune_speed_parts.json).

    python benchmarks/results/issue14/round6/gate.py
"""
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2]))
import corrections  # noqa: E402

KS = (1, 2, 4)
D, W = "uncertain", "uncertain@all"
PAIRS = {"uncertain": "uncertain@all", "random": "random@all"}


def files(protocol: str) -> list[Path]:
    return sorted(HERE.glob(f"corrections_{protocol}_seed*.json"))


def main() -> None:
    a1, c = corrections.seed_means(files("A1")), corrections.seed_means(files("C"))
    seeds = {"A1": sorted(a1[D]), "C": sorted(c[D])}
    print(f"A1 seeds {seeds['A1']}, C seeds {seeds['C']}")
    for name, t in (("A1", a1), ("C", c)):
        for curve in (D, W, "random", "random@all"):
            row = [corrections.mean_over(t, curve, seeds[name], (k,)) for k in (0,) + KS]
            print(f"  {name} {curve:15s} " + " ".join(f"{v:6.2f}" for v in row) + f"   mean k=1-4 {np.mean(row[1:]):.2f}")
    w1 = (corrections.mean_over(a1, W, seeds["A1"], KS), corrections.mean_over(a1, D, seeds["A1"], KS))
    print(f"W1 (A1, W >= D + 1.0): {w1[0]:.2f} vs {w1[1]:.2f} + 1.0 -> {'holds' if w1[0] >= w1[1] + 1.0 else 'fails'}")
    w2 = (corrections.mean_over(c, W, seeds["C"], KS), corrections.mean_over(c, D, seeds["C"], KS),
          corrections.mean_over(c, W, seeds["C"], (2,)))
    ok2 = w2[0] >= w2[1] - 1.0 and w2[2] >= 90.0
    print(f"W2 (C, W >= D - 1.0 and W at k=2 >= 90): {w2[0]:.2f} vs {w2[1]:.2f} - 1.0; k=2 {w2[2]:.2f} -> "
          f"{'holds' if ok2 else 'fails'}")
    bad = []  # per volume, so from the files themselves
    for name in ("A1", "C"):
        for f in files(name):
            for seed, r in json.loads(f.read_text())["runs"].items():
                base = r["curves"][D]["0"]
                for dcurve, wcurve in PAIRS.items():
                    for k in map(str, KS):
                        for v, (b, dd, ww) in enumerate(zip(base, r["curves"][dcurve][k], r["curves"][wcurve][k])):
                            if ww < b - 10 and dd > ww:
                                bad.append(f"{name} seed {seed} {wcurve} k={k} volume {v}: {b:.1f} -> {ww:.1f} "
                                           f"(D {dd:.1f})")
    print("W3 (no volume more than 10 below its k=0 unless D falls as far):", "holds" if not bad else "fails")
    for b in bad:
        print("   ", b)


if __name__ == "__main__":
    main()
