"""Clipped PPO with an importance-sampled, off-policy-corrected trust region (SAPG Eq. 3)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import dispatch
from tensordict.utils import NestedKey
from torchrl.objectives import ClipPPOLoss
from torchrl.objectives.ppo import PPOLoss


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mask = mask.to(x.dtype)
    return (x * mask).sum() / mask.sum().clamp_min(1)


def _masked_ess(log_weight: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Normalised effective sample size (in (0, 1]) of the importance weights selected by ``mask``."""
    log_weight, mask = log_weight.reshape(-1), mask.reshape(-1)
    lw = torch.where(mask, log_weight, torch.full_like(log_weight, float("-inf")))
    n = mask.sum().clamp_min(1).to(log_weight.dtype)
    ess = (2 * lw.logsumexp(0) - (2 * lw).logsumexp(0)).exp()
    return torch.where(mask.any(), ess / n, torch.zeros_like(ess))


class OffPolicyClipPPOLoss(ClipPPOLoss):
    """Clipped PPO whose clip range is centred on the off-policy correction ``mu`` (SAPG Eq. 3).

    For a row collected by a behaviour policy ``pi_b`` (its log-prob under TorchRL's default
    log-prob key, ``"action_log_prob"``) and trained into policy ``pi_theta``:

    * ratio ``r = pi_theta(a|s) / pi_b(a|s)``;
    * ``mu = pi_target_old(a|s) / pi_b(a|s) = exp(target_log_prob - action_log_prob)``, where
      ``"target_log_prob"`` is the log-prob of the policy being trained *before* the update
      (written by :meth:`SAPGLoss.aggregate`);
    * surrogate ``min(r·A, clip(r, mu(1-eps), mu(1+eps))·A)``.

    Rows without ``"target_log_prob"`` (or a batch without the key) use ``mu = 1``: on such data
    the loss *is* TorchRL's ``ClipPPOLoss``. ``mu_correction=False`` clips to ``1 ± eps`` on every
    row, as the SAPG reference code does (``mu_*`` still report the true mu). ``mu_truncation``
    caps the importance weight of off-policy rows (a departure from the paper). Rows flagged ``"off_policy"`` are weighted by
    ``off_policy_coeff`` (lambda, Eq. 4 and 9) in both the actor and the critic terms; the
    weighted mean is ``sum(w·l) / sum(w)``, so at lambda = 1 it is the plain mean over the
    aggregated minibatch (the reference code) and with equal amounts of on- and off-policy data
    it is ``(L_on + lambda·L_off) / (1 + lambda)``, Eq. 4 up to a constant factor.

    Reported beside ClipPPOLoss's outputs: ``clip_fraction_on`` / ``clip_fraction_off``,
    ``ESS_on`` / ``ESS_off`` (normalised effective sample size of ``r`` on each part), ``mu_mean``,
    ``mu_min``, ``mu_max`` (off-policy rows), ``off_policy_fraction`` and ``kl_approx`` over the
    on-policy rows only.

    Args:
        actor_network, critic_network: as for ``ClipPPOLoss``.
        mu_correction: centre the clip range on ``mu`` (paper) or on 1 (reference code).
        off_policy_coeff: lambda, the weight of rows flagged ``"off_policy"``.
        mu_truncation: ``None`` (paper) or ``rho_bar > 0``: an off-policy row's surrogate is
            scaled by ``min(mu, rho_bar) / mu`` (no gradient through the factor), so its gradient
            at the pre-update parameters is ``min(mu, rho_bar)·A·grad log pi`` instead of
            ``mu·A·grad log pi``: IMPALA's truncated importance weight (Espeholt et al. 2018),
            which bounds the variance the heavy-tailed ``mu`` brings once leader and followers
            drift apart, at the price of a bias toward the behaviour policy.
        **kwargs: every ``ClipPPOLoss`` argument (``clip_epsilon``, ``entropy_coeff``,
            ``critic_coeff``, ``clip_value``, ``normalize_advantage``...).

    Examples:
        >>> from tensordict import TensorDict
        >>> from torchrl_sapg.modules import make_actor_critic
        >>> ac = make_actor_critic(3, 1, num_policies=2, latent_dim=4)
        >>> td = TensorDict({"observation": torch.randn(8, 3), "policy_id": torch.tensor([0, 1] * 4)}, [8])
        >>> td = ac.actor(td).detach()
        >>> _ = td.update({"advantage": torch.randn(8, 1), "value_target": torch.randn(8, 1),
        ...            "target_log_prob": td["action_log_prob"] + 0.1, "off_policy": torch.tensor([False, True] * 4)})
        >>> out = OffPolicyClipPPOLoss(ac.actor, ac.critic)(td)
        >>> round(float(out["mu_mean"]), 4)
        1.1052
    """

    @dataclass
    class _AcceptedKeys(PPOLoss._AcceptedKeys):
        """Keys of :class:`OffPolicyClipPPOLoss`; all of ``ClipPPOLoss``'s plus:

        Attributes:
            target_log_prob (NestedKey): pre-update log-prob of the policy being trained on
                off-policy rows. Defaults to ``"target_log_prob"``.
            off_policy (NestedKey): bool flag of off-policy rows. Defaults to ``"off_policy"``.
        """

        target_log_prob: NestedKey = "target_log_prob"
        off_policy: NestedKey = "off_policy"

    default_keys = _AcceptedKeys

    def __init__(
        self,
        actor_network=None,
        critic_network=None,
        *,
        mu_correction: bool = True,
        off_policy_coeff: float = 1.0,
        mu_truncation: float | None = None,
        **kwargs,
    ):
        if off_policy_coeff < 0:
            raise ValueError(f"off_policy_coeff (lambda) must be >= 0, got {off_policy_coeff}.")
        if mu_truncation is not None and not mu_truncation > 0:
            raise ValueError(f"mu_truncation must be > 0 (IMPALA's rho_bar, e.g. 1.0) or None, got {mu_truncation}.")
        if isinstance(kwargs.get("clip_epsilon"), (tuple, list)):
            raise ValueError("OffPolicyClipPPOLoss needs a symmetric clip_epsilon (a float): mu(1 ± eps).")
        for name in ("delay_actor", "max_importance_ratio"):
            if kwargs.get(name):
                raise ValueError(
                    f"{name} is not supported by OffPolicyClipPPOLoss: its proximal-policy correction would "
                    "mix with mu. Use TorchRL's ClipPPOLoss for PPO-EWMA / capped importance ratios."
                )
        super().__init__(actor_network, critic_network, **kwargs)
        self.mu_correction = mu_correction
        self.mu_truncation = None if mu_truncation is None else float(mu_truncation)
        self.register_buffer("off_policy_coeff", torch.tensor(float(off_policy_coeff), device=self.clip_epsilon.device))

    @property
    def out_keys(self):
        if self._out_keys is None:
            keys = list(super().out_keys)
            keys += ["clip_fraction_on", "clip_fraction_off", "ESS_on", "ESS_off", "mu_mean", "mu_min", "mu_max", "off_policy_fraction"]
            self._out_keys = keys
        return self._out_keys

    @out_keys.setter
    def out_keys(self, values):
        self._out_keys = values

    # hooks SAPGLoss overrides -------------------------------------------------------
    def _entropy_coeff_rows(self, tensordict: TensorDictBase, shape: torch.Size) -> torch.Tensor:
        """Entropy coefficient of every row (a scalar broadcasts)."""
        return self.entropy_coeff

    def _extra_losses(self, tensordict: TensorDictBase, dist, weights: torch.Tensor) -> dict[str, torch.Tensor]:
        return {}

    # ---------------------------------------------------------------------------------
    @dispatch
    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        tensordict = tensordict.clone(False)
        advantage = tensordict.get(self.tensor_keys.advantage, None)
        if advantage is None:
            raise KeyError(
                f"OffPolicyClipPPOLoss needs {self.tensor_keys.advantage!r} in the input: run a value "
                "estimator (e.g. TorchRL's GAE) and SAPGLoss.aggregate before the loss."
            )
        advantage = self._maybe_normalize_advantage(advantage, tensordict, update_norm=False)
        log_weight, dist, _, _ = self._log_weight(tensordict, adv_shape=advantage.shape[:-1])
        # log_weight = log pi_theta - log pi_b, shape [B, 1]
        behaviour_lp = tensordict.get(self.tensor_keys.sample_log_prob).reshape(log_weight.shape)
        off = tensordict.get(self.tensor_keys.off_policy, None)
        if off is None:
            off = torch.zeros(log_weight.shape, dtype=torch.bool, device=log_weight.device)
        else:
            off = off.reshape(log_weight.shape).to(torch.bool)
        on = ~off
        target_lp = tensordict.get(self.tensor_keys.target_log_prob, None)
        if target_lp is None:
            log_mu = torch.zeros_like(log_weight)
        else:
            # on-policy rows have mu = 1 by definition (target == behaviour)
            target_lp = target_lp.reshape(log_weight.shape)
            log_mu = torch.where(off, target_lp - behaviour_lp, torch.zeros_like(log_weight)).detach()
        centre = log_mu if self.mu_correction else torch.zeros_like(log_mu)
        lo, hi = self._clip_bounds  # log(1 - eps), log(1 + eps)
        log_weight_clip = torch.minimum(torch.maximum(log_weight, centre + lo), centre + hi)
        clipped = log_weight_clip != log_weight
        gain1 = log_weight.exp() * advantage
        gain2 = log_weight_clip.exp() * advantage
        gain = torch.minimum(gain1, gain2)
        if self.mu_truncation is not None:
            # min(mu, rho_bar) / mu: the gradient at theta_old becomes min(mu, rho_bar)·A·grad log pi
            log_scale = (math.log(self.mu_truncation) - log_mu).clamp_max(0.0)
            gain = gain * torch.where(off, log_scale, torch.zeros_like(log_scale)).exp()

        coeff = self.off_policy_coeff.to(gain.dtype)
        weights = torch.where(off, coeff, torch.ones_like(coeff)).expand_as(gain)

        td_out = TensorDict()
        td_out.set("loss_objective", -gain)
        with torch.no_grad():
            clip_f = clipped.to(gain.dtype)
            td_out.set("clip_fraction", clip_f.mean())
            td_out.set("clip_fraction_on", _masked_mean(clip_f, on))
            td_out.set("clip_fraction_off", _masked_mean(clip_f, off))
            td_out.set("kl_approx", _masked_mean(-log_weight, on))
            lw = log_weight.squeeze(-1)
            td_out.set("ESS", _masked_ess(lw, torch.ones_like(lw, dtype=torch.bool)))
            td_out.set("ESS_on", _masked_ess(lw, on.squeeze(-1)))
            td_out.set("ESS_off", _masked_ess(lw, off.squeeze(-1)))
            # mu statistics of the off-policy rows (1 when the minibatch has none)
            mu = log_mu.exp()
            any_off = off.any()
            one = torch.ones((), dtype=mu.dtype, device=mu.device)
            td_out.set("mu_mean", torch.where(any_off, _masked_mean(mu, off), one))
            td_out.set("mu_min", torch.where(any_off, torch.where(off, mu, float("inf")).min(), one))
            td_out.set("mu_max", torch.where(any_off, torch.where(off, mu, float("-inf")).max(), one))
            td_out.set("off_policy_fraction", off.to(gain.dtype).mean())
            ratio = log_weight.exp()
            td_out.set("max_ratio", ratio.max())
            td_out.set("mean_ratio", ratio.mean())

        if self.entropy_bonus:
            entropy = self._get_entropy(dist, adv_shape=advantage.shape[:-1])
            td_out.set("entropy", entropy.detach().mean())
            coeff_rows = self._entropy_coeff_rows(tensordict, entropy.shape)
            td_out.set("loss_entropy", -coeff_rows * entropy)
        if self._has_critic:
            loss_critic, value_clip_fraction, explained_variance = self.loss_critic(tensordict)
            td_out.set("loss_critic", loss_critic)
            if value_clip_fraction is not None:
                td_out.set("value_clip_fraction", value_clip_fraction)
            if explained_variance is not None:
                td_out.set("explained_variance", explained_variance)
        for name, value in self._extra_losses(tensordict, dist, weights).items():
            td_out.set(name, value)

        def reduce(name, value):
            if not name.startswith("loss_"):
                return value
            if value.shape != weights.shape:
                raise RuntimeError(f"{name} has shape {tuple(value.shape)}, expected per-row {tuple(weights.shape)}.")
            if self.reduction in (None, "mean"):
                # sum(w·l) / sum(w); a minibatch of only zero-weight rows (lambda = 0) gives 0, not NaN
                return (value * weights).sum() / weights.sum().clamp_min(torch.finfo(weights.dtype).tiny)
            return self._reduce_loss(value, tensordict, weights=weights).squeeze(-1)

        td_out = td_out.named_apply(reduce)
        self._clear_weakrefs(
            tensordict,
            td_out,
            "actor_network_params",
            "critic_network_params",
            "target_actor_network_params",
            "target_critic_network_params",
        )
        return td_out
