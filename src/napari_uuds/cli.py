"""``napari-uuds`` command line: adapt, predict, evaluate. A thin door onto the engine."""
from __future__ import annotations

import argparse
import math
import sys
import warnings

from .engine.config import (ARCHS, DD_FLOWS, DD_FORMS, DD_SCALES, DEVICES, FINETUNE_EMA, FINETUNE_LR, FINETUNE_PARTS, FINETUNE_STEPS,
                            IMAGE_SIZE_DEFAULT,
                            LossWeights, METHODS, PROTO_FORMS, ModelConfig, RANDOMISERS, RANDOMISE_INTO, RECIPES,
                            TEXT_ENCODERS, TRAIN_PARTS, TrainConfig, USEG_ABSENT, USEG_FLOWS, USEG_FORMS, PSEUDO_PRIORS, PSEUDO_REFINES,
                            REFINES, OBJECTS, SMOOTH_ZS, TTAS, WARMUP_STEPS)
from .engine.errors import UUDSError

from .engine.volumes import parse_label_map  # noqa: F401  (re-exported: the option's parser)
from .exitcodes import EXIT_INTERRUPTED, EXIT_USER_ERROR  # noqa: F401


def _positive_int(s: str) -> int:
    v = int(s)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {v}")
    return v


def _unit_float(s: str) -> float:
    v = float(s)
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"must lie in [0, 1], not {v}")
    return v


def _nonneg_float(s: str) -> float:
    v = float(s)
    if not (math.isfinite(v) and v >= 0.0):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, not {v}")
    return v


def _positive_float(s: str) -> float:
    v = float(s)
    if not (math.isfinite(v) and v > 0.0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, not {v}")
    return v


def _decay(s: str) -> float:
    v = float(s)
    if not (math.isfinite(v) and 0.0 <= v < 1.0):
        raise argparse.ArgumentTypeError(f"must lie in [0, 1), not {v}")
    return v


def _seed(s: str) -> int:
    v = int(s)
    if not 0 <= v < 2 ** 32:
        raise argparse.ArgumentTypeError(f"must lie in 0 .. 4294967295, not {v}")
    return v


def _image_size(s: str) -> int | str:
    if s == "auto":
        return s
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be auto or a number of pixels, not {s!r}") from None
    if v < 64 or v % 32:
        raise argparse.ArgumentTypeError(f"must be auto or a multiple of 32 of at least 64, not {v}")
    return v


def _mm_per_pixel(s: str) -> float | str:
    if s == "auto":
        return s
    v = float(s)
    if not (math.isfinite(v) and v >= 0.0):
        raise argparse.ArgumentTypeError(f"must be auto, 0 or a positive number of mm, not {v}")
    return v


def build_parser() -> argparse.ArgumentParser:
    T, M = TrainConfig(), ModelConfig()  # the defaults live in the engine's config; --help shows them
    p = argparse.ArgumentParser(
        prog="napari-uuds",
        description="UUDS unsupervised cross-domain segmentation: train on labelled source scans, adapt to "
                    "unlabelled target scans of another contrast, segment the target.")
    p.add_argument("--version", action="version", version=f"%(prog)s {__import__('napari_uuds').__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="{adapt,predict,finetune,evaluate,gui}")

    a = sub.add_parser("adapt", help="train on source (+labels) and target, then segment every target",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                       description="Train UUDS on labelled source volumes and unlabelled target volumes, save the "
                                   "weights, and write segmentation, entropy and synthetic-source volumes for each "
                                   "target on its own grid.")
    a.add_argument("--source", action="append", required=True, metavar="IMG", help="source image (NIfTI); repeat for several")
    a.add_argument("--source-label", action="append", required=True, metavar="LBL",
                   help="label volume of each --source, in the same order")
    a.add_argument("--target", action="append", required=True, metavar="IMG", help="target image (NIfTI); repeat for several")
    a.add_argument("--target-label", action="append", default=None, metavar="LBL",
                   help="optional target labels, for evaluation only (never used in training); writes metrics.json")
    a.add_argument("--out", required=True, metavar="DIR", help="output folder")
    a.add_argument("--model", choices=list(ARCHS), default=ARCHS[0],
                   help="rn50: OpenAI CLIP ResNet-50 at 224 px (GPU); tiny: 5.8 M parameters at 128 px (CPU demos, tests)")
    a.add_argument("--clip-weights", default="auto", metavar="auto|openai|PATH|none",
                   help="CLIP weights: auto (openai when cached or reachable, else random init), openai (error if "
                        "unavailable), a checkpoint file or local-dir:DIR, or none (random initialisation)")
    a.add_argument("--steps", type=_positive_int, default=T.steps,
                   help="training steps (default %(default)s: the tiny model on the sample, about 5 minutes on 2 CPU cores; "
                        "use thousands for rn50 on a GPU)")
    a.add_argument("--batch-size", type=_positive_int, default=T.batch_size, help="slice pairs per step")
    a.add_argument("--lr", type=_positive_float, default=T.lr, help="Adam learning rate")
    a.add_argument("--weight-decay", type=_nonneg_float, default=T.weight_decay, help="Adam weight decay")
    a.add_argument("--device", choices=list(DEVICES), default=DEVICES[0], help="where to train")
    a.add_argument("--seed", type=_seed, default=T.seed, help="random seed (runs are reproducible on the same device)")
    a.add_argument("--threshold", type=_unit_float, default=T.threshold,
                   help="chi of Eq. 6/7: entropy (normalised to [0, 1]) below which a pixel counts as certain")
    a.add_argument("--domain-prompt", default=None, metavar="TEXT",
                   help='domain prompt; {source} stands for --source-modality (default "A photo of a {source}")')
    a.add_argument("--source-modality", default=None, metavar="NAME",
                   help="source contrast named in the domain prompt (default: the first source file's name)")
    a.add_argument("--target-modality", default=None, metavar="NAME",
                   help="the target contrast's name, in the class texts of TCSA's text head (default: the first "
                        "target's file name)")
    a.add_argument("--class-name", action="append", default=None, metavar="NAME",
                   help="foreground class name(s) for the segmentation prompt; label value k is the k-th name "
                        "(default: one class, 'object')")
    a.add_argument("--class-description", action="append", default=None, metavar="TEXT",
                   help="free-text description of each class, in --class-name order (TCSA's text relations; "
                        "default: the class names)")
    a.add_argument("--binarize-labels", action="store_true",
                   help="treat every non-zero label value as the one class (e.g. BraTS whole tumour)")
    a.add_argument("--label-map", default=None, metavar="V:K,...",
                   help="map label values to classes before training and scoring, e.g. BraTS sub-regions "
                        "'1:1,3:1,2:2,4:3' (necrosis/non-enhancing, oedema, enhancing); unlisted values -> 0")
    a.add_argument("--method", choices=list(METHODS), default=T.method,
                   help="uuds: the paper's losses; tcsa: TCSA-UDA's vision-language covariance and prototype "
                        "alignment terms on the same network (no prompts); uuds+tcsa: both")
    a.add_argument("--text-encoder", choices=list(TEXT_ENCODERS), default=T.text_encoder,
                   help="encoder of the class descriptions for tcsa: minilm (pretrained, extra [tcsa]), clip (the "
                        "model's text tower), auto (minilm when installed)")
    a.add_argument("--axis", type=int, choices=[0, 1, 2], default=M.axis,
                   help="slicing axis in canonical RAS orientation: 0 sagittal, 1 coronal, 2 axial")
    a.add_argument("--image-size", type=_image_size, default=IMAGE_SIZE_DEFAULT, metavar="auto|N",
                   help="slice side in pixels: N, or auto = the scans' own size where every slice is smaller than the "
                        "model's frame (tiny; round 26 of docs/method.md); the model's frame otherwise (224 rn50, "
                        f"128 tiny; default: {IMAGE_SIZE_DEFAULT or 'the model frame'})")
    a.add_argument("--warmup-steps", type=int, default=T.warmup_steps, help=f"steps before the target terms join (default -1: min({WARMUP_STEPS}, steps/4))")
    a.add_argument("--dd-warmup", action=argparse.BooleanOptionalAction, default=T.dd_warmup,
                   help="hold L_DD (Eq. 1-2) back during the warm-up too, so that the warm-up is pure source training")
    a.add_argument("--contrast-invert", type=_unit_float, default=0.0, metavar="P",
                   help="augmentation: invert the contrast of source slices with probability P (helps when the "
                        "target inverts tissue contrasts, e.g. CSF bright in T2, dark in T1)")
    a.add_argument("--teacher-decay", type=float, default=None, metavar="D",
                   help="pseudo labels from a mean teacher, an EMA of the weights with decay D from the warm-up on "
                        "(0: the network labels its own output, the paper; default: the recipe's)")
    a.add_argument("--zoom", type=float, default=None, metavar="Z",
                   help="augmentation: magnify each source slice by a factor drawn log-uniformly in [1/Z, Z] "
                        "(1: off; default: the recipe's)")
    a.add_argument("--proto-form", choices=list(PROTO_FORMS), default=LossWeights().proto_form,
                   help="TCSA's prototype term: centre (the authors' compiled 'Ours': source and target class centres "
                        "pulled together), mpcl (their margin pixel-to-centre contrast), infonce (this project's first "
                        "reading)")
    a.add_argument("--alpha", type=_nonneg_float, default=LossWeights().alpha, metavar="W",
                   help="weight of L_DD, Eq. 1-2, after --dd-scale (see docs/method.md, reading 5)")
    a.add_argument("--dd-scale", choices=list(DD_SCALES), default=LossWeights().dd_scale,
                   help="L_DD's scale before --alpha: one (default) is the equation as printed (gradients 1/tau = 14 times "
                        "larger than the other terms'); tau multiplies it by its temperature (gradients of order 1)")
    a.add_argument("--dd-flow", choices=list(DD_FLOWS), default="shared",
                   help="L_DD's gradients: shared (everything, the paper's letter) or split (Eq. 1 trains the domain "
                        "head and the prompt, Eq. 2 the translator against the frozen encoder; keeps the synthetic "
                        "source's grey values near the source's)")
    a.add_argument("--recipe", choices=list(RECIPES), default="uuds",
                   help="uuds: the engine's defaults (source randomisation where the contrasts differ, L_DD in its "
                        "contrastive form, nothing "
                        "outside the body, collapse and drift guards); paper: the paper's letter (none of these). "
                        "The four options below override single settings of the recipe")
    a.add_argument("--randomise", choices=list(RANDOMISERS), default=None,
                   help="source randomisation: auto (the uuds recipe's: gin only where the target's grey values lie "
                        "far from the source's, W1 > 0.3, e.g. T2 -> T1), gin (random shallow conv nets scramble the "
                        "source's contrast on the translator's input; the clean slice is L_id's target) or none "
                        "(default: the recipe's)")
    a.add_argument("--randomise-p", type=_unit_float, default=T.randomise_p, metavar="P",
                   help="fraction of source slices that are randomised")
    a.add_argument("--randomise-invert", type=_unit_float, default=None, metavar="P",
                   help="of the randomised slices, the fraction first inverted (bright <-> dark) on the translator's "
                        "input, so that it learns to bring either polarity back to the source's (default: the "
                        "recipe's)")
    a.add_argument("--dd-form", choices=list(DD_FORMS), default=None,
                   help="L_DD (Eq. 1-2): infonce (-log softmax of the similarities; fades once the domains are apart) "
                        "or printed (the paper's letter; never fades) (default: the recipe's)")
    a.add_argument("--useg-absent", choices=list(USEG_ABSENT), default=None,
                   help="L_useg (Eq. 8) for a class the batch's certain pseudo label lacks: smooth (the smoothed Dice "
                        "pushes its probabilities to 0) or skip (it adds nothing) (default: the recipe's)")
    a.add_argument("--useg-form", choices=list(USEG_FORMS), default=None,
                   help="L_useg (Eq. 8): dice (the soft Dice over the certain pixels, as printed) or ce_balanced "
                        "(cross-entropy averaged per pseudo-labelled class) (default: the recipe's)")
    a.add_argument("--useg-flow", choices=list(USEG_FLOWS), default=None,
                   help="what L_useg trains: all (every module, the translator too) or segmenter (the synthetic "
                        "source is detached first, so the translator cannot erase the object; one more encoder pass) "
                        "(default: the recipe's)")
    a.add_argument("--pseudo-prior", choices=list(PSEUDO_PRIORS), default=None,
                   help="size prior on the target's pseudo label: none (Eq. 6-7 as printed), band (the batch's "
                        "pseudo-labelled object held within 0.5-2 times the source's object fraction of the body) or "
                        "floor (raised to 0.5 times where it holds less, never cut) "
                        "(default: the recipe's; uuds: band, paper: none)")
    a.add_argument("--pseudo-refine", choices=list(PSEUDO_REFINES), default=None,
                   help="the target's pseudo label refined on the slice's own edges before L_useg reads it: none, or "
                        "edges (a random walker moves its boundary within 3 pixels; round 19), or auto (edges where the "
                        "source's labels follow its edges, decided before training; round 21) "
                        "(default: the recipe's; uuds: auto, paper: none)")
    a.add_argument("--randomise-into", choices=list(RANDOMISE_INTO), default=T.randomise_into,
                   help="where GIN's randomised slice enters: translator (its input; L_id asks for the clean slice), "
                        "segmenter (L_id asks for the randomised slice) or both (and a second draw on the "
                        "reconstruction the segmenter reads)")
    a.add_argument("--body-mask", action=argparse.BooleanOptionalAction, default=None,
                   help="never call the scan's background (air) foreground (default: the recipe's)")
    a.add_argument("--guard", action=argparse.BooleanOptionalAction, default=None,
                   help="hold the target terms back, with a warning, while the predicted target object volume "
                        "leaves 0.25-4 times the source's or the synthetic source drifts (default: the recipe's)")
    a.add_argument("--pass-bn", action=argparse.BooleanOptionalAction, default=None,
                   help="keep separate batch-norm statistics for raw and translated slices in the image encoder "
                        "(default: the recipe's; on in uuds, chosen by round 4 of docs/method.md's rule)")
    a.add_argument("--refine", choices=list(REFINES), default=None,
                   help="boundary refinement after prediction: edges lets the target's own edges move the mask's "
                        "boundary within 2 voxels (round 18 of docs/method.md) (default: the recipe's)")
    a.add_argument("--objects", choices=list(OBJECTS), default=None,
                   help="what of each predicted volume's object is kept: all; largest: its largest connected piece "
                        "only (round 23 of docs/method.md: it helps the cord a little and costs BraTS FLAIR -> T1c "
                        "much); auto: the largest piece where it holds at least 80 %% of the volume's prediction, "
                        "every piece otherwise (round 24) (default: the recipe's: auto in uuds, all in paper)")
    a.add_argument("--smooth-z", choices=list(SMOOTH_ZS), default=None,
                   help="binomial: each slice's class probabilities averaged with its neighbours' (1/4, 1/2, 1/4) "
                        "along the slicing axis before the mask is taken, where the slices lie no more than twice "
                        "the in-plane voxel apart (round 25 of docs/method.md) (default: the recipe's)")
    a.add_argument("--fine-skips", action=argparse.BooleanOptionalAction, default=None,
                   help="let the translator's image decoder read the slice itself at half and full resolution "
                        "(round 17 of docs/method.md) (default: the recipe's)")
    a.add_argument("--ema-decay", type=float, default=None, metavar="D",
                   help="end with an exponential moving average of the weights over the run's second half, with this "
                        "decay (0: off, the last step's weights) (default: the recipe's)")
    a.add_argument("--tta", choices=list(TTAS), default=None,
                   help="test-time augmentation: d8 averages the class probabilities over the slice's eight rotations "
                        "and mirrorings (eight times the inference work); saved with the weights (default: the "
                        "recipe's)")
    a.add_argument("--mm-per-pixel", type=_mm_per_pixel, default=0.0, metavar="auto|0|MM",
                   help="physical scale: slice every volume at MM mm per pixel, centred on the body, so that an "
                        "object has the same size in pixels in source and target; auto: the scale at which every "
                        "body of the run fits; 0: fit each slice to the frame")
    a.add_argument("--no-domain-prompt", action="store_true", help="ablation: no domain prompt (and no L_DD)")
    a.add_argument("--no-text-head", action="store_true",
                   help="ablation (TCSA methods): the static segmentation head instead of the text-conditioned one")
    a.add_argument("--no-seg-prompt", action="store_true", help="ablation: no segmentation prompt (no SAM, no L_BSCL)")
    a.add_argument("--no-uncertainty", action="store_true", help="ablation: no uncertainty-masked target loss (Eq. 8)")
    a.add_argument("--resume", default=None, metavar="DIR", help="continue training from a weights folder")
    a.add_argument("--overwrite", action="store_true", help="replace existing outputs in --out")
    a.add_argument("--quiet", action="store_true", help="no progress bar")

    r = sub.add_parser("predict", help="segment images with saved weights",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                       description="Segment target images with weights written by 'adapt'.")
    r.add_argument("--weights", required=True, metavar="DIR", help="folder with model.safetensors and config.json")
    r.add_argument("--image", action="append", required=True, metavar="IMG|DIR|GLOB",
                   help="image to segment, a folder of NIfTI files or a quoted glob pattern ('scans/**/*t1*.nii.gz'); "
                        "repeat for several. A cohort streams through the model one volume at a time; a file that "
                        "cannot be read is reported and skipped (exit code 2 once the others are written)")
    r.add_argument("--out", required=True, metavar="DIR", help="output folder")
    r.add_argument("--threshold", type=_unit_float, default=None, help="chi for the certain mask (default: the training one)")
    r.add_argument("--domain-prompt", default=None, metavar="TEXT", help="override the saved domain prompt")
    r.add_argument("--tta", choices=list(TTAS), default=None,
                   help="override the saved test-time augmentation (none, or d8: eight rotations and mirrorings)")
    r.add_argument("--refine", choices=list(REFINES), default=None,
                   help="override the saved boundary refinement (none, or edges: the image's own edges move the "
                        "boundary within 2 voxels)")
    r.add_argument("--objects", choices=list(OBJECTS), default=None,
                   help="override what of each volume's object is kept (all; largest: its largest connected "
                        "piece only; auto: the largest where it holds at least 80 %% of the volume's prediction)")
    r.add_argument("--smooth-z", choices=list(SMOOTH_ZS), default=None,
                   help="override the saved through-plane smoothing (none, or binomial: each slice's probabilities "
                        "averaged with its neighbours')")
    r.add_argument("--device", choices=list(DEVICES), default=DEVICES[0])
    r.add_argument("--batch-size", type=_positive_int, default=16,
                   help="slices per forward pass (batches run across volume boundaries)")
    r.add_argument("--overwrite", action="store_true", help="replace existing outputs in --out")
    r.add_argument("--quiet", action="store_true")

    f = sub.add_parser("finetune", help="learn from corrected slices of a target, then segment it again",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                       description="Continue training saved weights with a user's corrected target slices supervised "
                                   "(the slices of --corrections that hold a labelled voxel, or --slices), then "
                                   "segment the target again: the corrected slices keep the user's labels. The source "
                                   "scans come from the weights' config.json unless given.")
    f.add_argument("--weights", required=True, metavar="DIR", help="folder written by adapt (or an earlier finetune)")
    f.add_argument("--image", required=True, metavar="IMG", help="the target image the corrections were drawn on")
    f.add_argument("--corrections", required=True, metavar="MASK|DIR",
                   help="label volume on the image's grid holding the corrected slices (e.g. the edited segmentation), "
                        "or a run folder of the widget (corrections.nii.gz + corrections.json, whose slices count)")
    f.add_argument("--slices", type=int, nargs="+", default=None, metavar="I",
                   help="indices (along the model's slicing axis) of the corrected slices; default: every slice of "
                        "--corrections with a labelled voxel (name a slice corrected to 'no object' here)")
    f.add_argument("--out", required=True, metavar="DIR", help="output folder (not --weights: the weights fine-tuned "
                   "from stay as they are)")
    f.add_argument("--steps", type=_positive_int, default=FINETUNE_STEPS, help="fine-tuning steps")
    f.add_argument("--parts", choices=list(TRAIN_PARTS), default=FINETUNE_PARTS,
                   help="what trains: 'segmenter' leaves the image encoder and the translator as the adaptation left "
                        "them (a faster step), 'all' trains every module as adaptation does")
    f.add_argument("--lr", type=_positive_float, default=FINETUNE_LR,
                   help="the fine-tune's Adam learning rate" + ("" if FINETUNE_LR is not None else
                                                                 " (None: the adaptation's, recorded with the weights)"))
    f.add_argument("--ema-decay", type=_decay, default=FINETUNE_EMA, metavar="D",
                   help="end with the average of the weights over the fine-tune's second half, with this decay (0: "
                        "the last step's weights; corrections round 7 of docs/method.md)")
    f.add_argument("--source", action="append", default=None, metavar="IMG",
                   help="source image(s) (default: those recorded in the weights' config.json)")
    f.add_argument("--source-label", action="append", default=None, metavar="LBL", help="labels of each --source")
    f.add_argument("--target-label", default=None, metavar="LBL", help="optional reference, for evaluation only")
    f.add_argument("--device", choices=list(DEVICES), default=DEVICES[0])
    f.add_argument("--seed", type=_seed, default=0)
    f.add_argument("--overwrite", action="store_true", help="replace existing outputs in --out")
    f.add_argument("--quiet", action="store_true")

    e = sub.add_parser("evaluate", help="Dice, ASSD and HD95 of a prediction against a label",
                       description="Score a predicted mask against a reference (non-zero voxels are foreground), "
                                   "with the reference's voxel spacing.")
    e.add_argument("--pred", required=True, metavar="P")
    e.add_argument("--label", required=True, metavar="L")
    e.add_argument("--json", default=None, metavar="FILE", help="also write the metrics to FILE")
    g = sub.add_parser("gui", help="open napari with the UUDS widget (and the sample data)",
                       description="Open napari with the UUDS dock widget; by default the spinal-cord sample is loaded "
                                   "so that 'Adapt & segment' works in one click.")
    g.add_argument("--no-sample", action="store_true", help="start without the sample data")
    g.add_argument("images", nargs="*", metavar="IMG", help="NIfTI files to open")
    return p


NIFTI_PATTERNS = ("*.nii", "*.nii.gz")


def _prefer_our_reader() -> None:
    """napari's builtin reader also claims NIfTI (through imageio), so napari asks "choose reader" for every file
    dropped on it. Where the user has chosen no reader for NIfTI yet, ``napari-uuds gui`` records this plugin as the
    reader for ``*.nii`` / ``*.nii.gz`` (napari's own preference, Preferences > Plugins, where it can be changed),
    and says so."""
    from napari.settings import get_settings

    prefs = get_settings().plugins.extension2reader
    missing = [p for p in NIFTI_PATTERNS if p not in prefs]
    if missing:
        get_settings().plugins.extension2reader = {**prefs, **{p: "napari-uuds" for p in missing}}
        print(f"napari-uuds gui: NIfTI files ({', '.join(missing)}) now open with the napari-uuds reader "
              "(napari Preferences > Plugins to change)", file=sys.stderr)


def build_gui(args):
    """The viewer and the docked widget ``napari-uuds gui`` shows (before napari's event loop runs)."""
    try:
        import napari
    except ImportError:
        raise UUDSError('the GUI needs napari and a Qt binding: pip install "napari-uuds[napari]"') from None
    _prefer_our_reader()
    viewer = napari.Viewer(title="napari-uuds")
    if not args.no_sample:
        viewer.open_sample("napari-uuds", "cord")
    for path in args.images:
        viewer.open(path, plugin="napari-uuds")
    _, widget = viewer.window.add_plugin_dock_widget("napari-uuds", "UUDS adapt & segment")
    if viewer.dims.ndim == 3:
        from .gui.widget import radiological_view

        radiological_view(viewer, widget.params.axis)
    return viewer, widget


def cmd_gui(args) -> int:
    import napari

    build_gui(args)
    napari.run()
    return 0


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings as one line each, like the errors (``napari-uuds: warning: FILE: what``)."""
    print(f"napari-uuds: warning: {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    shown = warnings.showwarning
    warnings.showwarning = _show_warning
    try:
        if args.command == "adapt":
            from .commands import cmd_adapt

            return cmd_adapt(args)
        if args.command == "gui":
            return cmd_gui(args)
        if args.command == "predict":
            from .commands import cmd_predict

            return cmd_predict(args)
        if args.command == "finetune":
            from .commands import cmd_finetune

            return cmd_finetune(args)
        from .commands import cmd_evaluate

        return cmd_evaluate(args)
    except UUDSError as exc:
        print(f"napari-uuds: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("napari-uuds: interrupted (every file already written is complete; none is half-written)", file=sys.stderr)
        return EXIT_INTERRUPTED
    except OSError as exc:  # the last resort: one line, not a traceback
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"napari-uuds: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    finally:
        warnings.showwarning = shown


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
