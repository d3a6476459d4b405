"""Learning-rate schedules for on-policy training: KL-adaptive, linear and fixed."""
from __future__ import annotations

from typing import Any, Literal

import torch
from torchrl.trainers import TrainerHookBase


class LearningRateSchedule(TrainerHookBase):
    """Set the optimiser's learning rate from the policy's KL or from training progress.

    * ``"adaptive"`` — the rule rl_games and rsl_rl use: after each minibatch, divide the
      learning rate by ``factor`` if KL > 2·``kl_threshold`` and multiply it by ``factor`` if
      KL < ``kl_threshold``/2, within ``[min_lr, max_lr]``. The update is done on-device on a
      tensor learning rate, so it never synchronises with the host.
    * ``"linear"`` — ``lr = lr0 · max(0, 1 - frames / total_frames)``, once per iteration.
    * ``"fixed"`` — leave the learning rate alone.

    The KL is the one the loss reports (``"kl_approx"`` for TorchRL's ``ClipPPOLoss``: the sample
    estimate of KL(pi_old || pi_new) over the minibatch; rl_games uses the analytic Gaussian KL,
    which has the same expectation).

    Args:
        optimizer: the optimiser whose param groups are scheduled. Its ``lr`` entries are turned
            into 0-d tensors (``torch.optim`` accepts them) so the adaptive rule stays on-device.
        mode: ``"adaptive"``, ``"linear"`` or ``"fixed"``.
        kl_threshold: target KL of the adaptive rule (paper: 0.016).
        factor, min_lr, max_lr: step and bounds of the adaptive rule (rl_games: 1.5, 1e-6, 1e-2).
        total_frames: horizon of the linear schedule.

    Examples:
        >>> p = torch.nn.Parameter(torch.zeros(2))
        >>> opt = torch.optim.Adam([p], lr=1e-3)
        >>> sched = LearningRateSchedule(opt, mode="adaptive", kl_threshold=0.01)
        >>> sched.on_minibatch(torch.tensor(0.1))  # KL far above target: lr / 1.5
        >>> round(float(sched.lr), 7)
        0.0006667
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        mode: Literal["adaptive", "linear", "fixed"] = "adaptive",
        kl_threshold: float = 0.016,
        factor: float = 1.5,
        min_lr: float = 1e-6,
        max_lr: float = 1e-2,
        total_frames: int | None = None,
    ):
        if mode not in ("adaptive", "linear", "fixed"):
            raise ValueError(f"mode={mode!r} is unknown; choose 'adaptive', 'linear' or 'fixed'.")
        if mode == "linear" and not total_frames:
            raise ValueError("mode='linear' needs total_frames (the frame count at which lr reaches 0).")
        if factor <= 1.0:
            raise ValueError(f"factor must be > 1, got {factor}.")
        self.optimizer = optimizer
        self.mode = mode
        self.kl_threshold = kl_threshold
        self.factor = factor
        self.min_lr = min_lr
        self.max_lr = max_lr
        self.total_frames = total_frames
        self.initial_lrs = []
        for group in optimizer.param_groups:
            lr = group["lr"]
            self.initial_lrs.append(float(lr))
            if not isinstance(lr, torch.Tensor):
                device = group["params"][0].device if group["params"] else None
                group["lr"] = torch.tensor(float(lr), device=device)

    @property
    def lr(self) -> torch.Tensor:
        """The first param group's current learning rate (a 0-d tensor)."""
        return self.optimizer.param_groups[0]["lr"]

    @torch.no_grad()
    def on_minibatch(self, kl: torch.Tensor | None) -> None:
        """Adapt after one optimiser step (adaptive mode only)."""
        if self.mode != "adaptive":
            return
        if kl is None:
            raise KeyError("the adaptive learning rate needs the loss to report a KL (e.g. 'kl_approx').")
        kl = kl.detach().float().mean()
        for group in self.optimizer.param_groups:
            lr = group["lr"]  # re-read: optimizer.load_state_dict may have replaced the tensor
            kl_d = kl.to(lr.device)
            new = torch.where(kl_d > 2.0 * self.kl_threshold, (lr / self.factor).clamp_min(self.min_lr), lr)
            new = torch.where(kl_d < 0.5 * self.kl_threshold, (lr * self.factor).clamp_max(self.max_lr), new)
            lr.copy_(new)

    @torch.no_grad()
    def on_iteration(self, frames: int) -> None:
        """Update once per collected batch (linear mode only)."""
        if self.mode != "linear":
            return
        scale = max(0.0, 1.0 - frames / self.total_frames)
        for group, lr0 in zip(self.optimizer.param_groups, self.initial_lrs):
            group["lr"].fill_(lr0 * scale)

    def state_dict(self) -> dict[str, Any]:
        # the current lr values live in the optimiser's state_dict
        return {"mode": self.mode, "initial_lrs": list(self.initial_lrs)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict["mode"] != self.mode:
            raise ValueError(
                f"checkpoint was written with lr schedule mode={state_dict['mode']!r}, this run uses "
                f"{self.mode!r}; resume with the same schedule."
            )
        self.initial_lrs = list(state_dict["initial_lrs"])

    def register(self, trainer, name: str = "lr_schedule") -> None:
        trainer.register_module(name, self)
