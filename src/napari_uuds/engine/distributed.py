"""Training on several processes with PyTorch DDP (``torchrun --nproc_per_node N -m napari_uuds adapt ...``).

torchrun starts N copies of the command and tells each its rank through the environment (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``). :func:`from_env` reads it; one process without torchrun is the
plain single-process run, untouched. Under torchrun even one process (``--nproc_per_node 1``, recognised by
torchrun's ``TORCHELASTIC_RUN_ID``) takes the DDP path, so that what DDP costs on one GPU can be measured against the
plain run (benchmarks/gpu_speed.py, section ``ddp``).
In a distributed run:

* every rank builds the same model from ``--seed`` (and DDP broadcasts rank 0's weights and buffers anyway);
  each draws its *own* batches (sampler and GIN seeds offset by the rank), so ``--batch-size`` is per process and
  the global batch is N times it;
* gradients are averaged over the ranks by :class:`torch.nn.parallel.DistributedDataParallel` (with
  ``find_unused_parameters``: a step's loss terms may leave parts of the network out, e.g. while the guard holds
  the target terms back; the gradients are views into DDP's buckets, so they are not copied out of them);
* **in-batch losses see the local batch**: L_BSCL's contrast (Eq. 3-5), L_DD's InfoNCE negatives (Eq. 1-2), TCSA's
  batch prototypes and the pseudo-label statistics are computed on each process's own batch, as PyTorch's DDP does
  for any loss; the gradients, not the negatives, are shared. A run on N processes of batch B therefore matches a
  one-process run of batch N x B in its gradient average but not in its contrastive sets (B per set, not N x B);
* the logged losses and the guard's statistics are averaged over the ranks each logged step, so every rank takes
  the same guard decision and sees the same divergence; the stop flag (Ctrl-C, SIGTERM) is shared every step, so
  every rank stops after the same step and the weights are saved once. The flag travels through a CPU (gloo)
  group beside the NCCL one: sharing it never waits for the GPU, whose step before it may still be running (so
  the ranks of an NCCL run must also reach each other over TCP, as torchrun's rendezvous already does);
* only rank 0 writes (weights, predictions, metrics) and prints; at the end the ranks' weights are compared by
  checksum (:func:`weights_agree`) and the result recorded in ``config.json``.

Backends: ``nccl`` on CUDA (one GPU per process, ``LOCAL_RANK``), ``gloo`` on CPU (what the tests use).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

#: offset between the ranks' sampler and augmentation seeds (rank r draws from seed + r * RANK_SEED_STRIDE)
RANK_SEED_STRIDE = 1_000_003


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str = ""
    #: started by torchrun: the DDP path, even for one process
    launched: bool = False
    #: the process group of the stop flag (a gloo group beside NCCL; None: the default group, already on the CPU)
    control: Any = field(default=None, compare=False, repr=False)

    @property
    def enabled(self) -> bool:
        return self.launched or self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def seed(self, seed: int) -> int:
        """The seed of this rank's batches and augmentation draws."""
        return seed + self.rank * RANK_SEED_STRIDE

    def device(self, requested: torch.device) -> torch.device:
        """One GPU per process on CUDA (``LOCAL_RANK``); the requested device otherwise."""
        if self.enabled and requested.type == "cuda":
            return torch.device("cuda", self.local_rank)
        return requested

    def record(self) -> dict:
        return {"world_size": self.world_size, "backend": self.backend}


SINGLE = DistContext()


def from_env() -> DistContext:
    """The context of a distributed launch (``RANK`` and ``WORLD_SIZE`` > 1, from torchrun or another launcher, or
    torchrun with one process: ``TORCHELASTIC_RUN_ID`` set), else the single-process one. A ``RANK`` and
    ``WORLD_SIZE=1`` left in the environment by anything else keep the plain run."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return SINGLE
    world = int(os.environ["WORLD_SIZE"] or 1)
    if world <= 1 and "TORCHELASTIC_RUN_ID" not in os.environ:
        return SINGLE
    return DistContext(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")), launched=True)


def init(ctx: DistContext, device: torch.device) -> DistContext:
    """Join the process group (``nccl`` for CUDA, ``gloo`` for CPU); a no-op for one process."""
    if not ctx.enabled:
        return ctx
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(ctx.device(device))
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    # the stop flag's own CPU group (every rank creates it, in the same order): no wait for the GPU each step
    control = dist.new_group(backend="gloo") if backend != "gloo" else None
    return DistContext(ctx.rank, ctx.world_size, ctx.local_rank, backend, ctx.launched, control)


def close(ctx: DistContext) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()


def wrap(model: torch.nn.Module, ctx: DistContext, device: torch.device) -> torch.nn.Module:
    """The model DDP trains (the module itself for one process)."""
    if not ctx.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    # gradients as views into the all-reduce buckets: no copy of every gradient back out of the buckets each step
    return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=True, gradient_as_bucket_view=True)


def mean(values: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Average a tensor over the ranks (in place; returned)."""
    if ctx.enabled:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
        values /= ctx.world_size
    return values


def any_rank(flag: bool, ctx: DistContext) -> bool:
    """True on every rank if it is true on any (the shared stop flag). On the CPU, through ``ctx.control``: reading
    a CUDA tensor's value would wait for every kernel queued before it, once a step."""
    if not ctx.enabled:
        return flag
    if ctx.control is None and ctx.backend == "nccl":  # a context not made by init(): NCCL reduces CUDA tensors only
        t = torch.tensor([1.0 if flag else 0.0], device=torch.device("cuda", torch.cuda.current_device()))
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)
    t = torch.tensor([1.0 if flag else 0.0])
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=ctx.control)
    return bool(t.item() > 0)


def weights_agree(model: torch.nn.Module, ctx: DistContext) -> bool:
    """Whether every rank holds the same weights (a float64 checksum of every parameter, gathered)."""
    if not ctx.enabled:
        return True
    with torch.no_grad():
        ps = list(model.parameters())
        dev = ps[0].device
        own = torch.stack([p.detach().double().sum() for p in ps] + [p.detach().double().abs().sum() for p in ps])
        everyone = [torch.empty_like(own) for _ in range(ctx.world_size)]
        dist.all_gather(everyone, own.to(dev))
    return all(torch.equal(everyone[0], o) for o in everyone[1:])
