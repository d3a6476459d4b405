"""Deterministic evaluation of every policy of a population."""
from __future__ import annotations

import torch
from tensordict import TensorDict
from torchrl.envs import EnvBase, ExplorationType, InitTracker, Transform, TransformedEnv, set_exploration_type
from torchrl.modules import GRUModule, LSTMModule

from torchrl_sapg.collectors.population import prepare_population_env
from torchrl_sapg.modules.recurrent import hidden_state_keys


def _recurrent_env_needs(actor) -> tuple[list, list[Transform]]:
    """The keys a recurrent ``actor`` reads from the env (``"is_init"`` and its hidden states)
    and the transforms that write them; ``([], [])`` for a feed-forward actor.

    Covers TorchRL's ``LSTMModule`` / ``GRUModule`` (e.g. :class:`RecurrentLatentActor`) and
    the recurrent population's :class:`~torchrl_sapg.population.ensemble.RecurrentEnsembleActor`."""
    ensemble = getattr(actor, "ensemble", None)
    if getattr(ensemble, "is_recurrent", False):
        return ["is_init", *hidden_state_keys("actor")], list(ensemble.env_transforms())
    cells = [m for m in actor.modules() if isinstance(m, (LSTMModule, GRUModule))]
    if not cells:
        return [], []
    keys = list(dict.fromkeys(k for m in cells for k in m.in_keys[1:]))  # hidden states, then "is_init"
    return keys, [InitTracker(), *(m.make_tensordict_primer() for m in cells)]


def prepare_recurrent_env(env: EnvBase, actor) -> EnvBase:
    """Append ``InitTracker`` and the hidden-state primers a recurrent ``actor`` needs unless
    ``env`` already has them (a feed-forward actor: ``env`` unchanged).

    With them the hidden state is zero at every (partial) reset, marked by ``"is_init"``, and
    carried from step to step by ``step_mdp``; without the primer TorchRL's recurrent modules
    would silently restart from zeros at every step. ``env`` must have all of the keys or none.

    Examples:
        >>> from torchrl_sapg.envs import make_env
        >>> from torchrl_sapg.modules.recurrent import make_recurrent_actor_critic
        >>> ac = make_recurrent_actor_critic(3, 1, hidden_sizes=(8,), lstm_hidden=4)
        >>> env = prepare_recurrent_env(make_env("pendulum", 4, seed=0), ac.actor)
        >>> sorted(k for k in env.reset().keys() if k.startswith(("is_", "recurrent")))
        ['is_init', 'recurrent_state_c_actor', 'recurrent_state_h_actor']
    """
    keys, transforms = _recurrent_env_needs(actor)
    if not keys:
        return env
    present = set(env.observation_spec.keys(True, True)) | set(env.state_spec.keys(True, True))
    missing = [k for k in keys if k not in present]
    if not missing:
        return env
    if len(missing) < len(keys):
        raise ValueError(
            f"the env writes some of the recurrent actor's inputs but not {missing}: add InitTracker and the "
            "hidden-state primers together (add_recurrent_transforms(env, agent), or "
            "RecurrentPolicyEnsemble.env_transforms()), or leave them all to evaluate_policies."
        )
    for t in transforms:
        env = env.append_transform(t) if isinstance(env, TransformedEnv) else TransformedEnv(env, t)
    return env


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
    over-represented. Keys: ``"return"``, ``"length"`` (and ``"success"``, ``"true_objective"`` where the env reports them,
    read at the episode's end).

    A recurrent actor (TorchRL ``LSTMModule`` inside, or a ``RecurrentEnsembleActor``) runs one
    step at a time from the hidden state the env carries: ``InitTracker`` and the hidden-state
    primers (:func:`prepare_recurrent_env`) are appended unless ``env`` already has them, so the
    state is reset at every episode start and passed on between steps.

    Examples:
        >>> from torchrl_sapg.envs import make_env
        >>> from torchrl_sapg.modules import make_actor_critic
        >>> ac = make_actor_critic(3, 1, num_policies=2, latent_dim=4)
        >>> stats = evaluate_policies(make_env("pendulum", 4, seed=0), ac.actor, num_policies=2)
        >>> stats["return"].shape
        torch.Size([2])
        >>> from torchrl_sapg.modules.recurrent import make_recurrent_actor_critic
        >>> rac = make_recurrent_actor_critic(3, 1, num_policies=2, hidden_sizes=(8,), lstm_hidden=4)
        >>> evaluate_policies(make_env("pendulum", 4, seed=0), rac.actor, num_policies=2)["return"].shape
        torch.Size([2])
    """
    env = prepare_recurrent_env(prepare_population_env(env, num_policies), actor)
    n = env.batch_size[0]
    device = env.device or torch.device("cpu")
    finished = torch.zeros(n, dtype=torch.bool, device=device)
    returns = torch.zeros(n, device=device)
    lengths = torch.zeros(n, device=device)
    obs_keys = set(env.observation_spec.keys(True, True))
    extra_keys = [k for k in ("success", "true_objective") if k in obs_keys]
    extra = {k: torch.zeros(n, device=device) for k in extra_keys}
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
            for k in extra_keys:
                extra[k] = torch.where(new, nxt.get(k).reshape(n).float(), extra[k])
            finished |= done
            if bool(finished.all()):
                break
            td = next_td
        else:
            raise RuntimeError(f"evaluation did not finish every episode within max_steps={max_steps}.")
    per = n // num_policies
    out = {"return": returns.view(num_policies, per).mean(1), "length": lengths.view(num_policies, per).mean(1)}
    for k in extra_keys:
        out[k] = extra[k].view(num_policies, per).mean(1)
    return TensorDict(out, [num_policies])
