"""EPO's genetic algorithm over the population's latent genes (a trainer hook).

Paper: Wang, Su, Gupta, Pathak, *Evolutionary Policy Optimization* (EPO), Sec. 4.1, Eq. 3,
Alg. 1 lines 8-20 and App. B.2. See ``docs/epo.md`` for the paper-to-code map.
"""
from __future__ import annotations

import math
from typing import Any, Literal, Mapping

import torch
from tensordict import TensorDictBase
from tensordict.utils import NestedKey
from torch import nn
from torchrl.trainers import TrainerHookBase

from torchrl_sapg.modules.latents import check_policy_ids
from torchrl_sapg.population.epo.arguments import check_choices, check_latents, check_numbers, check_params
from torchrl_sapg.population.epo.report import SKIP_REASONS, GeneticStepReport, latent_diversity
from torchrl_sapg.population.fitness import PolicyFitnessWindow, next_key

__all__ = ["GeneticLatentScheduler"]

_SINCE_INF = 2**62  # "no replacement yet": every finished episode is attributable to the current gene


class GeneticLatentScheduler(TrainerHookBase):
    """EPO's selection, crossover and mutation of the followers' latent genes, as a trainer hook.

    Row ``leader_id`` of the ``[M, D]`` latent table is the master, never replaced; a genetic
    step keeps the top ``num_elites`` followers and rewrites the others in place as the mean of
    two distinct random elites plus Gaussian noise (their optimiser state rows zeroed). The
    trigger rule, fitness window, ``num_elites`` and ``log_std`` handling: ``docs/epo.md``.

    Args:
        latents: the ``PolicyLatents`` (a module whose ``.weight`` is a ``[M, D]`` ``nn.Parameter``).
        optimizer: the optimiser training ``latents.weight`` (and ``log_std``), or ``None``.
        mutation_std: sigma of the Gaussian mutation.
        leader_id: the master's row, never replaced.
        num_elites: elites among the ``M - 1`` followers; default ``M - 2``.
        gamma: Eq. 3's factor (paper: 0.3 manipulation, 0.5 locomotion).
        min_spread: absolute floor on the Eq. 3 threshold.
        trigger: ``"spread"`` (Eq. 3) or ``"interval"`` (fixed period).
        warmup_frames: no step before this many env frames.
        interval_frames: minimum env frames between two steps (the period in interval mode).
        fitness_key: ``"return"``, ``"length"`` or an episode-end key such as ``"success"``.
        missing_fitness: ``"skip"`` the decision or ``"rank_last"`` a follower without fitness.
        fitness_decay: in ``(0, 1]``; the window's per-batch decay (1: a plain mean).
        log_std: the actor's ``[M, A]`` log-std parameter (``LatentConditionedActor.log_std``).
        log_std_mode: ``"parents_mean"`` or ``"keep"`` for a replaced row's log-std.
        generator: a ``torch.Generator`` for parent draws and mutation noise.
        seed: seeds a fresh CPU generator (not with ``generator``; neither: torch's global RNG).
        policy_id_key: batch key of each row's policy id.
        episode_reward_key: batch key of the episode return (under ``"next"``).
        step_count_key: batch key of the episode length (under ``"next"``).
        done_key: batch key of episode ends (under ``"next"``).
        off_policy_key: batch key flagging off-policy rows (skipped).

    Examples:
        A hand-written loop calls :meth:`step` with the env frames so far and a ``[M]``
        fitness (or :meth:`observe` each batch and ``step(frames)``):

        >>> import torch
        >>> from torchrl_sapg.modules import PolicyLatents
        >>> from torchrl_sapg.population import GeneticLatentScheduler
        >>> latents = PolicyLatents(5, 4, generator=torch.Generator().manual_seed(0))
        >>> optim = torch.optim.Adam(latents.parameters(), lr=1e-3)
        >>> epo = GeneticLatentScheduler(latents=latents, optimizer=optim, mutation_std=0.05, seed=0)
        >>> epo.num_elites  # K - 2 with K = 5 agents: one follower replaced per step
        3
        >>> master = latents.weight[0].clone()
        >>> report = epo.step(1_000, torch.tensor([-5.0, 9.0, 8.0, 1.0, 7.0]))  # master worst
        >>> report.triggered, report.reason, report.elites, report.replaced
        (True, 'spread', [1, 2, 4], [3])
        >>> sorted(report.parents[0]) in ([1, 2], [1, 4], [2, 4])
        True
        >>> torch.equal(latents.weight[0], master), latents.weight is optim.param_groups[0]["params"][0]
        (True, True)
        >>> epo.step(1_100, torch.tensor([0.0, 9.0, 9.5, 9.2, 9.1])).reason  # spread 0.5 < 0.3 * 9.15
        'small_spread'

        With a :class:`~torchrl_sapg.trainers.OnPolicyTrainer` (see ``docs/epo.md``)::

            epo = GeneticLatentScheduler(latents=ac.latents, optimizer=optim, log_std=ac.actor.log_std,
                                         mutation_std=0.1, warmup_frames=2e8, interval_frames=2e7)
            epo.register(trainer)   # checkpointed as trainer.state_dict()["genetic_scheduler"]
            trainer.train()
    """

    def __init__(
        self,
        *,
        latents: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        mutation_std: float = 0.1,
        leader_id: int = 0,
        num_elites: int | None = None,
        gamma: float = 0.3,
        min_spread: float = 0.0,
        trigger: Literal["spread", "interval"] = "spread",
        warmup_frames: int = 0,
        interval_frames: int = 0,
        fitness_key: str = "return",
        missing_fitness: Literal["skip", "rank_last"] = "skip",
        fitness_decay: float = 1.0,
        log_std: nn.Parameter | None = None,
        log_std_mode: Literal["parents_mean", "keep"] = "parents_mean",
        generator: torch.Generator | None = None,
        seed: int | None = None,
        policy_id_key: NestedKey = "policy_id",
        episode_reward_key: NestedKey = "episode_reward",
        step_count_key: NestedKey = "step_count",
        done_key: NestedKey = "done",
        off_policy_key: NestedKey = "off_policy",
    ):
        weight = getattr(latents, "weight", None)
        check_latents(latents, weight)
        M, D = weight.shape
        num_elites = M - 2 if num_elites is None else num_elites
        check_choices(M, leader_id, num_elites, trigger, missing_fitness, log_std_mode)
        check_numbers(mutation_std, gamma, min_spread, warmup_frames, interval_frames, trigger, fitness_decay)
        check_params(M, weight, log_std, optimizer)
        if generator is not None and seed is not None:
            raise ValueError("give generator or seed, not both.")
        if generator is None:
            generator = torch.Generator()
            generator.manual_seed(int(seed) if seed is not None else int(torch.randint(0, 2**62, ()).item()))

        self.latents = latents
        self.optimizer = optimizer
        self.log_std = log_std
        self.num_policies = M
        self.latent_dim = D
        self.leader_id = leader_id
        self.num_elites = num_elites
        self.mutation_std = float(mutation_std)
        self.gamma = float(gamma)
        self.min_spread = float(min_spread)
        self.trigger = trigger
        self.warmup_frames = int(warmup_frames)
        self.interval_frames = int(interval_frames)
        self.fitness_key = fitness_key
        self.missing_fitness = missing_fitness
        self.fitness_decay = float(fitness_decay)
        self.log_std_mode = log_std_mode
        self.generator = generator
        self.policy_id_key = policy_id_key
        self.episode_reward_key = episode_reward_key
        self.step_count_key = step_count_key
        self.done_key = done_key
        self.off_policy_key = off_policy_key
        self.followers = torch.tensor([i for i in range(M) if i != leader_id], dtype=torch.long)

        # fitness window: per-policy sums and counts of episodes, on the latents' device
        self.window = PolicyFitnessWindow(M, device=weight.device, decay=self.fitness_decay,
                                          off_policy_key=off_policy_key)
        # env steps each policy's gene has been in place (episodes longer than that started earlier)
        self._since = torch.full((M,), _SINCE_INF, dtype=torch.long, device=weight.device)
        self.last_step_frames: int | None = None
        self.last_report: GeneticStepReport | None = None
        self.num_decisions = 0
        self.num_steps = 0
        self.num_replaced_total = 0
        self.num_skipped = {reason: 0 for reason in SKIP_REASONS}
        self._trainer = None

    @property
    def sync(self):
        """A ``DistributedSync`` under torchrun (set by :meth:`register`): fitness over all ranks."""
        return self.window.sync

    @sync.setter
    def sync(self, value) -> None:
        self.window.sync = value

    # ------------------------------------------------------------------ fitness
    def _fitness_value_key(self) -> NestedKey:
        if self.fitness_key == "return":
            return self.episode_reward_key
        if self.fitness_key == "length":
            return self.step_count_key
        return self.fitness_key

    @torch.no_grad()
    def observe(self, batch: TensorDictBase) -> None:
        """Add the episodes that end in a collected ``[N, T]`` (or ``[N]``) batch to the window.

        Each finished episode counts for the policy of its own row (``"policy_id"``); for a
        policy replaced ``s`` env steps before the batch, an episode ending at time ``t`` of
        the batch counts only if its ``step_count <= s + t + 1`` (it started after the
        replacement). Rows flagged ``"off_policy"`` are skipped. No host sync.
        """
        if batch.batch_dims == 1:
            batch = batch.unsqueeze(-1)
        if batch.batch_dims != 2:
            raise ValueError(f"observe expects an [N, T] batch, got batch_size={tuple(batch.batch_size)}.")
        N, T = batch.shape
        value_key = self._fitness_value_key()
        keys = set(batch.keys(True, True))
        for key in (self.policy_id_key, ("next", self.done_key), next_key(value_key)):
            if key not in keys:
                raise KeyError(
                    f"GeneticLatentScheduler.observe: {key!r} is missing from the batch (fitness_key="
                    f"{self.fitness_key!r}). Collect with PopulationCollector (which adds episode_reward "
                    "and step_count), or pass fitness to step() yourself."
                )
        device = self.window.device
        pid = batch.get(self.policy_id_key).reshape(N, T).to(device)
        check_policy_ids(pid, self.num_policies, name=str(self.policy_id_key))
        mask = None
        step_key = next_key(self.step_count_key)
        if step_key in keys:
            length = batch.get(step_key).reshape(N, T).to(device=device, dtype=torch.long)
            t = torch.arange(1, T + 1, device=device, dtype=torch.long)
            mask = length <= self._since[pid] + t
        self.window.off_policy_key = self.off_policy_key
        self.window.observe(batch, next_key(value_key), policy_id_key=self.policy_id_key,
                            done_key=("next", self.done_key), mask=mask)
        self._since.add_(T).clamp_(max=_SINCE_INF)

    @torch.no_grad()
    def observe_stats(self, stats: TensorDictBase | Mapping[str, torch.Tensor]) -> None:
        """Add a ``[M]`` :meth:`PopulationCollector.episode_stats` read to the window.

        For hand-written loops that read the collector's statistics instead of passing
        batches to :meth:`observe`: the means are weighted by ``stats["count"]``. (The
        started-after-replacement check needs the batch, so it does not apply here.)
        """
        mean = torch.as_tensor(stats[self.fitness_key]).to(self.window.sums)
        count = torch.as_tensor(stats["count"]).to(self.window.sums)
        if mean.shape != (self.num_policies,) or count.shape != (self.num_policies,):
            raise ValueError(f"stats must be [M={self.num_policies}] per policy, got {tuple(mean.shape)}.")
        self.window.accumulate(torch.where(count > 0, mean * count, 0.0), count.clone())

    def fitness(self) -> torch.Tensor:
        """The ``[M]`` fitness of the current window (float64, CPU; NaN: no episode yet).

        Under torchrun (:attr:`sync`) the window holds every rank's episodes, and rank 0's
        value is broadcast: every rank ranks the same numbers and takes rank 0's decision.
        """
        return self.window.mean().cpu()

    def _check_fitness(self, fitness) -> torch.Tensor:
        fitness = torch.as_tensor(fitness).detach().to("cpu", torch.float64)
        if fitness.shape != (self.num_policies,):
            raise ValueError(
                f"fitness must have shape [M={self.num_policies}] (one value per policy, master "
                f"included; its value is ignored), got {tuple(fitness.shape)}."
            )
        return fitness

    # ------------------------------------------------------------------ decisions
    def _summary(self, fitness: torch.Tensor) -> tuple[float, float, float, list[int], int]:
        """Spread, median, Eq. 3 threshold over the followers' finite fitness; missing ids."""
        f = fitness[self.followers]
        finite = torch.isfinite(f)
        known = f[finite]
        if known.numel() == 0:
            return float("nan"), float("nan"), float("nan"), self.followers.tolist(), 0
        spread = float(known.max() - known.min())
        median = float(torch.quantile(known, 0.5))
        threshold = max(self.gamma * abs(median), self.min_spread)
        return spread, median, threshold, self.followers[~finite].tolist(), int(known.numel())

    def latent_diversity(self) -> float:
        """Mean pairwise L2 distance between the ``M`` latent rows."""
        return latent_diversity(self.latents.weight)

    def step(self, frames: int, fitness: torch.Tensor | None = None) -> GeneticStepReport:
        """Decide (warm-up, interval, missing fitness, Eq. 3) and run the genetic step if due.

        Args:
            frames: env frames collected so far.
            fitness: ``[M]`` fitness (higher is better; the master's entry is ignored).
                ``None``: the window built by :meth:`observe` / :meth:`observe_stats`.

        Returns:
            a :class:`GeneticStepReport`, also kept as :attr:`last_report`.
        """
        fitness = self.fitness() if fitness is None else self._check_fitness(fitness)
        frames = int(frames)
        self.num_decisions += 1
        spread, median, threshold, missing, num_known = self._summary(fitness)

        if frames < self.warmup_frames:
            reason = "warmup"
        elif self.last_step_frames is not None and frames - self.last_step_frames < self.interval_frames:
            reason = "too_soon"
        elif (missing and self.missing_fitness == "skip") or num_known < 2:
            reason = "missing_fitness"
        elif self.trigger == "spread" and not spread > threshold:
            reason = "small_spread"
        else:
            reason = self.trigger
        if reason in SKIP_REASONS:
            self.num_skipped[reason] += 1
            diversity = self.latent_diversity()
            report = GeneticStepReport(
                frames=frames, triggered=False, reason=reason, fitness=fitness.tolist(), spread=spread,
                median=median, threshold=threshold, missing=missing,
                diversity_before=diversity, diversity_after=diversity,
            )
            self.last_report = report
            return report
        return self.evolve(fitness, frames=frames, reason=reason)

    @torch.no_grad()
    def evolve(self, fitness: torch.Tensor, *, frames: int = 0, reason: str = "forced") -> GeneticStepReport:
        """Run selection, crossover and mutation now, with no decision (used by :meth:`step`).

        Followers with a non-finite (NaN) fitness rank last; ties keep the lower id first.
        Parent draws: ``a ~ U{0..E-1}``, ``b ~ U{0..E-2}``, ``b += (b >= a)`` (two distinct elites, uniform
        over ordered pairs), then noise ``randn(R, D) * mutation_std``, all from
        :attr:`generator`, in this order.
        """
        fitness = self._check_fitness(fitness)
        frames = int(frames)
        spread, median, threshold, missing, _ = self._summary(fitness)
        weight = self.latents.weight
        device = weight.device
        E = self.num_elites
        f = fitness[self.followers]
        f = torch.where(torch.isfinite(f), f, float("-inf"))
        order = torch.argsort(f, descending=True, stable=True)
        elites = self.followers[order[:E]]
        replaced = self.followers[order[E:]]
        R = replaced.numel()
        g = self.generator
        a = torch.randint(0, E, (R,), generator=g, device=g.device)
        b = torch.randint(0, E - 1, (R,), generator=g, device=g.device)
        b = b + (b >= a).to(b.dtype)
        noise = torch.randn(R, self.latent_dim, generator=g, device=g.device, dtype=weight.dtype)
        pa, pb = elites[a.cpu()], elites[b.cpu()]

        diversity_before = self.latent_diversity()
        rows = replaced.to(device)
        pa_d, pb_d = pa.to(device), pb.to(device)
        child = 0.5 * (weight[pa_d] + weight[pb_d]) + noise.to(device) * self.mutation_std
        weight.index_copy_(0, rows, child)  # in place: the same Parameter the optimiser holds
        self._reset_optimizer_rows(weight, rows)
        if self.log_std is not None and self.log_std_mode == "parents_mean":
            log_std = self.log_std
            ls_rows = rows.to(log_std.device)
            log_std.index_copy_(0, ls_rows, 0.5 * (log_std[pa.to(log_std.device)] + log_std[pb.to(log_std.device)]))
            self._reset_optimizer_rows(log_std, ls_rows)

        # a fresh fitness window for everyone; children only count episodes started from now on
        self.window.reset()
        self._since.index_fill_(0, replaced.to(self._since.device), 0)
        self.last_step_frames = frames
        self.num_steps += 1
        self.num_replaced_total += R
        report = GeneticStepReport(
            frames=frames, triggered=True, reason=reason, fitness=fitness.tolist(), spread=spread,
            median=median, threshold=threshold, missing=list(missing), elites=elites.tolist(),
            replaced=replaced.tolist(), parents=list(zip(pa.tolist(), pb.tolist())),
            diversity_before=diversity_before, diversity_after=self.latent_diversity(),
        )
        self.last_report = report
        if self.sync is not None:  # rank 0's children everywhere (identical already, by construction)
            self.sync.broadcast_([weight.data] + ([] if self.log_std is None else [self.log_std.data]))
        return report

    def _reset_optimizer_rows(self, param: nn.Parameter, rows: torch.Tensor) -> None:
        """Zero every optimiser state tensor shaped like ``param`` on ``rows`` (exactly those)."""
        if self.optimizer is None:
            return
        state = self.optimizer.state.get(param)
        if not state:
            return
        for value in state.values():
            if torch.is_tensor(value) and value.ndim >= 1 and value.shape == param.shape:
                value.index_fill_(0, rows.to(value.device), 0)

    # ------------------------------------------------------------------ logging
    def metrics(self) -> dict[str, float]:
        """Scalars for a logger: the last decision and event counts (``epo/...``)."""
        r = self.last_report
        out = {
            "epo/triggered": float(r.triggered) if r else 0.0,
            "epo/fitness_spread": r.spread if r else float("nan"),
            "epo/fitness_median": r.median if r else float("nan"),
            "epo/fitness_threshold": r.threshold if r else float("nan"),
            "epo/num_replaced": float(len(r.replaced)) if r else 0.0,
            "epo/latent_diversity": self.latent_diversity(),
            "epo/num_decisions": float(self.num_decisions),
            "epo/num_genetic_steps": float(self.num_steps),
            "epo/num_replaced_total": float(self.num_replaced_total),
        }
        if r and r.elites:  # the elites of the last genetic step: how many, and their fitness
            fit = [r.fitness[i] for i in r.elites]
            out["epo/num_elites"] = float(len(r.elites))
            out["epo/elite_fitness_min"] = float(min(fit))
            out["epo/elite_fitness_mean"] = float(sum(fit) / len(fit))
        for reason, count in self.num_skipped.items():
            out[f"epo/num_skipped_{reason}"] = float(count)
        return out

    # ------------------------------------------------------------------ trainer hook
    def register(self, trainer, name: str = "genetic_scheduler", *, log_metrics: bool = True) -> None:
        """Wire into a TorchRL ``Trainer`` (e.g. :class:`~torchrl_sapg.trainers.OnPolicyTrainer`).

        * ``register_module(name, self)``: the scheduler's state is in every checkpoint;
        * a ``"batch_process"`` op that :meth:`observe` s each collected batch (returned
          unchanged; off-policy rows added by ``SAPGLoss.aggregate`` are ignored);
        * a ``"post_steps"`` op (after the update) that calls :meth:`step` with
          ``trainer.collected_frames`` and the window's fitness;
        * with ``log_metrics``, a ``"post_steps_log"`` op returning :meth:`metrics` (NaNs
          dropped) to TorchRL's logging path.

        The key names (``policy_id_key``, ``episode_reward_key``, ``step_count_key``) are taken
        from ``trainer.collector`` when it defines them (a PopulationCollector does).
        """
        collector = getattr(trainer, "collector", None)
        for attr in ("policy_id_key", "episode_reward_key", "step_count_key"):
            if hasattr(collector, attr):
                setattr(self, attr, getattr(collector, attr))
        self._trainer = trainer
        self.sync = getattr(trainer, "sync", None)
        trainer.register_module(name, self)
        trainer.register_op("batch_process", self._on_batch)
        trainer.register_op("post_steps", self._on_post_steps)
        if log_metrics:
            trainer.register_op("post_steps_log", self._on_log)

    def _on_batch(self, batch: TensorDictBase) -> TensorDictBase:
        self.observe(batch)
        return batch

    def _on_post_steps(self) -> None:
        self.step(int(self._trainer.collected_frames))

    def _on_log(self, batch: TensorDictBase) -> dict[str, float]:
        return {k: v for k, v in self.metrics().items() if not math.isnan(v)}

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly (not the latents: they live in the model)."""
        return {
            "num_policies": self.num_policies,
            "leader_id": self.leader_id,
            "num_elites": self.num_elites,
            "last_step_frames": self.last_step_frames,
            "generator": self.generator.get_state(),
            **self.window.state_dict(prefix="fit_"),
            "since": self._since.clone(),
            "num_decisions": self.num_decisions,
            "num_steps": self.num_steps,
            "num_replaced_total": self.num_replaced_total,
            "num_skipped": dict(self.num_skipped),
            "last_report": None if self.last_report is None else self.last_report.to_dict(),
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        for key in ("num_policies", "leader_id", "num_elites"):
            if state_dict[key] != getattr(self, key):
                raise ValueError(
                    f"GeneticLatentScheduler state has {key}={state_dict[key]} but this scheduler has "
                    f"{getattr(self, key)}; resume with the same population configuration."
                )
        self.last_step_frames = state_dict["last_step_frames"]
        self.generator.set_state(state_dict["generator"])
        self.window.load_state_dict(state_dict, prefix="fit_")
        self._since.copy_(state_dict["since"])
        self.num_decisions = int(state_dict["num_decisions"])
        self.num_steps = int(state_dict["num_steps"])
        self.num_replaced_total = int(state_dict["num_replaced_total"])
        self.num_skipped = {reason: 0 for reason in SKIP_REASONS} | dict(state_dict["num_skipped"])
        report = state_dict.get("last_report")
        self.last_report = None if report is None else GeneticStepReport.from_dict(report)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(num_policies={self.num_policies}, leader_id={self.leader_id}, "
            f"num_elites={self.num_elites}, trigger={self.trigger!r}, gamma={self.gamma}, "
            f"mutation_std={self.mutation_std}, steps={self.num_steps})"
        )
