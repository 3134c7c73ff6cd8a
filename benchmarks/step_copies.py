"""How much a training step copies, and from where: the GPU step's largest cost after the convolutions (issue 17).

The last GPU profile (benchmarks/results/gpu_speed.md) spent 31.5 ms of a 150-ms step in ``aten::copy_``. Until a
GPU is lent again, this measures the device-independent part on the CPU: the RN50 model at 224 px, channels-last as
on a GPU, one training step of the engine's loop (every UUDS term) under torch.profiler, and the elements each
``aten::copy_`` moves, grouped by where it was called from (``gpu_speed.origins``). Layout conversions (a plain map
fed to a channels-last convolution), the gradients of slices and in-place activations' saved inputs show here as
they would on a GPU; autocast's dtype casts do not (the CPU step runs in float32), nor does the CPU convolutions'
own reordering of their weights (``to`` under ``ConvolutionBackward0``), which is kept apart in the total.

    .venv/bin/python benchmarks/step_copies.py --label after     # about a minute on 2 cores

Writes ``benchmarks/results/step_copies_LABEL.json``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as qb  # noqa: E402
from gpu_speed import origins  # noqa: E402

from napari_uuds.engine.atomic import atomic_write  # noqa: E402
from napari_uuds.engine.config import ModelConfig, TrainConfig  # noqa: E402
from napari_uuds.engine.dataset import samplers  # noqa: E402
from napari_uuds.engine.model import UUDS  # noqa: E402
from napari_uuds.engine.train import train  # noqa: E402

#: the CPU convolutions' own weight reordering (mkldnn), which a GPU step does not have
CPU_ONLY = "_to_copy/to | backward of ConvolutionBackward0"


def elements(e) -> float:
    shape = e.input_shapes[0] if e.input_shapes else []
    return float(np.prod(shape)) if shape else 0.0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(qb.ROOT.parent / "shared" / "data"))
    ap.add_argument("--label", required=True)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    proto = qb.PROTOCOLS["A1"]
    one = {**proto, "train": proto["train"][:1], "test": proto["test"][:1]}
    cfg = ModelConfig.for_arch("rn50", image_size=args.size, class_names=proto["classes"],
                               source_modality=proto["source"].upper())
    data = Path(args.data)
    src = qb._load(data, one, one["train"], proto["source"], cfg, True)
    tgt = qb._load(data, one, one["test"], proto["target"], cfg, False)
    torch.manual_seed(0)
    model = UUDS(cfg, clip_weights=None, seed=0).to(memory_format=torch.channels_last)  # as train() did on a GPU
    # (every weight: the figures in results/step_copies_*.json; the decoders stay plain there since 11da269)
    s, t = samplers(src, tgt, 0.5, 0)
    gen = train(model, s, t, TrainConfig(steps=100, batch_size=args.batch, warmup_steps=0, device="cpu"), log_every=1)
    # one step first (lazy set-up stays out of the profile); the second lies before the weight average starts (step 50)
    while next(gen).kind != "step":
        pass
    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True, with_stack=True) as prof:
        while next(gen).kind != "step":
            pass
    wall = time.perf_counter() - t0
    gen.close()
    every = origins(prof.events(), elements, 1, names=("aten::copy_",), top=10**6, field="m_elements", scale=1e-6)
    rows = every[:30]  # largest first
    total = sum(r["m_elements"] for r in every)
    cpu_only = sum(r["m_elements"] for r in every if r["from"].startswith(CPU_ONLY))
    doc = {"label": args.label, "commit": qb.git_commit() or None, "model": "rn50", "size": args.size,
           "batch": args.batch, "memory_format": "channels_last", "dtype": "float32 (CPU)",
           "command": "python benchmarks/step_copies.py " + " ".join(sys.argv[1:] if argv is None else argv),
           "copy_calls": int(sum(r["calls"] for r in every)), "m_elements_copied": round(total, 2),
           "m_elements_cpu_convolution_reorder": round(cpu_only, 2),
           "m_elements_copied_as_on_a_gpu": round(total - cpu_only, 2), "profiled_step_s": round(wall, 1),
           "origins": rows}
    print(f"{args.label}: {doc['copy_calls']} copies, {total:.1f} M elements in one step at batch {args.batch} "
          f"({cpu_only:.1f} M of them the CPU convolutions' reordering; {total - cpu_only:.1f} M otherwise)")
    for r in rows[:15]:
        print(f"  {r['m_elements']:8.2f} M  {r['calls']:6.0f}  {r['from']}")
    out = Path(args.out or qb.RESULTS / f"step_copies_{args.label}.json")
    atomic_write(out, lambda tmp: Path(tmp).write_text(json.dumps(doc, indent=1)))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
