"""Checkpoints: weights in safetensors plus a JSON config, written atomically; compatibility check.

A checkpoint folder holds ``model.safetensors`` and ``config.json`` (model config, training config,
loss weights, normalisation of the source, package versions), and after a CLI run ``optimizer.pt``. Each file
is written to a temporary name in the same folder, then renamed, so an interrupted save never leaves a
half-written file. The three are one set: each save draws a ``save_id`` that all of them carry, and the
weights also carry a copy of the config. A save interrupted between two renames is therefore detected and
resolved on reading: the weights and their own copy of the config are used (never new weights under an old
config), and an ``optimizer.pt`` of another save is refused for resuming. Non-finite weights are never saved
nor loaded. The whole save runs with Ctrl-C and SIGTERM held back (``signals.deferred``).
"""
from __future__ import annotations

import json
import uuid
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors import safe_open
from safetensors.torch import load_model, save_model

from .atomic import atomic_write
from .config import ModelConfig, from_dict, to_dict
from .errors import UUDSError
from .model import UUDS
from .signals import deferred

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
OPTIMIZER = "optimizer.pt"
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


def nonfinite(tensors: dict[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors that hold a NaN or an Inf."""
    return [k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]


#: what a run's ``auto`` settings decided, as ``train`` records it on the model (saved with the weights, restored on
#: loading: a fine-tune continues with the same recipe, ``finetune.inherit_decisions``): the model's attribute -> the
#: TrainConfig field it decides
DECISION_RECORDS = {"randomise_used": "randomise", "pseudo_refine_used": "pseudo_refine"}


def decision_records(model) -> dict[str, dict]:
    return {k: getattr(model, k) for k in DECISION_RECORDS if isinstance(getattr(model, k, None), dict)}


def save_checkpoint(model: UUDS, folder: str | Path, extra: dict[str, Any] | None = None,
                    overwrite: bool = False, optimizer_state: dict | None = None) -> Path:
    """Write weights, config and (when given) the optimizer state as one set (see the module's docstring).

    Without ``optimizer_state`` an ``optimizer.pt`` left in the folder by an earlier save is removed: it belongs
    to other weights. Ctrl-C and SIGTERM wait until the set is written."""
    folder = Path(folder)
    wpath, cpath, opath = folder / WEIGHTS, folder / CONFIG, folder / OPTIMIZER
    if not overwrite:
        for p in (wpath, cpath, opath):
            if p.exists():
                raise UUDSError("already exists; pass --overwrite (or choose another folder)", p)
    bad = nonfinite(model.state_dict())
    if bad:
        raise UUDSError(f"the weights hold NaN or Inf values ({len(bad)} tensors, e.g. {bad[0]}); not saved", folder)
    save_id = uuid.uuid4().hex
    meta = {"format": FORMAT_VERSION, "save_id": save_id, "model": to_dict(model.cfg), "versions": versions(),
            "trained_steps": int(model.trained_steps), "domain_prompt_text": model.domain_prompt.text}
    meta.update(decision_records(model))
    # what the weights are: a run's average over its second half (train.WeightAverage.report), or None
    meta["weight_average"] = model.weight_average
    meta.update(extra or {})
    text = json.dumps(meta, indent=2)
    folder.mkdir(parents=True, exist_ok=True)
    with deferred():
        if optimizer_state is not None:
            atomic_write(opath, lambda tmp: torch.save({"save_id": save_id, "optimizer": optimizer_state}, tmp))
        elif opath.exists():
            opath.unlink()
        # safetensors' own model API: shared tensors (aliases) are stored once, and found again on loading
        atomic_write(wpath, lambda tmp: save_model(model, tmp, metadata={"format": "napari-uuds", "save_id": save_id,
                                                                          "config": text}))
        atomic_write(cpath, lambda tmp: Path(tmp).write_text(text))
    return folder


def _weights_metadata(wpath: Path) -> dict[str, str]:
    try:
        with safe_open(str(wpath), "pt") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError):
        return {}  # unreadable: load_checkpoint says so


def load_optimizer_state(folder: str | Path, meta: dict[str, Any]) -> dict | None:
    """The optimizer state saved with these weights (None when there is none); refused when from another save."""
    opath = Path(folder) / OPTIMIZER
    if not opath.exists():
        return None
    try:
        doc = torch.load(opath, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UUDSError(f"unreadable optimizer state ({type(exc).__name__})", opath) from None
    if isinstance(doc, dict) and "optimizer" in doc and "save_id" in doc:
        if meta.get("save_id") and doc["save_id"] != meta["save_id"]:
            raise UUDSError("comes from another save than the weights (an interrupted save?); delete it to resume "
                            "with a fresh optimizer", opath)
        return doc["optimizer"]
    return doc  # written before save ids


def read_config(folder: str | Path) -> dict[str, Any]:
    folder = Path(folder)
    cpath = folder / CONFIG
    if not folder.exists():
        raise UUDSError("weights folder not found", folder)
    if not cpath.exists():
        raise UUDSError(f"no {CONFIG} here: not a napari-uuds weights folder", folder)
    wmeta = _weights_metadata(folder / WEIGHTS) if (folder / WEIGHTS).is_file() else {}
    try:
        meta = json.loads(cpath.read_text())
        if wmeta.get("config") and wmeta.get("save_id") != meta.get("save_id"):
            # a save interrupted between its renames: the weights are newer than config.json; their own copy wins
            warnings.warn(f"{cpath}: from another save than {WEIGHTS} (an interrupted save?); using the copy of the "
                          "config stored with the weights", stacklevel=2)
            meta = json.loads(wmeta["config"])
        meta["model"].setdefault("pass_bn", False)  # written before pass-specific statistics existed
        meta["model"].setdefault("tta", "none")  # written before test-time augmentation existed
        meta["model"].setdefault("fine_skips", False)  # written before round 17's full-resolution skips existed
        meta["model"].setdefault("refine", "none")  # written before round 18's boundary refinement existed
        meta["model"].setdefault("objects", "all")  # written before round 23's largest object existed
        meta["model"].setdefault("smooth_z", "none")  # written before round 25's through-plane smoothing existed
        if isinstance(meta.get("loss_weights"), dict):  # written before TCSA followed its authors (issue 18)
            meta["loss_weights"].setdefault("proto_form", "infonce")
            meta["loss_weights"].setdefault("adv", 0.0)
        if isinstance(meta.get("train"), dict):  # written before round 16 inverted GIN's slices (a fine-tune's recipe)
            meta["train"].setdefault("randomise_invert", 0.0)
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
    model = UUDS(cfg, clip_weights=None)
    try:
        missing, unexpected = load_model(model, str(wpath), strict=False)
    except (SafetensorError, OSError, ValueError) as exc:
        raise UUDSError(f"unreadable weights ({exc})", wpath) from None
    except RuntimeError as exc:  # load_state_dict: tensors of other shapes
        first = str(exc).strip().splitlines()[-1].strip()
        raise UUDSError(f"weights from an incompatible config ({first})", wpath) from None
    if missing or unexpected:
        what = (sorted(missing)[:2] or sorted(unexpected)[:2])
        raise UUDSError(f"weights from an incompatible config ({len(missing)} missing, {len(unexpected)} unexpected "
                        f"tensors; e.g. {what})", wpath)
    bad = nonfinite(model.state_dict())
    if bad:
        raise UUDSError(f"{len(bad)} tensors hold NaN or Inf values (e.g. {bad[0]}): damaged weights", wpath)
    if meta.get("domain_prompt_text"):
        model.domain_prompt.set_text(meta["domain_prompt_text"])
    model.trained_steps = int(meta.get("trained_steps", 0))
    for key in DECISION_RECORDS:  # what the run's "auto" settings decided (a fine-tune keeps it)
        if isinstance(meta.get(key), dict):
            setattr(model, key, meta[key])
    if isinstance(meta.get("weight_average"), dict):  # saved again, the weights still say they are an average
        model.weight_average = meta["weight_average"]
    return model.to(device).eval(), meta
