"""Data-parallel training over ``torch.distributed`` ranks (``torchrun``): the few collectives
an on-policy learner needs, batched into as few calls as possible.

Every rank runs its own simulator and collects its own batch with the *full* population
layout (all M policies on every rank); the ranks then behave as one learner over the union of
their batches:

* parameters and buffers are broadcast from rank 0 once at start (:meth:`DistributedSync.broadcast_module`);
* gradients are averaged before every optimiser step, together with the minibatch KL that
  drives the adaptive learning rate, in one all-reduce (:meth:`DistributedSync.average_`);
* running observation statistics are merged from every rank's batch moments
  (:meth:`DistributedSync.sum_` inside :meth:`ObservationNormalizer.update`);
* per-policy episode statistics are merged before each log line, and each batch's fitness
  contributions are summed across ranks, so the genetic scheduler's and in-process PBT's
  fitness windows hold every rank's episodes; rank 0's fitness is broadcast before a decision,
  so every rank takes rank 0's decision, and the changed weights are broadcast afterwards;
* only rank 0 writes logs and checkpoints; a checkpoint stores every rank's RNG state.

NCCL on CUDA, gloo on CPU. See ``docs/distributed.md``.
"""
from __future__ import annotations

import os
from typing import Any, Iterable, Sequence

import torch
import torch.distributed as dist
from torch import nn

from torchrl_sapg.runtime import RANK_SEED_STRIDE, rank_seed, world_info  # noqa: F401  (re-exported)

__all__ = ["DistributedSync", "init_distributed", "rank_seed", "world_info"]

def init_distributed(device: str | torch.device = "cpu", backend: str | None = None) -> "DistributedSync | None":
    """Join torchrun's process group; ``None`` when the process runs alone (``WORLD_SIZE`` <= 1).

    Args:
        device: ``"cpu"`` or ``"cuda"`` (each rank then takes ``cuda:<LOCAL_RANK>``).
        backend: ``"gloo"`` or ``"nccl"``; default: NCCL for CUDA, gloo for CPU.

    Returns:
        a :class:`DistributedSync` on the default group (already-initialised groups are reused).

    Examples:
        >>> init_distributed("cpu") is None  # not launched by torchrun
        True
    """
    rank, local_rank, world_size = world_info()
    if world_size <= 1:
        return None
    device = torch.device(device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("device=cuda but CUDA is not available on this rank; use device=cpu (gloo).")
        torch.cuda.set_device(local_rank)
    backend = backend or ("nccl" if device.type == "cuda" else "gloo")
    if backend not in ("gloo", "nccl"):
        raise ValueError(f"backend={backend!r}: choose 'gloo' (CPU) or 'nccl' (CUDA).")
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return DistributedSync()


class DistributedSync:
    """The collectives of data-parallel on-policy training, on an initialised process group.

    Args:
        group: the process group (default: the world).

    Examples:
        A 1-process gloo group (what a torchrun rank sees, with ``world_size`` 1)::

            >>> import tempfile
            >>> f = tempfile.NamedTemporaryFile(delete=False)
            >>> dist.init_process_group("gloo", init_method=f"file://{f.name}", rank=0, world_size=1)
            >>> sync = DistributedSync()
            >>> g = [torch.ones(3), torch.full((2,), 4.0)]
            >>> sync.average_(g)[1].tolist()  # the mean over ranks (one rank: unchanged)
            [4.0, 4.0]
            >>> sync.is_main, sync.world_size
            (True, 1)
            >>> dist.destroy_process_group()
    """

    def __init__(self, group: Any = None):
        if not dist.is_initialized():
            raise RuntimeError(
                "DistributedSync needs an initialised process group: launch with torchrun and call "
                "init_distributed() (or torch.distributed.init_process_group) first."
            )
        self.group = group
        self.rank = dist.get_rank(group)
        self.world_size = dist.get_world_size(group)

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that logs, checkpoints and takes population decisions."""
        return self.rank == 0

    # ------------------------------------------------------------------ tensors
    def _all_reduce_flat(self, tensors: Sequence[torch.Tensor]) -> None:
        """Sum ``tensors`` in place across ranks: one all-reduce per dtype over a flat buffer."""
        by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
        for t in tensors:
            by_dtype.setdefault(t.dtype, []).append(t)
        for group in by_dtype.values():
            flat = torch.cat([t.reshape(-1) for t in group])
            dist.all_reduce(flat, group=self.group)
            offset = 0
            for t in group:
                n = t.numel()
                t.copy_(flat[offset : offset + n].view_as(t))
                offset += n

    def sum_(self, tensors: Sequence[torch.Tensor]) -> Sequence[torch.Tensor]:
        """Replace each tensor by its sum over ranks (in place); returns ``tensors``."""
        self._all_reduce_flat(tensors)
        return tensors

    def average_(self, tensors: Sequence[torch.Tensor]) -> Sequence[torch.Tensor]:
        """Replace each tensor by its mean over ranks (in place); returns ``tensors``."""
        self._all_reduce_flat(tensors)
        for t in tensors:
            t.div_(self.world_size)
        return tensors

    def average_gradients_(self, params: Iterable[nn.Parameter], extra: Sequence[torch.Tensor] = ()) -> None:
        """Average every parameter's ``.grad`` (and the ``extra`` tensors, e.g. the KL) over ranks.

        Parameters without a gradient on this rank get a zero one first, so every rank reduces
        the same buffer layout.
        """
        grads = []
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            grads.append(p.grad)
        self.average_([*grads, *extra])

    def broadcast_(self, tensors: Sequence[torch.Tensor], src: int = 0) -> Sequence[torch.Tensor]:
        """Overwrite ``tensors`` (in place) with rank ``src``'s values."""
        for t in tensors:
            dist.broadcast(t, src=src, group=self.group)
        return tensors

    @torch.no_grad()
    def broadcast_module(self, module: nn.Module, src: int = 0) -> None:
        """Every parameter and buffer of ``module`` takes rank ``src``'s value."""
        self.broadcast_([t.data for t in (*module.parameters(), *module.buffers())], src=src)

    # ------------------------------------------------------------------ python objects
    def gather_objects(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank."""
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj, group=self.group)
        return out

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        """Rank ``src``'s ``obj`` on every rank."""
        box = [obj]
        dist.broadcast_object_list(box, src=src, group=self.group)
        return box[0]

    def barrier(self) -> None:
        dist.barrier(group=self.group)

    # ------------------------------------------------------------------ statistics
    @torch.no_grad()
    def reduce_episode_stats(self, stats):
        """Per-policy episode means of every rank merged into the global means (weights: ``"count"``).

        ``stats`` is a ``[M]`` TensorDict of means plus ``"count"`` (what
        :meth:`PopulationCollector.episode_stats` returns); a policy with no episode anywhere
        stays NaN.
        """
        count = stats.get("count").double()
        names = [k for k in stats.keys() if k != "count"]
        sums = torch.stack([torch.where(count > 0, stats.get(k).double() * count, 0.0) for k in names])
        self.sum_([sums, count])
        out = stats.clone()
        for i, k in enumerate(names):
            mean = torch.where(count > 0, sums[i] / count.clamp_min(1e-300), float("nan"))
            out.set(k, mean.to(stats.get(k).dtype))
        out.set("count", count.to(stats.get("count").dtype))
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}(rank={self.rank}, world_size={self.world_size}, backend={dist.get_backend(self.group)!r})"
