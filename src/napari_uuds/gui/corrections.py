"""The user's corrections of the target's segmentation: which slices, their labels, where they are kept on disk.

A slice the user edits in the segmentation layer becomes *corrected*: its labels are the user's from then on
(a prediction never paints over it) and a fine-tune learns from it (engine/finetune.py). Every change is saved
at once to the run folder (``corrections.nii.gz`` on the scan's grid and ``corrections.json`` naming the
slices), atomically, so that closing napari loses nothing; :meth:`Corrections.load` brings them back.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from ..engine.atomic import atomic_write
from ..engine.errors import UUDSError
from ..engine.review import apply_corrections, edited_slices
from ..engine.volumes import Volume, load_label, save_like

LABELS_FILE = "corrections.nii.gz"
INDEX_FILE = "corrections.json"


def default_run_folder(target_name: str) -> Path:
    """Where a target's corrections and fine-tuned weights are kept when the user chose no folder."""
    import platformdirs

    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", target_name).strip("_") or "target"
    return Path(platformdirs.user_data_dir("napari-uuds")) / "runs" / safe


class Corrections:
    """Corrected slices of one target volume (canonical voxel order, slices along ``axis``)."""

    def __init__(self, reference: Volume, axis: int, folder: Path | None = None):
        self.reference, self.axis = reference, axis
        self.labels = np.zeros(reference.data.shape, np.uint8)
        self.slices: set[int] = set()
        self.folder = folder

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.labels.shape)

    def __len__(self) -> int:
        return len(self.slices)

    def sorted(self) -> list[int]:
        return sorted(self.slices)

    def take(self, layer_data: np.ndarray, shown: np.ndarray) -> list[int]:
        """The slices where ``layer_data`` differs from ``shown`` (what the model last put there) become corrected,
        with ``layer_data``'s labels; returns them (a slice corrected again takes its newest labels)."""
        new = edited_slices(layer_data, shown, self.axis)
        if new:
            mine, theirs = np.moveaxis(self.labels, self.axis, 0), np.moveaxis(np.asarray(layer_data), self.axis, 0)
            mine[new] = theirs[new]
            self.slices.update(new)
        return new

    def apply(self, pred):
        """A prediction with the corrected slices set to the user's labels (entropy 0 there), in place."""
        return apply_corrections(pred, self.labels, self.sorted(), self.axis) if self.slices else pred

    def keep_in(self, seg: np.ndarray) -> np.ndarray:
        """``seg`` (a layer's data) with the corrected slices restored to the user's labels, in place."""
        if self.slices:
            idx = self.sorted()
            np.moveaxis(seg, self.axis, 0)[idx] = np.moveaxis(self.labels, self.axis, 0)[idx]
        return seg

    def clear(self) -> None:
        self.labels[...] = 0
        self.slices.clear()

    # -- on disk -----------------------------------------------------------------------------
    def save(self, folder: Path | None = None) -> Path:
        """Write the labels and the slice index atomically into ``folder`` (default: the run folder)."""
        folder = Path(folder or self.folder)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            save_like(self.labels, self.reference, folder / LABELS_FILE, dtype=np.uint8)
            doc = {"slices": self.sorted(), "axis": self.axis, "shape": list(self.shape),
                   "target": self.reference.name, "target_path": str(self.reference.path or "")}
            atomic_write(folder / INDEX_FILE, lambda tmp: Path(tmp).write_text(json.dumps(doc, indent=1)))
        except OSError as exc:
            raise UUDSError(f"could not save the corrections ({exc.strerror or exc})", folder) from None
        return folder

    def load(self, folder: str | Path) -> list[int]:
        """Read corrections saved by :meth:`save` (they must lie on this target's grid); returns the slices."""
        folder = Path(folder)
        index = folder / INDEX_FILE
        try:
            doc = json.loads(index.read_text())
            slices, axis = [int(i) for i in doc["slices"]], int(doc["axis"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise UUDSError(f"no readable corrections here ({type(exc).__name__})", index) from None
        if axis != self.axis:
            raise UUDSError(f"corrections drawn along axis {axis}, the model slices along axis {self.axis}", index)
        lab = load_label(folder / LABELS_FILE, None, like=self.reference, allow_empty=True)
        if any(not 0 <= i < self.shape[axis] for i in slices):
            raise UUDSError(f"corrections name slices beyond the target's {self.shape[axis]}", index)
        self.labels = lab.data.astype(np.uint8)
        self.slices = set(slices)
        return self.sorted()
