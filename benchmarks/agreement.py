"""How much the seeds of one recipe agree on the target, a label-free statistic (no target label is read).

A recipe whose runs paint the object in the same place from every seed is more trustworthy than one whose runs
disagree, whatever each run's size: the target/source volume ratio cannot see a mask of the right size in the wrong
place (docs/method.md, round 1), the agreement of seeds can. Reads the masks ``benchmarks/run.py --save-masks DIR``
wrote (``DIR/<protocol>/<row>_s<seed>/<volume>.npz``) and prints, per row, the mean Dice between every pair of seeds'
predictions, per volume and overall; ``--json`` writes them.

With ``--area-source LABEL --area-target IMAGE`` (one target volume, as protocol C) it also prints each seed's
predicted object's mean cross-section (mm^2 over the axial slices that hold any of it) over the source label's, and
the median |log| of that ratio per row (round 16's H2; label-free: only the source's label is read; for the cord,
the same subject in both scans, the ratio should be near 1 whatever length of neck each scan covers).

    python benchmarks/agreement.py --masks DIR --protocol C
    python benchmarks/agreement.py --masks DIR --protocol C --area-source cord/t2_seg.nii.gz --area-target cord/t1.nii.gz
"""
from __future__ import annotations

import argparse
import itertools
import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    total = int(a.sum()) + int(b.sum())
    return 100.0 if total == 0 else 200.0 * float((a & b).sum()) / total


def seed_runs(folder: Path) -> dict[str, dict[int, Path]]:
    """{row: {seed: folder}} of the ``<row>_s<seed>`` folders ``run.py --save-masks`` wrote."""
    runs: dict[str, dict[int, Path]] = {}
    for d in sorted(p for p in folder.iterdir() if p.is_dir()):
        m = re.fullmatch(r"(.+)_s(\d+)", d.name)
        if m:
            runs.setdefault(m.group(1), {})[int(m.group(2))] = d
    return runs


def agreement(folder: Path) -> dict:
    """{row: {"seeds": [...], "pairs": n, "volumes": {volume: mean pairwise Dice}, "mean": ...}}."""
    out = {}
    for row, seeds in sorted(seed_runs(folder).items()):
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


def cross_section_mm2(mask: np.ndarray, affine: np.ndarray) -> float:
    """Mean object area (mm^2) over the axial slices (the array axis nearest superior-inferior) that hold any."""
    codes = nib.aff2axcodes(affine)
    axis = next(i for i, c in enumerate(codes) if c in "SI")
    zooms = nib.affines.voxel_sizes(affine)
    area = float(np.prod([z for i, z in enumerate(zooms) if i != axis]))
    per = (mask > 0).sum(axis=tuple(i for i in range(3) if i != axis))
    return float(per[per > 0].mean() * area) if (per > 0).any() else 0.0


def cross_sections(folder: Path, source_label: Path, target_image: Path) -> dict:
    """{row: {"per_seed": {seed: ratio}, "median_abs_log": ...}}: the predicted target object's mean cross-section
    over the source label's."""
    lab = nib.load(source_label)
    ref = cross_section_mm2(np.asarray(lab.dataobj), lab.affine)
    aff = nib.load(target_image).affine
    out: dict[str, dict] = {}
    for row, seeds in sorted(seed_runs(folder).items()):
        for seed, d in sorted(seeds.items()):
            files = sorted(d.glob("*.npz"))
            if len(files) == 1:  # one target volume (protocol C)
                ratio = cross_section_mm2(np.load(files[0])["seg"], aff) / ref
                out.setdefault(row, {"per_seed": {}})["per_seed"][seed] = round(ratio, 3)
    for r in out.values():
        logs = [abs(np.log(v)) if v > 0 else float("inf") for v in r["per_seed"].values()]
        r["median_abs_log"] = round(float(np.median(logs)), 4)
    return {"source_mm2": round(ref, 2), "rows": out}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--masks", required=True, help="the --save-masks folder of benchmarks/run.py")
    ap.add_argument("--protocol", required=True)
    ap.add_argument("--json", default=None, help="write the figures here")
    ap.add_argument("--area-source", default=None, metavar="LABEL", help="the source's label (NIfTI), for H2")
    ap.add_argument("--area-target", default=None, metavar="IMAGE", help="the target image (NIfTI; its affine)")
    args = ap.parse_args(argv)
    res = agreement(Path(args.masks) / args.protocol)
    for row, r in res.items():
        print(f"{row:28s} seeds {r['seeds']}  mean pairwise Dice {r['mean']}  per volume {r['volumes']}")
    doc = {"protocol": args.protocol, "rows": res}
    if args.area_source and args.area_target:
        cs = cross_sections(Path(args.masks) / args.protocol, Path(args.area_source), Path(args.area_target))
        print(f"source cross-section {cs['source_mm2']} mm^2")
        for row, r in cs["rows"].items():
            print(f"{row:28s} cross-section / source's per seed {r['per_seed']}  median |log| {r['median_abs_log']}")
        doc["cross_section"] = cs
    if args.json:
        Path(args.json).write_text(json.dumps(doc, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
