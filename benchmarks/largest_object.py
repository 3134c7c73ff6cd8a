"""Round 23 on masks already made: each kept mask with only its largest connected object (engine/components.py).

Reads the masks ``benchmarks/run.py --save-masks DIR`` wrote (``DIR/<protocol>/<row>_s<seed>/<volume>.npz``) and, for
the rows named, writes ``<row>_largest_s<seed>`` beside them with :func:`keep_largest_object` applied, so that
``benchmarks/agreement.py`` reads both (round 23's L2). It prints, label-free, each mask's number of pieces, the share
of its voxels in the largest, and its voxels before and after. With ``--score`` it also scores both against the
protocol's target labels (Dice %, scoring only: round 23's rule decides on the source and on label-free figures).

    python benchmarks/largest_object.py --masks DIR --protocol A2 --rows uuds
    python benchmarks/largest_object.py --masks DIR --protocol A2 --rows uuds --score --data DATA --json OUT.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as bench  # noqa: E402  (the quality benchmark: protocols and reference labels)
from agreement import seed_runs  # noqa: E402

from napari_uuds.engine.atomic import atomic_write  # noqa: E402
from napari_uuds.engine.components import keep_largest_object, pieces  # noqa: E402
from napari_uuds.engine.metrics import score_classes  # noqa: E402


def process(folder: Path, rows: list[str]) -> dict:
    """Write the ``_largest`` copies of ``rows``; {row: {seed: {volume: label-free figures}}}."""
    out: dict = {}
    for row, seeds in sorted(seed_runs(folder).items()):
        if row not in rows:
            continue
        for seed, d in sorted(seeds.items()):
            dest = folder / f"{row}_largest_s{seed}"
            dest.mkdir(exist_ok=True)
            for f in sorted(d.glob("*.npz")):
                seg = np.load(f)["seg"]
                kept = keep_largest_object(seg)
                np.savez_compressed(dest / f.name, seg=kept)
                _, sizes = pieces(seg > 0)
                out.setdefault(row, {}).setdefault(seed, {})[f.stem] = {
                    "pieces": int(len(sizes)), "largest_share": round(float(sizes.max() / sizes.sum()), 3)
                    if len(sizes) else None, "voxels": int((seg > 0).sum()), "voxels_kept": int((kept > 0).sum())}
    return out


def score(folder: Path, rows: list[str], data: Path, protocol: str) -> dict:
    """Dice % of ``row`` and ``row_largest`` against the protocol's target labels: {row: {seed: {volume: dice}}}."""
    proto = bench.PROTOCOLS[protocol]
    cfg = bench.protocol_config(proto)
    refs = bench._reference_labels(data, proto, cfg)
    names = [s if s else "t1" for s in proto["test"]] if protocol == "C" else proto["test"]
    by_name = dict(zip(names, refs))
    runs = seed_runs(folder)
    out: dict = {}
    for row in rows:
        for variant in (row, f"{row}_largest"):
            for seed, d in sorted(runs.get(variant, {}).items()):
                for f in sorted(d.glob("*.npz")):
                    ref = by_name[f.stem]
                    r = score_classes(np.load(f)["seg"], ref.data, ref.spacing, proto["classes"])
                    out.setdefault(variant, {}).setdefault(seed, {})[f.stem] = round(r["dice"], 3)
    for seeds in out.values():
        means = {s: float(np.mean(list(v.values()))) for s, v in seeds.items()}
        seeds["seed_means"] = {s: round(m, 2) for s, m in means.items()}
        seeds["mean"] = round(float(np.mean(list(means.values()))), 2)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--masks", required=True, help="the --save-masks folder of benchmarks/run.py")
    ap.add_argument("--protocol", required=True, choices=list(bench.PROTOCOLS))
    ap.add_argument("--rows", nargs="+", default=["uuds"])
    ap.add_argument("--score", action="store_true", help="also score against the target labels (scoring only)")
    ap.add_argument("--data", default=str(bench.ROOT.parent / "shared" / "data"))
    ap.add_argument("--json", default=None, help="write the figures here")
    args = ap.parse_args(argv)
    folder = Path(args.masks) / args.protocol
    figures = process(folder, args.rows)
    for row, seeds in figures.items():
        for seed, vols in seeds.items():
            for v, r in vols.items():
                print(f"{row} s{seed} {v}: {r['pieces']} pieces, largest {r['largest_share']}, "
                      f"{r['voxels']} -> {r['voxels_kept']} voxels")
    doc = {"protocol": args.protocol, "command": "python benchmarks/largest_object.py " + " ".join(argv or sys.argv[1:]),
           "commit": bench.git_commit(), "pieces": figures}
    if args.score:
        doc["dice"] = score(folder, args.rows, Path(args.data), args.protocol)
        for variant, seeds in doc["dice"].items():
            print(f"{variant:24s} Dice per seed {seeds['seed_means']}  mean {seeds['mean']}")
    if args.json:
        atomic_write(Path(args.json), lambda p: Path(p).write_text(json.dumps(doc, indent=1)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
