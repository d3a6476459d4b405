"""A member of a decentralised DexPBT population, as a trainer hook (Alg. 1 per member)."""
from __future__ import annotations

import dataclasses
import math
import os
import random
import warnings
from typing import Any, Callable, Literal, Mapping

import torch
from tensordict import TensorDictBase
from tensordict.utils import NestedKey
from torchrl.trainers import TrainerHookBase

from torchrl_sapg.population.fitness import PolicyFitnessWindow
from torchrl_sapg.population.pbt_common import (
    HyperparameterSpec,
    mutate_hyperparameters,
    parse_hyperparameter_specs,
    resolve_callable,
)
from torchrl_sapg.population.pbt_decentralized.hyperparameters import get_hyperparameters, set_hyperparameters
from torchrl_sapg.population.pbt_decentralized.locks import MemberLock
from torchrl_sapg.population.pbt_decentralized.rounds import MemberRounds, PBTReport
from torchrl_sapg.population.pbt_decentralized.workspace import PBTWorkspace
from torchrl_sapg.runtime import renamed_argument

__all__ = ["PBTMember"]

_GROUP_CODE = {"top": 0.0, "middle": 1.0, "bottom": 2.0}


class PBTMember(MemberRounds, TrainerHookBase):
    """One member of a decentralised DexPBT population, as a trainer hook.

    ``register(trainer)`` claims the member slot and resumes at setup, accumulates the objective
    from each batch, runs a round every ``interval_frames`` and logs ``pbt/*`` metrics; the
    round (write, rank peers, continue / mutate / replace) is described in ``docs/pbt.md``.

    Args:
        workspace: a :class:`PBTWorkspace` or the shared directory.
        member_id: this member's id (needed when ``workspace`` is a path).
        hyperparameters: the mutable hyperparameters (:class:`HyperparameterSpec` s or data).
        interval_frames: env frames between rounds (N_iter; paper 2e7).
        start_frames: no decision before (N_start; paper 2e8).
        burn_in_frames: no decision for this long after a mutation / replacement (N_adapt; 5e7).
        num_members: the population size; ``None``: the members with a folder in the workspace.
        selection: ``"paper"`` or ``"reference"`` (see ``pbt_common.pbt_decision``).
        top_fraction: ``pbt_decision``'s top share.
        bottom_fraction: ``pbt_decision``'s bottom share.
        mutate_middle: ``pbt_decision``: the middle group mutates.
        gap_rule: ``pbt_decision``: replace only past the gap threshold.
        gap_sigma: ``pbt_decision``'s gap threshold in standard deviations.
        gap_abs: ``pbt_decision``'s gap threshold relative to the candidate's objective.
        sigma_drop_worst: ``pbt_decision``: worst share left out of the standard deviation.
        min_known: ``pbt_decision``: no action below this many known objectives.
        coin_hyperparameters: ``pbt_decision``: a coin picks whose hyperparameters mutate.
        mutation_prob: Alg. 2's probability beta_mut that a hyperparameter mutates (paper 0.2, reference 0.15).
        mu_min: Alg. 2's smallest mutation factor (1.1).
        mu_max: Alg. 2's largest mutation factor (1.5).
        fitness_key: the objective: an episode statistic key (``"return"``, ``"length"``, ...), a callable
            ``fitness(trainer) -> float | None`` or its import path ``"pkg.module:function"``.
        fitness_policy: which policy's statistic: an id, ``"mean"``, ``"max"`` or ``None`` (headline).
        stale_seconds: a peer whose newest record is older ranks last (``None``: never).
        mutate_initial: mutate the hyperparameters once at a fresh start.
        resume: resume from the workspace at setup.
        keep_last: :class:`PBTWorkspace`'s number of kept rounds.
        fsync: :class:`PBTWorkspace`'s fsync of records.
        seed: seeds the member's ``random.Random`` (mixed with ``member_id``).
        verbose: print one line per round.
        objective: deprecated name of ``fitness_key``.
        objective_policy: deprecated name of ``fitness_policy``.

    Examples:
        >>> import tempfile
        >>> member = PBTMember(tempfile.mkdtemp(), 0, hyperparameters={"lr": {}}, interval_frames=1000)
        >>> member.member_id, [s.name for s in member.specs]
        (0, ['lr'])
    """

    def __init__(
        self,
        workspace: PBTWorkspace | str | os.PathLike,
        member_id: int | None = None,
        *,
        hyperparameters: Any = (),
        interval_frames: int,
        start_frames: int = 0,
        burn_in_frames: int = 0,
        num_members: int | None = None,
        selection: Literal["paper", "reference"] = "paper",
        top_fraction: float = 0.3,
        bottom_fraction: float | None = None,
        mutate_middle: bool | None = None,
        gap_rule: bool | None = None,
        gap_sigma: float = 0.5,
        gap_abs: float = 0.05,
        sigma_drop_worst: float = 0.2,
        min_known: int | None = None,
        coin_hyperparameters: bool | None = None,
        mutation_prob: float = 0.2,
        mu_min: float = 1.1,
        mu_max: float = 1.5,
        fitness_key: str | Callable[[Any], float | None] = "return",
        fitness_policy: int | Literal["mean", "max"] | None = None,
        stale_seconds: float | None = None,
        mutate_initial: bool = False,
        resume: bool = True,
        keep_last: int = 10,
        fsync: bool = True,
        seed: int = 0,
        verbose: bool = True,
        objective: str | Callable[[Any], float | None] | None = None,
        objective_policy: int | Literal["mean", "max"] | None = None,
    ):
        fitness_key = renamed_argument("PBTMember", "objective", "fitness_key", objective, fitness_key, "return")
        fitness_policy = renamed_argument("PBTMember", "objective_policy", "fitness_policy", objective_policy,
                                          fitness_policy)
        workspace = _as_workspace(workspace, member_id, keep_last=keep_last, fsync=fsync)
        _check_member_args(workspace, interval_frames, start_frames, burn_in_frames, num_members, selection,
                           fitness_policy)
        self.workspace = workspace
        self.member_id = workspace.member_id
        self.specs: list[HyperparameterSpec] = parse_hyperparameter_specs(hyperparameters)
        self.interval_frames = int(interval_frames)
        self.start_frames = int(start_frames)
        self.burn_in_frames = int(burn_in_frames)
        self.num_members = None if num_members is None else int(num_members)
        self.decision_kwargs = dict(
            selection=selection, top_fraction=top_fraction, bottom_fraction=bottom_fraction,
            mutate_middle=mutate_middle, gap_rule=gap_rule, gap_sigma=gap_sigma, gap_abs=gap_abs,
            sigma_drop_worst=sigma_drop_worst, min_known=min_known, coin_hyperparameters=coin_hyperparameters,
        )
        self.mutation_prob = float(mutation_prob)
        self.mu_min = float(mu_min)
        self.mu_max = float(mu_max)
        if callable(fitness_key) or (isinstance(fitness_key, str) and ":" in fitness_key):
            self.fitness_fn = resolve_callable(fitness_key, "fitness_key")
            self.fitness_key = None
        else:
            self.fitness_fn = None
            self.fitness_key = str(fitness_key)
        self.fitness_policy = fitness_policy
        self.stale_seconds = None if stale_seconds is None else float(stale_seconds)
        self.mutate_initial = bool(mutate_initial)
        self.resume = bool(resume)
        self.verbose = bool(verbose)
        self.rng = random.Random(f"torchrl-sapg-pbt/{int(seed)}/{self.member_id}")
        self._init_state()

    def _init_state(self) -> None:
        """Counters, caches and batch keys of a fresh member."""
        self._trainer = None
        self.lock: MemberLock | None = None
        self._hp_cache: dict[str, float | int] = {}
        self.last_round: int | None = None
        self.last_change_frames: int | None = None
        self.last_objective: float | None = None
        self.last_report: PBTReport | None = None
        self.initialized = False
        self.num_rounds = 0
        self.num_decisions = 0
        self.num_mutations = 0
        self.num_replacements = 0
        self.num_skipped: dict[str, int] = {}
        self.lineage: list[dict[str, Any]] = []
        self.window: PolicyFitnessWindow | None = None  # [M] objective window, made at the first batch
        self._warned_missing = False
        # batch keys (adopted from a PopulationCollector at register)
        self.policy_id_key: NestedKey = "policy_id"
        self.episode_reward_key: NestedKey = "episode_reward"
        self.step_count_key: NestedKey = "step_count"
        self.off_policy_key: NestedKey = "off_policy"

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], *, seed: int = 0, **overrides) -> "PBTMember":
        """Build from the ``pbt`` Hydra group (``recipes/conf/pbt/decentralized.yaml``)."""
        if hasattr(cfg, "_get_node"):  # an OmegaConf node: mandatory '???' values come back as '???'
            from omegaconf import OmegaConf

            cfg = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
        c = {str(k): v for k, v in cfg.items()}
        c.pop("mode", None)  # the recipe's switch
        c.pop("enabled", None)  # its name in configs saved before pbt.mode
        for key in ("interval_frames", "start_frames", "burn_in_frames"):
            if c.get(key) is not None:
                c[key] = int(float(c[key]))
        if c.get("workspace") in (None, "", "???"):
            raise ValueError("pbt.workspace is required: the shared directory of the population.")
        if c.get("member_id") in (None, "???"):
            raise ValueError("pbt.member_id is required (0 .. num_members - 1).")
        workspace = c.pop("workspace")
        member_id = int(c.pop("member_id"))
        c["hyperparameters"] = c.get("hyperparameters") or {}
        c.update(overrides)
        return cls(workspace, member_id, seed=seed, **c)

    # ------------------------------------------------------------------ hyperparameters
    def current_hyperparameters(self) -> dict[str, float | int]:
        """The mutable hyperparameters in effect (read live from the trainer)."""
        if self._trainer is None:
            return dict(self._hp_cache)
        values = get_hyperparameters(self._trainer, self._specs_with_cache())
        self._hp_cache.update(values)
        return values

    def _specs_with_cache(self) -> list[HyperparameterSpec]:
        # a setter-only hyperparameter (no getter) reports the last value PBT set
        out = []
        for s in self.specs:
            if s.getter is None and s.setter is not None and s.name in self._hp_cache:
                s = dataclasses.replace(s, init=self._hp_cache[s.name])
            out.append(s)
        return out

    def apply_hyperparameters(self, values: Mapping[str, float | int]) -> None:
        """Set ``values`` on the trainer (in place) and remember them."""
        by_name = {s.name: s for s in self.specs}
        values = {k: (by_name[k].cast(v) if k in by_name else v) for k, v in values.items()}
        if self._trainer is not None:
            set_hyperparameters(self._trainer, values, self.specs)
        self._hp_cache.update(values)

    def mutate(self, values: Mapping[str, float | int]) -> dict[str, float | int]:
        """Alg. 2 on ``values`` with this member's generator and settings."""
        return mutate_hyperparameters(values, self.specs, prob=self.mutation_prob, generator=self.rng,
                                      mu_min=self.mu_min, mu_max=self.mu_max)

    # ------------------------------------------------------------------ objective
    def _objective_column(self, key: str) -> NestedKey:
        if key == "return":
            name = self.episode_reward_key
        elif key == "length":
            name = self.step_count_key
        else:
            name = key
        return ("next", name) if isinstance(name, str) else ("next", *name)

    @torch.no_grad()
    @torch.no_grad()
    def observe(self, batch: TensorDictBase) -> None:
        """Add the episodes that end in ``batch`` to the objective window (statistic objectives)."""
        if self.fitness_key is None:
            return
        keys = batch.keys(True, True)
        column = self._objective_column(self.fitness_key)
        if column not in keys or ("next", "done") not in keys:
            if not self._warned_missing:
                self._warned_missing = True
                warnings.warn(
                    f"PBT fitness_key {self.fitness_key!r}: the batch has no {column!r} (or ('next', 'done')); "
                    "the objective stays unknown. Use a PopulationCollector, or an env that writes the key "
                    "at episode end, or an objective callable.",
                    stacklevel=2,
                )
            return
        device = batch.get(column).device
        if self.window is None or self.window.device != device:
            self.window = PolicyFitnessWindow(self._num_policies(), device=device, all_reduce_on_read=True)
        self.window.off_policy_key = self.off_policy_key
        self.window.observe(batch, column, policy_id_key=self.policy_id_key)

    def _num_policies(self) -> int:
        collector = getattr(self._trainer, "collector", None)
        return int(getattr(collector, "num_policies", 1) or 1)

    def _window_objective(self) -> float | None:
        if self.window is None:
            return None
        s, c = self.window.totals()
        s, c = s.cpu(), c.cpu()
        policy = self.fitness_policy
        if policy is None:
            policy = int(getattr(self._trainer, "headline_policy", 0) or 0)
        if policy == "mean":
            total = float(c.sum())
            return float(s.sum()) / total if total > 0 else None
        if policy == "max":
            means = [float(s[i] / c[i]) for i in range(len(c)) if c[i] > 0]
            return max(means) if means else None
        policy = int(policy)
        if not 0 <= policy < len(c):
            raise ValueError(f"fitness_policy={policy} is outside the {len(c)} policies.")
        return float(s[policy] / c[policy]) if c[policy] > 0 else None

    def compute_objective(self) -> float | None:
        """This round's objective: the callable's value, else the window mean (the previous
        round's value when no episode ended in the window)."""
        if self.fitness_fn is not None:
            value = self.fitness_fn(self._trainer)
            value = None if value is None else float(value)
        else:
            value = self._window_objective()
        if value is not None and not math.isfinite(value):
            value = None
        if value is None:
            value = self.last_objective
        return value


    def _reset_window(self) -> None:
        if self.window is not None:
            self.window.reset()

    # ------------------------------------------------------------------ trainer hook
    def register(self, trainer, name: str = "pbt") -> None:
        """Wire into an :class:`~torchrl_sapg.trainers.OnPolicyTrainer` (see the class doc).

        Register it after the algorithm's own hooks, before ``trainer.load``/``train``.
        """
        collector = getattr(trainer, "collector", None)
        for attr in ("policy_id_key", "episode_reward_key", "step_count_key"):
            if hasattr(collector, attr):
                setattr(self, attr, getattr(collector, attr))
        self._trainer = trainer
        self.current_hyperparameters()  # fail early on a hyperparameter the trainer does not have
        trainer.register_module(name, self)
        trainer.register_op("setup", self._on_setup)
        trainer.register_op("batch_process", self._on_batch)
        trainer.register_op("post_steps", self._on_post_steps)
        trainer.register_op("post_steps_log", self._on_log)

    def _on_setup(self) -> None:
        self.claim()
        if self.resume:
            self.resume_from_workspace()
        trainer = self._trainer
        if self.last_round is None:
            self.last_round = int(trainer.collected_frames) // self.interval_frames
        if not self.initialized:
            self.initialized = True
            if self.mutate_initial and int(trainer.collected_frames) == 0:
                # the same draw on every rank: the generator is seeded identically
                self.apply_hyperparameters(self.mutate(self.current_hyperparameters()))

    def _on_batch(self, batch: TensorDictBase) -> TensorDictBase:
        self.observe(batch)
        return batch

    def _on_post_steps(self) -> None:
        frames = int(self._trainer.collected_frames)
        k = frames // self.interval_frames
        if self.last_round is None:
            self.last_round = (frames - 1) // self.interval_frames
        if k > self.last_round:
            self.run_round(k)

    def _on_log(self, batch: TensorDictBase) -> dict[str, float]:
        return {k: v for k, v in self.metrics().items() if not math.isnan(v)}

    def metrics(self) -> dict[str, float]:
        """``pbt/*`` scalars: the last round and the hyperparameters in effect."""
        r = self.last_report
        nan = float("nan")
        known = [v for v in (r.objectives.values() if r else []) if v is not None]
        out = {
            "pbt/objective": nan if self.last_objective is None else float(self.last_objective),
            "pbt/rank": nan if r is None or r.rank is None else float(r.rank),
            "pbt/group": nan if r is None or r.group is None else _GROUP_CODE[r.group],
            "pbt/num_known": nan if r is None or r.num_known is None else float(r.num_known),
            "pbt/best_objective": max(known) if known else nan,
            "pbt/replaced": float(r is not None and r.action == "replace"),
            "pbt/mutated": float(r is not None and r.action == "mutate"),
            "pbt/source": nan if r is None or r.source is None else float(r.source),
            "pbt/num_rounds": float(self.num_rounds),
            "pbt/num_decisions": float(self.num_decisions),
            "pbt/num_mutations": float(self.num_mutations),
            "pbt/num_replacements": float(self.num_replacements),
        }
        for name, value in self._hp_cache.items():
            out[f"pbt/hp/{name}"] = float(value)
        return out

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {
            "member_id": self.member_id,
            "hyperparameters": self.current_hyperparameters(),
            "last_round": self.last_round,
            "last_change_frames": self.last_change_frames,
            "last_objective": self.last_objective,
            "initialized": self.initialized,
            "num_rounds": self.num_rounds,
            "num_decisions": self.num_decisions,
            "num_mutations": self.num_mutations,
            "num_replacements": self.num_replacements,
            "num_skipped": dict(self.num_skipped),
            "lineage": list(self.lineage),
            "rng": self.rng.getstate(),
            "window": None if self.window is None else (self.window.sums.clone(), self.window.counts.clone()),
            "last_report": None if self.last_report is None else self.last_report.to_dict(),
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        if int(state_dict["member_id"]) != self.member_id:
            warnings.warn(
                f"loading PBT state of member {state_dict['member_id']} into member {self.member_id}: the "
                "identity, counters and mutation RNG stay this member's; only the hyperparameters are taken.",
                stacklevel=2,
            )
            self.apply_hyperparameters(dict(state_dict["hyperparameters"]))
            return
        self.last_round = state_dict["last_round"]
        self.last_change_frames = state_dict["last_change_frames"]
        self.last_objective = state_dict["last_objective"]
        self.initialized = bool(state_dict["initialized"])
        self.num_rounds = int(state_dict["num_rounds"])
        self.num_decisions = int(state_dict["num_decisions"])
        self.num_mutations = int(state_dict["num_mutations"])
        self.num_replacements = int(state_dict["num_replacements"])
        self.num_skipped = dict(state_dict["num_skipped"])
        self.lineage = list(state_dict["lineage"])
        self.rng.setstate(state_dict["rng"])
        window = state_dict.get("window")
        if window is None:
            self.window = None
        else:
            self.window = PolicyFitnessWindow(len(window[0]), device=window[0].device, all_reduce_on_read=True)
            self.window.load_state_dict(window)
        report = state_dict.get("last_report")
        self.last_report = None if report is None else PBTReport.from_dict(report)
        # GAE's gamma / lambda, num_epochs, env coefficients live outside the trainer's state dict
        self.apply_hyperparameters(dict(state_dict["hyperparameters"]))

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(member_id={self.member_id}, workspace={str(self.workspace.root)!r}, "
                f"interval_frames={self.interval_frames}, hyperparameters={[s.name for s in self.specs]}, "
                f"rounds={self.num_rounds})")


def _as_workspace(workspace, member_id, *, keep_last: int, fsync: bool) -> PBTWorkspace:
    if isinstance(workspace, PBTWorkspace):
        if member_id is not None and int(member_id) != workspace.member_id:
            raise ValueError(f"member_id={member_id} disagrees with the workspace's {workspace.member_id}.")
        return workspace
    if member_id is None:
        raise ValueError("give member_id when workspace is a path.")
    return PBTWorkspace(workspace, int(member_id), keep_last=keep_last, fsync=fsync)


def _check_member_args(workspace, interval_frames, start_frames, burn_in_frames, num_members, selection,
                       fitness_policy) -> None:
    if not int(interval_frames) > 0:
        raise ValueError(f"interval_frames must be > 0, got {interval_frames}.")
    for name, value in (("start_frames", start_frames), ("burn_in_frames", burn_in_frames)):
        if int(value) < 0:
            raise ValueError(f"{name} must be >= 0, got {value}.")
    if num_members is not None and int(num_members) <= workspace.member_id:
        raise ValueError(f"member_id={workspace.member_id} must be < num_members={num_members}.")
    if selection not in ("paper", "reference"):
        raise ValueError(f"selection={selection!r}: choose 'paper' or 'reference'.")
    if isinstance(fitness_policy, str) and fitness_policy not in ("mean", "max"):
        raise ValueError(f"fitness_policy={fitness_policy!r}: an int, 'mean', 'max' or None.")
