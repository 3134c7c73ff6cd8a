"""DDP on the CPU: 2 gloo processes against 1 process on the same global batch (the README's sample job).

* one process: ``napari-uuds adapt --batch-size 8`` with torch on all the machine's cores it is given (``--threads``);
* two processes: ``torchrun --standalone --nproc_per_node 2 -m napari_uuds adapt --batch-size 4`` (4 per process,
  8 in all), one thread each (torchrun's default).

Same steps, seed and data; printed and written: training seconds, slices per second (global batch x steps / seconds),
their ratio, the final losses (averaged over the ranks) and the sample's Dice. In-batch losses see each process's
own batch of 4 (engine/distributed.py), so the two runs are not the same computation: the final losses say how far
apart they land.

    .venv/bin/python benchmarks/ddp_cpu.py --steps 200

Writes ``benchmarks/results/ddp_cpu.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "sample_data" / "cord"


def _run(cmd: list[str], out: Path, env: dict) -> dict:
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if r.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{r.stderr[-3000:]}")
    train_s = float(re.search(r"\(training (\d+(?:\.\d+)?) s\)", r.stdout).group(1))
    dice = float(re.search(r"t1: Dice ([\d.]+) %", r.stdout).group(1))
    cfg = json.loads((out / "config.json").read_text())
    return {"train_s": train_s, "dice": dice, "final_losses": {k: round(v, 4) for k, v in cfg["final_losses"].items()},
            "distributed": cfg.get("distributed")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=8, help="global batch (split over the processes)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads of the one-process run")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--results", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args(argv)

    common = ["adapt", "--source", str(SAMPLE / "t2.nii.gz"), "--source-label", str(SAMPLE / "t2_seg.nii.gz"),
              "--target", str(SAMPLE / "t1.nii.gz"), "--target-label", str(SAMPLE / "t1_seg.nii.gz"),
              "--class-name", "spinal cord", "--steps", str(args.steps), "--seed", str(args.seed),
              "--device", "cpu", "--clip-weights", "none", "--quiet"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        o1, o2 = Path(tmp) / "one", Path(tmp) / "two"
        runs["one_process"] = {"processes": 1, "batch_per_process": args.batch_size, "threads": args.threads,
                               **_run([sys.executable, "-m", "napari_uuds", *common, "--batch-size",
                                       str(args.batch_size), "--out", str(o1)], o1,
                                      {**env, "OMP_NUM_THREADS": str(args.threads)})}
        half = args.batch_size // 2
        runs["two_gloo_processes"] = {"processes": 2, "batch_per_process": half, "threads": 1,
                                      **_run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                                              "--nproc_per_node", "2", "-m", "napari_uuds", *common, "--batch-size",
                                              str(half), "--out", str(o2)], o2, {**env, "OMP_NUM_THREADS": "1"})}
    for r in runs.values():
        r["slices_per_s"] = round(args.batch_size * args.steps / r["train_s"], 2)
    ratio = runs["two_gloo_processes"]["slices_per_s"] / runs["one_process"]["slices_per_s"]
    doc = {"steps": args.steps, "global_batch": args.batch_size, "seed": args.seed, "cpu_count": os.cpu_count(),
           "machine": platform.machine(), "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"],
                                                                   capture_output=True, text=True, cwd=ROOT).stdout.strip(),
           "runs": runs, "throughput_ratio_two_over_one": round(ratio, 3),
           "command": "python benchmarks/ddp_cpu.py " + " ".join(sys.argv[1:] if argv is None else argv)}
    for name, r in runs.items():
        print(f"{name:20s} {r['train_s']:7.1f} s  {r['slices_per_s']:6.2f} slices/s  Dice {r['dice']:5.1f}  "
              f"final L_seg {r['final_losses'].get('seg')}  total {r['final_losses'].get('total')}")
    print(f"throughput, 2 processes / 1: {ratio:.2f}")
    out = Path(args.results) / "ddp_cpu.json"
    out.write_text(json.dumps(doc, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
