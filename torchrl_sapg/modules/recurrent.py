"""Recurrent (MLP + LSTM) latent-conditioned actor-critic, built from TorchRL's ``LSTMModule``.

SAPG's AllegroKuka networks are ``normalise(obs) ++ phi[policy_id] -> MLP[768, 512, 256] ->
LSTM(768) -> head`` (REFERENCE-NOTES). Here the actor and the critic each own an MLP and an
:class:`~torchrl.modules.LSTMModule` (distinct hidden-state keys) and share the latent table and
the observation normaliser. Everything recurrent is TorchRL's:

* collection runs the LSTMs one step at a time (TorchRL's *sequential* mode); the env carries the
  hidden states (``TensorDictPrimer``) and marks episode starts (``InitTracker``'s ``"is_init"``),
  where the LSTM restarts from zeros; the collector stores the hidden state *entering* each
  step, so every stored ``[T]`` env-row knows its initial state;
* training runs them over whole ``[B, T]`` env-rows in TorchRL's *recurrent* mode
  (:func:`recurrent_mode`), starting from the stored state of each row's first step and
  restarting at every ``"is_init"`` inside the row *from the state stored at that step*. The
  primer writes zeros at reset, so that is the zero state the collection used (sequential mode
  zeroes the state at ``"is_init"`` itself). TorchRL's GAE relies on this "stored state" rule to
  run the critic on the ``("next", ...)`` inputs (it flags ``next.is_init |= is_init`` so the
  first step of an episode starts from the stored post-step state), so we keep TorchRL's rule.
  ``OnPolicyTrainer(sequence_minibatches=True)`` does this for value estimation,
  ``batch_process`` hooks (SAPG's ``aggregate``) and the loss.

Hidden-state keys: ``"recurrent_state_{h,c}_actor"`` and ``"recurrent_state_{h,c}_critic"``.
The collector must run :func:`collection_policy` (actor and critic) so that the critic's hidden
states are recorded too; evaluation only needs the actor.
"""
from __future__ import annotations

import contextlib
from typing import Sequence

import torch
from tensordict.nn import TensorDictSequential
from tensordict.utils import NestedKey
from torch import nn
from torchrl.envs import EnvBase, InitTracker, Transform, TransformedEnv
from torchrl.modules import IndependentNormal, LSTMModule, ProbabilisticActor, set_recurrent_mode

from torchrl_sapg.modules.actor_critic import LatentConditionedMLP, activation_class, check_latents
from torchrl_sapg.modules.factory import ActorCritic
from torchrl_sapg.modules.latents import PolicyLatents, check_policy_ids
from torchrl_sapg.modules.normalization import ObservationNormalizer
from torchrl_sapg.modules.td_module import DirectWriteModule
from torchrl_sapg.runtime import renamed_argument

#: SAPG's AllegroKuka MLP widths (the MLP's last width is the LSTM's input size)
DEFAULT_RECURRENT_HIDDEN_SIZES = (768, 512, 256)

__all__ = [
    "RecurrentLatentActor",
    "RecurrentLatentValue",
    "collection_policy",
    "make_recurrent_actor_critic",
    "recurrent_env_transforms",
    "recurrent_mode",
    "add_recurrent_transforms",
    "is_recurrent",
]


class _Embed(nn.Module):
    """``act(mlp(normalise(obs) ++ phi[policy_id]))`` (++ ``phi[policy_id]`` again if ``latent_to_lstm``)."""

    def __init__(self, observation_dim, hidden_sizes, latents, activation, obs_normalizer, latent_to_lstm):
        super().__init__()
        if not hidden_sizes:
            raise ValueError("hidden_sizes must name at least one layer (the LSTM input size).")
        self.mlp = LatentConditionedMLP(
            observation_dim,
            hidden_sizes[-1],
            latents=latents,
            hidden_sizes=tuple(hidden_sizes[:-1]),
            activation=activation,
            obs_normalizer=obs_normalizer,
        )
        self.act = activation_class(activation)()
        self.latent_to_lstm = bool(latent_to_lstm and latents is not None and latents.latent_dim > 0)
        self.out_dim = hidden_sizes[-1] + (latents.latent_dim if self.latent_to_lstm else 0)

    def forward(self, observation: torch.Tensor, policy_id: torch.Tensor) -> torch.Tensor:
        x = self.act(self.mlp(observation, policy_id))
        if self.latent_to_lstm:
            x = torch.cat([x, self.mlp.latents(policy_id)], dim=-1)
        return x


class _GaussianHead(nn.Module):
    """loc = Linear(lstm_out); scale = exp(log_std[policy_id]) (per-policy, state-independent)."""

    def __init__(self, in_dim: int, action_dim: int, num_policies: int, init_log_std: float):
        super().__init__()
        self.num_policies = num_policies
        self.loc = nn.Linear(in_dim, action_dim)
        self.log_std = nn.Parameter(torch.full((num_policies, action_dim), float(init_log_std)))

    def forward(self, features: torch.Tensor, policy_id: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        check_policy_ids(policy_id, self.num_policies)
        loc = self.loc(features)
        scale = self.log_std[policy_id].exp()
        return loc, scale


def hidden_state_keys(prefix: str) -> tuple[str, str]:
    """The ``(h, c)`` keys of an LSTM's recorded hidden state, e.g. ``("recurrent_state_h_actor", ...)``."""
    return f"recurrent_state_h_{prefix}", f"recurrent_state_c_{prefix}"


def _lstm(in_dim: int, hidden: int, prefix: str, backend: str) -> LSTMModule:
    h, c = hidden_state_keys(prefix)
    return LSTMModule(
        input_size=in_dim,
        hidden_size=hidden,
        in_keys=[f"{prefix}_embed", h, c, "is_init"],
        out_keys=[f"{prefix}_lstm_out", ("next", h), ("next", c)],
        recurrent_backend=backend,
    )


class RecurrentLatentActor(ProbabilisticActor):
    """Gaussian policy ``N(head(LSTM(MLP(obs ++ phi))), exp(log_std[policy_id]))`` for M policies.

    A TorchRL ``ProbabilisticActor`` whose module is ``TensorDictSequential(embed, LSTMModule,
    head)``. Reads the observation, ``"policy_id"``, ``"is_init"`` and its hidden states
    ``"recurrent_state_{h,c}_actor"``; writes ``"loc"``, ``"scale"``, the action, its log-prob and
    ``("next", "recurrent_state_{h,c}_actor")``. Exposes ``log_std``, ``latents``,
    ``obs_normalizer`` and ``lstm`` like :class:`LatentConditionedActor`.

    Args:
        observation_dim: size of ``observation_key``.
        action_dim: size of the action.
        num_policies: M, the policies (one log-std row each).
        latents: the shared latent table (``None``: no latent).
        hidden_sizes: the MLP's layer widths before the LSTM.
        lstm_hidden: the LSTM's hidden size.
        activation: hidden-layer activation (a ``torch.nn`` name, lower case).
        obs_normalizer: the shared observation normaliser (``None``: none).
        init_log_std: initial log std of the Gaussian policy.
        latent_to_lstm: also concatenate ``phi[policy_id]`` to the LSTM input.
        recurrent_backend: TorchRL's LSTM backend, ``"pad"`` or ``"scan"``.
        observation_key: the observation entry.
        policy_id_key: the int64 policy-id entry.
        action_key: where the action is written.
        mlp_sizes: deprecated name of ``hidden_sizes``.

    Examples:
        >>> actor = RecurrentLatentActor(3, 1, num_policies=2, hidden_sizes=(16,), lstm_hidden=8)
        >>> actor.log_std.shape, actor.lstm.lstm.hidden_size
        (torch.Size([2, 1]), 8)
    """

    def __init__(
        self,
        observation_dim: int,
        action_dim: int,
        *,
        num_policies: int = 1,
        latents: PolicyLatents | None = None,
        hidden_sizes: Sequence[int] = DEFAULT_RECURRENT_HIDDEN_SIZES,
        lstm_hidden: int = 768,
        activation: str = "elu",
        obs_normalizer: ObservationNormalizer | None = None,
        init_log_std: float = 0.0,
        latent_to_lstm: bool = False,
        recurrent_backend: str = "pad",
        observation_key: NestedKey = "observation",
        policy_id_key: NestedKey = "policy_id",
        action_key: NestedKey = "action",
        mlp_sizes: Sequence[int] | None = None,
    ):
        hidden_sizes = renamed_argument(type(self).__name__, "mlp_sizes", "hidden_sizes", mlp_sizes, hidden_sizes,
                                        DEFAULT_RECURRENT_HIDDEN_SIZES)
        check_latents(latents, num_policies)
        embed = _Embed(observation_dim, tuple(hidden_sizes), latents, activation, obs_normalizer, latent_to_lstm)
        lstm = _lstm(embed.out_dim, lstm_hidden, "actor", recurrent_backend)
        head = _GaussianHead(lstm_hidden, action_dim, num_policies, init_log_std)
        h, c = hidden_state_keys("actor")
        module = TensorDictSequential(
            DirectWriteModule(embed, in_keys=[observation_key, policy_id_key], out_keys=["actor_embed"]),
            lstm,
            DirectWriteModule(head, in_keys=["actor_lstm_out", policy_id_key], out_keys=["loc", "scale"]),
            # intermediate features are not stored in the collected batch (memory at scale)
            selected_out_keys=["loc", "scale", ("next", h), ("next", c)],
        )
        super().__init__(
            module,
            in_keys=["loc", "scale"],
            out_keys=[action_key],
            distribution_class=IndependentNormal,
            return_log_prob=True,
        )
        self.num_policies = num_policies

    @property
    def lstm(self) -> LSTMModule:
        return self.module[0][1]

    @property
    def head(self) -> _GaussianHead:
        return self.module[0][2].module

    @property
    def log_std(self) -> nn.Parameter:
        """The ``[M, action_dim]`` per-policy log-std table."""
        return self.head.log_std

    @property
    def latents(self) -> PolicyLatents | None:
        return self.module[0][0].module.mlp.latents

    @property
    def obs_normalizer(self) -> ObservationNormalizer | None:
        return self.module[0][0].module.mlp.obs_normalizer


class RecurrentLatentValue(TensorDictSequential):
    """State-value critic ``Linear(LSTM(MLP(obs ++ phi)))`` with its own hidden states
    ``"recurrent_state_{h,c}_critic"``; writes ``value_key`` (``"state_value"``).

    Args:
        observation_dim: size of ``observation_key``.
        num_policies: M, the policies.
        latents: the shared latent table (``None``: no latent).
        hidden_sizes: the MLP's layer widths before the LSTM.
        lstm_hidden: the LSTM's hidden size.
        activation: hidden-layer activation (a ``torch.nn`` name, lower case).
        obs_normalizer: the shared observation normaliser (``None``: none).
        latent_to_lstm: also concatenate ``phi[policy_id]`` to the LSTM input.
        recurrent_backend: TorchRL's LSTM backend, ``"pad"`` or ``"scan"``.
        observation_key: the observation entry.
        policy_id_key: the int64 policy-id entry.
        value_key: where the value is written.
        mlp_sizes: deprecated name of ``hidden_sizes``.

    Examples:
        >>> critic = RecurrentLatentValue(3, hidden_sizes=(16,), lstm_hidden=8)
        >>> critic.lstm.lstm.hidden_size
        8
    """

    def __init__(
        self,
        observation_dim: int,
        *,
        num_policies: int = 1,
        latents: PolicyLatents | None = None,
        hidden_sizes: Sequence[int] = DEFAULT_RECURRENT_HIDDEN_SIZES,
        lstm_hidden: int = 768,
        activation: str = "elu",
        obs_normalizer: ObservationNormalizer | None = None,
        latent_to_lstm: bool = False,
        recurrent_backend: str = "pad",
        observation_key: NestedKey = "observation",
        policy_id_key: NestedKey = "policy_id",
        value_key: NestedKey = "state_value",
        mlp_sizes: Sequence[int] | None = None,
    ):
        hidden_sizes = renamed_argument(type(self).__name__, "mlp_sizes", "hidden_sizes", mlp_sizes, hidden_sizes,
                                        DEFAULT_RECURRENT_HIDDEN_SIZES)
        check_latents(latents, num_policies)
        embed = _Embed(observation_dim, tuple(hidden_sizes), latents, activation, obs_normalizer, latent_to_lstm)
        lstm = _lstm(embed.out_dim, lstm_hidden, "critic", recurrent_backend)
        h, c = hidden_state_keys("critic")
        super().__init__(
            DirectWriteModule(embed, in_keys=[observation_key, policy_id_key], out_keys=["critic_embed"]),
            lstm,
            DirectWriteModule(nn.Linear(lstm_hidden, 1), in_keys=["critic_lstm_out"], out_keys=[value_key]),
            selected_out_keys=[value_key, ("next", h), ("next", c)],
        )
        self.num_policies = num_policies

    @property
    def lstm(self) -> LSTMModule:
        return self[1]


def make_recurrent_actor_critic(
    observation_dim: int,
    action_dim: int,
    *,
    num_policies: int = 1,
    latent_dim: int = 0,
    latent_init_std: float = 1.0,
    hidden_sizes: Sequence[int] = DEFAULT_RECURRENT_HIDDEN_SIZES,
    lstm_hidden: int = 768,
    critic_hidden_sizes: Sequence[int] | None = None,
    critic_lstm_hidden: int | None = None,
    activation: str = "elu",
    normalize_observations: bool = True,
    init_log_std: float = 0.0,
    latent_to_lstm: bool = False,
    recurrent_backend: str = "pad",
    device: torch.device | str = "cpu",
    observation_key: NestedKey = "observation",
    policy_id_key: NestedKey = "policy_id",
    mlp_sizes: Sequence[int] | None = None,
    critic_mlp_sizes: Sequence[int] | None = None,
) -> ActorCritic:
    """Recurrent actor and critic sharing one :class:`PolicyLatents` table and one normaliser.

    Defaults are SAPG's AllegroKuka network (MLP[768, 512, 256] then LSTM(768), ELU).
    Collect with :func:`collection_policy` on an env wrapped by :func:`add_recurrent_transforms`
    and train with ``OnPolicyTrainer(sequence_minibatches=True)``.

    Args:
        observation_dim: size of ``observation_key``.
        action_dim: size of the action.
        num_policies: M, the policies sharing the networks.
        latent_dim: size of each policy's latent ``phi_j`` (0: no latent).
        latent_init_std: std of the latents' initial draw.
        hidden_sizes: the actor MLP's layer widths before the LSTM.
        lstm_hidden: the actor LSTM's hidden size.
        critic_hidden_sizes: the critic MLP's layer widths (``None``: ``hidden_sizes``).
        critic_lstm_hidden: the critic LSTM's hidden size (``None``: ``lstm_hidden``).
        activation: hidden-layer activation (a ``torch.nn`` name, lower case).
        normalize_observations: add a running mean/std observation normaliser.
        init_log_std: initial log std of the Gaussian policy.
        latent_to_lstm: also concatenate ``phi[policy_id]`` to the LSTM input.
        recurrent_backend: TorchRL's LSTM backend (``"pad"``: cuDNN / packed sequences; ``"scan"``).
        device: where the networks live.
        observation_key: the observation entry.
        policy_id_key: the int64 policy-id entry.
        mlp_sizes: deprecated name of ``hidden_sizes``.
        critic_mlp_sizes: deprecated name of ``critic_hidden_sizes``.

    Examples:
        >>> ac = make_recurrent_actor_critic(3, 1, num_policies=2, latent_dim=4, hidden_sizes=(16,), lstm_hidden=8)
        >>> ac.actor.log_std.shape, ac.latents.weight.shape
        (torch.Size([2, 1]), torch.Size([2, 4]))
    """
    name = "make_recurrent_actor_critic"
    hidden_sizes = renamed_argument(name, "mlp_sizes", "hidden_sizes", mlp_sizes, hidden_sizes,
                                    DEFAULT_RECURRENT_HIDDEN_SIZES)
    critic_hidden_sizes = renamed_argument(name, "critic_mlp_sizes", "critic_hidden_sizes", critic_mlp_sizes,
                                           critic_hidden_sizes)
    latents = PolicyLatents(num_policies, latent_dim, init_std=latent_init_std) if latent_dim > 0 else None
    norm = ObservationNormalizer((observation_dim,)) if normalize_observations else None
    common = dict(
        num_policies=num_policies,
        latents=latents,
        activation=activation,
        obs_normalizer=norm,
        latent_to_lstm=latent_to_lstm,
        recurrent_backend=recurrent_backend,
        observation_key=observation_key,
        policy_id_key=policy_id_key,
    )
    actor = RecurrentLatentActor(
        observation_dim, action_dim, hidden_sizes=tuple(hidden_sizes), lstm_hidden=lstm_hidden,
        init_log_std=init_log_std, **common,
    )
    critic = RecurrentLatentValue(observation_dim, hidden_sizes=tuple(critic_hidden_sizes or hidden_sizes),
                                  lstm_hidden=critic_lstm_hidden or lstm_hidden, **common)
    return ActorCritic(actor.to(device), critic.to(device), latents, norm)


def is_recurrent(module: nn.Module | None) -> bool:
    """Whether ``module`` contains a TorchRL ``LSTMModule``."""
    return module is not None and any(isinstance(m, LSTMModule) for m in module.modules())


def recurrent_env_transforms(agent: ActorCritic) -> list[Transform]:
    """The env transforms the recurrent actor-critic needs: ``InitTracker`` (``"is_init"``)
    and the ``TensorDictPrimer`` of every LSTM hidden state (actor and critic), zero at reset."""
    lstms = [m for net in (agent.actor, agent.critic) if net is not None for m in net.modules() if isinstance(m, LSTMModule)]
    return [InitTracker(), *(lstm.make_tensordict_primer() for lstm in lstms)]


def add_recurrent_transforms(env: EnvBase, agent: ActorCritic) -> TransformedEnv:
    """Append :func:`recurrent_env_transforms` to ``env`` (before the collector wraps it)."""
    for t in recurrent_env_transforms(agent):
        env = env.append_transform(t) if isinstance(env, TransformedEnv) else TransformedEnv(env, t)
    return env


def collection_policy(agent: ActorCritic) -> TensorDictSequential:
    """The policy to collect with: the actor, then the critic, so both hidden states advance
    and are stored (the critic's ``"state_value"`` is dropped; GAE computes it)."""
    if agent.critic is None or not is_recurrent(agent.critic):
        return agent.actor
    h, c = hidden_state_keys("critic")
    keep = [k for k in agent.actor.out_keys] + [("next", h), ("next", c)]
    # the critic's value is not kept: GAE stacks root and ("next") inputs, which need equal keys
    return TensorDictSequential(agent.actor, agent.critic, selected_out_keys=keep)


def recurrent_mode(enabled: bool = True):
    """Context manager: run every ``LSTMModule`` over ``[B, T]`` sequences (TorchRL's
    ``set_recurrent_mode``) when ``enabled``; a no-op otherwise."""
    return set_recurrent_mode(True) if enabled else contextlib.nullcontext()


_hidden_keys = hidden_state_keys  # old private name, still imported by population/ensemble.py
