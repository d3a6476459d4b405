"""Deterministic evaluation of every policy of a population."""
from __future__ import annotations

import torch
from tensordict import TensorDict
from torchrl.envs import EnvBase, ExplorationType, set_exploration_type

from torchrl_sapg.collectors.population import prepare_population_env


@torch.no_grad()
def evaluate_policies(
    env: EnvBase,
    actor,
    *,
    num_policies: int,
    deterministic: bool = True,
    max_steps: int = 100_000,
) -> TensorDict:
    """Run one episode in every env and report per-policy means as a ``[num_policies]`` TensorDict.

    Build ``env`` with ``num_envs = num_policies * E`` to get ``E`` episodes per policy (policy
    ``i`` owns the ``i``-th block of envs). Actions are the distribution's mode when
    ``deterministic``. Only each env's first episode counts, so short episodes are not
    over-represented. Keys: ``"return"``, ``"length"`` (and ``"success"`` if the env reports it).

    Examples:
        >>> from torchrl_sapg.envs import make_env
        >>> from torchrl_sapg.modules import make_actor_critic
        >>> ac = make_actor_critic(3, 1, num_policies=2, latent_dim=4)
        >>> stats = evaluate_policies(make_env("pendulum", 4, seed=0), ac.actor, num_policies=2)
        >>> stats["return"].shape
        torch.Size([2])
    """
    env = prepare_population_env(env, num_policies)
    n = env.batch_size[0]
    device = env.device or torch.device("cpu")
    finished = torch.zeros(n, dtype=torch.bool, device=device)
    returns = torch.zeros(n, device=device)
    lengths = torch.zeros(n, device=device)
    has_success = "success" in env.observation_spec.keys(True, True)
    success = torch.zeros(n, device=device)
    mode = ExplorationType.DETERMINISTIC if deterministic else ExplorationType.RANDOM
    td = env.reset()
    with set_exploration_type(mode):
        for _ in range(max_steps):
            td = actor(td)
            td, next_td = env.step_and_maybe_reset(td)
            nxt = td.get("next")
            done = nxt.get("done").reshape(n)
            new = done & ~finished
            returns = torch.where(new, nxt.get("episode_reward").reshape(n).float(), returns)
            lengths = torch.where(new, nxt.get("step_count").reshape(n).float(), lengths)
            if has_success:
                success = torch.where(new, nxt.get("success").reshape(n).float(), success)
            finished |= done
            if bool(finished.all()):
                break
            td = next_td
        else:
            raise RuntimeError(f"evaluation did not finish every episode within max_steps={max_steps}.")
    per = n // num_policies
    out = {"return": returns.view(num_policies, per).mean(1), "length": lengths.view(num_policies, per).mean(1)}
    if has_success:
        out["success"] = success.view(num_policies, per).mean(1)
    return TensorDict(out, [num_policies])
