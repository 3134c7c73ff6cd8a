"""Peak memory of segmenting a large scan: a 512 x 512 x 300 float32 target (0.3 GB of voxels).

Each job runs as its own process (``napari-uuds predict``, and ``napari-uuds adapt`` with that target), and its
peak resident memory is read from the kernel (``getrusage`` of the finished child). Goal: at most 2.5 GiB.

    .venv/bin/python benchmarks/predict_memory.py

Writes ``benchmarks/results/predict_memory.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
GIB = 2 ** 30


def big_scan(path: Path, shape=(512, 512, 300)) -> None:
    """An ellipsoid body of noisy tissue in air, float32, 0.5 x 0.5 x 1 mm."""
    x, y = np.ogrid[:shape[0], :shape[1]]
    inside = ((x - shape[0] / 2) / (shape[0] * 0.4)) ** 2 + ((y - shape[1] / 2) / (shape[1] * 0.35)) ** 2 < 1
    rng = np.random.default_rng(0)
    data = np.zeros(shape, np.float32)
    for k in range(shape[2]):
        data[:, :, k] = inside * (100 + 20 * rng.standard_normal(shape[:2], dtype=np.float32))
    nib.save(nib.Nifti1Image(data, np.diag([0.5, 0.5, 1.0, 1.0])), str(path))


def peak_of(cmd: list[str]) -> tuple[float, float, int]:
    """(peak RSS GiB, wall s, exit code) of one child process."""
    t0 = time.perf_counter()
    code = subprocess.run(cmd, env={**os.environ, "HF_HUB_OFFLINE": "1"}).returncode
    wall = time.perf_counter() - t0
    # ru_maxrss of RUSAGE_CHILDREN is the largest of the waited-for children: one child per probe process
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024 / GIB, wall, code


def probe(job: str, work: Path) -> dict:
    """Run ``job`` in a fresh interpreter so that RUSAGE_CHILDREN sees that job's child only."""
    out = subprocess.run([sys.executable, __file__, "--probe", job, "--work", str(work)], capture_output=True,
                         text=True)
    if out.returncode != 0:
        raise SystemExit(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--probe", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--work", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--results", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args(argv)
    cli = [sys.executable, "-m", "napari_uuds.cli"]
    cord = ROOT / "sample_data" / "cord"
    if args.probe:
        work = Path(args.work)
        if args.probe == "predict":
            cmd = cli + ["predict", "--quiet", "--weights", str(work / "weights"), "--image", str(work / "big.nii.gz"),
                         "--out", str(work / "pred"), "--device", "cpu", "--overwrite"]
        else:
            cmd = cli + ["adapt", "--quiet", "--source", str(cord / "t2.nii.gz"), "--source-label",
                         str(cord / "t2_seg.nii.gz"), "--target", str(work / "big.nii.gz"), "--out",
                         str(work / "adapt"), "--model", "tiny", "--clip-weights", "none", "--steps", "2",
                         "--device", "cpu", "--overwrite"]
        gib, wall, code = peak_of(cmd)
        print(json.dumps({"job": args.probe, "peak_rss_gib": round(gib, 3), "wall_s": round(wall, 1), "exit": code,
                          "command": " ".join(cmd[2:])}))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        big_scan(work / "big.nii.gz")
        # weights for predict: a 2-step tiny run on the sample
        subprocess.run(cli + ["adapt", "--quiet", "--source", str(cord / "t2.nii.gz"), "--source-label",
                              str(cord / "t2_seg.nii.gz"), "--target", str(cord / "t1.nii.gz"), "--out",
                              str(work / "weights"), "--model", "tiny", "--clip-weights", "none", "--steps", "2",
                              "--device", "cpu"], check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        rows = [probe(job, work) for job in ("predict", "adapt")]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=ROOT).stdout.strip()
    doc = {"target": "512 x 512 x 300 float32 (0.29 GiB of voxels)", "goal_gib": 2.5, "commit": commit,
           "machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "command": "python benchmarks/predict_memory.py",
           "jobs": rows}
    for r in rows:
        print(f"{r['job']:8s} peak {r['peak_rss_gib']:.2f} GiB  wall {r['wall_s']:.0f} s  exit {r['exit']}")
    out = Path(args.results) / "predict_memory.json"
    out.write_text(json.dumps(doc, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
