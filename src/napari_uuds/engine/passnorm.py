"""Pass-specific batch-norm statistics (``ModelConfig.pass_bn``; round 4 of docs/method.md: the default).

The image encoder runs twice a step: pass 1 on raw slices (source and target), pass 2 on translated ones
(the reconstruction and the synthetic source). With one set of running statistics, inference normalises each
pass with a blend of both. :class:`PassBatchNorm2d` keeps a second set for translated images; the model says
which pass runs (:func:`route`). Same affine parameters, same batch statistics in training: only what is
remembered for inference differs.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

RAW, TRANSLATED = "raw", "translated"


class PassBatchNorm2d(nn.BatchNorm2d):
    def __init__(self, bn: nn.BatchNorm2d):
        super().__init__(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
        self.load_state_dict(bn.state_dict())
        self.register_buffer("running_mean_translated", bn.running_mean.detach().clone())
        self.register_buffer("running_var_translated", bn.running_var.detach().clone())
        self.route = RAW

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.route == RAW:
            return super().forward(x)
        return F.batch_norm(x, self.running_mean_translated, self.running_var_translated, self.weight, self.bias,
                            self.training, self.momentum if self.momentum is not None else 0.1, self.eps)


def convert(module: nn.Module) -> int:
    """Replace every BatchNorm2d under ``module`` by a :class:`PassBatchNorm2d` (in place); returns how many."""
    n = 0
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            setattr(module, name, PassBatchNorm2d(child))
            n += 1
        else:
            n += convert(child)
    return n


@contextlib.contextmanager
def route(module: nn.Module, which: str) -> Iterator[None]:
    """Within the block, every :class:`PassBatchNorm2d` under ``module`` uses (and, training, updates) ``which``."""
    layers = [m for m in module.modules() if isinstance(m, PassBatchNorm2d)]
    old = [m.route for m in layers]
    for m in layers:
        m.route = which
    try:
        yield
    finally:
        for m, r in zip(layers, old):
            m.route = r
