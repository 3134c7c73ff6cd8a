"""Rounds 23-24 on masks already made: each kept mask with only its largest connected object (engine/components.py).

Reads the masks ``benchmarks/run.py --save-masks DIR`` wrote (``DIR/<protocol>/<row>_s<seed>/<volume>.npz``) and, for
the rows named, writes ``<row>_largest_s<seed>`` (``objects = "largest"``, round 23) and ``<row>_objauto_s<seed>``
(``objects = "auto"``: the largest where it holds at least 80 % of the mask, round 24) beside them, so that
``benchmarks/agreement.py`` reads all three (the label-free gates L2 and M1). It prints, label-free, each mask's number
of pieces, the share of its voxels in the largest, and its voxels before and after (``largest``; ``auto``). With
``--score`` it also scores all three against the protocol's target labels (Dice %, scoring only: the rules of rounds
23 and 24 decide on the source and on label-free figures). Since round 24 the engine's default keeps objects ``auto``,
so run.py's ``uuds`` masks are already pruned: name the paired row ``uuds_objects_all`` (every piece) to start from
the network's own masks.

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
from napari_uuds.engine.components import keep_objects, pieces  # noqa: E402
from napari_uuds.engine.metrics import score_classes  # noqa: E402


#: the objects settings written beside each mask (engine/config.py OBJECTS; ``all`` is the mask itself) -> the suffix of
#: their copies (``_objauto``, not ``_auto``: round 16's row ``uuds_auto`` was GIN's)
MODES = {"largest": "largest", "auto": "objauto"}


def process(folder: Path, rows: list[str]) -> dict:
    """Write the ``_largest`` and ``_objauto`` copies of ``rows``; {row: {seed: {volume: label-free figures}}}."""
    out: dict = {}
    for row, seeds in sorted(seed_runs(folder).items()):
        if row not in rows:
            continue
        for seed, d in sorted(seeds.items()):
            for suffix in MODES.values():
                (folder / f"{row}_{suffix}_s{seed}").mkdir(exist_ok=True)
            for f in sorted(d.glob("*.npz")):
                seg = np.load(f)["seg"]
                kept = {mode: keep_objects(seg, mode) for mode in MODES}
                for mode, m in kept.items():
                    np.savez_compressed(folder / f"{row}_{MODES[mode]}_s{seed}" / f.name, seg=m)
                _, sizes = pieces(seg > 0)
                out.setdefault(row, {}).setdefault(seed, {})[f.stem] = {
                    "pieces": int(len(sizes)), "largest_share": round(float(sizes.max() / sizes.sum()), 3)
                    if len(sizes) else None, "voxels": int((seg > 0).sum()),
                    "voxels_kept": int((kept["largest"] > 0).sum()),
                    "voxels_auto": int((kept["auto"] > 0).sum())}
    return out


def score(folder: Path, rows: list[str], data: Path, protocol: str) -> dict:
    """Dice % of ``row``, ``row_largest`` and ``row_objauto`` against the protocol's target labels: {row: {seed: {volume: dice}}}."""
    proto = bench.PROTOCOLS[protocol]
    cfg = bench.protocol_config(proto)
    refs = bench._reference_labels(data, proto, cfg)
    names = [s if s else "t1" for s in proto["test"]] if protocol == "C" else proto["test"]
    by_name = dict(zip(names, refs))
    runs = seed_runs(folder)
    out: dict = {}
    for row in rows:
        for variant in (row, *(f"{row}_{suffix}" for suffix in MODES.values())):
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
                      f"{r['voxels']} -> {r['voxels_kept']} voxels (auto: {r['voxels_auto']})")
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
