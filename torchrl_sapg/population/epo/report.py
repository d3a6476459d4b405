"""What a decision of EPO's genetic scheduler saw and did, and the latent-diversity measure."""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import torch

__all__ = ["GeneticStepReport", "SKIP_REASONS", "STEP_REASONS", "latent_diversity"]

#: reasons a decision did *not* run the genetic step
SKIP_REASONS = ("warmup", "too_soon", "missing_fitness", "small_spread")
#: reasons a decision ran it
STEP_REASONS = ("spread", "interval", "forced")


@dataclasses.dataclass
class GeneticStepReport:
    """What one decision of :class:`GeneticLatentScheduler` saw and did.

    Attributes:
        frames: env frames at the decision.
        triggered: whether selection / crossover / mutation ran.
        reason: why: ``"spread"`` (Eq. 3 held), ``"interval"`` (fixed-interval mode),
            ``"forced"`` (:meth:`GeneticLatentScheduler.evolve`), or why not:
            ``"warmup"``, ``"too_soon"`` (less than ``interval_frames`` since the last step),
            ``"missing_fitness"`` (a follower has no fitness yet), ``"small_spread"``
            (Eq. 3 did not hold).
        fitness: the ``[M]`` fitness used (NaN where unknown), master included.
        spread: ``max f - min f`` over the followers with a finite fitness (NaN if none).
        median: their median (the mean of the two middle values for an even count).
        threshold: ``max(gamma * |median|, min_spread)``; Eq. 3 holds iff ``spread > threshold``.
        missing: followers with no fitness (NaN).
        elites: the kept followers, best first.
        replaced: the followers whose rows were rewritten, best (least bad) first.
        parents: for each entry of ``replaced``, the two distinct elites it was bred from.
        diversity_before / diversity_after: mean pairwise L2 distance between the ``M``
            latent rows before / after the step (equal when nothing ran).
    """

    frames: int
    triggered: bool
    reason: str
    fitness: list[float]
    spread: float
    median: float
    threshold: float
    missing: list[int] = dataclasses.field(default_factory=list)
    elites: list[int] = dataclasses.field(default_factory=list)
    replaced: list[int] = dataclasses.field(default_factory=list)
    parents: list[tuple[int, int]] = dataclasses.field(default_factory=list)
    diversity_before: float = float("nan")
    diversity_after: float = float("nan")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "GeneticStepReport":
        data = dict(data)
        data["parents"] = [tuple(p) for p in data.get("parents", [])]
        return cls(**data)


def latent_diversity(weight: torch.Tensor) -> float:
    """Mean pairwise L2 distance between the rows of ``weight`` (0 for fewer than 2 rows).

    Examples:
        >>> latent_diversity(torch.tensor([[0.0, 0.0], [3.0, 4.0], [0.0, 0.0]]))  # (5 + 0 + 5) / 3
        3.3333332538604736
    """
    if weight.shape[0] < 2:
        return 0.0
    return float(torch.pdist(weight.detach().reshape(weight.shape[0], -1)).mean())
