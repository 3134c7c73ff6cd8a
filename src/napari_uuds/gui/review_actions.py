"""The widget's review and corrections actions (a part of :class:`~.controller.UUDSController`).

Review: rank the target's slices by uncertainty around the object (engine/review.py) and walk them. Corrections:
the slices the user edits in the segmentation layer become the user's (gui/corrections.py), are saved as they are
made, and a fine-tune learns from them (engine/finetune.py). Every action is a plain synchronous method that the
tests drive; the widget runs :meth:`ReviewActions.finetune_events` in a worker.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

from ..engine import checkpoint as ckpt
from ..engine.errors import UUDSError
from ..engine.finetune import corrected_sampler
from ..engine.job import AdaptJob
from ..engine.infer import VolumePrediction
from ..engine.review import SliceScore, rank_slices, review_entropy
from ..engine.train import TrainEvent
from .names import OUTPUT_LAYERS


class ReviewActions:
    """Mixed into the controller, whose state (viewer, params, status, model, target, prediction, corrections,
    ``_shown_seg``, ``_data``) these methods read and update."""

    def collect_corrections(self) -> list[int]:
        """Slices where the segmentation layer differs from what the model last showed become corrected slices (the
        user's from now on: never predicted over) and are saved to the run folder; returns the new ones."""
        name = OUTPUT_LAYERS["seg"]
        shown = getattr(self, "_shown_seg", None)
        c = self.corrections
        if c is None or shown is None or name not in self.viewer.layers:
            return []
        layer = self.viewer.layers[name]
        if tuple(layer.data.shape) != shown.shape or shown.shape != c.shape:
            return []
        data = np.asarray(layer.data)
        new = c.take(data, shown)
        if new:
            self._shown_seg = np.array(data, copy=True)
            self._ranking = None
            try:
                folder = c.save()
            except UUDSError as exc:  # kept in memory and in the layer; the note stays until a save succeeds
                self.status.guard_note = f"warning: {exc} (Export the segmentation to keep them)"
                return new
            if "could not save the corrections" in self.status.guard_note:
                self.status.guard_note = ""
            self.status.message = (f"{len(c)} corrected slice(s) kept as yours and saved to {folder}; "
                                   "Fine-tune on corrections learns from them")
        return new

    def review(self) -> list[SliceScore]:
        """The review's order of the target's slices (engine/review.py: coverage of the uncertainty around the object,
        each pick at the local peak of the score),
        corrected ones left out (and counted as covering their neighbours)."""
        if self.prediction is None or self.target is None:
            raise UUDSError("segment the whole target first (Adapt & segment, or Re-predict volume): the review "
                            "ranks its slices by uncertainty")
        self.collect_corrections()
        done = self.corrections.slices if self.corrections is not None else set()
        self._ranking = rank_slices(review_entropy(self.prediction), self.prediction.seg, self.target.geom.axis,
                                    self.params.threshold, exclude=done)
        self._review_pos = -1
        return self._ranking

    def goto_uncertain(self, step: int = 1) -> SliceScore | None:
        """Show the next (``step`` 1) or previous (-1) slice of the review, with its rank and score in the status."""
        if self._ranking is None:
            self.review()
        ranking = self._ranking or []
        if not ranking:
            self.status.message = "no uncertain slice left to review"
            return None
        self._review_pos = (self._review_pos + step) % len(ranking) if self._review_pos >= 0 else \
            (0 if step > 0 else len(ranking) - 1)
        s = ranking[self._review_pos]
        self.show_slice(s.index)
        if OUTPUT_LAYERS["uncertain"] in self.viewer.layers:
            self.viewer.layers[OUTPUT_LAYERS["uncertain"]].visible = True  # the region to look at, highlighted
        n_done = len(self.corrections) if self.corrections is not None else 0
        # the yellow region's voxels on this slice (the entropy shown; the score reads the network's own, round 5)
        shown = int((np.take(self.prediction.entropy, s.index, self.target.geom.axis) >= self.params.threshold).sum())
        self.status.message = (f"uncertain slice {self._review_pos + 1} of {len(ranking)}: slice {s.index} (score "
                               f"{s.score:.1f}, {shown} uncertain voxels); {n_done} corrected so far")
        return s

    def show_slice(self, index: int) -> None:
        """Move the viewer to slice ``index`` of the target along the model's axis."""
        axis = self.target.geom.axis
        data_point = [s / 2.0 for s in self.target.volume.data.shape]
        data_point[axis] = float(index)
        if self.target_layer is not None:
            world = np.asarray(self.target_layer.data_to_world(data_point), float)
        else:
            world = np.asarray(data_point) * np.asarray(self.target.volume.spacing)
        nd = self.viewer.dims.ndim
        self.viewer.dims.set_point(list(range(nd - 3, nd)), tuple(world[-3:]))

    def begin_finetune(self, source, source_labels, target) -> list[int]:
        """Main thread, before :meth:`finetune_events`: the source as for training, and the corrected slices (edits
        not yet collected included). Raises UUDSError when there is nothing to learn from."""
        if self.model is None:
            raise UUDSError("no model yet: adapt first (or load weights), then correct slices and fine-tune")
        self.prepare(source, source_labels, target)
        if self.model is None:
            raise UUDSError("the class names or the model size changed since the model was trained: fine-tuning "
                            "needs the model's own settings (load its weights again)")
        self.collect_corrections()
        if not self.corrections:
            raise UUDSError("no corrected slice yet: correct the segmentation on a few slices (next uncertain slice "
                            "shows where), then fine-tune")
        self._finetune_set = (self.corrections.labels.copy(), self.corrections.sorted())
        return self._finetune_set[1]

    def finetune_events(self) -> Iterator[TrainEvent]:
        """Worker thread: a short run from the current weights with the corrected slices supervised."""
        if self._finetune_set is None or self._data is None:
            raise UUDSError("begin_finetune first")
        labels, slices = self._finetune_set
        tcfg = self.train_config()
        self._new_control(tcfg)
        job = AdaptJob(self.model.cfg, tcfg, *self._data, model=self.model)
        lab = corrected_sampler([(self.target, labels, slices)], tcfg.seed)
        yield from job.finetune(lab, self.control, self.params.finetune_steps, self.params.finetune_parts,
                                self.params.finetune_lr)

    def save_run(self) -> Path:
        """The fine-tuned weights and the corrections they learnt from, into the run folder (weights/)."""
        c = self.corrections
        if c is None or self.model is None:
            raise UUDSError("nothing to save yet")
        folder = c.save()
        extra = {"saved_from": "napari widget, fine-tuned on corrections",
                 "finetune": {"slices": c.sorted(), "axis": c.axis, "corrections": str(folder / "corrections.nii.gz"),
                              "target": c.reference.name}}
        ckpt.save_checkpoint(self.model, folder / "weights", extra, overwrite=True)
        return folder

    def finetune_on_corrections(self, source, source_labels, target) -> VolumePrediction:
        """Synchronously: fine-tune on the corrected slices, segment the volume again (corrected slices kept), save."""
        self.begin_finetune(source, source_labels, target)
        pred = self.run_synchronously(self.finetune_events())
        self.save_run()
        return pred

    def load_corrections(self, folder: str | Path) -> list[int]:
        """Corrections saved earlier (the run folder) back onto this target; the segmentation shows them."""
        if self.corrections is None:
            raise UUDSError("choose the target the corrections were drawn on, and segment it first")
        slices = self.corrections.load(folder)
        self._ranking = None
        if self.prediction is not None:
            self._show_prediction()
        elif OUTPUT_LAYERS["seg"] in self.viewer.layers:
            layer = self.viewer.layers[OUTPUT_LAYERS["seg"]]
            if tuple(layer.data.shape) == self.corrections.shape:
                self.corrections.keep_in(layer.data)
                layer.refresh()
                self._shown_seg = np.array(layer.data, copy=True)
        self.status.message = f"{len(slices)} corrected slice(s) loaded from {folder}"
        return slices
