"""DexPBT's exploit-and-explore step for the in-process population (Alg. 1 on one machine)."""
from __future__ import annotations

import math
import random
import warnings
from typing import Any, Literal

import torch
from tensordict import TensorDictBase
from torchrl.trainers import TrainerHookBase

from torchrl_sapg.population.fitness import PolicyFitnessWindow
from torchrl_sapg.population.pbt_common import mutate_hyperparameters, parse_hyperparameter_specs, pbt_decision
from torchrl_sapg.population.pbt_inprocess.learner import HYPERPARAMETERS, PopulationLearner
from torchrl_sapg.runtime import renamed_argument

__all__ = ["InProcessPBT"]


class InProcessPBT(TrainerHookBase):
    """Every ``interval_frames``, rank the members of a :class:`PopulationLearner` and act (Alg. 1).

    With the paper's rule (``selection="paper"``, Table III) the top 30% continue, the middle
    40% mutate their own hyperparameters and the bottom 30% take a random better top member's
    weights, normaliser and optimiser state (:meth:`PopulationLearner.exploit`) plus a mutated
    copy of its hyperparameters; ``selection="reference"`` is the reference code's gap rule
    (see :func:`~torchrl_sapg.population.pbt_common.pbt_decision`). Mutation is Alg. 2
    (:func:`~torchrl_sapg.population.pbt_common.mutate_hyperparameters`) over the declared ``specs``.

    The objective of member ``i`` is an exponentially weighted mean (``fitness_decay`` per
    batch) of the ``fitness_key`` statistic ("return": the episode return) of episodes that
    ended in member ``i``'s own env block since its last change; a member with none ranks last.
    Members changed less than ``burn_in_frames`` ago are left alone (they still rank); with
    ``wait_for_fitness`` so is a member with no fitness yet, instead of being replaced for having none.

    Args:
        learner: the population.
        specs: which hyperparameters mutate and how (list/dict, see
            :func:`~torchrl_sapg.population.pbt_common.parse_hyperparameter_specs`); names among ``HYPERPARAMETERS``.
        interval_frames: env frames between PBT rounds (paper: 2e7).
        start_frames: no round before this many env frames (paper: 2e8).
        burn_in_frames: a member changed more recently is left alone (paper: 5e7).
        selection: ``"paper"`` (30/40/30) or ``"reference"`` (the reference code's gap rule).
        mutation_prob: Alg. 2's probability beta_mut that a hyperparameter mutates (paper: 0.2).
        mu_min: Alg. 2's smallest mutation factor (paper: 1.1).
        mu_max: Alg. 2's largest mutation factor (paper: 1.5).
        fitness_key: the per-member episode statistic to maximise (``"return"``, ``"length"``, any episode-end key).
        fitness_decay: per-batch decay of the fitness window (1: the plain mean since the member's last change).
        wait_for_fitness: leave alone a member with no finished episode since its last change (False: it ranks last).
        seed: seeds the decisions and mutations.
        beta_mut: deprecated name of ``mutation_prob``.

    Examples:
        >>> from torchrl_sapg.population.pbt_inprocess.ensemble import PolicyEnsemble
        >>> ens = PolicyEnsemble(3, 1, num_members=4, hidden_sizes=(8,))
        >>> learner = PopulationLearner(ens, {"lr": 1e-3, "clip_epsilon": 0.2, "entropy_coeff": 0.0,
        ...     "critic_coeff": 1.0, "gamma": 0.99, "lmbda": 0.95, "num_epochs": 4}, num_minibatches=1)
        >>> pbt = InProcessPBT(learner, {"lr": {"kind": "multiplicative"}}, interval_frames=1, seed=0)
        >>> report = pbt.step(frames=10, objectives=[1.0, 4.0, 3.0, 2.0])
        >>> report["replaced"], set(report["sources"]) <= {1, 2}  # bottom 30% (2 of 4) copy the top 2
        ([0, 3], True)
    """

    def __init__(
        self,
        learner: PopulationLearner,
        specs: Any,
        *,
        interval_frames: int,
        start_frames: int = 0,
        burn_in_frames: int = 0,
        selection: Literal["paper", "reference"] = "paper",
        mutation_prob: float = 0.2,
        mu_min: float = 1.1,
        mu_max: float = 1.5,
        fitness_key: str = "return",
        fitness_decay: float = 0.8,
        wait_for_fitness: bool = False,
        seed: int = 0,
        beta_mut: float | None = None,
    ):
        mutation_prob = renamed_argument("InProcessPBT", "beta_mut", "mutation_prob", beta_mut, mutation_prob, 0.2)
        self.learner = learner
        self.specs = parse_hyperparameter_specs(specs)
        unknown = [s.name for s in self.specs if s.name not in HYPERPARAMETERS]
        if unknown:
            raise ValueError(f"in-process PBT cannot mutate {unknown}; choose among {HYPERPARAMETERS}.")
        if interval_frames < 1:
            raise ValueError(f"interval_frames must be >= 1, got {interval_frames}.")
        if not 0 < fitness_decay <= 1:
            raise ValueError(f"fitness_decay must be in (0, 1], got {fitness_decay}.")
        if not isinstance(wait_for_fitness, bool):  # bool("false") would be True
            raise ValueError(f"wait_for_fitness must be True or False, got {wait_for_fitness!r}.")
        self.interval_frames = int(interval_frames)
        self.start_frames = int(start_frames)
        self.burn_in_frames = int(burn_in_frames)
        self.selection = selection
        self.mutation_prob, self.mu_min, self.mu_max = mutation_prob, mu_min, mu_max
        self.fitness_key = fitness_key
        self.fitness_decay = fitness_decay
        self.wait_for_fitness = wait_for_fitness
        self.rng = random.Random(seed)
        m = learner.ensemble.num_members
        # no off-policy rows in an in-process population; sync set by register under torchrun
        self.window = PolicyFitnessWindow(m, device=learner.hp_lr.device, decay=fitness_decay, off_policy_key=None)
        self.last_step_frames = 0
        self.last_change = [-(10**18)] * m
        self.num_steps = 0
        self.last_report: dict[str, Any] = {}
        self._warned_unranked = False  # the no-fitness-yet warning is given once

    @property
    def beta_mut(self) -> float:
        """Deprecated name of :attr:`mutation_prob`."""
        warnings.warn("InProcessPBT.beta_mut is deprecated; use InProcessPBT.mutation_prob.", DeprecationWarning,
                      stacklevel=2)
        return self.mutation_prob

    # ------------------------------------------------------------------ fitness
    def observe(self, batch: TensorDictBase) -> TensorDictBase:
        """Fold the episodes that end in a collected ``[N, T]`` batch into each member's fitness."""
        key = {"return": "episode_reward", "length": "step_count"}.get(self.fitness_key, self.fitness_key)
        self.window.observe(batch, ("next", key))  # under torchrun: every rank's episodes
        return batch

    @property
    def sync(self):
        """A ``DistributedSync`` under torchrun (set by :meth:`register`): fitness over all ranks."""
        return self.window.sync

    @sync.setter
    def sync(self, value) -> None:
        self.window.sync = value

    def fitness(self) -> torch.Tensor:
        """The ``[M]`` fitness window (under torchrun: every rank's episodes; rank 0's value broadcast)."""
        return self.window.mean()

    # ------------------------------------------------------------------ the PBT step
    def _hyper_of(self, member: int) -> dict[str, float | int]:
        return {k: (int(v[member]) if k == "num_epochs" else float(v[member])) for k, v in self.learner.hyper.items()}

    def _set_hyper(self, member: int, values: dict[str, float | int]) -> None:
        for k, v in values.items():
            self.learner.hyper[k][member] = v

    def step(self, frames: int, objectives=None) -> dict[str, Any]:
        """Rank and act now (``objectives``: ``[M]`` values, default: the tracked fitness)."""
        fit = self.fitness() if objectives is None else torch.as_tensor(objectives, dtype=torch.float64)
        objs = {i: (float(v) if math.isfinite(float(v)) else None) for i, v in enumerate(fit.tolist())}
        if not self._warned_unranked and all(v is None for v in objs.values()):
            self._warned_unranked = True
            warnings.warn(
                f"InProcessPBT: the round at {frames:,} env frames ranked no member (no {self.fitness_key!r} yet: no "
                "member has ended an episode since its last change), so it replaced and mutated nothing. Rounds act "
                "once episodes end: set start_frames (pbt.start_frames) past the frames the first episodes take "
                "(about the episode length times num_envs), or train for longer.", RuntimeWarning, stacklevel=2)
        decisions = {i: pbt_decision(i, objs, selection=self.selection, generator=self.rng) for i in objs}
        acting = {i: d for i, d in decisions.items() if frames - self.last_change[i] >= self.burn_in_frames
                  and not (self.wait_for_fitness and objs[i] is None)}
        replace = [(i, d) for i, d in acting.items() if d.action == "replace"]
        old = {i: self._hyper_of(i) for i in objs}  # mutations start from the pre-step values
        if replace:
            dst = torch.tensor([i for i, _ in replace], device=self.window.device)
            src = torch.tensor([d.source for _, d in replace], device=self.window.device)
            self.learner.exploit(dst, src)
        changed = []
        for i, d in acting.items():
            if d.action == "continue":
                continue
            base = old[d.hyperparameters_from if d.hyperparameters_from is not None else i]
            new = mutate_hyperparameters(base, self.specs, prob=self.mutation_prob, generator=self.rng,
                                         mu_min=self.mu_min, mu_max=self.mu_max)
            self._set_hyper(i, new)
            changed.append(i)
        for i in changed:
            self.last_change[i] = frames
        if changed:
            self.window.reset(changed)
        if self.sync is not None and changed:  # rank 0's weights and hyperparameters everywhere
            self.sync.broadcast_module(self.learner)
        self.num_steps += 1
        self.last_step_frames = frames
        self.last_report = {
            "frames": frames,
            "objectives": [objs[i] for i in sorted(objs)],
            "replaced": [i for i, _ in replace],
            "sources": [d.source for _, d in replace],
            "mutated": [i for i in changed if i not in {j for j, _ in replace}],
            "ranking": decisions[0].ranking,
        }
        return self.last_report

    # ------------------------------------------------------------------ trainer wiring
    def _on_post_steps(self) -> None:
        frames = self._trainer.collected_frames
        if frames >= self.start_frames and frames - self.last_step_frames >= self.interval_frames:
            self.step(frames)

    def metrics(self) -> dict[str, float]:
        fit = [v for v in self.fitness().tolist() if math.isfinite(v)]
        r = self.last_report
        return {
            "pbt/num_steps": float(self.num_steps),
            "pbt/num_replaced": float(len(r.get("replaced", []))),
            "pbt/num_mutated": float(len(r.get("mutated", []))),
            "pbt/best_objective": max(fit) if fit else float("nan"),
            "pbt/worst_objective": min(fit) if fit else float("nan"),
        }

    def _log(self, batch) -> dict[str, float]:
        return self.metrics()

    def register(self, trainer, name: str = "pbt") -> None:
        self._trainer = trainer
        self.sync = getattr(trainer, "sync", None)
        trainer.register_module(name, self)
        trainer.register_op("batch_process", self.observe)
        trainer.register_op("post_steps", self._on_post_steps)
        trainer.register_op("post_steps_log", self._log)

    def state_dict(self) -> dict[str, Any]:
        return {**self.window.state_dict(), "last_step_frames": self.last_step_frames,
                "last_change": list(self.last_change), "num_steps": self.num_steps, "rng": self.rng.getstate(),
                "last_report": dict(self.last_report)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.window.load_state_dict(state_dict)
        self.last_step_frames = state_dict["last_step_frames"]
        self.last_change = list(state_dict["last_change"])
        self.num_steps = state_dict["num_steps"]
        self.rng.setstate(state_dict["rng"])
        self.last_report = dict(state_dict["last_report"])
