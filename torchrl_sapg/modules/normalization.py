"""Running observation normalisation that lives inside the policy."""
from __future__ import annotations

import torch
from torch import nn
from torchrl.envs.transforms.rnd import RunningMeanStd


@torch.no_grad()
def batch_moments(x: torch.Tensor, dim: int, sync=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean, (biased) variance and count of ``x`` along ``dim``, over every rank's ``x`` with ``sync``.

    With a :class:`~torchrl_sapg.trainers.distributed.DistributedSync` the moments are those of
    the union of the ranks' batches (two all-reduces: the sums, then the squared deviations
    from the global mean, which avoids the cancellation of a sum-of-squares formula).

    Examples:
        >>> x = torch.tensor([[1.0], [3.0]])
        >>> [t.tolist() for t in batch_moments(x, 0)]
        [[2.0], [1.0], 2.0]
    """
    x = x.detach().double()
    count = torch.tensor(float(x.shape[dim]), dtype=torch.float64, device=x.device)
    total = x.sum(dim)
    if sync is not None:
        sync.sum_([total, count])
    mean = total / count
    sq = (x - mean.unsqueeze(dim)).pow(2).sum(dim)
    if sync is not None:
        sync.sum_([sq])
    return mean, sq / count, count


@torch.no_grad()
def merge_moments_(
    mean: torch.Tensor, var: torch.Tensor, count: torch.Tensor,
    batch_mean: torch.Tensor, batch_var: torch.Tensor, batch_count: torch.Tensor,
) -> None:
    """Fold a batch's moments into running ``mean``/``var``/``count`` in place (Chan et al.'s
    parallel update, the one ``RunningMeanStd.update`` uses). ``count`` may have fewer dims than
    ``mean`` (one count per member of a stacked population); ``batch_count`` is a scalar."""
    c = count.reshape(count.shape + (1,) * (mean.ndim - count.ndim))
    b_count = torch.as_tensor(batch_count, dtype=mean.dtype, device=mean.device)
    total = c + b_count
    delta = batch_mean.to(mean.dtype) - mean
    m2 = var * c + batch_var.to(mean.dtype) * b_count + delta.pow(2) * (c * b_count / total)
    mean.add_(delta * (b_count / total))
    var.copy_(m2 / total)
    count.add_(b_count)


class ObservationNormalizer(nn.Module):
    """Standardise observations with running statistics, then clip to ``[-clip, clip]``.

    The statistics are buffers (they travel with ``state_dict`` and ``.to(device)``) and only
    change when :meth:`update` is called. The trainer calls it once per collected batch, *after*
    the update, so the statistics stay fixed during an iteration: the behaviour log-probs stored
    at collection time and the policy re-evaluated in the loss see the same normalisation, and
    the first PPO ratio of every iteration is exactly 1. (TorchRL's ``VecNormV2`` updates at
    every env step inside the collector and lives outside the policy's weights, which breaks
    both properties; in-process PBT also needs one normaliser per member.)

    Args:
        shape: the observation's feature shape, e.g. ``(obs_dim,)``.
        clip: normalised values are clamped to ``[-clip, clip]`` (``None`` disables it).

    Examples:
        >>> norm = ObservationNormalizer((3,))
        >>> norm.update(torch.randn(1000, 3) * 4 + 2)
        >>> y = norm(torch.randn(10, 3) * 4 + 2)
        >>> bool(y.abs().mean() < 2)
        True
    """

    def __init__(self, shape: tuple[int, ...] | int, *, clip: float | None = 5.0):
        super().__init__()
        if isinstance(shape, int):
            shape = (shape,)
        self.stats = RunningMeanStd(shape=tuple(shape))
        self.clip = clip

    @torch.no_grad()
    def update(self, observation: torch.Tensor, sync=None) -> None:
        """Fold a batch of observations (any leading dims) into the statistics.

        With ``sync`` (a :class:`~torchrl_sapg.trainers.distributed.DistributedSync`) the batch
        is the union of every rank's: all ranks end with the same statistics.
        """
        if sync is None:
            self.stats.update(observation.detach())
            return
        stats = self.stats
        x = observation.reshape(-1, *stats.mean.shape)
        merge_moments_(stats.mean, stats.var, stats.count, *batch_moments(x, 0, sync))

    def forward(self, observation: torch.Tensor) -> torch.Tensor:
        out = self.stats.normalize(observation).to(observation.dtype)
        if self.clip is not None:
            out = out.clamp(-self.clip, self.clip)
        return out
