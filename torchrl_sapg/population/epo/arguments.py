"""Argument checks of :class:`~torchrl_sapg.population.epo.GeneticLatentScheduler`."""
from __future__ import annotations

import math

from torch import nn

__all__ = ["check_choices", "check_latents", "check_numbers", "check_params"]


def check_latents(latents, weight) -> None:
    """``latents.weight`` is a ``[M, D >= 1]`` ``nn.Parameter``."""
    if not isinstance(weight, nn.Parameter) or weight.ndim != 2:
        raise TypeError(
            "latents must be a PolicyLatents (a module whose .weight is a [M, D] nn.Parameter), "
            f"got {type(latents).__name__} with weight={type(weight).__name__}."
        )
    if weight.shape[1] < 1:
        raise ValueError(
            "latents has latent_dim=0: there are no genes to evolve. Build the actor-critic "
            "with latent_dim > 0 (e.g. make_actor_critic(..., latent_dim=32))."
        )


def check_choices(M, leader_id, num_elites, trigger, missing_fitness, log_std_mode) -> None:
    """``leader_id``, ``num_elites`` and the string options are valid for ``M`` policies."""
    if not isinstance(leader_id, int) or not 0 <= leader_id < M:
        raise ValueError(f"leader_id={leader_id!r} is out of range for {M} policies: use 0..{M - 1}.")
    followers = M - 1
    if not isinstance(num_elites, int) or not 2 <= num_elites <= followers - 1:
        raise ValueError(
            f"num_elites={num_elites!r} is out of range: with {M} policies there are {followers} "
            f"followers (the master, row {leader_id}, is never ranked); crossover needs at least 2 "
            f"elites and at least one follower must be replaced, so 2 <= num_elites <= {followers - 1}"
            + (" — EPO needs num_policies >= 4." if followers - 1 < 2 else ".")
        )
    if trigger not in ("spread", "interval"):
        raise ValueError(f"trigger={trigger!r}: choose 'spread' (Eq. 3) or 'interval'.")
    if missing_fitness not in ("skip", "rank_last"):
        raise ValueError(f"missing_fitness={missing_fitness!r}: choose 'skip' or 'rank_last'.")
    if log_std_mode not in ("parents_mean", "keep"):
        raise ValueError(f"log_std_mode={log_std_mode!r}: choose 'parents_mean' or 'keep'.")


def check_numbers(mutation_std, gamma, min_spread, warmup_frames, interval_frames, trigger, fitness_decay) -> None:
    """The numeric options are finite, non-negative, and consistent with ``trigger``."""
    for name, value in (("mutation_std", mutation_std), ("gamma", gamma), ("min_spread", min_spread),
                        ("warmup_frames", warmup_frames), ("interval_frames", interval_frames)):
        if not math.isfinite(float(value)) or float(value) < 0:
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}.")
    if trigger == "interval" and not interval_frames > 0:
        raise ValueError("trigger='interval' needs interval_frames > 0 (the period of the genetic step).")
    if not 0 < float(fitness_decay) <= 1:
        raise ValueError(f"fitness_decay must be in (0, 1], got {fitness_decay!r}.")


def check_params(M, weight, log_std, optimizer) -> None:
    """``log_std`` is ``[M, A]`` and the optimizer holds the parameters the step rewrites."""
    if log_std is not None:
        if not isinstance(log_std, nn.Parameter) or log_std.ndim != 2 or log_std.shape[0] != M:
            raise ValueError(
                f"log_std must be the actor's [M={M}, action_dim] nn.Parameter "
                f"(LatentConditionedActor.log_std), got {type(log_std).__name__} of shape "
                f"{tuple(getattr(log_std, 'shape', ()))}."
            )
    if optimizer is not None:
        held = [p for group in optimizer.param_groups for p in group["params"]]
        for name, param in (("latents.weight", weight), ("log_std", log_std)):
            if param is not None and not any(p is param for p in held):
                raise ValueError(
                    f"the optimizer does not hold {name} (the very Parameter object): the genetic "
                    "step rewrites its rows in place and resets their optimiser state, and the rows "
                    "must keep learning. Build the optimizer over loss_module.parameters() (or pass "
                    "optimizer=None)."
                )
