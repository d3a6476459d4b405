"""Build the latent-conditioned actor-critic of a population from plain arguments."""
from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
from tensordict.utils import NestedKey

from torchrl_sapg.modules.actor_critic import LatentConditionedActor, LatentConditionedValue
from torchrl_sapg.modules.latents import PolicyLatents
from torchrl_sapg.modules.normalization import ObservationNormalizer
from torchrl_sapg.runtime import renamed_argument

DEFAULT_HIDDEN_SIZES = (256, 128, 64)


class ActorCritic(NamedTuple):
    actor: LatentConditionedActor
    critic: LatentConditionedValue
    latents: PolicyLatents | None
    obs_normalizer: ObservationNormalizer | None
    critic_obs_normalizer: ObservationNormalizer | None = None  # asymmetric critic only


def make_actor_critic(
    observation_dim: int,
    action_dim: int,
    *,
    num_policies: int = 1,
    latent_dim: int = 0,
    latent_init_std: float = 1.0,
    hidden_sizes: Sequence[int] = DEFAULT_HIDDEN_SIZES,
    critic_hidden_sizes: Sequence[int] | None = None,
    activation: str = "elu",
    normalize_observations: bool = True,
    init_log_std: float = 0.0,
    input_init: str = "split",
    device: torch.device | str = "cpu",
    observation_key: NestedKey = "observation",
    policy_id_key: NestedKey = "policy_id",
    critic_observation_key: NestedKey | None = None,
    critic_observation_dim: int | None = None,
    actor_hidden_sizes: Sequence[int] | None = None,
) -> ActorCritic:
    """Actor and critic sharing one :class:`PolicyLatents` table and one observation normaliser.

    With ``num_policies=1, latent_dim=0`` this is the plain PPO actor-critic; SAPG uses
    ``num_policies=M`` and ``latent_dim`` 16 or 32 (Sec. 4.2). Why ``latent_init_std`` and
    ``input_init`` exist is in docs/sapg.md.

    Args:
        observation_dim: size of ``observation_key``.
        action_dim: size of the action.
        num_policies: M, the policies sharing the backbone.
        latent_dim: size of each policy's latent ``phi_j`` (0: no latent).
        latent_init_std: std of the latents' initial draw (how different the M policies start).
        hidden_sizes: the actor MLP's layer widths.
        critic_hidden_sizes: the critic MLP's layer widths (``None``: ``hidden_sizes``).
        activation: hidden-layer activation (a ``torch.nn`` name, lower case).
        normalize_observations: add a running mean/std observation normaliser.
        init_log_std: initial log std of the Gaussian policy.
        input_init: ``"split"`` (observation and latent columns of the first layer initialised
            separately) or ``"joint"`` (PyTorch's default over their concatenation).
        device: where the networks live.
        observation_key: the observation entry.
        policy_id_key: the int64 policy-id entry.
        critic_observation_key: an asymmetric critic's observation entry (``None``: ``observation_key``).
        critic_observation_dim: its size (required with ``critic_observation_key``).
        actor_hidden_sizes: deprecated name of ``hidden_sizes``.

    Examples:
        >>> ac = make_actor_critic(3, 1, num_policies=6, latent_dim=32, hidden_sizes=(64, 64))
        >>> ac.latents.weight.shape, ac.actor.log_std.shape
        (torch.Size([6, 32]), torch.Size([6, 1]))
    """
    hidden_sizes = renamed_argument("make_actor_critic", "actor_hidden_sizes", "hidden_sizes", actor_hidden_sizes,
                                    hidden_sizes, DEFAULT_HIDDEN_SIZES)
    latents = PolicyLatents(num_policies, latent_dim, init_std=latent_init_std) if latent_dim > 0 else None
    norm = ObservationNormalizer((observation_dim,)) if normalize_observations else None
    common = dict(
        num_policies=num_policies,
        latents=latents,
        activation=activation,
        obs_normalizer=norm,
        observation_key=observation_key,
        policy_id_key=policy_id_key,
        input_init=input_init,
    )
    actor = LatentConditionedActor(
        observation_dim, action_dim, hidden_sizes=tuple(hidden_sizes), init_log_std=init_log_std, **common
    )
    critic_norm = None
    if critic_observation_key is not None:
        if critic_observation_dim is None:
            raise ValueError("critic_observation_key needs critic_observation_dim (the critic input size).")
        critic_norm = ObservationNormalizer((critic_observation_dim,)) if normalize_observations else None
        common.update(observation_key=critic_observation_key, obs_normalizer=critic_norm)
        observation_dim = critic_observation_dim
    critic = LatentConditionedValue(
        observation_dim, hidden_sizes=tuple(critic_hidden_sizes or hidden_sizes), **common
    )
    return ActorCritic(actor.to(device), critic.to(device), latents, norm, critic_norm)
