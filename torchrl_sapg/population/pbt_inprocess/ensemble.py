"""In-process DexPBT population: M independent actor-critics with stacked parameters.

Every member owns its weights, optimiser state, observation normaliser and hyperparameters,
and plays the env block its id owns. The M networks are evaluated in one call over stacked
parameters (tensordict's ``from_modules``), both during collection and in the update, each linear
layer as one batched GEMM (``baddbmm``). The recurrent population is in
:mod:`torchrl_sapg.population.pbt_inprocess.recurrent_ensemble`.
"""
from __future__ import annotations

import copy
from typing import Sequence

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import TensorDictModuleBase
from tensordict.utils import NestedKey
from torch import nn
from torchrl.modules import IndependentNormal, ProbabilisticActor
from torchrl.objectives.value.functional import generalized_advantage_estimate

from torchrl_sapg.modules.factory import make_actor_critic
from torchrl_sapg.modules.normalization import batch_moments, merge_moments_
from torchrl_sapg.objectives.value import values_and_next
from torchrl_sapg.population.pbt_inprocess.stacked_ops import stacked_linear

__all__ = ["EnsembleActor", "PolicyEnsemble", "StackedMembers", "ensemble_gae"]


class StackedMembers(nn.Module):
    """What the MLP and the recurrent ensembles share: ``[M]``-stacked ``actor_params`` and
    ``critic_params``, the batched-GEMM evaluation of a member MLP, normaliser updates and member copies."""

    is_recurrent = False
    num_members: int
    has_normalizer: bool

    @staticmethod
    def _stacked_mlp(template: nn.Module, params: TensorDictBase, observation: torch.Tensor) -> torch.Tensor:
        """Member ``i``'s network (``template``, a :class:`~torchrl_sapg.modules.LatentConditionedMLP` without
        latents) with ``params[i]`` on ``observation[i]``, for every member at once: each ``nn.Linear`` as one
        batched GEMM with its bias inside (``baddbmm``), the template's other layers and its normaliser as they
        are, on the ``[M, R, width]`` tensor. The same values as ``torch.vmap`` over the template, faster
        (docs/pbt-inprocess.md, "Speed")."""
        m = observation.shape[0]
        h = observation.reshape(m, -1, observation.shape[-1])
        if template.obs_normalizer is not None:  # its statistics [M, obs] broadcast over each member's rows
            with params["obs_normalizer"].apply(lambda t: t.unsqueeze(1)).to_module(template.obs_normalizer):
                h = template.obs_normalizer(h)
        for index, layer in enumerate(template.mlp):
            if isinstance(layer, nn.Linear):
                weights = params["mlp", str(index)]
                h = stacked_linear(h, weights["weight"], weights["bias"])
            else:
                h = layer(h)
        return h.reshape(*observation.shape[:-1], h.shape[-1])

    def input_keys(self, observation_key: NestedKey = "observation") -> list[NestedKey]:
        """The entries :meth:`policy_and_value` reads.

        Examples:
            >>> PolicyEnsemble(3, 1, num_members=2, hidden_sizes=(8,)).input_keys()
            ['observation']
        """
        return [observation_key]

    def _normalizer_stats(self) -> list[TensorDictBase]:
        raise NotImplementedError

    @torch.no_grad()
    def update_normalizers(self, observation: torch.Tensor, sync=None) -> None:
        """Fold ``[M, R, obs_dim]`` observations into each member's running statistics (over
        every rank's rows with a :class:`~torchrl_sapg.trainers.distributed.DistributedSync`)."""
        if not self.has_normalizer:
            return
        x = observation.reshape(self.num_members, -1, observation.shape[-1]).float()
        if sync is None:
            n = torch.tensor(float(x.shape[1]), device=x.device)
            moments = (x.mean(1), x.var(1, unbiased=False), n)
        else:
            moments = batch_moments(x, 1, sync)
        for stats in self._normalizer_stats():
            merge_moments_(stats["mean"], stats["var"], stats["count"], *moments)

    @torch.no_grad()
    def copy_members(self, dst: torch.Tensor, src: torch.Tensor) -> None:
        """Member ``dst[k]`` takes member ``src[k]``'s weights and normaliser (DexPBT's exploit)."""
        for params in (self.actor_params, self.critic_params):
            for value in params.values(True, True):
                value.data[dst] = value.data[src]


class PolicyEnsemble(StackedMembers):
    """M independent Gaussian actor-critics whose parameters are stacked along a leading dim.

    Built from ``num_members`` calls to :func:`~torchrl_sapg.modules.make_actor_critic` (one
    policy each, no latent), so member ``i`` is exactly the network PPO would train, with its
    own initialisation. ``actor_params`` / ``critic_params`` are ``[M]`` ``TensorDictParams``;
    :meth:`heads` and :meth:`values` evaluate all members at once on inputs shaped ``[M, B, ...]``, each
    linear layer as one batched GEMM. Each member's observation normaliser is part of its parameters.

    Examples:
        >>> ens = PolicyEnsemble(3, 1, num_members=4, hidden_sizes=(16,))
        >>> loc, scale = ens.heads(torch.randn(4, 5, 3))
        >>> loc.shape, ens.values(torch.randn(4, 5, 3)).shape
        (torch.Size([4, 5, 1]), torch.Size([4, 5, 1]))
    """

    def __init__(
        self,
        observation_dim: int,
        action_dim: int,
        *,
        num_members: int,
        hidden_sizes: Sequence[int] = (256, 128, 64),
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
            make_actor_critic(
                observation_dim,
                action_dim,
                hidden_sizes=hidden_sizes,
                critic_hidden_sizes=critic_hidden_sizes,
                activation=activation,
                normalize_observations=normalize_observations,
                init_log_std=init_log_std,
                device=device,
            )
            for _ in range(num_members)
        ]
        self.num_members = num_members
        self.observation_dim = observation_dim
        self.actor_params = TensorDict.from_modules(*[m.actor.module[0].module for m in members], as_module=True)
        self.critic_params = TensorDict.from_modules(*[m.critic.module for m in members], as_module=True)
        # stateless templates the stacked parameters are swapped into (kept out of the module tree)
        self._templates = (copy.deepcopy(members[0].actor.module[0].module).to("meta"),
                           copy.deepcopy(members[0].critic.module).to("meta"))
        self.has_normalizer = normalize_observations

    def heads(self, observation: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``loc, scale`` of every member on its own rows: ``observation`` is ``[M, B, obs_dim]``."""
        loc = self._stacked_mlp(self._templates[0].backbone, self.actor_params["backbone"], observation)
        log_std = self.actor_params["log_std"]  # [M, 1, action_dim]: one policy each
        return loc, log_std.exp().view(loc.shape[0], *[1] * (loc.dim() - 2), -1).expand_as(loc)

    def values(self, observation: torch.Tensor) -> torch.Tensor:
        """``V_i(s)`` of every member on its own rows: ``[M, B, obs_dim] -> [M, B, 1]``."""
        return self._stacked_mlp(self._templates[1], self.critic_params, observation)

    def log_std(self) -> torch.Tensor:
        return self.actor_params["log_std"].squeeze(1)  # [M, action_dim]

    def policy_and_value(self, sub: TensorDictBase, observation_key: NestedKey = "observation"):
        """``loc, scale, value`` of every member on its own ``[M, B]`` rows of ``sub``."""
        obs = sub.get(observation_key)
        loc, scale = self.heads(obs)
        return loc, scale, self.values(obs)

    def rollout_values(self, batch: TensorDictBase, observation_key: NestedKey = "observation"):
        """``V_i(s_t)`` and ``V_i(s'_t)`` of a collected ``[N, T]`` batch, each ``[M, N/M, T, 1]``, from one
        batched critic call (:func:`values_and_next`: next states only at episode ends and after the last step)."""
        m, (n, t) = self.num_members, batch.shape
        obs = batch.get(observation_key)
        dim = obs.shape[-1]

        def member_values(states: torch.Tensor) -> torch.Tensor:  # [N, T', obs_dim], member blocks of env-rows
            return self.values(states.reshape(m, -1, dim)).reshape(n, -1, 1)

        v, nv = values_and_next(member_values, obs, batch.get(("next", observation_key)), batch.get(("next", "done")))
        return v.reshape(m, n // m, t, 1), nv.reshape(m, n // m, t, 1)

    def _normalizer_stats(self) -> list[TensorDictBase]:
        return [p["backbone", "obs_normalizer", "stats"] if "backbone" in p.keys() else p["obs_normalizer", "stats"]
                for p in (self.actor_params, self.critic_params)]


class _EnsembleHead(TensorDictModuleBase):
    """Reads the observation of ``[N]`` (contiguous member blocks) or ``[M, B]`` rows, writes loc/scale."""

    def __init__(self, ensemble: PolicyEnsemble, observation_key="observation"):
        super().__init__()
        self.ensemble = ensemble
        self.in_keys = [observation_key]
        self.out_keys = ["loc", "scale"]

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        obs = tensordict.get(self.in_keys[0])
        m = self.ensemble.num_members
        flat = tensordict.batch_dims == 1
        if flat:
            if obs.shape[0] % m:
                raise ValueError(f"{obs.shape[0]} env rows do not split into {m} member blocks.")
            obs = obs.reshape(m, -1, obs.shape[-1])
        elif obs.shape[0] != m:
            raise ValueError(f"expected rows shaped [num_members={m}, B], got {tuple(tensordict.batch_size)}.")
        loc, scale = self.ensemble.heads(obs)
        if flat:
            loc, scale = loc.reshape(-1, loc.shape[-1]), scale.reshape(-1, scale.shape[-1])
        tensordict.set("loc", loc)
        tensordict.set("scale", scale)
        return tensordict


class EnsembleActor(ProbabilisticActor):
    """The population's policy for a collector: member ``i`` acts in env block ``i``.

    Examples:
        >>> from tensordict import TensorDict
        >>> actor = EnsembleActor(PolicyEnsemble(3, 1, num_members=2, hidden_sizes=(8,)))
        >>> actor(TensorDict({"observation": torch.randn(6, 3)}, [6]))["action"].shape
        torch.Size([6, 1])
    """

    def __init__(self, ensemble: PolicyEnsemble, observation_key="observation", action_key="action"):
        super().__init__(
            _EnsembleHead(ensemble, observation_key),
            in_keys=["loc", "scale"],
            out_keys=[action_key],
            distribution_class=IndependentNormal,
            return_log_prob=True,
        )

    @property
    def ensemble(self) -> PolicyEnsemble:
        return self.module[0].ensemble


def ensemble_gae(
    ensemble: StackedMembers,
    batch: TensorDictBase,
    gamma: torch.Tensor,
    lmbda: torch.Tensor,
    *,
    observation_key="observation",
) -> TensorDictBase:
    """GAE of every member on its own block of a collected ``[N, T]`` batch, with its own
    ``gamma[i]`` and ``lmbda[i]`` (TorchRL's functional ``generalized_advantage_estimate``).
    Writes ``"state_value"``, ``"advantage"`` and ``"value_target"``. A recurrent ensemble's
    critic replays each env-row from its recorded initial state (:meth:`RecurrentPolicyEnsemble.rollout_values`)."""
    m = ensemble.num_members
    n, t = batch.shape
    with torch.no_grad():
        v, nv = ensemble.rollout_values(batch, observation_key)
        shape = (m, n // m, t, 1)
        reward = batch.get(("next", "reward")).reshape(shape).to(v.dtype)
        done = batch.get(("next", "done")).reshape(shape)
        term = batch.get(("next", "terminated")).reshape(shape)
        g = gamma.to(v.dtype).view(m, 1, 1, 1)
        lam = lmbda.to(v.dtype).view(m, 1, 1, 1)
        adv, target = generalized_advantage_estimate(g, lam, v, nv, reward, done, term)
    batch.set("state_value", v.reshape(n, t, 1))
    batch.set("advantage", adv.reshape(n, t, 1))
    batch.set("value_target", target.reshape(n, t, 1))
    return batch
