"""The in-process PBT population with recurrent (MLP -> LSTM) members.

Same population as :class:`~torchrl_sapg.population.pbt_inprocess.ensemble.PolicyEnsemble`
with the network of :func:`~torchrl_sapg.modules.recurrent.make_recurrent_actor_critic`: the MLPs
and heads run as batched GEMMs, the LSTM as :func:`~torchrl_sapg.population.pbt_inprocess.stacked_ops.stacked_lstm`
(a loop over the time steps of a sequence, with its own backward), and the hidden states travel in
the env's tensordict, one per env row, so member ``i``'s states live in its own env block.
"""
from __future__ import annotations

import copy
from typing import Literal, Sequence

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import TensorDictModuleBase, TensorDictSequential
from tensordict.utils import NestedKey
from torch import nn
from torchrl.data import Unbounded
from torchrl.envs import InitTracker, TensorDictPrimer, Transform
from torchrl.modules import IndependentNormal, ProbabilisticActor

from torchrl_sapg.modules.factory import ActorCritic
from torchrl_sapg.modules.recurrent import hidden_state_keys, make_recurrent_actor_critic
from torchrl_sapg.population.pbt_inprocess.ensemble import StackedMembers
from torchrl_sapg.population.pbt_inprocess.stacked_ops import stacked_linear, stacked_lstm

__all__ = ["RecurrentEnsembleActor", "RecurrentEnsembleValue", "RecurrentPolicyEnsemble", "ensemble_collection_policy"]


def _lstm_sequence(lstm: TensorDictBase, x: torch.Tensor, is_init: torch.Tensor, h: torch.Tensor, c: torch.Tensor):
    """Run every member's LSTM over its ``[M, B, T, in]`` sequences from ``h, c`` ``[M, B, H]``,
    zeroing the state entering step ``t`` where ``is_init[:, :, t]``; returns the state after
    every step (``h`` is the LSTM output), ``[M, B, T, H]`` each."""
    gates = stacked_linear(x, lstm["weight_ih_l0"], lstm["bias_ih_l0"] + lstm["bias_hh_l0"])
    return stacked_lstm(gates, lstm["weight_hh_l0"], is_init, h, c)


class RecurrentPolicyEnsemble(StackedMembers):
    """M independent recurrent Gaussian actor-critics (MLP -> LSTM) with stacked parameters.

    Built from ``num_members`` calls to
    :func:`~torchrl_sapg.modules.recurrent.make_recurrent_actor_critic` (one policy each, no
    latent), so member ``i`` is exactly the recurrent network PPO would train, with its own
    initialisation. ``actor_params`` / ``critic_params`` are ``[M]`` ``TensorDictParams`` with
    entries ``"embed"`` (observation normaliser and MLP), ``"lstm"`` (the ``nn.LSTM``'s
    ``weight_ih_l0`` ``[M, 4H, in]``, ``weight_hh_l0``, ``bias_ih_l0``, ``bias_hh_l0``) and
    ``"head"``. The MLPs and heads run as one batched GEMM per linear layer, like
    :class:`PolicyEnsemble`'s; the LSTM runs as :func:`~torchrl_sapg.population.pbt_inprocess.stacked_ops.stacked_lstm`
    (``torch.vmap`` has no batching rule for ``aten::lstm``), whose only Python loop is over
    the ``T`` steps of a sequence.

    :meth:`actor_sequence` and :meth:`critic_sequence` run every member over its own
    ``[M, B, T]`` sequences from initial states ``[M, B, H]``; the state entering step ``t``
    is zeroed where ``is_init`` is set (what the collector's one-step calls do at an episode
    start), and the state after every step is returned. In a collected batch the hidden states
    are the keys of :func:`~torchrl_sapg.modules.recurrent.make_recurrent_actor_critic`
    (``"recurrent_state_{h,c}_{actor,critic}"``, ``[N, T, 1, H]``), member ``i``'s in env block ``i``.

    Examples:
        >>> ens = RecurrentPolicyEnsemble(3, 1, num_members=4, hidden_sizes=(16,), lstm_hidden=8)
        >>> obs, is_init = torch.randn(4, 5, 7, 3), torch.zeros(4, 5, 7, dtype=torch.bool)
        >>> loc, scale, h, c = ens.actor_sequence(obs, is_init, torch.zeros(4, 5, 8), torch.zeros(4, 5, 8))
        >>> loc.shape, h.shape, ens.actor_params["lstm", "weight_ih_l0"].shape
        (torch.Size([4, 5, 7, 1]), torch.Size([4, 5, 7, 8]), torch.Size([4, 32, 16]))
    """

    is_recurrent = True

    def __init__(
        self,
        observation_dim: int,
        action_dim: int,
        *,
        num_members: int,
        hidden_sizes: Sequence[int] = (768, 512, 256),
        lstm_hidden: int = 768,
        critic_hidden_sizes: Sequence[int] | None = None,
        activation: str = "elu",
        normalize_observations: bool = True,
        init_log_std: float = 0.0,
        device: torch.device | str = "cpu",
    ):
        super().__init__()
        if num_members < 1:
            raise ValueError(f"num_members must be >= 1, got {num_members}.")
        members = [
            make_recurrent_actor_critic(
                observation_dim,
                action_dim,
                hidden_sizes=tuple(hidden_sizes),
                lstm_hidden=lstm_hidden,
                critic_hidden_sizes=tuple(critic_hidden_sizes) if critic_hidden_sizes else None,
                activation=activation,
                normalize_observations=normalize_observations,
                init_log_std=init_log_std,
                device=device,
            )
            for _ in range(num_members)
        ]
        self.num_members = num_members
        self.observation_dim = observation_dim
        self.lstm_hidden = lstm_hidden
        self.has_normalizer = normalize_observations
        parts = [self._parts(m) for m in members]
        self.actor_params = TensorDict.from_modules(*[a for a, _ in parts], as_module=True)
        self.critic_params = TensorDict.from_modules(*[c for _, c in parts], as_module=True)
        # stateless templates of the embeddings (kept out of the module tree); the stacked weights run through them
        self._embed_templates = {part: copy.deepcopy(p["embed"]).to("meta")
                                 for part, p in zip(("actor", "critic"), parts[0])}

    @staticmethod
    def _parts(member: ActorCritic) -> tuple[nn.ModuleDict, nn.ModuleDict]:
        """The ``embed``, ``lstm`` and ``head`` modules of a recurrent actor and critic."""
        actor, critic = member.actor, member.critic
        return (
            nn.ModuleDict({"embed": actor.module[0][0].module, "lstm": actor.lstm.lstm, "head": actor.head}),
            nn.ModuleDict({"embed": critic[0].module, "lstm": critic.lstm.lstm, "head": critic[2].module}),
        )

    def _params(self, part: str) -> TensorDictBase:
        return self.actor_params if part == "actor" else self.critic_params

    def _embed(self, part: str, observation: torch.Tensor) -> torch.Tensor:
        """The LSTM input ``act(mlp(normalise(obs)))`` of every member, ``[M, ..., obs_dim]``."""
        template = self._embed_templates[part]
        return template.act(self._stacked_mlp(template.mlp, self._params(part)["embed", "mlp"], observation))

    def _features(self, part: str, observation, is_init, h, c):
        """Embed ``[M, B, T, obs_dim]`` and run the LSTM: the states after every step."""
        return _lstm_sequence(self._params(part)["lstm"], self._embed(part, observation), is_init, h, c)

    def actor_sequence(self, observation, is_init, h, c):
        """``loc, scale, h, c`` of every member over its own ``[M, B, T]`` sequences from ``h, c`` ``[M, B, H]``."""
        h, c = self._features("actor", observation, is_init, h, c)
        head = self.actor_params["head"]
        loc = stacked_linear(h, head["loc", "weight"], head["loc", "bias"])
        log_std = head["log_std"]  # [M, 1, action_dim]: one policy each
        return loc, log_std.exp().view(loc.shape[0], *[1] * (loc.dim() - 2), -1).expand_as(loc), h, c

    def _value(self, h: torch.Tensor) -> torch.Tensor:
        return stacked_linear(h, self.critic_params["head", "weight"], self.critic_params["head", "bias"])

    def critic_sequence(self, observation, is_init, h, c):
        """``value, h, c`` of every member over its own ``[M, B, T]`` sequences from ``h, c`` ``[M, B, H]``."""
        h, c = self._features("critic", observation, is_init, h, c)
        return self._value(h), h, c

    def log_std(self) -> torch.Tensor:
        return self.actor_params["head", "log_std"].squeeze(1)  # [M, action_dim]

    def _blocks(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, ...]`` env rows -> ``[M, N/M, ...]`` member blocks."""
        return x.reshape(self.num_members, x.shape[0] // self.num_members, *x.shape[1:])

    @staticmethod
    def initial_state(td: TensorDictBase, part: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The recorded ``(h, c)`` entering the first step of each ``[..., T]`` row of ``td``:
        ``[..., T, 1, H]`` -> ``[..., H]``."""
        return tuple(td.get(key)[..., 0, 0, :] for key in hidden_state_keys(part))

    def input_keys(self, observation_key: NestedKey = "observation") -> list[NestedKey]:
        """The entries :meth:`policy_and_value` reads: the observation, ``"is_init"`` and the recorded states.

        Examples:
            >>> RecurrentPolicyEnsemble(3, 1, num_members=2, hidden_sizes=(8,), lstm_hidden=4).input_keys()[:3]
            ['observation', 'is_init', 'recurrent_state_h_actor']
        """
        return [observation_key, "is_init", *hidden_state_keys("actor"), *hidden_state_keys("critic")]

    def policy_and_value(self, sub: TensorDictBase, observation_key: NestedKey = "observation"):
        """``loc, scale, value`` of every member on its own ``[M, B, T]`` env-rows of ``sub``,
        each row replayed from its recorded initial hidden states (resets at ``"is_init"``)."""
        obs = sub.get(observation_key)
        is_init = sub.get("is_init").reshape(obs.shape[:-1])
        loc, scale, _, _ = self.actor_sequence(obs, is_init, *self.initial_state(sub, "actor"))
        value, _, _ = self.critic_sequence(obs, is_init, *self.initial_state(sub, "critic"))
        return loc, scale, value

    def rollout_values(self, batch: TensorDictBase, observation_key: NestedKey = "observation"):
        """``V_i(s_t)`` and ``V_i(s'_t)`` of a collected ``[N, T]`` batch, each ``[M, N/M, T, 1]``.

        Every env-row is replayed from its recorded initial critic state; ``V(s'_t)`` is one
        more LSTM step on the next observation from the state after step ``t`` (the episode's
        own state also at an episode end and at the last step)."""
        obs = self._blocks(batch.get(observation_key))
        nobs = self._blocks(batch.get(("next", observation_key)))
        is_init = self._blocks(batch.get("is_init")).reshape(obs.shape[:-1])
        h0, c0 = (self._blocks(s) for s in self.initial_state(batch, "critic"))
        value, h, c = self.critic_sequence(obs, is_init, h0, c0)
        # one more step from every step's state: [M, B, T] sequences of length 1
        m, b, t, hidden = h.shape
        x = self._embed("critic", nobs).reshape(m, b * t, 1, -1)
        no_reset = torch.zeros(m, b * t, 1, dtype=torch.bool, device=x.device)
        next_h, _ = _lstm_sequence(self.critic_params["lstm"], x, no_reset, h.reshape(m, b * t, hidden),
                                   c.reshape(m, b * t, hidden))
        return value, self._value(next_h.reshape(m, b, t, hidden))

    def _normalizer_stats(self) -> list[TensorDictBase]:
        return [p["embed", "mlp", "obs_normalizer", "stats"] for p in (self.actor_params, self.critic_params)]

    def env_transforms(self) -> list[Transform]:
        """``InitTracker`` (``"is_init"``) and a primer of the actor's and critic's hidden states
        (``[1, H]`` per env row, zero at reset), to append to the env before the collector."""
        keys = (*hidden_state_keys("actor"), *hidden_state_keys("critic"))
        primer = TensorDictPrimer({k: Unbounded(shape=(1, self.lstm_hidden)) for k in keys}, expand_specs=True)
        return [InitTracker(), primer]


class _RecurrentEnsembleNet(TensorDictModuleBase):
    """Member ``i``'s recurrent actor (``loc``, ``scale``) or critic (value) on env block ``i``.

    On ``[N]`` rows (collection, evaluation): one step from the hidden state in the tensordict,
    zeroed where ``"is_init"``; on ``[N, T]`` rows: whole sequences from the state recorded at
    each row's first step. Writes the state after each step to ``("next", <state key>)``.
    """

    def __init__(self, ensemble: RecurrentPolicyEnsemble, part: Literal["actor", "critic"],
                 observation_key: NestedKey = "observation", value_key: NestedKey = "state_value"):
        super().__init__()
        self.ensemble = ensemble
        self.part = part
        h, c = hidden_state_keys(part)
        self.in_keys = [observation_key, "is_init", h, c]
        self.out_keys = (["loc", "scale"] if part == "actor" else [value_key]) + [("next", h), ("next", c)]

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        ens, m = self.ensemble, self.ensemble.num_members
        if tensordict.batch_dims not in (1, 2) or tensordict.shape[0] % m:
            raise ValueError(
                f"expected [N] or [N, T] env rows with N a multiple of num_members={m} (contiguous member "
                f"blocks), got {tuple(tensordict.batch_size)}."
            )
        step = tensordict.batch_dims == 1
        rows = tensordict.unsqueeze(1) if step else tensordict  # [N, T]
        obs_key, _, h_key, c_key = self.in_keys
        obs = ens._blocks(rows.get(obs_key))
        is_init = ens._blocks(rows.get("is_init")).reshape(obs.shape[:-1])
        h, c = (ens._blocks(s) for s in ens.initial_state(rows, self.part))
        if self.part == "actor":
            *outs, h, c = ens.actor_sequence(obs, is_init, h, c)
        else:
            *outs, h, c = ens.critic_sequence(obs, is_init, h, c)
        outs += [h.unsqueeze(-2), c.unsqueeze(-2)]  # [M, B, T, 1, H]: TorchRL's (num_layers, H) layout
        for key, value in zip(self.out_keys, outs):
            value = value.reshape(rows.shape[0], *value.shape[2:])
            tensordict.set(key, value[:, 0] if step else value)
        return tensordict


class RecurrentEnsembleActor(ProbabilisticActor):
    """The recurrent population's policy: member ``i`` acts in env block ``i`` from its own
    hidden state (``"recurrent_state_{h,c}_actor"``, reset at ``"is_init"``).

    Collect with :func:`ensemble_collection_policy` (actor and critic states advance) on an env
    with :meth:`RecurrentPolicyEnsemble.env_transforms`; evaluation needs only the actor.

    Examples:
        >>> from torchrl_sapg.envs import make_env
        >>> from torchrl.envs import TransformedEnv, Compose
        >>> ens = RecurrentPolicyEnsemble(3, 1, num_members=2, hidden_sizes=(8,), lstm_hidden=4)
        >>> env = TransformedEnv(make_env("pendulum", 6, seed=0), Compose(*ens.env_transforms()))
        >>> td = RecurrentEnsembleActor(ens)(env.reset())
        >>> td["action"].shape, td["next", "recurrent_state_h_actor"].shape
        (torch.Size([6, 1]), torch.Size([6, 1, 4]))
    """

    def __init__(self, ensemble: RecurrentPolicyEnsemble, observation_key="observation", action_key="action"):
        super().__init__(
            _RecurrentEnsembleNet(ensemble, "actor", observation_key),
            in_keys=["loc", "scale"],
            out_keys=[action_key],
            distribution_class=IndependentNormal,
            return_log_prob=True,
        )

    @property
    def ensemble(self) -> RecurrentPolicyEnsemble:
        return self.module[0].ensemble


class RecurrentEnsembleValue(_RecurrentEnsembleNet):
    """The recurrent population's critics: ``V_i`` on env block ``i`` from its own hidden state
    (``"recurrent_state_{h,c}_critic"``); writes ``value_key``.

    Examples:
        >>> ens = RecurrentPolicyEnsemble(3, 1, num_members=2, hidden_sizes=(8,), lstm_hidden=4)
        >>> td = TensorDict({"observation": torch.randn(4, 5, 3), "is_init": torch.zeros(4, 5, 1, dtype=torch.bool),
        ...                  "recurrent_state_h_critic": torch.zeros(4, 5, 1, 4),
        ...                  "recurrent_state_c_critic": torch.zeros(4, 5, 1, 4)}, [4, 5])
        >>> RecurrentEnsembleValue(ens)(td)["state_value"].shape  # [N, T] rows: whole sequences
        torch.Size([4, 5, 1])
    """

    def __init__(self, ensemble: RecurrentPolicyEnsemble, observation_key="observation", value_key="state_value"):
        super().__init__(ensemble, "critic", observation_key, value_key)


def ensemble_collection_policy(actor: RecurrentEnsembleActor, critic: RecurrentEnsembleValue) -> TensorDictSequential:
    """The policy to collect with: the actor, then the critic, so both members' hidden states
    advance and are recorded (the critic's value is dropped; GAE computes it).
    :func:`~torchrl_sapg.modules.recurrent.collection_policy` for a population."""
    h, c = hidden_state_keys("critic")
    return TensorDictSequential(actor, critic, selected_out_keys=[*actor.out_keys, ("next", h), ("next", c)])
