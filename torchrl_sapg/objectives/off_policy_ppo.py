"""Clipped PPO with an importance-sampled, off-policy-corrected trust region (SAPG Eq. 3)."""
from __future__ import annotations

import contextlib
import functools
import math
from dataclasses import dataclass

import torch
from tensordict import TensorDictBase, is_tensor_collection
from tensordict.nn import CompositeDistribution, dispatch
from tensordict.utils import NestedKey
from torchrl.modules.distributions.utils import has_analytic_entropy
from torchrl.objectives import ClipPPOLoss
from torchrl.objectives.ppo import PPOLoss

from torchrl_sapg.objectives.kl import gaussian_kl_rows


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over the entries selected by ``mask`` (0 when none is); no host sync."""
    mask = mask.to(x.dtype)
    return (x * mask).sum() / mask.sum().clamp_min(1)


class OffPolicyClipPPOLoss(ClipPPOLoss):
    """Clipped PPO whose clip range is centred on the off-policy correction ``mu`` (SAPG Eq. 3).

    For a row collected by a behaviour policy ``pi_b`` (its log-prob under TorchRL's default
    log-prob key, ``"action_log_prob"``) and trained into policy ``pi_theta``:

    * ratio ``r = pi_theta(a|s) / pi_b(a|s)``;
    * ``mu = pi_target_old(a|s) / pi_b(a|s) = exp(target_log_prob - action_log_prob)``, where
      ``"target_log_prob"`` is the log-prob of the policy being trained *before* the update
      (written by :meth:`SAPGLoss.aggregate`);
    * surrogate ``min(r·A, clip(r, mu(1-eps), mu(1+eps))·A)``.

    The forward pass is ``ClipPPOLoss.forward`` itself: off-policy rows enter through its proximal-
    policy correction (``log_weight = log r - log mu``, ``log_is_weight = log mu``), so composite
    and multi-agent actions, the value-estimator fallback, the keyword-argument call path, masks
    and every reduction behave as in ``ClipPPOLoss``. A batch without ``"off_policy"`` is on-policy
    data, on which the loss *is* ``ClipPPOLoss`` (``tests/torchrl_conformance``). A
    ``clip_epsilon=(low, high)`` tuple clips to ``[mu(1 - low), mu(1 + high)]``. ``mu_correction=False`` clips to ``1 ± eps`` on every
    row, as the SAPG reference code does (``mu_*`` still report the true mu). ``mu_truncation``
    caps the importance weight of off-policy rows (a departure from the paper). Rows flagged ``"off_policy"`` are weighted by
    ``off_policy_coeff`` (lambda, Eq. 4 and 9) in both the actor and the critic terms; the
    weighted mean is ``sum(w·l) / sum(w)``, so at lambda = 1 it is the plain mean over the
    aggregated minibatch (the reference code) and with equal amounts of on- and off-policy data
    it is ``(L_on + lambda·L_off) / (1 + lambda)``, Eq. 4 up to a constant factor.

    Reported beside ClipPPOLoss's outputs: ``clip_fraction_on`` / ``clip_fraction_off``,
    ``ESS_on`` / ``ESS_off`` (normalised effective sample size of ``r`` on each part), ``mu_mean``,
    ``mu_min``, ``mu_max`` (off-policy rows), ``off_policy_fraction`` and ``kl_approx`` over the
    on-policy rows only. With ``mu_truncation`` set, ClipPPOLoss's own ratio statistics (``ESS``,
    ``max_ratio``, ``mean_ratio``) include the truncation factor of the off-policy rows;
    ``ESS_on`` / ``ESS_off`` stay those of ``r``.

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
        for name in ("delay_actor", "max_importance_ratio"):
            if kwargs.get(name):
                raise ValueError(
                    f"{name} is not supported by OffPolicyClipPPOLoss: its proximal-policy correction would "
                    "mix with mu. Use TorchRL's ClipPPOLoss for PPO-EWMA / capped importance ratios."
                )
        super().__init__(actor_network, critic_network, **kwargs)
        self.mu_correction = mu_correction
        self.mu_truncation = None if mu_truncation is None else float(mu_truncation)
        self.register_buffer("off_policy_coeff", torch.tensor(float(off_policy_coeff), device=self.entropy_coeff.device))
        self._call: dict | None = None  # what _log_weight saw in the current forward (read by the hooks below)
        self._register_load_state_dict_pre_hook(self._accept_clip_ppo_state)
        #: ``"mean"`` / ``"max_policy"``: forward also reports the analytic Gaussian KL to the behaviour policy as
        #: ``"kl"``, from its own distribution (no extra actor pass; OnPolicyTrainer sets it for the adaptive LR)
        self.analytic_kl: str | None = None
        self.analytic_kl_num_policies: int | None = None
        self._deferred: DeferredDiagnostics | None = None  # set inside deferred_diagnostics()

    def _accept_clip_ppo_state(self, state_dict, prefix, *args) -> None:
        """A ``ClipPPOLoss`` state (e.g. a PPO checkpoint written before the recipe used this class) loads:
        the buffer it lacks keeps this loss's value."""
        state_dict.setdefault(prefix + "off_policy_coeff", self.off_policy_coeff.detach().clone())

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
    def _entropy_coeff_rows(self, tensordict: TensorDictBase, shape: torch.Size) -> torch.Tensor | None:
        """Per-row entropy coefficients, or ``None`` for ClipPPOLoss's (scalar or per-head) coefficient."""
        return None

    def _extra_losses(self, tensordict: TensorDictBase, dist) -> dict[str, torch.Tensor]:
        """Further per-row ``loss_*`` terms (reduced like the others)."""
        return {}

    # ClipPPOLoss hooks ----------------------------------------------------------------
    def _log_weight(self, tensordict: TensorDictBase, adv_shape: torch.Size):
        """ClipPPOLoss's ratio, re-centred on mu for off-policy rows.

        ClipPPOLoss clips ``log_weight = log(pi_theta / pi_prox)`` to ``[log(1 - eps), log(1 + eps)]`` and
        weights the surrogate by ``exp(log_weight + log_is_weight) = pi_theta / pi_behaviour``. With
        ``pi_prox = pi_target_old``, i.e. ``log_weight = log r - log mu`` and ``log_is_weight = log mu``,
        its clipped term is ``clip(r, mu(1 - eps), mu(1 + eps))·A``: SAPG Eq. 3.
        """
        behaviour = None
        if self.analytic_kl is not None:  # read before the actor's forward overwrites loc / scale
            behaviour = (tensordict.get("loc", None), tensordict.get("scale", None))
            if behaviour[0] is None or behaviour[1] is None:
                raise KeyError("the analytic KL needs the behaviour policy's 'loc' and 'scale' in the batch: collect "
                               "with an actor that writes them (LatentConditionedActor does).")
        log_weight, dist, kl_approx, log_is_weight = super()._log_weight(tensordict, adv_shape)
        off = tensordict.get(self.tensor_keys.off_policy, None)
        self._call = {"tensordict": tensordict, "dist": dist, "log_ratio": log_weight.detach(), "off": None,
                      "behaviour": behaviour}
        if off is None or is_tensor_collection(log_weight):
            return log_weight, dist, kl_approx, log_is_weight  # on-policy data: ClipPPOLoss exactly
        off = off.reshape(log_weight.shape).to(torch.bool)
        target_lp = tensordict.get(self.tensor_keys.target_log_prob, None)
        if target_lp is None:
            log_mu = torch.zeros_like(log_weight)
        else:  # on-policy rows have mu = 1 by definition (target == behaviour)
            behaviour_lp = tensordict.get(self.tensor_keys.sample_log_prob).reshape(log_weight.shape)
            log_mu = torch.where(off, target_lp.reshape(log_weight.shape) - behaviour_lp, 0.0).detach()
        self._call.update(off=off, log_mu=log_mu)
        centre = log_mu if self.mu_correction else torch.zeros_like(log_mu)
        log_is = centre
        if self.mu_truncation is not None:
            # x min(mu, rho_bar) / mu on off-policy rows: the gradient at theta_old is min(mu, rho_bar)·A·grad log pi
            log_scale = (math.log(self.mu_truncation) - log_mu).clamp_max(0.0)
            log_is = log_is + torch.where(off, log_scale, torch.zeros_like(log_scale))
        if log_is_weight is not None:
            log_is = log_is + log_is_weight
        return log_weight - centre, dist, kl_approx, log_is

    def _get_entropy(self, dist, adv_shape):
        """The analytic entropy where the distribution has one, else ``ClipPPOLoss``'s estimate.

        ``ClipPPOLoss`` (torchrl 0.14) reads ``entropy.isfinite().all()`` on the host to fall back to a
        Monte-Carlo estimate: a host sync per minibatch on an accelerator, and under ``torch.compile``
        it samples that estimate at every call. A non-finite analytic entropy (a zero or infinite
        scale) makes the loss non-finite, which the trainer reports.
        """
        if isinstance(dist, CompositeDistribution) or not has_analytic_entropy(dist):
            return super()._get_entropy(dist, adv_shape)
        return dist.entropy().unsqueeze(-1)

    def _weighted_loss_entropy(self, entropy):
        if self._call is None:
            return super()._weighted_loss_entropy(entropy)
        if is_tensor_collection(entropy):  # composite actions: the heads' entropies summed, as ClipPPOLoss does
            total = functools.reduce(torch.add, entropy.values(include_nested=True, leaves_only=True))
        else:
            total = entropy
        coeff = self._entropy_coeff_rows(self._call["tensordict"], total.shape)
        if coeff is None:
            return super()._weighted_loss_entropy(entropy)
        return -coeff * total

    def _reduce_loss(self, loss, tensordict=None, *, mask=None, reduction=None, weights=None):
        """ClipPPOLoss's reduction, with off-policy rows weighted by lambda: ``sum(w·l) / sum(w)`` for the mean."""
        off = None if self._call is None else self._call["off"]
        if off is None or weights is not None or is_tensor_collection(loss):
            return super()._reduce_loss(loss, tensordict, mask=mask, reduction=reduction, weights=weights)
        if (reduction or self.reduction) != "mean":
            return super()._reduce_loss(loss, tensordict, mask=mask, reduction=reduction,
                                        weights=self._row_weights(off, loss)[0])
        if mask is not None:
            mask = self._expand_loss_mask(mask, loss)
        for key in self._loss_mask_keys() if tensordict is not None else ():
            found = tensordict.get(key, default=None)
            if found is not None:
                found = self._expand_loss_mask(found, loss)
                mask = found if mask is None else mask & found
        if mask is None:  # the loss terms of one forward share their weights and normaliser
            weights, total = self._row_weights(off, loss)
        else:
            loss = torch.where(mask, loss, torch.zeros_like(loss))
            weights = self._row_weights(off, loss)[0] * mask.to(loss.dtype)
            total = weights.sum().clamp_min(torch.finfo(weights.dtype).tiny)
        return (loss * weights).sum() / total

    def _row_weights(self, off: torch.Tensor, loss: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """lambda on off-policy rows and 1 on the others, broadcast to ``loss``, and their clamped sum.

        Computed once per forward and shape: every loss term of a minibatch reuses them.
        """
        cache = self._call.setdefault("row_weights", {})
        key = (loss.shape, loss.dtype)
        if key not in cache:
            coeff = self.off_policy_coeff.to(loss.dtype)
            weights = torch.where(self._expand_loss_mask(off, loss), coeff, 1.0)
            # a minibatch of only zero-weight rows (lambda = 0) gives 0, not NaN
            cache[key] = weights, weights.sum().clamp_min(torch.finfo(weights.dtype).tiny)
        return cache[key]

    # ---------------------------------------------------------------------------------
    @dispatch
    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        self._call = None
        try:
            td_out = super().forward(tensordict)
            call = self._call
            if call is None:
                return td_out
            td_in = call["tensordict"]
            for name, value in self._extra_losses(td_in, call["dist"]).items():
                td_out.set(name, self._reduce_loss(value, td_in).squeeze(-1))
            self._add_diagnostics(td_out, call)
            if call["behaviour"] is not None:
                off = td_in.get(self.tensor_keys.off_policy, None)
                pid = getattr(self.tensor_keys, "policy_id", "policy_id")
                dist = call["dist"]
                td_out.set("kl", gaussian_kl_rows(
                    *call["behaviour"], dist.mean, dist.stddev, keep=None if off is None else ~off,
                    policy_id=td_in.get(pid) if self.analytic_kl == "max_policy" else None,
                    reduction=self.analytic_kl, num_policies=self.analytic_kl_num_policies))
            return td_out
        finally:
            self._call = None

    @contextlib.contextmanager
    def deferred_diagnostics(self, *, kl_approx: bool = False):
        """Within this context, forward stores the diagnostics' per-row inputs instead of reducing them.

        A training loop that only logs the diagnostics averaged over its minibatches wraps its
        update in it and reads the averages once from :meth:`DeferredDiagnostics.means`: the same
        values (up to float summation order), in one batched reduction instead of a set of small
        reductions per minibatch (docs/throughput.md). Inside, forward still reports ``kl_approx``
        (unless ``kl_approx=True``); the other diagnostics are left out of its output. Under
        ``torch.compile`` forward reduces them per call as outside.

        Args:
            kl_approx: defer ``kl_approx`` too (forward leaves it out and :meth:`DeferredDiagnostics.means`
                reports it), for a loop that does not read it after each minibatch (e.g. an adaptive
                learning rate that follows the analytic ``"kl"`` instead).

        Examples:
            >>> from tensordict import TensorDict
            >>> from torchrl_sapg.modules import make_actor_critic
            >>> ac = make_actor_critic(3, 1, num_policies=2, latent_dim=4)
            >>> td = ac.actor(TensorDict({"observation": torch.randn(8, 3), "policy_id": torch.tensor([0, 1] * 4)}, [8])).detach()
            >>> _ = td.update({"advantage": torch.randn(8, 1), "value_target": torch.randn(8, 1),
            ...            "target_log_prob": td["action_log_prob"] + 0.1, "off_policy": torch.tensor([False, True] * 4)})
            >>> loss = OffPolicyClipPPOLoss(ac.actor, ac.critic)
            >>> with loss.deferred_diagnostics() as pending:
            ...     out = loss(td)
            >>> "mu_mean" in out.keys(), round(float(pending.means()["mu_mean"]), 4)
            (False, 1.1052)
        """
        previous, self._deferred = self._deferred, DeferredDiagnostics(self, kl_approx=kl_approx)
        try:
            yield self._deferred
        finally:
            self._deferred = previous

    def _add_diagnostics(self, td_out: TensorDictBase, call: dict) -> None:
        """On/off-policy clip fractions and ESS, mu statistics, the off-policy fraction; KL over on-policy rows."""
        off = call["off"]
        if off is None:
            one, zero = torch.ones_like(td_out["clip_fraction"]), torch.zeros_like(td_out["clip_fraction"])
            td_out.update({"clip_fraction_on": td_out["clip_fraction"], "clip_fraction_off": zero,
                           "ESS_on": td_out["ESS"], "ESS_off": torch.zeros_like(td_out["ESS"]),
                           "mu_mean": one, "mu_min": one, "mu_max": one, "off_policy_fraction": zero})
            return
        lw, off, log_mu = call["log_ratio"].reshape(-1), off.reshape(-1), call["log_mu"].reshape(-1)
        if self._deferred is not None and not torch.compiler.is_compiling():
            self._deferred.rows.append((lw, off, log_mu))
            if self._deferred.kl_approx:  # ClipPPOLoss's all-rows value must not stand in for the on-policy one
                td_out.del_("kl_approx")
                return
            with torch.no_grad():  # kl_approx stays per call: the adaptive LR may read it (OnPolicyTrainer's kl_key)
                on = (~off).to(lw.dtype)
                td_out.set("kl_approx", -(lw * on).sum() / on.sum().clamp_min(1))
            return
        td_out.update(self._diagnostic_stats(lw, off, log_mu))

    @torch.no_grad()
    def _diagnostic_stats(self, lw: torch.Tensor, off: torch.Tensor, log_mu: torch.Tensor) -> dict[str, torch.Tensor]:
        """The diagnostics of rows ``[..., R]`` (log r, off-policy flag, log mu), reduced over the last dim."""
        lo, hi = self._clip_bounds
        centred = lw - log_mu if self.mu_correction else lw
        clipped = centred.clamp(lo, hi) != centred
        masks = torch.stack([~off, off], -2)  # [..., 2, R]: the on- and off-policy parts
        # w = exp(log r) shifted by its part's largest log r (no overflow; the normalised ESS is scale-free)
        shift = torch.where(masks, lw.unsqueeze(-2), float("-inf")).amax(-1)  # [..., 2]
        shift = torch.where(shift.isfinite(), shift, 0.0)
        w = (lw - torch.where(off, shift[..., 1:], shift[..., :1])).exp()
        # the counts and the sums of the clip flags, -log r, mu, w and w^2 of both parts in one matmul
        values = torch.stack([clipped.to(lw.dtype), -lw, log_mu.exp(), torch.ones_like(lw), w, w * w], -2)
        sums = values @ masks.to(lw.dtype).transpose(-1, -2)  # [..., 6, 2]
        counts = sums[..., 3, :]
        means = sums[..., :3, :] / counts.clamp_min(1).unsqueeze(-2)
        # normalised ESS (sum w)^2 / (n sum w^2); 0 for an empty part
        ess = sums[..., 4, :].square() / (sums[..., 5, :] * counts).clamp_min(torch.finfo(lw.dtype).tiny)
        extremes = torch.stack([torch.where(off, log_mu, float("inf")).amin(-1),
                                torch.where(off, log_mu, float("-inf")).amax(-1)], -1)
        # 1 without any off-policy row
        mu_stats = torch.where((counts[..., 1:] > 0), torch.cat([means[..., 2, 1:], extremes.exp()], -1), 1.0)
        return {
            "clip_fraction_on": means[..., 0, 0], "clip_fraction_off": means[..., 0, 1], "kl_approx": means[..., 1, 0],
            "ESS_on": ess[..., 0], "ESS_off": ess[..., 1],
            "mu_mean": mu_stats[..., 0], "mu_min": mu_stats[..., 1], "mu_max": mu_stats[..., 2],
            "off_policy_fraction": counts[..., 1] / lw.shape[-1],
        }


class DeferredDiagnostics:
    """The per-row diagnostic inputs of each forward run inside :meth:`OffPolicyClipPPOLoss.deferred_diagnostics`.

    Args:
        loss: the loss whose forwards are recorded.
        kl_approx: whether :meth:`means` reports ``kl_approx`` (forward then left it out).
    """

    def __init__(self, loss: OffPolicyClipPPOLoss, *, kl_approx: bool = False):
        self.loss = loss
        self.kl_approx = kl_approx
        self.rows: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def means(self) -> dict[str, torch.Tensor]:
        """Each diagnostic of every recorded forward, averaged over the forwards (``{}`` if none ran);
        ``kl_approx`` only if it was deferred (else forward reported it itself)."""
        if not self.rows:
            return {}
        if len({lw.shape for lw, _, _ in self.rows}) == 1:  # one batched reduction over [forwards, R]
            stats = self.loss._diagnostic_stats(*(torch.stack(part) for part in zip(*self.rows)))
        else:  # minibatches of different sizes: one reduction each
            per_call = [self.loss._diagnostic_stats(*row) for row in self.rows]
            stats = {k: torch.stack([d[k] for d in per_call]) for k in per_call[0]}
        if not self.kl_approx:
            stats.pop("kl_approx")
        return {k: v.mean() for k, v in stats.items()}
