"""Prediction-time ways on adapted models already trained (round 25 of docs/method.md).

``benchmarks/corrections.py --adapted DIR`` keeps each seed's adapted model (``DIR/<protocol>_s<seed>_<steps>``).
A lever that changes only how a trained model predicts (through-plane smoothing, the objects kept, test-time
augmentation) needs no new training: this script predicts every target volume of a protocol with the same weights
each way and writes the masks where ``benchmarks/agreement.py`` reads them (``MASKS/<protocol>/<way>_s<seed>/
<volume>.npz``), with each mask's voxel count (label-free). The target labels score only with ``--score``
(scoring only: after a round's decision).

    python benchmarks/cached_ways.py --protocol A1 --adapted /work/cache/adapted --seeds 0 1 2 \\
        --ways uuds uuds_smooth_z --masks /tmp/masks --json out.json
    python benchmarks/agreement.py --masks /tmp/masks --protocol A1
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from corrections import adapted_folder  # noqa: E402
from run import PROTOCOLS, git_commit, setup_protocol  # noqa: E402

from napari_uuds.engine.atomic import atomic_write  # noqa: E402
from napari_uuds.engine.checkpoint import load_checkpoint  # noqa: E402
from napari_uuds.engine.config import PREDICTION_SETTINGS  # noqa: E402
from napari_uuds.engine.infer import predict_volume  # noqa: E402
from napari_uuds.engine.metrics import score_classes  # noqa: E402

#: way -> ModelConfig settings changed from the adapted model's own (each way changes only what it names)
WAYS = {"uuds": {}, "uuds_smooth_z": {"smooth_z": "binomial"}, "uuds_smooth_z_none": {"smooth_z": "none"},
        "uuds_objects_all": {"objects": "all"}, "uuds_tta": {"tta": "d8"}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--protocol", required=True, choices=sorted(PROTOCOLS))
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    ap.add_argument("--adapted", required=True, metavar="DIR", help="corrections.py --adapted's folder")
    ap.add_argument("--steps", type=int, default=600, help="the adapted models' training length (folder name)")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--ways", nargs="+", default=["uuds", "uuds_smooth_z"], choices=list(WAYS))
    ap.add_argument("--masks", required=True, metavar="DIR", help="write the masks under DIR/<protocol>/<way>_s<seed>/")
    ap.add_argument("--score", action="store_true", help="also score against the target labels (scoring only)")
    ap.add_argument("--json", default=None, help="write the figures here")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--overwrite", action="store_true", help="replace masks already in the way's folder")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    proto = PROTOCOLS[args.protocol]
    cfg, data = setup_protocol(Path(args.data), proto)
    targets, refs = data["targets"], data["refs"]
    names = [t.volume.name if len(targets) == 1 else Path(t.volume.path).parent.name for t in targets]
    out: dict = {"protocol": args.protocol, "commit": git_commit(), "ways": args.ways, "score": args.score,
                 "command": "python benchmarks/cached_ways.py " + " ".join(sys.argv[1:] if argv is None else argv),
                 "runs": {}}
    t0 = time.perf_counter()
    for seed in args.seeds:
        folder = adapted_folder(args.adapted, args.protocol, seed, args.steps, cfg)
        model, meta = load_checkpoint(folder)
        own = {k: getattr(model.cfg, k) for k in PREDICTION_SETTINGS}
        run = {"folder": str(folder), "trained_at": meta.get("corrections_adapted", {}).get("commit"), "ways": {}}
        for way in args.ways:
            for k, v in {**own, **WAYS[way]}.items():
                setattr(model.cfg, k, v)
            save = Path(args.masks) / args.protocol / f"{way}_s{seed}"
            if save.is_dir() and any(save.iterdir()) and not args.overwrite:  # e.g. run.py --save-masks' own run
                raise SystemExit(f"{save}: holds masks already (another run's?); --overwrite replaces them")
            save.mkdir(parents=True, exist_ok=True)
            vols = {}
            for name, tp, ref in zip(names, targets, refs):
                pred = predict_volume(model, tp.volume, norm=tp.norm)
                np.savez_compressed(save / f"{name}.npz", seg=pred.seg.astype(np.uint8))
                vols[name] = {"voxels": int((pred.seg > 0).sum())}
                if args.score:
                    vols[name]["dice"] = round(score_classes(pred.seg, ref.data, tp.volume.spacing,
                                                             proto["classes"])["dice"], 3)
            run["ways"][way] = vols
            said = " ".join(f"{n}: {v['voxels']} vox" + (f" {v['dice']:.2f}" if "dice" in v else "")
                            for n, v in vols.items())
            print(f"{args.protocol} seed {seed} {way}: {said}", flush=True)
        out["runs"][str(seed)] = run
    if args.score:
        out["dice"] = {w: round(float(np.mean([v["dice"] for r in out["runs"].values() for v in r["ways"][w].values()])), 2)
                       for w in args.ways}
        print("mean Dice:", json.dumps(out["dice"]))
    out["wall_s"] = round(time.perf_counter() - t0, 1)
    if args.json:
        atomic_write(Path(args.json), lambda tmp: Path(tmp).write_text(json.dumps(out, indent=1)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
