"""How much the seeds of one recipe agree on the target, a label-free statistic (no target label is read).

A recipe whose runs paint the object in the same place from every seed is more trustworthy than one whose runs
disagree, whatever each run's size: the target/source volume ratio cannot see a mask of the right size in the wrong
place (docs/method.md, round 1), the agreement of seeds can. Reads the masks ``benchmarks/run.py --save-masks DIR``
wrote (``DIR/<protocol>/<row>_s<seed>/<volume>.npz``) and prints, per row, the mean Dice between every pair of seeds'
predictions, per volume and overall; ``--json`` writes them.

    python benchmarks/agreement.py --masks DIR --protocol C
"""
from __future__ import annotations

import argparse
import itertools
import json
import re
from pathlib import Path

import numpy as np


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    total = int(a.sum()) + int(b.sum())
    return 100.0 if total == 0 else 200.0 * float((a & b).sum()) / total


def agreement(folder: Path) -> dict:
    """{row: {"seeds": [...], "pairs": n, "volumes": {volume: mean pairwise Dice}, "mean": ...}}."""
    runs: dict[str, dict[int, Path]] = {}
    for d in sorted(p for p in folder.iterdir() if p.is_dir()):
        m = re.fullmatch(r"(.+)_s(\d+)", d.name)
        if m:
            runs.setdefault(m.group(1), {})[int(m.group(2))] = d
    out = {}
    for row, seeds in sorted(runs.items()):
        if len(seeds) < 2:
            continue
        names = sorted(set.intersection(*(set(p.stem for p in d.glob("*.npz")) for d in seeds.values())))
        per = {}
        for name in names:
            masks = {s: np.load(d / f"{name}.npz")["seg"] for s, d in seeds.items()}
            per[name] = round(float(np.mean([dice(masks[a], masks[b]) for a, b in itertools.combinations(sorted(masks), 2)])), 2)
        out[row] = {"seeds": sorted(seeds), "pairs": len(seeds) * (len(seeds) - 1) // 2, "volumes": per,
                    "mean": round(float(np.mean(list(per.values()))), 2) if per else None}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--masks", required=True, help="the --save-masks folder of benchmarks/run.py")
    ap.add_argument("--protocol", required=True)
    ap.add_argument("--json", default=None, help="write the figures here")
    args = ap.parse_args(argv)
    res = agreement(Path(args.masks) / args.protocol)
    for row, r in res.items():
        print(f"{row:28s} seeds {r['seeds']}  mean pairwise Dice {r['mean']}  per volume {r['volumes']}")
    if args.json:
        Path(args.json).write_text(json.dumps({"protocol": args.protocol, "rows": res}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
