"""In-process DexPBT: the learner that updates M independent members with their own hyperparameters.

``PopulationLearner`` holds a :class:`PolicyEnsemble`, a per-member Adam (:class:`StackedAdam`)
and one ``[M]`` tensor per hyperparameter (learning rate, clip epsilon, entropy and critic
coefficients, gamma, lambda, mini-epochs, the adaptive rule's KL threshold, the gradient clip).
One update processes all members at once: per-member GAE, per-member advantage standardisation,
per-member shuffled minibatches of each member's own rows, the clipped PPO loss summed over members
(:class:`~torchrl_sapg.objectives.PopulationPPOLoss`; member i's gradient is its own loss's),
per-member gradient-norm clipping and learning rates, and per-member mini-epoch counts (members with
fewer epochs are masked out of the later ones). With a :class:`RecurrentPolicyEnsemble` the
minibatches are whole env-rows of each member's block, replayed from the hidden states recorded at
collection. ``PBTTrainer`` plugs it into :class:`~torchrl_sapg.trainers.OnPolicyTrainer`.
(DexPBT, Petrenko et al. 2023, Sec. III.)
"""
from __future__ import annotations

import math
from typing import Literal, Mapping

import torch
from tensordict import TensorDict, TensorDictBase
from torch import nn

from torchrl_sapg.objectives.member_ppo import PopulationPPOLoss
from torchrl_sapg.population.pbt_inprocess.ensemble import PolicyEnsemble, ensemble_gae
from torchrl_sapg.population.pbt_inprocess.recurrent_ensemble import RecurrentPolicyEnsemble
from torchrl_sapg.trainers.on_policy import OnPolicyTrainer

#: the hyperparameters a ``PopulationLearner`` must be given, one value or ``[M]`` values each
REQUIRED_HYPERPARAMETERS = ("lr", "clip_epsilon", "entropy_coeff", "critic_coeff", "gamma", "lmbda", "num_epochs")
#: those that default to the learner's arguments of the same name (DexPBT Table II mutates both)
DEFAULTED_HYPERPARAMETERS = ("kl_threshold", "max_grad_norm")
#: every member's hyperparameters, each an ``[M]`` tensor that PBT may mutate
HYPERPARAMETERS = REQUIRED_HYPERPARAMETERS + DEFAULTED_HYPERPARAMETERS


class StackedAdam(torch.optim.Optimizer):
    """Adam over parameters stacked along a leading member dim, with per-member learning rates,
    per-member global-norm gradient clipping and a per-member "active" mask.

    ``step(lr, active)``: ``lr`` is ``[M]``; members with ``active[i] = False`` keep their
    parameters and moment estimates unchanged (their mini-epochs are over). No Python loop
    over members, and none over parameters in the arithmetic: each group's gradients are
    concatenated into one ``[M, P]`` tensor and its moments live in one ``[M, P]`` buffer, of
    which ``state[p]["exp_avg"]`` / ``["exp_avg_sq"]`` are views (``["step"]`` is ``p``'s ``[M]``
    step count, a row of one ``[K, M]`` buffer), so a step costs the same number of tensor ops
    whatever the number of parameters (docs/pbt-inprocess.md). The arithmetic is
    ``torch.optim.Adam``'s, with ``clip_grad_norm_``'s clip per member.

    Args:
        params: the stacked parameters (leading dim ``num_members``) or param groups.
        num_members: ``M``.
        betas: Adam's moment decay rates.
        eps: Adam's denominator term.
        max_grad_norm: each member's global gradient-norm clip (``None``: no clipping).

    Examples:
        >>> p = torch.nn.Parameter(torch.zeros(3, 2))
        >>> opt = StackedAdam([p], num_members=3, max_grad_norm=None)
        >>> p.grad = torch.ones(3, 2)
        >>> grad_norms = opt.step(lr=torch.tensor([0.1, 0.0, 0.1]), active=torch.tensor([True, True, False]))
        >>> [round(x, 4) for x in p.data[:, 0].tolist()]
        [-0.1, 0.0, 0.0]
    """

    def __init__(self, params, *, num_members: int, betas=(0.9, 0.999), eps: float = 1e-8, max_grad_norm: float | None = 1.0):
        super().__init__(params, dict(lr=1.0, betas=betas, eps=eps))  # lr: per member, passed to step()
        self.num_members = num_members
        self.max_grad_norm = max_grad_norm
        for p in self._params():
            if p.shape[0] != num_members:
                raise ValueError(f"every parameter must be stacked on a leading dim of {num_members}, got {tuple(p.shape)}.")
        self._layouts: dict[int, _FlatLayout] = {}

    def _params(self):
        return [p for g in self.param_groups for p in g["params"]]

    def _group_grads(self) -> list[tuple[int, dict, list, torch.Tensor]]:
        """``(index, group, params with a gradient, their gradients as one [M, P] tensor)`` per non-empty group."""
        m, out = self.num_members, []
        for index, group in enumerate(self.param_groups):
            ps = [p for p in group["params"] if p.grad is not None]
            if ps:
                out.append((index, group, ps, torch.cat([p.grad.reshape(m, -1) for p in ps], 1)))
        return out

    @staticmethod
    def _norms(grads: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack([g.pow(2).sum(1) for g in grads]).sum(0).sqrt()

    def grad_norms(self) -> torch.Tensor:
        """Each member's global gradient norm ``[M]`` over every parameter with a gradient."""
        return self._norms([g for *_, g in self._group_grads()])

    def _layout(self, index: int, params: list) -> "_FlatLayout":
        """Group ``index``'s flat moment buffers for ``params``, rebuilt when the parameters with a gradient
        change or ``state`` was replaced (``load_state_dict``): the current state is copied in."""
        layout = self._layouts.get(index)
        if layout is None or not layout.holds(self.state, params):
            layout = self._layouts[index] = _FlatLayout(self.state, params, self.num_members)
        return layout

    @torch.no_grad()
    def step(self, lr: torch.Tensor, active: torch.Tensor | None = None, max_grad_norm: torch.Tensor | None = None):
        """One Adam step of every active member (``lr``, ``active`` and ``max_grad_norm``, which replaces the
        constructor's clip, are ``[M]``); returns the ``[M]`` gradient norms before clipping."""
        m = self.num_members
        groups = self._group_grads()
        norms = self._norms([g for *_, g in groups])
        scale = torch.ones_like(norms)
        clip = self.max_grad_norm if max_grad_norm is None else max_grad_norm
        if clip is not None:
            scale = (clip / (norms + 1e-6)).clamp(max=1.0)
        act = torch.ones(m, dtype=torch.bool, device=norms.device) if active is None else active.to(norms.device)
        act = act & torch.isfinite(norms)  # a member whose gradient holds NaN/inf skips the step (the trainer then raises)
        a = act.view(m, 1)
        for index, group, ps, grad in groups:
            b1, b2 = group["betas"]
            layout = self._layout(index, ps)
            exp_avg, exp_avg_sq = layout.exp_avg, layout.exp_avg_sq
            # an inactive member's rows get a zero gradient and zero weights: its moments stay bitwise as they were
            g = torch.where(a, grad * scale.view(m, 1), 0.0)
            on = a.to(exp_avg.dtype)
            exp_avg.lerp_(g, on * (1 - b1))
            exp_avg_sq.mul_(torch.where(a, b2, 1.0)).addcmul_(g, g * (on * (1 - b2)))
            layout.steps.add_(act.to(layout.steps.dtype))
            # torch.optim.Adam's form: p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
            t = layout.steps.clamp(min=1)  # [K, M]: each parameter's count
            step_size = torch.where(act, lr.to(exp_avg.dtype), 0.0) / (1 - b1**t)
            root_bc2 = (1 - b2**t).sqrt()
            step_size, root_bc2 = layout.columns(step_size), layout.columns(root_bc2)
            update = exp_avg / (exp_avg_sq.sqrt() / root_bc2 + group["eps"]) * step_size
            torch._foreach_sub_(ps, layout.split(update))
        return norms

    @torch.no_grad()
    def copy_members(self, dst: torch.Tensor, src: torch.Tensor) -> None:
        """Member ``dst[k]`` takes member ``src[k]``'s moment estimates and step counts."""
        for state in self.state.values():
            for value in state.values():
                value[dst] = value[src]


class _FlatLayout:
    """One param group's Adam state in ``[M, P]`` moment buffers and a ``[K, M]`` step buffer, with each
    parameter's ``state`` entries as views of them (so ``state_dict``, ``load_state_dict`` and
    ``copy_members`` see the usual per-parameter state)."""

    def __init__(self, state, params: list, m: int):
        p0 = params[0]
        sizes = [p.numel() // m for p in params]
        total = sum(sizes)
        self.params, self.sizes, self.shapes = list(params), sizes, [p.shape for p in params]
        self.exp_avg = torch.zeros(m, total, dtype=p0.dtype, device=p0.device)
        self.exp_avg_sq = torch.zeros_like(self.exp_avg)
        self.steps = torch.zeros(len(params), m, device=p0.device)
        self.column_param = torch.repeat_interleave(torch.arange(len(params)), torch.tensor(sizes)).to(p0.device)
        avg, avg_sq = self.split(self.exp_avg), self.split(self.exp_avg_sq)
        for k, p in enumerate(params):
            old = state[p]
            if old:  # keep what was there (the first step after a load, or a new set of parameters)
                avg[k].copy_(old["exp_avg"])
                avg_sq[k].copy_(old["exp_avg_sq"])
                self.steps[k].copy_(old["step"])
            state[p] = {"exp_avg": avg[k], "exp_avg_sq": avg_sq[k], "step": self.steps[k]}
        self.views = [(state[p]["exp_avg"], state[p]["exp_avg_sq"], state[p]["step"]) for p in params]
        # every parameter of the layout steps together, so equal counts stay equal (one host read, here only)
        self.uniform = bool((self.steps == self.steps[:1]).all())

    def columns(self, per_parameter: torch.Tensor) -> torch.Tensor:
        """``[K, M]`` per-parameter factors -> what multiplies the ``[M, P]`` buffers: ``[M, 1]`` when every
        parameter's count is the same, else ``[M, P]`` (each column its parameter's)."""
        if self.uniform:
            return per_parameter[0].unsqueeze(1)
        return per_parameter.t().index_select(1, self.column_param)

    def split(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """``[M, P]`` -> one view per parameter, in its stacked shape."""
        return [part.view(shape) for part, shape in zip(flat.split(self.sizes, 1), self.shapes)]

    def holds(self, state, params: list) -> bool:
        """Whether ``params`` are this layout's and their ``state`` entries are still its views."""
        return len(params) == len(self.params) and all(
            p is q and (s := state.get(p)) is not None and s.get("exp_avg") is v[0] and s.get("exp_avg_sq") is v[1]
            and s.get("step") is v[2]
            for p, q, v in zip(params, self.params, self.views))


class PopulationLearner(nn.Module):
    """Per-member PPO updates of a :class:`PolicyEnsemble` with per-member hyperparameters.

    With a :class:`RecurrentPolicyEnsemble` each member's minibatches are whole ``[T]`` env-rows
    of its own block (``num_minibatches`` then divides its number of env-rows), every row
    replayed from its recorded initial hidden states with resets at ``"is_init"``, and the value
    estimation replays the critic the same way.

    Args:
        ensemble: the M members (:class:`PolicyEnsemble` or :class:`RecurrentPolicyEnsemble`).
        hyperparameters: initial value of each of ``HYPERPARAMETERS`` (a scalar for every member
            or a length-M sequence); ``kl_threshold`` and ``max_grad_norm`` may be left out.
        num_minibatches: minibatches per mini-epoch, taken from each member's own rows.
        max_grad_norm: every member's initial global gradient-norm clip, where ``hyperparameters`` has none
            (``None``: no clipping, held as ``inf``).
        reward_scale: rewards are multiplied by this before value estimation.
        generator: for the minibatch shuffles.
        lr_schedule: ``"fixed"`` (a member's learning rate changes only when PBT changes it) or ``"adaptive"``
            (after each of its minibatches, each member applies :class:`~torchrl_sapg.trainers.LearningRateSchedule`'s
            KL rule to its own learning rate, from its own analytic KL; DexPBT's members train with it, Table II).
        kl_threshold: every member's initial target KL of the adaptive rule, where ``hyperparameters`` has none.
        lr_factor: its step (divide or multiply the learning rate by it).
        min_lr: the adaptive rule's lower bound.
        max_lr: the adaptive rule's upper bound.

    Examples:
        >>> ens = PolicyEnsemble(3, 1, num_members=2, hidden_sizes=(8,))
        >>> learner = PopulationLearner(ens, {"lr": [1e-3, 3e-4], "clip_epsilon": 0.2, "entropy_coeff": 0.0,
        ...     "critic_coeff": 1.0, "gamma": 0.99, "lmbda": 0.95, "num_epochs": [2, 3]}, num_minibatches=2)
        >>> learner.hyper["num_epochs"].tolist()
        [2, 3]
    """

    def __init__(
        self,
        ensemble: PolicyEnsemble | RecurrentPolicyEnsemble,
        hyperparameters: Mapping[str, float | list],
        *,
        num_minibatches: int,
        max_grad_norm: float | None = 1.0,
        reward_scale: float = 1.0,
        generator: torch.Generator | None = None,
        lr_schedule: Literal["fixed", "adaptive"] = "fixed",
        kl_threshold: float = 0.016,
        lr_factor: float = 1.5,
        min_lr: float = 1e-6,
        max_lr: float = 1e-2,
    ):
        super().__init__()
        if lr_schedule not in ("fixed", "adaptive"):
            raise ValueError(f"lr_schedule={lr_schedule!r}: a population member's learning rate is 'fixed' or 'adaptive' "
                             "(the KL rule); a linear schedule is not supported in-process.")
        if lr_factor <= 1.0:
            raise ValueError(f"lr_factor must be > 1, got {lr_factor}.")
        self.lr_schedule, self.lr_factor = lr_schedule, lr_factor
        self.min_lr, self.max_lr = min_lr, max_lr
        missing = [k for k in REQUIRED_HYPERPARAMETERS if k not in hyperparameters]
        if missing:
            raise KeyError(f"hyperparameters is missing {missing}; give each of {REQUIRED_HYPERPARAMETERS}.")
        hyperparameters = {"kl_threshold": kl_threshold, "max_grad_norm": max_grad_norm, **hyperparameters}
        if hyperparameters["max_grad_norm"] is None:
            hyperparameters["max_grad_norm"] = math.inf
        m = ensemble.num_members
        self.ensemble = ensemble
        device = next(ensemble.parameters()).device
        for name in HYPERPARAMETERS:
            dtype = torch.long if name == "num_epochs" else torch.float32
            value = torch.as_tensor(hyperparameters[name], dtype=dtype, device=device).flatten()
            if value.numel() == 1:
                value = value.expand(m).clone()
            if value.numel() != m:
                raise ValueError(f"hyperparameter {name!r} has {value.numel()} values for {m} members.")
            self.register_buffer(f"hp_{name}", value)
        if int(self.hp_num_epochs.min()) < 1:
            raise ValueError("num_epochs must be >= 1 for every member.")
        for name, fix in zip(DEFAULTED_HYPERPARAMETERS, ("a positive target KL", "a positive clip, or None for none")):
            values = getattr(self, f"hp_{name}")
            if not bool((values > 0).all()):
                raise ValueError(f"{name} must be > 0 for every member, got {values.tolist()}; give {fix}.")
        self.num_minibatches = num_minibatches
        self.reward_scale = reward_scale
        # the clip is each member's hp_max_grad_norm, passed to every step
        self.optimizer = StackedAdam(list(ensemble.parameters()), num_members=m, max_grad_norm=None)
        self.generator = generator or torch.Generator(device=device)
        # not a submodule: the ensemble's weights stay under "ensemble." in this learner's state_dict
        self.__dict__["_member_loss"] = PopulationPPOLoss(
            ensemble, clip_epsilon=self.hp_clip_epsilon, entropy_coeff=self.hp_entropy_coeff,
            critic_coeff=self.hp_critic_coeff)
        self.sync = None  # a DistributedSync under torchrun (PBTTrainer sets it): gradients averaged

    @property
    def hyper(self) -> dict[str, torch.Tensor]:
        """The live ``[M]`` hyperparameter tensors (edit them in place to change a member's)."""
        return {name: getattr(self, f"hp_{name}") for name in HYPERPARAMETERS}

    def estimate(self, batch: TensorDictBase) -> TensorDictBase:
        return ensemble_gae(self.ensemble, batch, self.hp_gamma, self.hp_lmbda)

    @property
    def member_loss(self) -> PopulationPPOLoss:
        """The per-member clipped PPO loss (``objectives/member_ppo.py``) over this learner's live
        ``clip_epsilon`` / ``entropy_coeff`` / ``critic_coeff`` tensors."""
        loss = self.__dict__["_member_loss"]
        loss.clip_epsilon, loss.entropy_coeff, loss.critic_coeff = (
            self.hp_clip_epsilon, self.hp_entropy_coeff, self.hp_critic_coeff)
        return loss

    def member_losses(self, sub: TensorDictBase) -> TensorDict:
        """Per-member PPO loss terms on ``[M, B]`` rows, or ``[M, B, T]`` env-rows with a
        recurrent ensemble (each member on its own rows; means over all its steps)."""
        return self.member_loss(sub)

    def update(self, batch: TensorDictBase) -> TensorDict:
        """Mini-epochs of every member on its own rows of a ``[N, T]`` batch (after :meth:`estimate`)."""
        m = self.ensemble.num_members
        keys = [*self.ensemble.input_keys(), *self.member_loss.in_keys]  # all a minibatch reads
        if self.lr_schedule == "adaptive":  # the collecting policy's Gaussian, for the analytic KL
            loss_keys = self.member_loss.tensor_keys
            missing = [k for k in (loss_keys.loc, loss_keys.scale) if k not in batch.keys(True, True)]
            if missing:
                raise KeyError(f"lr_schedule='adaptive' reads the collecting policy's {missing} from the batch (the "
                               "ensemble actor writes them); collect with it, or use lr_schedule='fixed'.")
            keys += [loss_keys.loc, loss_keys.scale]
        data = batch.select(*keys)
        if self.ensemble.is_recurrent:  # member i's env block -> [N/M, T] whole env-rows
            data = data.reshape(m, batch.shape[0] // m, *batch.shape[1:])
        else:  # member i's env block -> row i, flattened
            data = data.reshape(m, -1)
        adv = data.get("advantage")
        per_member = adv.reshape(m, -1)
        shape = (m,) + (1,) * (adv.dim() - 1)
        mean, std = per_member.mean(1).view(shape), per_member.std(1).clamp_min(1e-8).view(shape)
        data.set("advantage", (adv - mean) / std)
        rows = data.shape[1]
        if rows % self.num_minibatches:
            unit = "env-rows ([T] sequences)" if self.ensemble.is_recurrent else "rows"
            raise ValueError(
                f"each member's {rows} {unit} do not split into num_minibatches={self.num_minibatches} equal minibatches."
            )
        mb = rows // self.num_minibatches
        member = torch.arange(m, device=adv.device).unsqueeze(1)
        total, steps = None, 0
        for epoch in range(int(self.hp_num_epochs.max())):
            active = epoch < self.hp_num_epochs
            perm = torch.rand(m, rows, generator=self.generator, device=self.generator.device).argsort(1).to(adv.device)
            for j in range(self.num_minibatches):
                sub = data[member, perm[:, j * mb : (j + 1) * mb]]
                losses = self.member_losses(sub)
                loss = sum(v for k, v in losses.items() if k.startswith("loss_")).sum()
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                kl = losses.get("kl_gaussian") if self.lr_schedule == "adaptive" else None
                if self.sync is not None:  # one all-reduce: the gradients and the KL the learning rates follow
                    self.sync.average_gradients_(self.optimizer._params(), [] if kl is None else [kl])
                norms = self.optimizer.step(lr=self.hp_lr, active=active, max_grad_norm=self.hp_max_grad_norm)
                if kl is not None:
                    self._adapt_lr(kl, active)
                out = losses.detach()
                out.set("grad_norm", norms)
                total = out if total is None else total + out
                steps += 1
        return total / steps

    @torch.no_grad()
    def _adapt_lr(self, kl: torch.Tensor, active: torch.Tensor) -> None:
        """The KL rule on every member that stepped (LearningRateSchedule.on_minibatch, per member, on device)."""
        lr, threshold = self.hp_lr, self.hp_kl_threshold
        new = torch.where(kl > 2.0 * threshold, (lr / self.lr_factor).clamp_min(self.min_lr), lr)
        new = torch.where(kl < 0.5 * threshold, (lr * self.lr_factor).clamp_max(self.max_lr), new)
        lr.copy_(torch.where(active, new, lr))

    def exploit(self, dst: torch.Tensor, src: torch.Tensor) -> None:
        """Members ``dst`` take ``src``'s weights, normaliser, optimiser state and hyperparameters."""
        self.ensemble.copy_members(dst, src)
        self.optimizer.copy_members(dst, src)
        for value in self.hyper.values():
            value[dst] = value[src]

    def state_dict(self, *args, **kwargs):
        state = super().state_dict(*args, **kwargs)
        state["_optimizer"] = self.optimizer.state_dict()
        state["_generator"] = self.generator.get_state()
        return state

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        state_dict = dict(state_dict)
        for name in DEFAULTED_HYPERPARAMETERS:  # a checkpoint from before they were per member
            state_dict.setdefault(f"hp_{name}", getattr(self, f"hp_{name}"))
        self.optimizer.load_state_dict(state_dict.pop("_optimizer"))
        self.generator.set_state(state_dict.pop("_generator"))
        return super().load_state_dict(state_dict, strict=strict, assign=assign)


class PBTTrainer(OnPolicyTrainer):
    """:class:`OnPolicyTrainer` whose update is a :class:`PopulationLearner`'s.

    Logs, besides the trainer's usual metrics, ``policy/<i>/<loss term>`` and
    ``policy/<i>/<hyperparameter>`` for every member and the best member's return as
    ``episode/best_return``. Everything else (hooks, checkpoints, resume) is the base trainer's.
    """

    def __init__(self, *, collector, learner: PopulationLearner, total_frames: int, **kwargs):
        kwargs.setdefault("num_minibatches", learner.num_minibatches)
        super().__init__(
            collector=collector,
            loss_module=learner,
            optimizer=learner.optimizer,
            total_frames=total_frames,
            num_epochs=1,
            max_grad_norm=None,
            reward_scale=learner.reward_scale,
            **kwargs,
        )
        self.learner = learner
        learner.sync = self.sync

    def _estimate_values(self, batch: TensorDictBase) -> TensorDictBase:
        if self.reward_scale != 1.0:
            batch.set(self.reward_key, batch.get(self.reward_key) * self.reward_scale)
        return self.learner.estimate(batch)

    def optim_steps(self, batch: TensorDictBase) -> TensorDictBase:
        self._pre_optim_hook()
        m = self.learner.ensemble.num_members
        recurrent = self.learner.ensemble.is_recurrent
        rows = batch.shape[0] // m if recurrent else batch.numel() // m  # env-rows ([T] sequences) or steps
        self.batch_layout = {"rows_per_member": rows, "num_minibatches": self.learner.num_minibatches,
                             "minibatch_size_per_member": rows // self.learner.num_minibatches,
                             "max_num_epochs": int(self.learner.hp_num_epochs.max())}
        if recurrent:
            self.batch_layout["sequence_length"] = int(batch.shape[1])
        per_member = self.learner.update(batch)
        self._optim_count += self.learner.num_minibatches * int(self.learner.hp_num_epochs.max())
        self._last_member_losses = per_member
        average = per_member.apply(lambda x: x.float().mean(), batch_size=[])
        self._post_optim_complete_log_hook(self._optim_count, average)
        return average

    def _update_normalizers(self, collected: TensorDictBase) -> None:
        obs = collected.get(self.observation_key)
        self.learner.ensemble.update_normalizers(
            obs.reshape(self.learner.ensemble.num_members, -1, obs.shape[-1]), sync=self.sync
        )

    def _metrics(self, losses: TensorDictBase, fps: float) -> dict[str, float]:
        metrics = super()._metrics(losses, fps)
        metrics["train/lr"] = float(self.learner.hp_lr.mean())  # the members' mean; each one's is policy/<i>/lr
        for name, value in self._last_member_losses.items():
            for i, v in enumerate(value.tolist()):
                metrics[f"policy/{i}/{name}"] = float(v)
        for name, value in self.learner.hyper.items():
            for i, v in enumerate(value.tolist()):
                metrics[f"policy/{i}/{name}"] = float(v)
        returns = [v for k, v in metrics.items() if k.startswith("policy/") and k.endswith("/return")]
        finite = [r for r in returns if r == r]
        if finite:
            metrics["episode/best_return"] = max(finite)
        return metrics
