"""Round 20's K (docs/method.md): do a protocol's source labels follow the source image's edges?

For each protocol the source's training slices are prepared as training prepares them (the model's square frame)
and :func:`napari_uuds.engine.refine.edge_agreement` refines the binary label and the label with its boundary moved
2 pixels out and in; K is the mean Dice change towards the label. ``pseudo_refine="auto"`` refines the target's
pseudo labels where K > 0. Only source images and source labels are read: no target image, no target label.

    python benchmarks/edge_agreement.py --data ../shared/data --sample sample_data/cord \
        --json benchmarks/results/round20/edge_agreement.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as bench  # noqa: E402

from napari_uuds.engine.dataset import prepare_volume  # noqa: E402
from napari_uuds.engine.refine import resolve_pseudo_refine  # noqa: E402
from napari_uuds.engine.slices import SliceSampler  # noqa: E402
from napari_uuds.engine.volumes import load_label, load_volume  # noqa: E402


def agreement(sources) -> dict:
    t = time.perf_counter()
    sampler = SliceSampler([p.image for p in sources], [p.label for p in sources])
    mode, k = resolve_pseudo_refine("auto", sampler)
    return {"decision": mode, **k.record(), "seconds": round(time.perf_counter() - t, 1),
            "volumes": [p.volume.name for p in sources]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(bench.ROOT.parent / "shared" / "data"))
    ap.add_argument("--protocols", nargs="*", default=["A1", "A2", "A1m", "C"], choices=sorted(bench.PROTOCOLS))
    ap.add_argument("--sample", default=None, help="the shipped sample's folder (t2 + t2_seg, the README's source)")
    ap.add_argument("--json", default=None, help="write the figures here as well")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    data, rows = Path(args.data), {}
    for name in args.protocols:
        proto = bench.PROTOCOLS[name]
        cfg = bench.protocol_config(proto)
        sources = bench._load(data, proto, proto["train"], proto["source"], cfg, True)
        rows[name] = agreement(sources)
        if len(sources) > 1:  # the source-validation runs train on all but the last subject
            rows[f"{name} (source validation's training subjects)"] = agreement(sources[:-1])
    if args.sample:
        folder = Path(args.sample)
        cfg = bench.protocol_config(bench.PROTOCOLS["C"])
        vol = load_volume(folder / "t2.nii.gz")
        lab = load_label(folder / "t2_seg.nii.gz", 1, like=vol, binarize=True)
        rows["sample (README)"] = agreement([prepare_volume(vol, cfg.axis, cfg.image_size, lab)])
    for name, r in rows.items():
        print(f"{name:48s} K {r['k']:+.4f}  keep {r['keep']:+.4f}  grow {r['grow']:+.4f}  shrink {r['shrink']:+.4f}"
              f"  slices {r['slices']:4d}  -> {r['decision']}", flush=True)
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        doc = {"commit": bench.git_commit(), "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
               "rule": "docs/method.md, round 20: pseudo_refine=auto refines where K > 0", "rows": rows}
        out.write_text(json.dumps(doc, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
