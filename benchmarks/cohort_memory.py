"""A cohort's memory on the CPU (issue 17): ``napari-uuds predict`` on a folder of 4 and of 20 BraTS volumes.

The volumes stream through the model (engine/cohort.py), so the peak resident memory of the process should not grow
with the cohort: this runs the GPU benchmark's cohort section (``gpu_speed.section_cohort``: the 240 x 240 x 155
flair/t1c scans of ``--data``, cycled and copied under new names, segmented by the CLI in a fresh interpreter) on the
CPU with the README's model (tiny, 128 px, random weights: speed and memory do not depend on them), for each size.

    .venv/bin/python benchmarks/cohort_memory.py      # about 5 min on 2 cores

Writes ``benchmarks/results/cohort_memory.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as qb  # noqa: E402
from gpu_speed import section_cohort  # noqa: E402

from napari_uuds.engine.atomic import atomic_write  # noqa: E402
from napari_uuds.engine.config import ModelConfig  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(qb.ROOT.parent / "shared" / "data"))
    ap.add_argument("--sizes", nargs="*", type=int, default=[4, 20])
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--out", default=str(qb.RESULTS / "cohort_memory.json"))
    args = ap.parse_args(argv)
    cfg = ModelConfig.for_arch("tiny", image_size=128, class_names=["tumour"], source_modality="T1C")
    ctx = {"model_kw": {k: getattr(cfg, k) for k in cfg.__dataclass_fields__}, "device": torch.device("cpu")}
    runs = []
    for n in args.sizes:
        r = section_cohort(ctx, argparse.Namespace(smoke=False, data=args.data, cohort=n, cohort_batch=args.batch_size))
        runs.append(r)
        print(f"{n:3d} volumes: {r['wall_s']:6.1f} s, {r['slices_per_s']:5.1f} slices/s, "
              f"{r['volume_seconds_median']:.2f} s per volume (median), peak resident memory {r['peak_rss_gib']:.2f} GiB",
              flush=True)
    doc = {"commit": qb.git_commit() or None, "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
           "model": "tiny, 128 px, random weights", "command": "python benchmarks/cohort_memory.py "
           + " ".join(sys.argv[1:] if argv is None else argv), "runs": runs}
    atomic_write(Path(args.out), lambda tmp: Path(tmp).write_text(json.dumps(doc, indent=1)))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
