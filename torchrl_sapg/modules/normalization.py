"""Running observation normalisation that lives inside the policy."""
from __future__ import annotations

import torch
from torch import nn
from torchrl.envs.transforms.rnd import RunningMeanStd


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
    def update(self, observation: torch.Tensor) -> None:
        self.stats.update(observation.detach())

    def forward(self, observation: torch.Tensor) -> torch.Tensor:
        out = self.stats.normalize(observation).to(observation.dtype)
        if self.clip is not None:
            out = out.clamp(-self.clip, self.clip)
        return out
