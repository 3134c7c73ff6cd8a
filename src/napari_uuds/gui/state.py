"""Parameters and status as psygnal evented dataclasses: the widget binds to them, the controller reads them."""
from __future__ import annotations

from dataclasses import dataclass, field

from psygnal import evented

from ..engine.config import DEFAULT_DOMAIN_PROMPT


@evented
@dataclass
class Params:
    arch: str = "tiny"
    clip_weights: str = "auto"
    device: str = "auto"
    steps: int = 200
    batch_size: int = 8
    lr: float = 1e-4
    image_size: int = 0  # 0: the architecture's default
    class_name: str = "object"
    source_modality: str = "source"
    domain_prompt: str = DEFAULT_DOMAIN_PROMPT
    threshold: float = 0.5
    axis: int = 2
    preview_every: int = 20
    seed: int = 0


@evented
@dataclass
class Status:
    running: bool = False
    step: int = 0
    total: int = 0
    message: str = ""
    losses: list = field(default_factory=list)  # total loss per step, for the plot
