"""The clipped PPO loss of M independent members, each with its own clip range and coefficients.

In-process PBT (``torchrl_sapg.population.pbt_inprocess``) trains M networks stacked along a
leading member dim; this loss evaluates all of them at once on ``[M, B]`` rows (or ``[M, B, T]``
env-rows of a recurrent ensemble) and returns ``[M]`` loss terms, member ``i``'s computed from
its own rows with its own ``clip_epsilon[i]``, ``entropy_coeff[i]`` and ``critic_coeff[i]``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.utils import NestedKey
from torch import nn
from torchrl.objectives import LossModule
from torchrl.objectives.utils import ValueEstimators

from torchrl_sapg.objectives.kl import gaussian_kl_per_row

__all__ = ["PopulationPPOLoss"]


class PopulationPPOLoss(LossModule):
    """Per-member clipped PPO surrogate, entropy bonus and squared-error critic loss.

    The ensemble is any module with ``num_members`` and ``policy_and_value(td) -> (loc, scale,
    value)`` over stacked member rows (``PolicyEnsemble``, ``RecurrentPolicyEnsemble``). The three
    coefficient tensors are read at every call, so a PBT step that edits them in place (or assigns
    new ``[M]`` tensors to the attributes) takes effect at the next minibatch. The value targets
    and advantages come from the caller (per-member GAE); there is no built-in value estimator.

    Args:
        ensemble: the M stacked members.
        clip_epsilon: ``[M]`` PPO clip ranges.
        entropy_coeff: ``[M]`` entropy-bonus weights.
        critic_coeff: ``[M]`` value-loss weights.

    Examples:
        >>> from torchrl_sapg.population import PolicyEnsemble
        >>> ens = PolicyEnsemble(3, 1, num_members=2, hidden_sizes=(8,))
        >>> loss = PopulationPPOLoss(ens, clip_epsilon=torch.tensor([0.1, 0.2]),
        ...                          entropy_coeff=torch.zeros(2), critic_coeff=torch.ones(2))
        >>> td = TensorDict({"observation": torch.randn(2, 5, 3), "action": torch.randn(2, 5, 1),
        ...                  "action_log_prob": torch.zeros(2, 5), "advantage": torch.randn(2, 5, 1),
        ...                  "value_target": torch.randn(2, 5, 1)}, [2, 5])
        >>> loss(td)["loss_objective"].shape
        torch.Size([2])
    """

    @dataclass
    class _AcceptedKeys:
        """The tensordict keys the loss reads (change them with :meth:`set_keys`).

        Attributes:
            action: the action taken.
            sample_log_prob: its log-probability under the collecting policy.
            advantage: the (per-member standardised) advantage.
            value_target: the critic's regression target.
            loc: the collecting policy's action mean (optional: read for ``kl_gaussian`` where present).
            scale: its action standard deviation (optional, with ``loc``).
        """

        action: NestedKey = "action"
        sample_log_prob: NestedKey = "action_log_prob"
        advantage: NestedKey = "advantage"
        value_target: NestedKey = "value_target"
        loc: NestedKey = "loc"
        scale: NestedKey = "scale"

    default_keys = _AcceptedKeys
    tensor_keys: _AcceptedKeys
    default_value_estimator = ValueEstimators.GAE
    # kl_gaussian only where the rows hold the collecting policy's loc and scale
    out_keys = ["loss_objective", "loss_entropy", "loss_critic", "entropy", "clip_fraction", "kl_approx", "kl_gaussian"]

    def __init__(self, ensemble: nn.Module, *, clip_epsilon: torch.Tensor, entropy_coeff: torch.Tensor,
                 critic_coeff: torch.Tensor):
        super().__init__()
        self.ensemble = ensemble
        self.clip_epsilon = clip_epsilon
        self.entropy_coeff = entropy_coeff
        self.critic_coeff = critic_coeff
        self._set_in_keys()

    def _set_in_keys(self) -> None:
        k = self.tensor_keys
        self.in_keys = [k.action, k.sample_log_prob, k.advantage, k.value_target]

    def _forward_value_estimator_keys(self, **kwargs) -> None:
        self._set_in_keys()

    def make_value_estimator(self, value_type=None, **hyperparams):
        raise NotImplementedError(
            "PopulationPPOLoss has no value estimator of its own: compute per-member advantages and value targets "
            "first (e.g. torchrl_sapg.population.ensemble_gae).")

    def forward(self, tensordict: TensorDictBase) -> TensorDict:
        """``[M]`` loss terms (means over each member's own steps) and diagnostics."""
        keys = self.tensor_keys
        m = self.ensemble.num_members

        def flat(x: torch.Tensor) -> torch.Tensor:  # [M, B(, T), D] -> [M, B * T, D]
            return x.reshape(m, -1, x.shape[-1])

        loc, scale, value = self.ensemble.policy_and_value(tensordict)
        dist = torch.distributions.Normal(flat(loc), flat(scale))
        log_prob = dist.log_prob(flat(tensordict.get(keys.action))).sum(-1)
        log_ratio = log_prob - tensordict.get(keys.sample_log_prob).reshape(m, -1)
        ratio = log_ratio.exp()
        adv = tensordict.get(keys.advantage).reshape(m, -1)
        eps = self.clip_epsilon.view(-1, 1)
        gain = torch.minimum(ratio * adv, ratio.clamp(1 - eps, 1 + eps) * adv)
        entropy = dist.entropy().sum(-1)
        critic = (flat(value) - flat(tensordict.get(keys.value_target))).pow(2).squeeze(-1)
        out = {
            "loss_objective": -gain.mean(1),
            "loss_entropy": -self.entropy_coeff * entropy.mean(1),
            "loss_critic": self.critic_coeff * critic.mean(1),
        }
        with torch.no_grad():
            out["entropy"] = entropy.detach().mean(1)
            out["clip_fraction"] = ((ratio - 1).abs() > eps).float().mean(1)
            out["kl_approx"] = (-log_ratio).mean(1)
            old_loc, old_scale = tensordict.get(keys.loc, None), tensordict.get(keys.scale, None)
            if old_loc is not None and old_scale is not None:
                # analytic KL(collecting || current) per member, the KL the adaptive learning rate reads
                out["kl_gaussian"] = gaussian_kl_per_row(flat(old_loc), flat(old_scale), flat(loc), flat(scale)).mean(1)
        return TensorDict(out, [m])
