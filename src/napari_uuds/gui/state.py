"""Parameters and status as psygnal evented dataclasses: the widget binds to them, the controller reads them.

:class:`Params` is also the configuration object of a run: :meth:`Params.model_config` and
:meth:`Params.train_config` turn the widget's fields into the engine's configs (one home for every default: the
engine's ``config``), and :meth:`Params.adopt` takes the fields of loaded weights back."""
from __future__ import annotations

from dataclasses import dataclass, field

from psygnal import evented

from ..engine.config import (ARCHS, CLIP_WEIGHTS, DEFAULT_DOMAIN_PROMPT, DEVICES, FINETUNE_LR, FINETUNE_PARTS,
                             FINETUNE_STEPS, PREDICTION_SETTINGS, ModelConfig, TrainConfig)

_T, _M = TrainConfig(), ModelConfig()  # one home for every default: the engine's config


@evented
@dataclass
class Params:
    arch: str = ARCHS[0]
    clip_weights: str = CLIP_WEIGHTS[0]
    device: str = DEVICES[0]
    steps: int = _T.steps
    batch_size: int = _T.batch_size
    lr: float = _T.lr
    image_size: int = 0  # 0: the architecture's default
    #: foreground class name(s), comma-separated for a multi-class labels layer (value k = k-th name)
    class_name: str = "object"
    #: one free-text description per class (TCSA's text relations); empty entries: the class name
    class_descriptions: list = field(default_factory=list)
    method: str = _T.method  # uuds | tcsa | uuds+tcsa
    #: source randomisation: auto | gin | none (engine/randomise.py; auto: the engine's default)
    randomise: str = _T.randomise
    #: the target's pseudo labels refined on its edges while it trains: none | edges | auto (engine/refine.py)
    pseudo_refine: str = _T.pseudo_refine
    text_encoder: str = _T.text_encoder
    source_modality: str = "source"
    domain_prompt: str = DEFAULT_DOMAIN_PROMPT
    threshold: float = _T.threshold
    #: test-time augmentation of every prediction: none | d8 (the eight rotations and mirrorings; engine/infer.py)
    tta: str = _M.tta
    #: boundary refinement of every prediction: none | edges (the image's own edges move it; engine/refine.py)
    refine: str = _M.refine
    #: what of every predicted volume's object is kept: all | largest (its largest connected piece, and every piece the
    #: user painted) | auto (the same where that piece holds at least 80 % of the prediction); engine/components.py,
    #: rounds 23-24 of docs/method.md
    objects: str = _M.objects
    #: a slice's probabilities smoothed with its neighbours' before the mask: none | binomial (engine/zsmooth.py,
    #: round 25 of docs/method.md)
    smooth_z: str = _M.smooth_z
    axis: int = _M.axis
    preview_every: int = 20
    seed: int = _T.seed
    #: steps of one fine-tune on the user's corrections (engine/finetune.py)
    finetune_steps: int = FINETUNE_STEPS
    #: what a fine-tune trains: segmenter (the encoder and translator as the adaptation left them) | all
    finetune_parts: str = FINETUNE_PARTS
    #: a fine-tune's learning rate (engine/finetune.py; FINETUNE_LR, else the adaptation's default)
    finetune_lr: float = FINETUNE_LR if FINETUNE_LR is not None else _T.lr
    #: where corrections and fine-tuned weights are kept ("": a folder per target under the user data folder)
    run_folder: str = ""

    def class_names(self) -> list[str]:
        return [n.strip() for n in self.class_name.split(",") if n.strip()] or ["object"]

    def descriptions(self) -> list[str]:
        names = self.class_names()
        given = list(self.class_descriptions) + [""] * len(names)
        return [d.strip() or n for d, n in zip(given, names)]

    def model_config(self, target_modality: str | None = None) -> ModelConfig:
        """The network these parameters ask for (TCSA alone has no prompts: its text enters through the class
        relations and its text-conditioned head, which the TCSA methods use; ``target_modality``: the target layer's
        name, for the head's target class texts)."""
        prompts = self.method != "tcsa"
        return ModelConfig.for_arch(self.arch, image_size=self.image_size or None, axis=self.axis,
                                    class_names=self.class_names(), class_descriptions=self.descriptions(),
                                    source_modality=self.source_modality, domain_prompt=self.domain_prompt,
                                    use_domain_prompt=prompts, use_seg_prompt=prompts, tta=self.tta,
                                    refine=self.refine, objects=self.objects, smooth_z=self.smooth_z,
                                    text_head=self.method != "uuds", target_modality=target_modality or "target")

    def train_config(self) -> TrainConfig:
        """The training run these parameters ask for."""
        return TrainConfig(steps=self.steps, batch_size=self.batch_size, lr=self.lr, seed=self.seed,
                           device=self.device, threshold=self.threshold, preview_every=self.preview_every,
                           method=self.method, text_encoder=self.text_encoder, randomise=self.randomise,
                           pseudo_refine=self.pseudo_refine)

    def adopt(self, cfg: ModelConfig, train: dict) -> None:
        """The fields that loaded weights fix (their network, classes and threshold) take the weights' values."""
        self.arch, self.class_name, self.axis = cfg.arch, ", ".join(cfg.class_names), cfg.axis
        self.class_descriptions = list(cfg.class_descriptions)
        self.source_modality = cfg.source_modality
        for key in PREDICTION_SETTINGS:  # test-time augmentation, refinement, objects kept, through-plane smoothing
            setattr(self, key, getattr(cfg, key))
        self.threshold = float(train.get("threshold", self.threshold))


@evented
@dataclass
class Status:
    running: bool = False
    step: int = 0
    total: int = 0
    message: str = ""
    losses: list = field(default_factory=list)  # total loss per step
    history: list = field(default_factory=list)  # every term's loss per step (dicts with "step"), for the plot
    #: persistent notes that stay on screen until their cause goes away (unlike ``message``, rewritten every
    #: step): what the CLIP weights are and what that means for quality; the guards' last warning.
    weights_note: str = ""
    guard_note: str = ""
