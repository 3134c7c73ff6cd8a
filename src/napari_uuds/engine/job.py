"""The adapt job: build -> train -> predict, the one sequence the CLI, the widget and the benchmarks run.

Each caller validates and loads its inputs its own way (files and options; napari layers; a benchmark protocol)
into :class:`~.dataset.PreparedVolume` lists and configs, then hands them to an :class:`AdaptJob`. What the job
does with them is the same everywhere: the model is built from a seeded generator, the samplers are drawn from the
same seed, training is the engine's generator of :class:`~.train.TrainEvent`, and prediction streams a volume
at a time. Writing the results stays with the caller (files atomically for the CLI, layers for the widget).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

import torch

from .config import FINETUNE_EMA, FINETUNE_LR, FINETUNE_PARTS, FINETUNE_STEPS, LossWeights, ModelConfig, TrainConfig
from .dataset import PreparedVolume, samplers
from .distributed import SINGLE, DistContext
from .infer import VolumePrediction, iter_predict_volume, run_to_end
from .model import UUDS
from .slices import SliceSampler
from .train import TrainControl, TrainEvent, train


def build_model(cfg: ModelConfig, seed: int, clip_weights: str | None = None) -> UUDS:
    """A fresh model whose random initialisation is drawn from ``seed`` (the same model for the same seed)."""
    torch.manual_seed(seed)
    return UUDS(cfg, clip_weights=clip_weights, seed=seed)


@dataclass
class AdaptJob:
    model_cfg: ModelConfig
    train_cfg: TrainConfig
    sources: list[PreparedVolume]
    targets: list[PreparedVolume]
    loss_weights: LossWeights = field(default_factory=LossWeights)
    #: resolved CLIP weights (a path or a cached name), None: random initialisation
    clip_weights: str | None = None
    #: an existing model (resumed, loaded or trained before) to continue instead of building one
    model: UUDS | None = None
    #: a distributed run's context (engine/distributed.py): this rank's batches, DDP training
    dist: DistContext = SINGLE

    def build(self) -> UUDS:
        """The model the job trains: the one given, else a fresh one from ``train_cfg.seed``."""
        if self.model is None:
            self.model = build_model(self.model_cfg, self.train_cfg.seed, self.clip_weights)
        return self.model

    def samplers(self) -> tuple[SliceSampler, SliceSampler]:
        t = self.train_cfg
        return samplers(self.sources, self.targets, t.fg_fraction, self.dist.seed(t.seed), t.contrast_invert,
                        t.zoom)

    def train(self, control: TrainControl | None = None, start_step: int | None = None,
              optimizer_state: dict | None = None, log_every: int = 1,
              source_sampler: SliceSampler | None = None) -> Iterator[TrainEvent]:
        """The engine's training generator on this job's data (``start_step``: default the model's own steps)."""
        model = self.build()
        src, tgt = self.samplers()
        start = model.trained_steps if start_step is None else start_step
        yield from train(model, source_sampler or src, tgt, self.train_cfg, self.loss_weights, control,
                         start_step=start, optimizer_state=optimizer_state, log_every=log_every, dist_ctx=self.dist)

    def finetune(self, labelled: SliceSampler, control: TrainControl | None = None,
                 steps: int = FINETUNE_STEPS, parts: str = FINETUNE_PARTS, lr: float | None = FINETUNE_LR,
                 ema_decay: float = FINETUNE_EMA) -> Iterator[TrainEvent]:
        """``steps`` more steps from the model's weights with the corrected slices ``labelled`` supervised
        (engine/finetune.py), on this job's source and targets; ``lr`` None: this job's ``train_cfg.lr``."""
        from .finetune import finetune

        yield from finetune(self.build(), *self.samplers(), labelled, self.train_cfg, self.loss_weights, control,
                            steps=steps, parts=parts, lr=lr, ema_decay=ema_decay)

    def predict_steps(self, index: int, progress=None, domain_prompt: str | None = None, keep_own: bool = False
                      ) -> Iterator[tuple[int, int]]:
        """Segment target ``index`` (a generator of (slices done, slices in all) returning the prediction); with
        ``keep_own`` the prediction keeps the network's own entropy, which the review reads (infer.VolumePrediction)."""
        t = self.targets[index]
        return (yield from iter_predict_volume(self.build(), t.volume, domain_prompt=domain_prompt, progress=progress,
                                               norm=t.norm, keep_own=keep_own))

    def predict(self, index: int, progress=None, domain_prompt: str | None = None,
                keep_own: bool = False) -> VolumePrediction:
        return run_to_end(self.predict_steps(index, progress, domain_prompt, keep_own))
