"""Which corrected slice teaches the fine-tune: one adapted model (C seed 0, 600 steps, round 24's default), one
corrected slice at a time, the default fine-tune (the segmenter, 50 steps) with fine-tune seeds 0-3; the whole
volume scored as corrections.py scores it. Also each slice's error before the fine-tune (false positives, false
negatives) and its review score. Target labels play the user and score; they choose nothing.

    python benchmarks/results/issue14/finetune_parts/slice_choice.py ADAPTED_DIR [SEEDS] > slice_choice_C_seed0.json

ADAPTED_DIR: the seed's adapted model as `corrections.py --adapted DIR` saves it (DIR/C_s0_600).
"""
import copy
import json
import sys
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2]))
from corrections import dice_of  # noqa: E402
from run import PROTOCOLS, load_protocol, protocol_config  # noqa: E402

from napari_uuds.engine.checkpoint import load_checkpoint  # noqa: E402
from napari_uuds.engine.config import TrainConfig  # noqa: E402
from napari_uuds.engine.finetune import corrected_sampler  # noqa: E402
from napari_uuds.engine.infer import predict_volume  # noqa: E402
from napari_uuds.engine.job import AdaptJob  # noqa: E402
from napari_uuds.engine.review import keep_corrections, rank_slices, slice_scores  # noqa: E402

torch.set_num_threads(1)
folder, seeds = Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 4
proto = PROTOCOLS["C"]
cfg = protocol_config(proto)
ctx = load_protocol(HERE.parents[3].parent / "shared" / "data", proto, cfg)
sources, targets, refs = ctx["sources"], ctx["targets"], ctx["refs"]
model, _ = load_checkpoint(folder, expect=cfg)
adapted, done = copy.deepcopy(model.state_dict()), model.trained_steps
t, r = targets[0], refs[0]
p = predict_volume(model, t.volume, norm=t.norm)
seg, ref = np.moveaxis(p.seg > 0, cfg.axis, 0), np.moveaxis(r.data > 0, cfg.axis, 0)
score, _ = slice_scores(p.entropy, p.seg, cfg.axis, 0.5)
out = {"adapted": str(folder), "dice_0": dice_of(p.seg, r, t.volume.spacing, proto["classes"]),
       "review_order": [s.index for s in rank_slices(p.entropy, p.seg, cfg.axis, 0.5)[:8]],
       "false_positives": int((seg & ~ref).sum()), "false_negatives": int((~seg & ref).sum()), "slices": {}}
for s in (25, 40, 7, 59):
    row = {"fp": int((seg[s] & ~ref[s]).sum()), "fn": int((~seg[s] & ref[s]).sum()), "true": int(ref[s].sum()),
           "review_score": round(float(score[s]), 1), "dice": [], "voxels": []}
    for fs in range(seeds):
        model.load_state_dict(adapted)
        model.trained_steps = done
        tcfg = TrainConfig(method="uuds", steps=600, batch_size=8, seed=fs, device="cpu", threshold=0.5)
        for _ in AdaptJob(cfg, tcfg, sources, targets, model=model).finetune(corrected_sampler([(t, r.data, [s])], fs)):
            pass
        keep = keep_corrections(np.zeros_like(r.data), r.data, [s], cfg.axis) > 0
        q = keep_corrections(predict_volume(model, t.volume, norm=t.norm, keep=keep).seg, r.data, [s], cfg.axis)
        row["dice"].append(round(dice_of(q, r, t.volume.spacing, proto["classes"]), 2))
        row["voxels"].append(int((q > 0).sum()))
    out["slices"][str(s)] = row
    print(s, row, file=sys.stderr, flush=True)
print(json.dumps(out, indent=1))
