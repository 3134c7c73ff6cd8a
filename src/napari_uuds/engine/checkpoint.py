"""Checkpoints: weights in safetensors plus a JSON config, written atomically; compatibility check.

A checkpoint folder holds ``model.safetensors`` and ``config.json`` (model config, training config,
loss weights, normalisation of the source, package versions). Each file is written to a temporary
name in the same folder, then renamed, so an interrupted save never leaves a half-written file.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .atomic import atomic_write
from .config import ModelConfig, from_dict, to_dict
from .errors import UUDSError
from .model import UUDS

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
FORMAT_VERSION = 1


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for pkg in ("napari-uuds", "torch", "open_clip_torch", "nibabel", "numpy"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def state_dict_for_save(model: UUDS) -> dict[str, torch.Tensor]:
    """Unique tensors, contiguous, on the CPU (safetensors refuses shared storage)."""
    out, seen = {}, set()
    for k, v in model.state_dict().items():
        key = (v.data_ptr(), tuple(v.shape), v.dtype)
        if v.numel() and key in seen:
            continue
        seen.add(key)
        out[k] = v.detach().to("cpu").contiguous().clone()
    return out


def save_checkpoint(model: UUDS, folder: str | Path, extra: dict[str, Any] | None = None,
                    overwrite: bool = False) -> Path:
    folder = Path(folder)
    wpath, cpath = folder / WEIGHTS, folder / CONFIG
    if not overwrite:
        for p in (wpath, cpath):
            if p.exists():
                raise UUDSError("already exists; pass --overwrite (or choose another folder)", p)
    meta = {"format": FORMAT_VERSION, "model": to_dict(model.cfg), "versions": versions(),
            "trained_steps": int(getattr(model, "trained_steps", 0)), "domain_prompt_text": model.domain_prompt.text}
    meta.update(extra or {})
    tensors = state_dict_for_save(model)
    atomic_write(wpath, lambda tmp: save_file(tensors, tmp, metadata={"format": "napari-uuds"}))
    atomic_write(cpath, lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=2)))
    return folder


def read_config(folder: str | Path) -> dict[str, Any]:
    folder = Path(folder)
    cpath = folder / CONFIG
    if not folder.exists():
        raise UUDSError("weights folder not found", folder)
    if not cpath.exists():
        raise UUDSError(f"no {CONFIG} here: not a napari-uuds weights folder", folder)
    try:
        meta = json.loads(cpath.read_text())
        from_dict(ModelConfig, meta["model"])
    except (ValueError, KeyError, TypeError, OSError) as exc:  # JSON, encoding, folder-named-config, ...
        raise UUDSError(f"unreadable config ({type(exc).__name__}: {exc})", cpath) from None
    return meta


def load_checkpoint(folder: str | Path, device: str | torch.device = "cpu", expect: ModelConfig | None = None
                    ) -> tuple[UUDS, dict[str, Any]]:
    """Build the model its config describes and load its weights (strictly: every tensor, every shape)."""
    folder = Path(folder)
    meta = read_config(folder)
    cfg = from_dict(ModelConfig, meta["model"])
    if expect is not None:
        diffs = [f"{k}: checkpoint {getattr(cfg, k)!r} vs {getattr(expect, k)!r}"
                 for k in ("arch", "image_size", "class_names", "n_ctx", "use_domain_prompt", "use_seg_prompt")
                 if getattr(cfg, k) != getattr(expect, k)]
        if diffs:
            raise UUDSError("weights from an incompatible config (" + "; ".join(diffs) + ")", folder)
    wpath = folder / WEIGHTS
    if not wpath.exists():
        raise UUDSError(f"{WEIGHTS} missing", folder)
    try:
        tensors = load_file(str(wpath))
    except (SafetensorError, OSError, ValueError) as exc:
        raise UUDSError(f"unreadable weights ({exc})", wpath) from None
    model = UUDS(cfg, clip_weights=None)
    own = model.state_dict()
    missing = [k for k in own if k not in tensors and not _is_alias(model, k, tensors)]
    bad = [f"{k} {tuple(tensors[k].shape)} vs {tuple(own[k].shape)}" for k in tensors
           if k in own and tensors[k].shape != own[k].shape]
    unexpected = [k for k in tensors if k not in own]
    if missing or bad or unexpected:
        what = (bad[:2] or missing[:2] or unexpected[:2])
        raise UUDSError(f"weights from an incompatible config ({len(bad)} shape mismatches, {len(missing)} missing, "
                        f"{len(unexpected)} unexpected tensors; e.g. {what})", wpath)
    model.load_state_dict(tensors, strict=False)
    if meta.get("domain_prompt_text"):
        model.domain_prompt.set_text(meta["domain_prompt_text"])
    model.trained_steps = int(meta.get("trained_steps", 0))
    return model.to(device).eval(), meta


def _is_alias(model: UUDS, key: str, tensors: dict) -> bool:
    """A state-dict entry that shares storage with a saved one (saved once)."""
    sd = model.state_dict()
    t = sd[key]
    return any(k in tensors and sd[k].data_ptr() == t.data_ptr() and sd[k].shape == t.shape for k in sd if k != key)
