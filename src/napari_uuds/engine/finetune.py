"""Learn from a user's corrections: the corrected target slices become labelled, and a short run continues.

The run continues from the current weights with the method's own terms (the source supervised, the target
adapted as before) and one more: half of each target batch comes from the corrected slices, whose
segmentation through the target's path is supervised (``tseg`` in :func:`~.train.train`). Slices the user
did not correct stay unlabelled. After the run the volume is predicted again and the corrected slices keep
the user's labels (:func:`~.review.keep_corrections`). Settings left to ``auto`` keep what the adaptation decided
(:func:`inherit_decisions`).
"""
from __future__ import annotations

from dataclasses import replace
from typing import Iterator

import numpy as np
import torch

from .checkpoint import DECISION_RECORDS, decision_records
from .config import FINETUNE_EMA, FINETUNE_LR, FINETUNE_PARTS, FINETUNE_STEPS, LossWeights, TrainConfig
from .dataset import PreparedVolume, slab
from .errors import UUDSError
from .slices import SliceSampler, to_square
from .train import TrainControl, TrainEvent, train


def corrected_slices(target: PreparedVolume, corrections: np.ndarray, slices: list[int]
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """The corrected ``slices`` of ``target`` (indices along its slicing axis) and their labels, at model
    resolution, sliced exactly as the target's images are: (images (k, 1, S, S), labels (k, 1, S, S) uint8)."""
    shape = tuple(target.volume.data.shape)
    if tuple(corrections.shape) != shape:
        raise UUDSError(f"corrections of shape {tuple(corrections.shape)} do not lie on the target's grid {shape}")
    n = target.image.shape[0]
    bad = [i for i in slices if not 0 <= i < n]
    if bad:
        raise UUDSError(f"slice {bad[0]} does not exist: the target has {n} slices along axis {target.geom.axis}")
    if not slices:
        raise UUDSError("no corrected slice: paint on the segmentation (or name the slices) first")
    idx = sorted(set(int(i) for i in slices))
    geom, axis = target.geom, target.geom.axis
    labels = []
    for i in idx:  # one slice at a time: a large scan's labels are never resized whole
        labels.append(to_square(np.asarray(corrections[slab(axis, i, i + 1)], np.float32), axis, geom.size, fill=0.0,
                                mode="nearest", geom=geom.with_slices(1))[0])
    return target.image[torch.as_tensor(idx)], torch.cat(labels).to(torch.uint8)


def corrected_sampler(items: list[tuple[PreparedVolume, np.ndarray, list[int]]], seed: int = 0) -> SliceSampler:
    """One sampler over the corrected slices of one or more targets: ``items`` = (target, corrections on the
    target's grid, corrected slice indices). Every corrected slice counts, however little anatomy it shows."""
    pairs = [corrected_slices(t, c, s) for t, c, s in items]
    return SliceSampler([p[0] for p in pairs], [p[1] for p in pairs], fg_fraction=0.5, seed=seed, min_anatomy=0.0)


def inherit_decisions(cfg: TrainConfig, model) -> TrainConfig:
    """``cfg`` with each ``auto`` setting replaced by what the model's own adaptation decided (the source
    randomisation from the grey values, the pseudo-label refinement from the source's K): a fine-tune continues the
    run's recipe instead of measuring the scans again (K takes 1-5 s a call). A setting asked for explicitly, or a
    model with no record (weights saved before the record existed), is left to ``train``."""
    changes = {}
    for attr, field in DECISION_RECORDS.items():
        used = getattr(model, attr, None)
        if getattr(cfg, field) == "auto" and isinstance(used, dict) and used.get(field) not in (None, "auto"):
            changes[field] = used[field]
    return replace(cfg, **changes) if changes else cfg


def finetune(model, source: SliceSampler, target: SliceSampler, labelled: SliceSampler, cfg: TrainConfig,
             weights: LossWeights | None = None, control: TrainControl | None = None,
             steps: int = FINETUNE_STEPS, parts: str = FINETUNE_PARTS, lr: float | None = FINETUNE_LR,
             ema_decay: float = FINETUNE_EMA) -> Iterator[TrainEvent]:
    """``steps`` more steps from the model's current weights (a fresh optimiser), the corrections supervised.
    ``parts``: what trains (``TrainConfig.train_parts``): ``segmenter`` leaves the encoder and the translator as the
    adaptation left them (checked by ``TrainConfig``). ``lr``: the fine-tune's learning rate (None: ``cfg.lr``).
    ``ema_decay``: above 0 (the default, ``FINETUNE_EMA``, since corrections round 7 of docs/method.md) the run ends
    with the average of its weights over its second half (round 13's ``WeightAverage``; the last weights wait in
    ``model.last_iterate_state``, so that one fine-tune is scored both ways); 0 ends with the last weights.

    The warm-up is over (the target terms run from the first step); the training events count from the steps
    the model had already trained."""
    start = int(model.trained_steps)
    records = decision_records(model)
    cfg = replace(inherit_decisions(cfg, model), steps=start + steps, warmup_steps=0, ema_decay=float(ema_decay),
                  train_parts=parts, lr=cfg.lr if lr is None else float(lr))
    try:
        yield from train(model, source, target, cfg, weights, control, start_step=start, target_labelled=labelled)
    finally:  # the weights keep the record of how the decisions were made (the W1, the K), not just their outcome
        for attr, rec in records.items():
            setattr(model, attr, rec)
