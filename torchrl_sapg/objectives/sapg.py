"""SAPG: split-and-aggregate policy gradients (Singla et al., ICML 2024)."""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Literal, Sequence

import torch
from tensordict import TensorDictBase
from tensordict.utils import NestedKey
from torchrl.envs.utils import ExplorationType, set_exploration_type

from torchrl_sapg.modules.latents import check_policy_ids
from torchrl_sapg.objectives.off_policy_ppo import OffPolicyClipPPOLoss, masked_mean
from torchrl_sapg.objectives.value import n_step_return, values_and_next, vtrace_lambda_target

Aggregation = Literal["leader_follower", "symmetric", "none"]

#: ClipPPOLoss arguments SAPGLoss replaces, and what to pass instead
_CLIP_PPO_ONLY = {
    "entropy_coeff": "entropy_coeffs=[...] (one per policy, leader first) or entropy_sigma=<sigma> (the paper's schedule)",
    "entropy_bonus": "entropy_coeffs / entropy_sigma (the bonus is on when any coefficient is non-zero)",
    "normalize_advantage": "advantage_normalization='minibatch' (or 'batch', 'split', 'split_centre', 'none')",
}


def _next_key(key: NestedKey) -> tuple:
    return ("next", *key) if isinstance(key, tuple) else ("next", key)


def sapg_entropy_coeffs(num_policies: int, sigma: float, leader_id: int = 0) -> torch.Tensor:
    """The paper's per-policy entropy schedule (Sec. 4.5): the leader gets 0, the followers
    ``sigma·1, sigma·2, ..., sigma·(M-1)`` in increasing id order.

    Examples:
        >>> sapg_entropy_coeffs(4, 0.01)
        tensor([0.0000, 0.0100, 0.0200, 0.0300])
        >>> sapg_entropy_coeffs(3, 1.0, leader_id=2)
        tensor([1., 2., 0.])
    """
    if not 0 <= leader_id < num_policies:
        raise ValueError(f"leader_id={leader_id} is outside [0, {num_policies}).")
    rank = torch.arange(num_policies, dtype=torch.float32)
    rank = torch.where(rank < leader_id, rank + 1, rank)
    rank[leader_id] = 0
    return rank * sigma


class SAPGLoss(OffPolicyClipPPOLoss):
    """The SAPG objective: population PPO plus importance-sampled aggregation into a leader.

    ``M`` policies share a latent-conditioned actor and critic and own the ``M`` env blocks.
    :meth:`aggregate` turns a collected ``[N, T]`` batch into the training batch (Alg. 1):
    every policy keeps its own on-policy rows, and the leader (``leader_follower``, Sec. 4.3)
    or every policy (``symmetric``, Sec. 4.2) also gets ``off_policy_ratio`` × its own number of
    whole env-rows sampled from the *other* policies, relabelled with its id and scored by its
    pre-update actor and critic. The loss is :class:`OffPolicyClipPPOLoss` (Eq. 3, 4, 9) with
    per-policy entropy coefficients (Sec. 4.5) and an optional bounds loss.

    Args:
        actor, critic: latent-conditioned modules reading ``"policy_id"``
            (:class:`~torchrl_sapg.modules.LatentConditionedActor` / ``LatentConditionedValue``).
        num_policies: ``M``.
        leader_id: the leader's id (named, never implicit; the reference code uses the last block).
        aggregation: ``"leader_follower"`` (paper's best), ``"symmetric"`` or ``"none"``
            (independent population PPO).
        off_policy_ratio: off-policy env-rows per on-policy env-row of a receiving policy (paper: 1).
        off_policy_coeff: lambda of Eq. 4 / 9 (paper: 1).
        entropy_coeffs: a ``[M]`` sequence of per-policy entropy coefficients (leader first), or
        entropy_sigma: the paper's schedule ``sigma·(i-1)`` (see :func:`sapg_entropy_coeffs`).
        clip_epsilon, critic_coeff, clip_value, loss_critic_type: as ``ClipPPOLoss``.
        bounds_loss_coeff: weight of the squared hinge on the action mean outside
            ``±bounds`` (rl_games' bounds loss; 0 disables it).
        mu_correction: ``mu(1 ± eps)`` clip (paper) or ``1 ± eps`` (reference code).
        mu_truncation: ``None`` (paper) or IMPALA's ``rho_bar``: cap the off-policy rows'
            importance weight at ``rho_bar`` (see :class:`OffPolicyClipPPOLoss`).
        critic_target: ``"gae"`` (GAE returns, the reference code) or ``"nstep"`` (Eq. 5, on-policy
            rows get the ``n_steps`` return bootstrapped with the collecting policy's old critic).
        n_steps, gamma: for the n-step and the one-step (Eq. 6) targets.
        off_policy_target: how relabelled rows get their critic target and advantage:
            ``"vtrace"`` (default) or ``"td0"`` (paper Eq. 6 and the reference code): ``r + gamma·V_old(s')`` and its TD
            error; ``"vtrace"``: the V-trace target ``v_t`` of IMPALA (Espeholt et al. 2018,
            truncation ``rho_bar = c_bar = 1``, traces ``c = off_policy_lambda·min(1, rho)``) over
            the follower's recorded row, and the advantage
            ``r_t + gamma·((1 - lambda)·V_old(s'_t) + lambda·v_{t+1}) - V_old(s_t)``
            (without V-trace's own ``rho_t`` factor: the surrogate's ratio already importance-
            weights the row). A multi-step estimate: the TD(0) error only sees the action's
            effect through one step of the critic, which on Pendulum gave leader gradients
            pointing away from the GAE ones (docs/sapg.md). ``"gae"``: TorchRL's GAE(lambda)
            target and advantage under the leader's critic along the follower's row, i.e.
            ``"vtrace"`` without trace truncation (``rho = 1`` in the traces): lower variance
            and a longer horizon than V-trace, biased by the follower's continuation.
        off_policy_lambda: the trace decay of ``"vtrace"`` (``c_i = lambda·min(1, rho_i)``, see
            :func:`vtrace_lambda_target`) and the lambda of ``"gae"``. 1 is plain V-trace (a
            Monte-Carlo return to the end of the row while the policies agree); the GAE lambda
            of the on-policy rows makes both groups' advantages the same estimator when leader
            and follower agree. ``E[min(1, rho)] < 1`` even when the policies agree on average,
            so V-trace's effective horizon is shorter than its lambda says.
        advantage_normalization: how :meth:`aggregate` standardises advantages (use GAE with
            ``average_gae=False``): ``"split"`` standardises on-policy rows (GAE) and off-policy
            rows (one-step TD errors) separately; ``"batch"`` over the whole aggregated batch (the
            reference code); ``"split_centre"`` subtracts each group's own mean (a per-group
            baseline, which leaves the importance-sampled gradient unbiased) and divides both by
            one pooled within-group std, so the TD(0) rows keep their natural, smaller scale;
            ``"minibatch"`` per minibatch in the loss; ``"none"``. The two estimators have
            different means and scales (measured on Pendulum: GAE mean 2.4, std 2.5; TD(0) mean
            0.3, std 0.2), so ``"batch"`` gives every off-policy row a large common negative
            offset, which the heavy-tailed mu weights turn into noise.
        generator: a ``torch.Generator`` for the off-policy row sampling (reproducible runs).

    Examples:
        >>> from torchrl_sapg.collectors import PopulationCollector
        >>> from torchrl_sapg.envs import make_env
        >>> from torchrl_sapg.modules import make_actor_critic
        >>> from torchrl.objectives.value import GAE
        >>> ac = make_actor_critic(3, 1, num_policies=3, latent_dim=8, hidden_sizes=(32,))
        >>> collector = PopulationCollector(make_env("pendulum", 6, seed=0), ac.actor, num_policies=3,
        ...                                 frames_per_batch=6 * 8)
        >>> loss = SAPGLoss(ac.actor, ac.critic, num_policies=3, entropy_sigma=0.005)
        >>> batch = GAE(gamma=0.99, lmbda=0.95, value_network=ac.critic)(next(iter(collector)))
        >>> data = loss.aggregate(batch)
        >>> data.shape, int(data["off_policy"].sum())  # 6 own rows + 2 follower rows for the leader
        (torch.Size([8, 8]), 16)
        >>> sorted(k for k in loss(data.reshape(-1)).keys() if k.startswith("loss_"))
        ['loss_critic', 'loss_entropy', 'loss_objective']
    """

    @dataclass
    class _AcceptedKeys(OffPolicyClipPPOLoss._AcceptedKeys):
        """Keys of :class:`SAPGLoss`; all of :class:`OffPolicyClipPPOLoss`'s plus:

        Attributes:
            policy_id (NestedKey): the integer policy id of every row, as ``PolicyIdTransform`` /
                ``PopulationCollector`` write it and the actor reads it. Defaults to ``"policy_id"``.
        """

        policy_id: NestedKey = "policy_id"

    default_keys = _AcceptedKeys

    def __init__(
        self,
        actor,
        critic,
        *,
        num_policies: int,
        leader_id: int = 0,
        aggregation: Aggregation = "leader_follower",
        off_policy_ratio: float = 1.0,
        off_policy_coeff: float = 1.0,
        entropy_coeffs: Sequence[float] | torch.Tensor | None = None,
        entropy_sigma: float | None = None,
        clip_epsilon: float = 0.2,
        critic_coeff: float = 1.0,
        clip_value: float | None = None,
        loss_critic_type: str = "l2",
        bounds_loss_coeff: float = 0.0,
        bounds: float = 1.1,
        mu_correction: bool = True,
        mu_truncation: float | None = None,
        critic_target: Literal["gae", "nstep"] = "gae",
        n_steps: int = 3,
        off_policy_target: Literal["td0", "vtrace", "gae"] = "vtrace",
        off_policy_lambda: float = 1.0,
        gamma: float = 0.99,
        advantage_normalization: Literal["split", "split_centre", "batch", "minibatch", "none"] = "batch",
        generator: torch.Generator | None = None,
        **kwargs,
    ):
        self._check_arguments(kwargs, aggregation, num_policies, leader_id, off_policy_ratio, critic_target,
                              off_policy_target, off_policy_lambda, advantage_normalization, entropy_coeffs, entropy_sigma)
        if entropy_sigma is not None:
            coeffs = sapg_entropy_coeffs(num_policies, entropy_sigma, leader_id)
        elif entropy_coeffs is not None:
            coeffs = torch.as_tensor(entropy_coeffs, dtype=torch.float32).flatten()
            if coeffs.numel() != num_policies:
                raise ValueError(
                    f"entropy_coeffs has {coeffs.numel()} entries but num_policies={num_policies}: give one per policy."
                )
        else:
            coeffs = torch.zeros(num_policies)
        super().__init__(
            actor,
            critic,
            clip_epsilon=clip_epsilon,
            entropy_bonus=bool((coeffs != 0).any()),
            entropy_coeff=0.0,
            critic_coeff=critic_coeff,
            clip_value=clip_value,
            loss_critic_type=loss_critic_type,
            normalize_advantage=advantage_normalization == "minibatch",
            mu_correction=mu_correction,
            mu_truncation=mu_truncation,
            off_policy_coeff=off_policy_coeff,
            **kwargs,
        )
        device = self.entropy_coeff.device
        self.register_buffer("entropy_coeffs", coeffs.to(device))
        self.num_policies = num_policies
        self.leader_id = leader_id
        self.aggregation = aggregation
        self.off_policy_ratio = float(off_policy_ratio)
        self.bounds_loss_coeff = float(bounds_loss_coeff)
        self.bounds = float(bounds)
        self.critic_target = critic_target
        self.off_policy_target = off_policy_target
        self.off_policy_lambda = float(off_policy_lambda)
        self.n_steps = int(n_steps)
        self.gamma = float(gamma)
        self.advantage_normalization = advantage_normalization
        self.generator = generator
        self._actor_reads_policy_id: bool | None = None  # checked once, at the first aggregate

    @staticmethod
    def _check_arguments(kwargs, aggregation, num_policies, leader_id, off_policy_ratio, critic_target,
                         off_policy_target, off_policy_lambda, advantage_normalization, entropy_coeffs,
                         entropy_sigma) -> None:
        """One clear error per inconsistent constructor argument."""
        for name, instead in _CLIP_PPO_ONLY.items():
            if name in kwargs:
                raise TypeError(f"SAPGLoss does not take ClipPPOLoss's {name}=; use {instead}.")
        if aggregation not in ("leader_follower", "symmetric", "none"):
            raise ValueError(f"aggregation={aggregation!r}: choose 'leader_follower', 'symmetric' or 'none'.")
        if not isinstance(num_policies, int) or num_policies < 1:
            raise ValueError(f"num_policies must be a positive int, got {num_policies!r}.")
        if not 0 <= leader_id < num_policies:
            raise ValueError(f"leader_id={leader_id} is outside [0, num_policies={num_policies}).")
        if aggregation != "none" and num_policies < 2:
            raise ValueError(f"aggregation={aggregation!r} needs num_policies >= 2 (got 1); use aggregation='none'.")
        max_ratio = num_policies - 1
        if not 0 < off_policy_ratio <= max_ratio and aggregation != "none":
            raise ValueError(
                f"off_policy_ratio={off_policy_ratio} must be in (0, num_policies - 1 = {max_ratio}]: a "
                "policy can receive at most every row of the other policies."
            )
        if critic_target not in ("gae", "nstep"):
            raise ValueError(f"critic_target={critic_target!r}: choose 'gae' or 'nstep'.")
        if off_policy_target not in ("td0", "vtrace", "gae"):
            raise ValueError(f"off_policy_target={off_policy_target!r}: choose 'td0' (paper Eq. 6), 'vtrace' or 'gae'.")
        if not 0.0 <= off_policy_lambda <= 1.0:
            raise ValueError(f"off_policy_lambda={off_policy_lambda} must be in [0, 1] (the V-trace trace decay).")
        if advantage_normalization not in ("split", "split_centre", "batch", "minibatch", "none"):
            raise ValueError(
                f"advantage_normalization={advantage_normalization!r}: choose 'split', 'split_centre', "
                "'batch', 'minibatch' or 'none'."
            )
        if entropy_coeffs is not None and entropy_sigma is not None:
            raise ValueError("give entropy_coeffs or entropy_sigma, not both.")

    def _set_in_keys(self):
        super()._set_in_keys()
        if self.tensor_keys.policy_id not in self._in_keys:  # read by the entropy rows even if the actor does not
            self._in_keys.append(self.tensor_keys.policy_id)

    # ------------------------------------------------------------------ loss hooks
    def _entropy_coeff_rows(self, tensordict: TensorDictBase, shape: torch.Size) -> torch.Tensor:
        policy_id = tensordict.get(self.tensor_keys.policy_id, None)
        if policy_id is None:
            raise KeyError(f"SAPGLoss: {self.tensor_keys.policy_id!r} is missing from the input; it selects each "
                           "row's entropy coefficient (set_keys(policy_id=...) if your data names it otherwise).")
        coeff = self.entropy_coeffs[policy_id]
        if coeff.ndim > len(shape):  # a trailing singleton of the id ([B, 1]) against a [B] entropy
            return coeff.reshape(shape)
        # per-row ids against per-row ([B, 1]) or per-agent ([B, A, 1]) entropies: broadcast over the rest
        return coeff.reshape(coeff.shape + (1,) * (len(shape) - coeff.ndim)).expand(shape)

    def _extra_losses(self, tensordict, dist):
        if self.bounds_loss_coeff == 0.0:
            return {}
        mu = dist.mean
        b = self.bounds
        hinge = (mu - b).clamp_min(0).pow(2) + (-b - mu).clamp_min(0).pow(2)
        return {"loss_bounds": self.bounds_loss_coeff * hinge.sum(-1, keepdim=True)}

    # ------------------------------------------------------------------ aggregation
    def _receivers(self) -> list[int]:
        if self.aggregation == "leader_follower":
            return [self.leader_id]
        return list(range(self.num_policies))

    @torch.no_grad()
    def aggregate(self, batch: TensorDictBase) -> TensorDictBase:
        """Build the training batch of Alg. 1 from a collected ``[N, T]`` batch.

        ``batch`` must hold what the collector and the value estimator wrote: ``"policy_id"``,
        the action and its log-prob, ``("next", ...)`` with reward/done/terminated/observation,
        ``"state_value"``, ``"advantage"`` and ``"value_target"``. Returns ``[N + K, T]``: the
        on-policy rows (flag ``"off_policy" = False``, ``"target_log_prob"`` = their own
        log-prob) followed by ``K`` relabelled off-policy env-rows with ``"target_log_prob"``,
        ``"state_value"`` (V_old(s) of the receiving policy), the one-step target
        ``r + gamma·V_old(s')·(1 - terminated)`` (Eq. 6) as ``"value_target"`` and its TD error
        as ``"advantage"``. With ``critic_target="nstep"`` on-policy ``"value_target"`` is the
        n-step return of Eq. 5. With ``advantage_normalization="batch"`` advantages are then
        standardised over all returned rows. Fixed output shapes; with a feed-forward critic one host
        sync (how many episode ends a relabelled row holds, :func:`values_and_next`).
        """
        if batch.batch_dims != 2:
            raise ValueError(f"aggregate expects an [N, T] batch from the collector, got batch_size={tuple(batch.batch_size)}.")
        keys = self.tensor_keys
        self._check_batch_keys(batch)
        N, T = batch.shape
        policy_id = batch.get(keys.policy_id)
        policy_id = policy_id.reshape(N, T) if policy_id.numel() == N * T else policy_id
        row_ids = policy_id[:, 0]
        check_policy_ids(row_ids, self.num_policies, name=str(keys.policy_id))
        self._check_env_major(policy_id)
        if self.aggregation != "none":
            self._check_actor_reads_policy_id(batch, row_ids)
        if N % self.num_policies:
            raise ValueError(f"the batch has {N} env rows, not divisible by num_policies={self.num_policies}.")
        block = N // self.num_policies
        batch = batch.clone(False)
        if self.critic_target == "nstep":
            next_value = self._values(batch)[1]
            nstep = n_step_return(
                batch.get(("next", keys.reward)),
                next_value,
                batch.get(("next", keys.done)),
                batch.get(("next", keys.terminated)),
                self.gamma,
                self.n_steps,
            )
            batch.set(keys.value_target, nstep.reshape(batch.get(keys.value_target).shape))
        batch.set(keys.off_policy, torch.zeros(N, T, dtype=torch.bool, device=batch.device))
        batch.set(keys.target_log_prob, batch.get(keys.sample_log_prob).clone())
        if self.aggregation == "none":
            out = batch
        else:
            out = torch.cat([batch, self._off_policy_rows(batch, row_ids, block)], dim=0)
        adv = out.get(keys.advantage)
        if self.advantage_normalization == "batch":
            out.set(keys.advantage, (adv - adv.mean()) / adv.std().clamp_min(1e-8))
        elif self.advantage_normalization == "split":
            off = out.get(keys.off_policy).reshape(adv.shape)
            out.set(keys.advantage, torch.where(off, _standardize(adv, off), _standardize(adv, ~off)))
        elif self.advantage_normalization == "split_centre":
            off = out.get(keys.off_policy).reshape(adv.shape)
            centred = torch.where(off, adv - masked_mean(adv, off), adv - masked_mean(adv, ~off))
            out.set(keys.advantage, centred / centred.pow(2).sum().div(max(centred.numel() - 2, 1)).sqrt().clamp_min(1e-8))
        return out

    # ------------------------------------------------------------------ misuse checks
    def _check_batch_keys(self, batch: TensorDictBase) -> None:
        """Every entry aggregate reads, named with the fix when missing."""
        keys = self.tensor_keys
        needed = [keys.policy_id, keys.action, keys.sample_log_prob, keys.advantage, keys.value_target, keys.value,
                  _next_key(keys.reward), _next_key(keys.done), _next_key(keys.terminated)]
        needed += [_next_key(k) for k in self.critic_network.in_keys if k != "is_init"]  # V_old(s') of relabelled rows
        present = batch.keys(True, True)
        missing = [k for k in dict.fromkeys(needed) if k not in present]
        if missing:
            raise KeyError(
                f"SAPGLoss.aggregate: {missing} missing from the batch. Collect with PopulationCollector (or a TorchRL "
                "collector over an env with PolicyIdTransform), which records actions, log-probs and the ('next', ...) "
                "reward / done / terminated / observations, then run a value estimator such as GAE before aggregate."
            )

    def _check_env_major(self, policy_id: torch.Tensor) -> None:
        """Every env row holds one policy's steps: ids vary along dim 0 only ([N, T], not time-major [T, N])."""
        varies = (policy_id != policy_id[:, :1]).any()
        msg = (f"SAPGLoss.aggregate: {self.tensor_keys.policy_id!r} changes along dim 1 of the [N, T] batch, so its rows "
               "are not env rows. Is it time-major ([T, N])? Pass batch.transpose(0, 1) (PopulationCollector's and "
               "TorchRL collectors' layout is [N, T]).")
        if policy_id.device.type == "cpu" and not torch.compiler.is_compiling():
            if bool(varies):
                raise ValueError(msg)
        else:  # no host sync on an accelerator: surfaces at the next synchronisation
            torch._assert_async(~varies, msg)

    @torch.no_grad()
    def _check_actor_reads_policy_id(self, batch: TensorDictBase, row_ids: torch.Tensor) -> None:
        """Once: an actor that does not read the policy id is refused; one whose output does not change with it
        (mu == 1, the off-policy rows copies of the followers' data) is warned about."""
        if self._actor_reads_policy_id:
            return
        pid = self.tensor_keys.policy_id
        fix = (f"Use a latent-conditioned actor (make_actor_critic(num_policies={self.num_policies}, latent_dim>0), "
               f"LatentConditionedActor) or set_keys(policy_id=...) to the key your actor reads.")
        if pid not in self.actor_network.in_keys:
            raise ValueError(f"SAPGLoss: the actor does not read {pid!r} (its in_keys are {self.actor_network.in_keys}), "
                             f"so every policy is the same network and aggregation has nothing to relabel. {fix}")
        sample = batch[:, 0].clone(False)
        other = sample.clone(False)
        other.set(pid, ((row_ids + 1) % self.num_policies).reshape(sample.get(pid).shape))
        with set_exploration_type(ExplorationType.RANDOM), (
            self.actor_network_params.to_module(self.actor_network) if self.functional else _null()
        ):
            action = sample.get(self.tensor_keys.action)
            same = torch.equal(self.actor_network.get_dist(sample).log_prob(action),
                               self.actor_network.get_dist(other).log_prob(action))
        if same:  # a warning: identical latents can also be deliberate (a test, a shared-policy ablation)
            warnings.warn(f"SAPGLoss: the actor's output does not depend on {pid!r} (same log-prob under every id), "
                          f"so mu is exactly 1 and the leader's off-policy rows are copies. {fix}", stacklevel=3)
        self._actor_reads_policy_id = True

    def _critic_values(self, td: TensorDictBase) -> torch.Tensor:
        with self.critic_network_params.to_module(self.critic_network) if self.functional else _null():
            return self.critic_network(td.select(*self.critic_network.in_keys).clone(False)).get(self.tensor_keys.value)

    def _values(self, td: TensorDictBase) -> tuple[torch.Tensor, torch.Tensor]:
        """``V(s_t)`` and ``V(s'_t)`` for every step of ``[R, T]`` rows, from one critic call.

        Inside an episode ``s'_t = s_{t+1}``, so ``V(s'_t)`` is the next step's value. A feed-forward
        critic evaluates each row's ``T`` states and only the next states at episode ends and after the
        last step (:func:`values_and_next`, one host sync). A recurrent critic runs once on ``[s; s']``:
        each of the two sequences starts from its recorded hidden state and restarts at ``is_init``
        (carried over to ``s'`` so it restarts where the root step did). On a relabelled row the recorded
        states are the follower's, so until the row's first episode start ``V(s)`` and ``V(s')`` start
        from the follower's state, not from a leader replay (the leader never ran there).
        """
        in_keys = self.critic_network.in_keys
        nxt = td.get("next").select(*in_keys)
        done = td.get(("next", self.tensor_keys.done))
        if "is_init" not in in_keys:
            return values_and_next(self._critic_values, td.select(*in_keys), nxt, done)
        if "is_init" in td.keys() and "is_init" in nxt.keys():
            nxt.set("is_init", nxt.get("is_init") | td.get("is_init"))
        both = self._critic_values(torch.cat([td.select(*in_keys), nxt], dim=0))
        value, bootstrap = both[: td.shape[0]], both[td.shape[0]:]
        shifted = torch.cat([value[:, 1:], value[:, -1:]], dim=1)
        done = done.reshape(value.shape).to(torch.bool)
        last = torch.zeros_like(done)
        last[:, -1] = True
        return value, torch.where(done | last, bootstrap, shifted)

    def _off_policy_rows(self, batch: TensorDictBase, row_ids: torch.Tensor, block: int) -> TensorDictBase:
        keys = self.tensor_keys
        receivers = torch.tensor(self._receivers(), device=batch.device)  # [R]
        k = int(round(self.off_policy_ratio * block))
        if k < 1:
            raise ValueError(f"off_policy_ratio={self.off_policy_ratio} × {block} rows per policy rounds to 0 rows.")
        # a random order of the env rows of every *other* policy first: own rows sort last (+2)
        noise = torch.rand(len(receivers), row_ids.numel(), generator=self.generator, device="cpu" if self.generator is None else self.generator.device)
        noise = noise.to(batch.device) + 2.0 * (row_ids.unsqueeze(0) == receivers.unsqueeze(1))
        rows = noise.argsort(dim=1)[:, :k]  # [R, k], never a receiver's own row
        off = batch[rows.reshape(-1)]
        new_id = receivers.repeat_interleave(k).unsqueeze(1).expand(-1, batch.shape[1])
        pid = keys.policy_id
        off.set(pid, new_id.reshape(off.get(pid).shape).clone())
        if _next_key(pid) in off.keys(True, True):
            off.set(_next_key(pid), new_id.reshape(off.get(_next_key(pid)).shape).clone())
        # the receiving policy's pre-update actor and critic on the follower's data
        with set_exploration_type(ExplorationType.RANDOM), (
            self.actor_network_params.to_module(self.actor_network) if self.functional else _null()
        ):
            dist = self.actor_network.get_dist(off)
            target_lp = dist.log_prob(off.get(keys.action))
        off.set(keys.target_log_prob, target_lp.reshape(off.get(keys.sample_log_prob).shape))
        value, next_value = self._values(off)
        reward = off.get(("next", keys.reward)).reshape(value.shape)
        not_term = 1.0 - off.get(("next", keys.terminated)).to(value.dtype).reshape(value.shape)
        if self.off_policy_target == "td0":
            target = reward + self.gamma * next_value * not_term
            advantage = target - value
        else:
            done = off.get(("next", keys.done)).reshape(value.shape).to(torch.bool)
            terminated = off.get(("next", keys.terminated)).reshape(value.shape).to(torch.bool)
            behaviour_lp = off.get(keys.sample_log_prob).reshape(value.shape)
            if self.off_policy_target == "vtrace":
                log_rho = target_lp.reshape(value.shape) - behaviour_lp
            else:  # "gae": untruncated traces, the leader critic's GAE(lambda) along the follower's row
                log_rho = torch.zeros_like(value)
            target = vtrace_lambda_target(
                self.gamma, self.off_policy_lambda, log_rho,
                value, next_value, reward, done, terminated,
            )
            # v_{t+1}: the next step's V-trace target inside an episode, V_old(s'_t) at its end and after the last step
            last = torch.zeros_like(done)
            last[:, -1] = True
            next_target = torch.where(done | last, next_value, torch.cat([target[:, 1:], target[:, -1:]], dim=1))
            # r + gamma·((1 - lambda)·V(s') + lambda·v_{t+1}) - V(s): IMPALA's r + gamma·v_{t+1} - V(s) at
            # lambda = 1, and exactly GAE(lambda) when the policies agree (rho = 1)
            lam = self.off_policy_lambda
            bootstrap = (1.0 - lam) * next_value + lam * next_target
            advantage = reward + self.gamma * bootstrap * not_term - value
        off.set(keys.value, value)
        off.set(keys.value_target, target.reshape(off.get(keys.value_target).shape))
        off.set(keys.advantage, advantage.reshape(off.get(keys.advantage).shape))
        off.set(keys.off_policy, torch.ones(off.shape, dtype=torch.bool, device=off.device))
        return off


def _standardize(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``(x - mean) / std`` with the statistics of the entries selected by ``mask`` (no host sync)."""
    w = mask.to(x.dtype)
    n = w.sum().clamp_min(1)
    mean = (x * w).sum() / n
    var = ((x - mean).pow(2) * w).sum() / (n - 1).clamp_min(1)
    return (x - mean) / var.sqrt().clamp_min(1e-8)


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
