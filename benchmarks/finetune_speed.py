"""What a user waits for one fine-tune on corrections: the README's sample, the review's two first slices corrected.

Takes the weights of the README's job (``--weights``, default ``runs/cord``), ranks the T1's slices as the review
does (engine/review.py, from the job's entropy and segmentation), corrects the first two with ``t1_seg``'s labels
(as a brush would), and times ``napari-uuds finetune`` as a user runs it (a fresh process: imports, loading,
its default steps, segmenting, writing). Writes ``benchmarks/results/finetune_speed.json``. Run it on an otherwise idle
machine: PyTorch's threads wait on each other beside other CPU-heavy jobs.

    .venv/bin/python benchmarks/finetune_speed.py --weights runs/cord
    .venv/bin/python benchmarks/finetune_speed.py --weights runs/cord --parts all segmenter   # both, back to back
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from napari_uuds.engine.config import TRAIN_PARTS  # no torch: --help stays fast

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "sample_data" / "cord"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", default=str(ROOT / "runs" / "cord"))
    ap.add_argument("--slices", type=int, default=2, help="corrected slices (the review's first ones)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "finetune_speed.json"))
    ap.add_argument("--parts", nargs="+", default=None, choices=TRAIN_PARTS,
                    help="time one fine-tune for each, back to back on the same slices (default: the command's own "
                         "default only)")
    args = ap.parse_args(argv)

    from napari_uuds.engine.atomic import atomic_write
    from napari_uuds.engine.review import rank_slices
    from napari_uuds.engine.volumes import load_label, load_volume, save_like

    w = Path(args.weights)
    axis = json.loads((w / "config.json").read_text())["model"]["axis"]
    ent = load_volume(w / "t1_entropy.nii.gz", check_constant=False)
    seg = load_label(w / "t1_seg.nii.gz", None, allow_empty=True)
    truth = load_label(SAMPLE / "t1_seg.nii.gz", None)
    # the entropy the adapt command wrote (the one shown: smoothed across slices since round 25), not the network's own
    # that the widget's review reads since corrections round 5: the picks can differ from the widget's
    picks = [s.index for s in rank_slices(ent.data, seg.data, axis, 0.5)[:args.slices]]
    corr = np.zeros_like(truth.data)
    np.moveaxis(corr, axis, 0)[picks] = np.moveaxis(truth.data, axis, 0)[picks]
    work = Path(tempfile.mkdtemp(prefix="napari-uuds-finetune-speed-"))
    save_like(corr, truth, work / "corrections.nii.gz", dtype=np.uint8)
    exe = Path(sys.executable).with_name("napari-uuds")
    before = json.loads((w / "metrics.json").read_text())["volumes"]["t1"]["dice"] if (w / "metrics.json").exists() \
        else None
    runs = []
    for parts in (args.parts or [None]):
        res_dir = work / ("out" if parts is None else f"out_{parts}")
        cmd = [str(exe), "finetune", "--weights", str(w), "--image", str(SAMPLE / "t1.nii.gz"), "--corrections",
               str(work / "corrections.nii.gz"), "--out", str(res_dir), "--target-label",
               str(SAMPLE / "t1_seg.nii.gz"), "--quiet", *(["--parts", parts] if parts else [])]
        t0 = time.perf_counter()
        res = subprocess.run(cmd, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - t0
        if res.returncode != 0:
            print(res.stderr, file=sys.stderr)
            return res.returncode
        after = json.loads((res_dir / "metrics.json").read_text())
        ft = json.loads((res_dir / "config.json").read_text())["finetune"]
        runs.append({"parts": ft.get("parts", "all"), "steps": ft["steps"], "wall_s": round(wall, 1),
                     "finetune_s": round(after["finetune_s"], 1), "dice_after": round(after["volumes"]["t1"]["dice"], 1),
                     "pred_voxels_after": after["volumes"]["t1"]["pred_voxels"],
                     "ref_voxels": after["volumes"]["t1"]["ref_voxels"], "command": " ".join(["napari-uuds", *cmd[1:]])})
        print(json.dumps(runs[-1]), flush=True)
    doc = {"what": "napari-uuds finetune on the README's sample, the review's first slices corrected with t1_seg",
           "corrected_slices": picks, "axis": axis, **runs[0],
           "dice_before": None if before is None else round(before, 1),
           "cpu": f"{os.cpu_count()} cores, {platform.processor() or platform.machine()}",
           **({"runs": runs} if len(runs) > 1 else {})}
    out = Path(args.out)
    atomic_write(out, lambda tmp: Path(tmp).write_text(json.dumps(doc, indent=1)))
    print(json.dumps(doc, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
