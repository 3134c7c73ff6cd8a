"""The output side of the adapt, predict and finetune commands: plan the output files, check they are free and
writable, write predictions and metrics atomically."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import atomic_write
from .checkpoint import CONFIG, WEIGHTS
from .errors import UUDSError
from .infer import VolumePrediction
from .metrics import summarise
from .volumes import Volume, save_like, volume_name

OUTPUT_KINDS = ("seg", "entropy", "synthetic", "certain")


def unique_names(paths: list[str | Path]) -> list[str]:
    """Output stems for input files; when two files share a name, the parent folder is prefixed."""
    names = [volume_name(p) for p in paths]
    out = []
    for p, n in zip(paths, names):
        if names.count(n) > 1:
            n = f"{Path(p).resolve().parent.name}_{n}"
        out.append(n)
    if len(set(out)) != len(out):
        raise UUDSError("two inputs would write the same output names; rename one of them")
    return out


def prediction_paths(out: Path, name: str) -> dict[str, Path]:
    return {k: out / f"{name}_{k}.nii.gz" for k in OUTPUT_KINDS}


def planned_outputs(out: str | Path, names: list[str], weights: bool, metrics: bool) -> list[Path]:
    out = Path(out)
    paths: list[Path] = []
    if weights:
        paths += [out / WEIGHTS, out / CONFIG, out / "optimizer.pt"]
    for n in names:
        paths += list(prediction_paths(out, n).values())
    if metrics:
        paths.append(out / "metrics.json")
    return paths


def check_outputs_free(paths: list[Path], overwrite: bool) -> None:
    """Refuse to replace anything without ``overwrite``: checked before any work starts."""
    if overwrite:
        return
    taken = [p for p in paths if p.exists()]
    if taken:
        more = f" (and {len(taken) - 1} more)" if len(taken) > 1 else ""
        raise UUDSError(f"output already exists{more}; pass --overwrite to replace", taken[0])
    out = paths[0].parent if paths else None
    if out is not None and out.exists() and not out.is_dir():
        raise UUDSError("output path exists and is not a folder", out)


def check_writable(out: str | Path) -> None:
    """Fail before any work if ``out`` cannot be created or written (a file on the way, no permission)."""
    import os
    import tempfile

    out = Path(out)
    probe_root = out
    while not probe_root.exists():
        probe_root = probe_root.parent
    if not probe_root.is_dir():
        raise UUDSError(f"cannot create the output folder: {probe_root} is a file", out)
    if not os.access(probe_root, os.W_OK | os.X_OK):
        raise UUDSError("output folder is not writable", probe_root)
    if out.exists():
        try:
            fd, tmp = tempfile.mkstemp(prefix=".write-test.", dir=out)
            os.close(fd)
            os.unlink(tmp)
        except OSError as exc:
            raise UUDSError(f"output folder is not writable ({exc.strerror})", out) from None


def write_prediction(pred: VolumePrediction, ref: Volume, out: str | Path, name: str, chi: float) -> dict[str, Path]:
    """Write seg, entropy, synthetic and certain mask on ``ref``'s grid, each atomically."""
    paths = prediction_paths(Path(out), name)
    if not (np.isfinite(pred.entropy).all() and np.isfinite(pred.synthetic).all()):
        raise UUDSError(f"the model's outputs for {name} are not finite numbers (damaged weights?); nothing written", out)
    save_like(pred.seg, ref, paths["seg"], dtype=np.uint8)
    save_like(pred.entropy, ref, paths["entropy"], dtype=np.float32)
    save_like(pred.synthetic, ref, paths["synthetic"], dtype=np.float32)
    save_like(pred.certain(chi).astype(np.uint8), ref, paths["certain"], dtype=np.uint8)
    return paths


def write_metrics(path: Path, rows: dict[str, dict[str, Any]], extra: dict[str, Any] | None = None) -> dict[str, Any]:
    doc = {"volumes": rows, "mean": summarise(list(rows.values()))}
    doc.update(extra or {})
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(doc, indent=2)))
    return doc
