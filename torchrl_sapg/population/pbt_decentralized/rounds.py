"""The round of a decentralised PBT member: write, read peers, decide, adopt (Alg. 1)."""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from torchrl_sapg.population.pbt_common import PBTDecision, pbt_decision
from torchrl_sapg.population.pbt_decentralized.locks import MemberLock, WorkspaceBusyError
from torchrl_sapg.population.pbt_decentralized.records import broadcast_object, dist_rank_world
from torchrl_sapg.population.pbt_decentralized.workspace import adopt_checkpoint

__all__ = ["MemberRounds", "PBTReport"]


@dataclasses.dataclass
class PBTReport:
    """What one PBT round of a :class:`PBTMember` saw and did.

    Attributes:
        iteration: the round index (``frames // interval_frames``).
        frames: env frames at the round.
        objective: this member's objective (``None``: unknown).
        action: ``"continue"``, ``"mutate"``, ``"replace"`` or ``"skip"`` (no decision made).
        reason: the :class:`~torchrl_sapg.population.pbt_common.PBTDecision` reason, or why the round
            was skipped: ``"start_delay"``, ``"burn_in"``, ``"write_failed"``,
            ``"source_unreadable"``.
        group, rank, num_members, num_known: the ranking (``None`` when skipped).
        source, source_iteration: the member (and its round) whose weights were loaded.
        hyperparameters_before / hyperparameters_after: the values in effect before / after.
        changed: names whose value changed.
        objectives: every member's objective used for ranking.
        error: the exception text of a failed write or load.
    """

    iteration: int
    frames: int
    objective: float | None
    action: str
    reason: str
    group: str | None = None
    rank: int | None = None
    num_members: int | None = None
    num_known: int | None = None
    source: int | None = None
    source_iteration: int | None = None
    hyperparameters_before: dict[str, float | int] = dataclasses.field(default_factory=dict)
    hyperparameters_after: dict[str, float | int] = dataclasses.field(default_factory=dict)
    changed: list[str] = dataclasses.field(default_factory=list)
    objectives: dict[int, float | None] = dataclasses.field(default_factory=dict)
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "PBTReport":
        data = dict(data)
        data["objectives"] = {int(k): v for k, v in data.get("objectives", {}).items()}
        return cls(**data)


_GROUP_CODE = {"top": 0.0, "middle": 1.0, "bottom": 2.0}


class MemberRounds:
    """The round, claim and resume logic of :class:`~torchrl_sapg.population.pbt_decentralized.PBTMember`."""

    def _population(self) -> list[int]:
        if self.num_members is not None:
            return list(range(self.num_members))
        return self.workspace.members()

    def claim(self) -> MemberLock | None:
        """Take this member's slot in the workspace (:meth:`PBTWorkspace.claim`) on rank 0.

        Collective under ``torch.distributed``: every rank raises :class:`WorkspaceBusyError`
        when the slot is taken. Returns the lock on rank 0, ``None`` on the other ranks.
        """
        if self.lock is not None and (self.lock.held or not self.lock.enforced):
            return self.lock  # held, or the filesystem cannot lock (warned once)
        rank, _ = dist_rank_world()
        error = None
        if rank == 0:
            try:
                self.lock = self.workspace.claim()
            except WorkspaceBusyError as err:
                error = str(err)
        error = broadcast_object(error)
        if error is not None:
            raise WorkspaceBusyError(error)
        if rank == 0 and self.verbose and self.lock.removed_temp_files:
            names = self.lock.removed_temp_files
            print(f"[pbt member {self.member_id}] removed {len(names)} temp file(s) a killed writer left in "
                  f"{self.workspace.member_dir()}: {', '.join(names)}", flush=True)
        return self.lock

    def run_round(self, iteration: int | None = None) -> PBTReport:
        """Run one PBT round now (``post_steps`` calls this every ``interval_frames``)."""
        trainer = self._trainer
        if trainer is None:
            raise RuntimeError("register the PBTMember on a trainer first (member.register(trainer)).")
        rank, world = dist_rank_world()
        if world == 1:
            self.claim()  # a round forced before train(): the setup op claims otherwise
        frames = int(trainer.collected_frames)
        k = frames // self.interval_frames if iteration is None else int(iteration)
        objective = self.compute_objective()
        self.last_objective = objective
        self.last_round = k
        self.num_rounds += 1
        before = self.current_hyperparameters()
        plan: dict[str, Any] = {}
        state = trainer.checkpoint_state()  # on every rank: a collective under a torchrun trainer (sync)
        if rank == 0:
            plan = self._decide(k, frames, objective, before, state)
        plan = broadcast_object(plan)
        report: PBTReport = plan["report"]
        if plan.get("state") is not None:
            adopt_checkpoint(trainer, plan["state"], keep_modules=self._own_module_names())
            self.num_replacements += 1
            self.lineage.append({"frames": frames, "iteration": k, "source": report.source,
                                 "source_iteration": report.source_iteration})
            self.lineage = self.lineage[-100:]
            self.last_objective = plan.get("source_objective", objective)
        if plan.get("new_hyperparameters") is not None:
            self.apply_hyperparameters(plan["new_hyperparameters"])
            if report.action == "mutate":
                self.num_mutations += 1
            self.last_change_frames = frames
        if report.action in ("continue", "mutate", "replace"):
            self.num_decisions += 1
        else:
            self.num_skipped[report.reason] = self.num_skipped.get(report.reason, 0) + 1
        report.hyperparameters_after = self.current_hyperparameters()
        report.changed = [k2 for k2 in report.hyperparameters_after
                          if report.hyperparameters_after[k2] != before.get(k2)]
        self._reset_window()
        self.last_report = report
        if self.verbose and rank == 0:
            print(self._describe(report), flush=True)
        return report

    def _own_module_names(self) -> list[str]:
        names = [name for name, module in getattr(self._trainer, "_modules", {}).items() if module is self]
        return names or ["pbt"]

    def _decide(self, k: int, frames: int, objective: float | None, before: dict, state: dict) -> dict[str, Any]:
        """Rank 0: write ``state``, read, decide, and (for a replacement) load the source checkpoint."""
        ws = self.workspace
        report = PBTReport(iteration=k, frames=frames, objective=objective, action="skip", reason="",
                           hyperparameters_before=dict(before))
        try:
            # the round runs in post_steps, before OnPolicyTrainer counts the finished iteration
            if "iteration" in state:
                state["iteration"] = int(state["iteration"]) + 1
            ws.write(k, state=state, objective=objective, frames=frames, hyperparameters=before,
                     trainer_iteration=state.get("iteration"),
                     extra={"replacements": self.num_replacements,
                            "last_source": [self.lineage[-1]["source"], self.lineage[-1]["source_iteration"]]
                            if self.lineage else None})
        except Exception as err:  # a full disk or a vanished mount must not kill training
            report.reason, report.error = "write_failed", f"{type(err).__name__}: {err}"
            return {"report": report}
        try:
            ws.prune()
        except Exception:
            pass
        if frames < self.start_frames:
            report.reason = "start_delay"
            return {"report": report}
        if self.last_change_frames is not None and frames - self.last_change_frames < self.burn_in_frames:
            report.reason = "burn_in"
            return {"report": report}
        members = self._population()
        if self.member_id not in members:
            members = sorted(set(members) | {self.member_id})
        peers = [m for m in members if m != self.member_id]
        records = ws.peer_records(k, peers, stale_seconds=self.stale_seconds)
        objectives: dict[int, float | None] = {m: (None if r is None else r["objective"]) for m, r in records.items()}
        objectives[self.member_id] = objective
        decision: PBTDecision = pbt_decision(self.member_id, objectives, generator=self.rng, **self.decision_kwargs)
        report.action, report.reason = decision.action, decision.reason
        report.group, report.rank = decision.group, decision.rank
        report.num_members, report.num_known = decision.num_members, decision.num_known
        report.objectives = dict(objectives)
        plan: dict[str, Any] = {"report": report}
        if decision.action == "mutate":
            plan["new_hyperparameters"] = self.mutate(before)
        elif decision.action == "replace":
            src = records[decision.source]
            try:
                peer_state = ws.load_checkpoint(src)
            except Exception as err:  # pruned or unreadable: keep training as we are
                report.action, report.reason = "skip", "source_unreadable"
                report.error = f"{type(err).__name__}: {err}"
                return plan
            base = dict(before)
            if decision.hyperparameters_from == decision.source:
                base.update({k2: v for k2, v in src.get("hyperparameters", {}).items() if k2 in base})
            plan["state"] = peer_state
            plan["new_hyperparameters"] = self.mutate(base)
            plan["source_objective"] = src["objective"]
            report.source, report.source_iteration = decision.source, src["iteration"]
        return plan

    def _describe(self, r: PBTReport) -> str:
        obj = "n/a" if r.objective is None else f"{r.objective:.4g}"
        head = f"[pbt member {self.member_id}] round {r.iteration} @ {r.frames} frames: objective {obj}"
        if r.action == "skip":
            return f"{head}; no decision ({r.reason}{': ' + r.error if r.error else ''})"
        what = r.action
        if r.action == "replace":
            what = f"replace with member {r.source} (round {r.source_iteration})"
        changes = ", ".join(f"{n} {r.hyperparameters_before.get(n)!r}->{r.hyperparameters_after[n]!r}" for n in r.changed)
        return (f"{head}; rank {r.rank + 1}/{r.num_members} ({r.group}, {r.num_known} known) -> {what}"
                + (f"; {changes}" if changes else ""))

    # ------------------------------------------------------------------ resume
    def resume_from_workspace(self) -> str | None:
        """Load this member's newest readable workspace checkpoint if it is ahead of the trainer.

        Returns the checkpoint path loaded, or ``None``. Unreadable records and checkpoints (a
        kill mid-write on a filesystem without atomic renames, a truncated copy) are skipped with
        a warning: the next older one is tried.
        """
        trainer = self._trainer
        rank, world = dist_rank_world()
        state = None
        loaded = None
        if rank == 0:
            state, loaded = self._newest_loadable_state(int(trainer.collected_frames))
        state, loaded = broadcast_object((state, loaded))
        if state is None:
            return None
        self._load_trainer_state(state, loaded)
        if rank == 0:
            print(f"[pbt member {self.member_id}] resumed from workspace checkpoint {loaded} at "
                  f"{trainer.collected_frames} frames (round {self.last_round})", flush=True)
        return loaded

    def _newest_loadable_state(self, frames: int) -> tuple[dict[str, Any] | None, str | None]:
        """The newest own checkpoint ahead of ``frames`` that loads, and its path."""
        ws = self.workspace
        max_iteration = None
        while True:
            rec = ws.newest_record(max_iteration=max_iteration)
            if rec is None or rec["frames"] <= frames:
                return None, None
            path = ws.resolve(rec["checkpoint"])
            try:
                return ws.load_checkpoint(rec), str(path)
            except Exception as err:
                print(f"[pbt member {self.member_id}] skipping unreadable checkpoint {path}: {err}", flush=True)
                max_iteration = rec["iteration"] - 1

    def _load_trainer_state(self, state: dict[str, Any], path: str) -> None:
        """``OnPolicyTrainer.restore`` of a state already read (every rank has it in memory)."""
        self._trainer.restore(state, source=str(path))
