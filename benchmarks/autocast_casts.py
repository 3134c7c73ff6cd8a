"""What CUDA's bfloat16 autocast casts in a training step, counted on the CPU (issue 17).

The last GPU profile (benchmarks/results/gpu_speed.md) spent 31.5 ms of a 150-ms step in ``aten::copy_``, most of
it dtype casts, which a CPU run cannot show: the CPU step runs in float32 and CPU autocast follows other lists.
Here the training forward of the RN50 model (224 px, channels-last, the engine's defaults) runs on *fake* CUDA
tensors (``FakeTensorMode``: shapes, dtypes and strides, no data, no kernels) with CUDA's bfloat16 autocast switched
on directly, so every cast that autocast inserts on a GPU is dispatched and counted, with the elements it moves and
where in the model it comes from. Autocast's own policy (which op runs in bfloat16, which in float32) is the
library's, not a copy of it.

What is counted:
* ``forward``: every ``aten::_to_copy`` that changes the dtype in the model's forward under autocast (the engine's
  ``net(xs, xt, ...)`` in ``train``), weight casts included (once per forward: autocast caches them).
* ``backward``: the autograd engine cannot run on fake CUDA tensors without a GPU, so the backward is counted from
  the forward: a cast whose input requires a gradient has one cast of that gradient back in the backward
  (``ToCopyBackward0``), of the same number of elements.
* Not counted: the losses, which run in float32 outside autocast on the model's (small) outputs; and the casts
  inside ``scaled_dot_product_attention`` (the CLIP attention pool, the text transformer): fake tensors can only
  take its math backend, which computes in float32, where a GPU runs the flash or memory-efficient kernel on the
  bfloat16 inputs. Their forward elements are recorded apart (``not_counted_sdpa_math_forward_m_elements``).

    .venv/bin/python benchmarks/autocast_casts.py --label after      # a few seconds

Writes ``benchmarks/results/autocast_casts_LABEL.json``. ``PYTHONPATH=<other checkout>/src`` counts another
version of the engine with this same script.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import subprocess
import traceback
import warnings
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode

ROOT = Path(__file__).resolve().parents[1]

#: frames that name a place in the model (the innermost of these is a cast's origin)
_OURS = ("napari_uuds", "open_clip")


def to_fake_cuda(module: torch.nn.Module, channels_last: bool = False) -> torch.nn.Module:
    """Move ``module``'s parameters and buffers to the fake CUDA device of the active ``FakeTensorMode``, in place
    (``Module.to`` cannot swap a parameter for a tensor subclass, nor, later, one fake parameter for another, so
    ``UUDS.to_channels_last`` cannot run here). 4-d weights channels-last where asked: what is cast does not depend
    on the layout."""
    for m in module.modules():
        for name, p in list(m._parameters.items()):
            if p is not None:
                f = p.detach().to("cuda")
                if channels_last and f.dim() == 4:
                    f = f.contiguous(memory_format=torch.channels_last)
                m._parameters[name] = torch.nn.Parameter(f, requires_grad=p.requires_grad)
        for name, b in list(m._buffers.items()):
            if b is not None:
                m._buffers[name] = b.to("cuda")
    return module


@contextlib.contextmanager
def fake_cuda():
    """Fake tensors whose device is CUDA, on a machine with or without a GPU."""
    with warnings.catch_warnings():  # torch.autocast("cuda", enabled=False) warns that CUDA is not available
        warnings.filterwarnings("ignore", message=".*CUDA is not available.*")
        with FakeTensorMode(allow_non_fake_inputs=True) as mode:
            yield mode


@contextlib.contextmanager
def cuda_autocast(dtype: torch.dtype = torch.bfloat16):
    """CUDA autocast switched on as ``torch.autocast("cuda", dtype)`` does on a GPU (the context manager itself
    disables autocast where torch sees no CUDA device). Nested ``torch.autocast("cuda", enabled=False)`` regions
    inside still turn it off and back on."""
    prev = torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda")
    torch.set_autocast_enabled("cuda", True)
    torch.set_autocast_dtype("cuda", dtype)
    torch.autocast_increment_nesting()
    try:
        yield
    finally:
        if torch.autocast_decrement_nesting() == 0:
            torch.clear_autocast_cache()
        torch.set_autocast_enabled("cuda", prev[0])
        torch.set_autocast_dtype("cuda", prev[1])


@functools.lru_cache(maxsize=1)
def _package_dirs() -> dict[str, str]:
    """The folders of the packages whose frames name a place in the model (by where they are imported from, not by
    a name that a virtual environment's own path might also contain)."""
    import importlib

    dirs = {}
    for name in _OURS:
        mod = importlib.import_module(name)
        dirs[name] = os.path.join(os.path.dirname(os.path.abspath(mod.__file__)), "")
    return dirs


def _origin() -> str:
    dirs = _package_dirs()
    frames = traceback.extract_stack()[:-3]  # less this module's own frames
    for f in reversed(frames):
        path = os.path.abspath(f.filename)
        for name, folder in dirs.items():
            if path.startswith(folder):
                rel = (name + "/" + path[len(folder):]).replace(os.sep, "/")
                return f"{rel}:{f.lineno} {f.line.strip() if f.line else ''}".strip()
    return "(outside the model)"


class _InAttention:
    """Marks the dispatches made inside ``F.scaled_dot_product_attention`` (patched over while on; the attention
    pool's ``F.multi_head_attention_forward`` and open_clip's attention call it through ``torch.nn.functional``).
    Without a GPU, fake tensors can only take its math backend, which computes a bfloat16 attention in float32 (casts
    in and out); on a GPU the flash or memory-efficient kernel runs on the bfloat16 inputs, with no cast. Those casts
    are counted apart."""

    def __init__(self):
        self.depth = 0
        self._real = None

    def _wrapped(self, *args, **kwargs):
        self.depth += 1
        try:
            return self._real(*args, **kwargs)
        finally:
            self.depth -= 1

    def __enter__(self):
        self._real = F.scaled_dot_product_attention
        F.scaled_dot_product_attention = self._wrapped
        return self

    def __exit__(self, *exc):
        F.scaled_dot_product_attention = self._real


class CastCounter(TorchDispatchMode):
    """Counts the ``aten::_to_copy`` calls that change a tensor's dtype: elements, direction, whether the input
    requires a gradient (then the backward casts its gradient back), where in the model each comes from, and
    whether it casts a weight (a leaf that requires a gradient: autocast casts each once a forward) or a map.

    ``rows``: (from dtype, to dtype, requires grad, shape, origin, "weight" | "map") -> calls and elements."""

    def __init__(self):
        super().__init__()
        self.rows: dict[tuple, dict] = {}
        self.attention = _InAttention()
        self.sdpa_math = {"calls": 0, "elements": 0}  # the math backend's casts (see _InAttention): not a GPU's
        self.outputs: dict[str, torch.dtype] = {}

    def __enter__(self):
        self.attention.__enter__()
        return super().__enter__()

    def __exit__(self, *exc):
        out = super().__exit__(*exc)
        self.attention.__exit__(*exc)
        return out

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func is torch.ops.aten._to_copy.default and isinstance(out, torch.Tensor) and out.dtype != args[0].dtype:
            x = args[0]
            if self.attention.depth:
                self.sdpa_math["calls"] += 1
                self.sdpa_math["elements"] += out.numel()
                return out
            kind = "weight" if (x.is_leaf and x.requires_grad) else "map"  # a parameter, or anything computed
            key = (str(x.dtype).replace("torch.", ""), str(out.dtype).replace("torch.", ""), bool(x.requires_grad),
                   tuple(x.shape), _origin(), kind)
            row = self.rows.setdefault(key, {"calls": 0, "elements": 0})
            row["calls"] += 1
            row["elements"] += out.numel()
        return out

    def summary(self, top: int = 25) -> dict:
        fwd = sum(r["elements"] for r in self.rows.values())
        bwd = sum(r["elements"] for k, r in self.rows.items() if k[2])
        by_dir: dict[str, float] = defaultdict(float)
        by_origin: dict[str, float] = defaultdict(float)
        for (src, dst, grad, _shape, where, kind), r in self.rows.items():
            by_dir[f"{kind}s {src}->{dst}"] += r["elements"] / 1e6
            by_origin[where] += r["elements"] * (2 if grad else 1) / 1e6
        rows = sorted(self.rows.items(), key=lambda kv: -kv[1]["elements"])[:top]
        return {
            "forward_m_elements": round(fwd / 1e6, 2), "backward_m_elements": round(bwd / 1e6, 2),
            "step_m_elements": round((fwd + bwd) / 1e6, 2), "casts_forward": sum(r["calls"] for r in self.rows.values()),
            "forward_by_direction_m": {k: round(v, 2) for k, v in sorted(by_dir.items())},
            "not_counted_sdpa_math_forward_m_elements": round(self.sdpa_math["elements"] / 1e6, 2),
            "step_by_origin_m": {k: round(v, 2) for k, v in sorted(by_origin.items(), key=lambda kv: -kv[1])[:top]},
            "largest": [{"from": k[0], "to": k[1], "requires_grad": k[2], "shape": list(k[3]), "origin": k[4], "kind": k[5],
                         "calls": r["calls"], "m_elements": round(r["elements"] / 1e6, 2)} for k, r in rows]}


def count_training_forward(model: torch.nn.Module, batch: int, size: int, *, dd_flow: str | None,
                           detach_target_seg: bool = False, channels_last: bool = True) -> CastCounter:
    """The casts of one training forward (``UUDS.forward`` as ``train`` calls it at a step with every term on);
    ``counter.outputs``: the dtype of each tensor the forward returned."""
    counter = CastCounter()
    with fake_cuda():
        to_fake_cuda(model, channels_last)
        model.train()
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        xs, xt = (torch.empty(batch, 1, size, size, device="cuda").contiguous(memory_format=fmt) for _ in range(2))
        with cuda_autocast(), counter:
            out = model(xs, xt, dd_flow, None, detach_target_seg, False)
    counter.outputs = {k: v.dtype for k, v in vars(out).items() if isinstance(v, torch.Tensor)}
    return counter


def main(argv: list[str] | None = None) -> int:
    from napari_uuds.engine.atomic import atomic_write
    from napari_uuds.engine.config import ModelConfig, TrainConfig
    from napari_uuds.engine.model import UUDS

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--label", required=True)
    ap.add_argument("--arch", default="rn50")
    ap.add_argument("--batch", type=int, default=32, help="slice pairs (the GPU profile's batch)")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    cfg = ModelConfig.for_arch(args.arch, image_size=args.size, class_names=("tumour",), source_modality="FLAIR")
    tcfg = TrainConfig()
    torch.manual_seed(0)
    model = UUDS(cfg, clip_weights=None, seed=0)
    counter = count_training_forward(model, args.batch, args.size, dd_flow=tcfg.dd_flow,
                                     detach_target_seg=tcfg.useg_flow == "segmenter")
    import napari_uuds
    engine = Path(napari_uuds.__file__).parent
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=engine).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "."], capture_output=True, text=True,
                           cwd=engine).stdout.strip()
    doc = {"label": args.label, "engine_commit": (commit + ("+changes" if dirty else "")) or None,
           "torch": torch.__version__, "arch": args.arch, "size": args.size, "batch": args.batch,
           "memory_format": "channels_last", "autocast": "cuda bfloat16 (fake CUDA tensors on the CPU)",
           "dd_flow": tcfg.dd_flow, "useg_flow": tcfg.useg_flow, **counter.summary()}
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"autocast_casts_{args.label}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda p: Path(p).write_text(json.dumps(doc, indent=1) + "\n"))
    print(f"{args.label}: {doc['casts_forward']} casts in the forward, {doc['forward_m_elements']:.1f} M elements; "
          f"with the backward's {doc['backward_m_elements']:.1f} M, {doc['step_m_elements']:.1f} M a step "
          f"(batch {args.batch}, {args.size} px)")
    for k, v in list(doc["step_by_origin_m"].items())[:12]:
        print(f"  {v:9.1f} M  {k}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
