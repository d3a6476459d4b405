"""One optimiser step of the on-policy trainer: loss (optionally compiled), backward, clip, a NaN-safe step."""
from __future__ import annotations

import contextlib

import torch
from tensordict import TensorDictBase
from torch import nn
from torchrl import compile_with_warmup
from torchrl.trainers import OptimizationStepper, Trainer

from torchrl_sapg.objectives.kl import gaussian_kl
from torchrl_sapg.trainers.lr_schedule import LearningRateSchedule

__all__ = ["ClippedGradientStepper", "skip_if_nonfinite"]


@contextlib.contextmanager
def skip_if_nonfinite(optimizer: torch.optim.Optimizer, params: list[nn.Parameter], finite: torch.Tensor):
    """Make the enclosed ``optimizer.step()`` a no-op for the weights when ``finite`` is False, without a host sync.

    A fused ``torch.optim`` optimiser (``fused=True`` in every group, e.g. ``Adam``) is handed ``found_inf``, the flag
    its kernel reads to skip the whole step: weights, moments and step count stay as they were. Any other
    optimiser gets zeroed gradients and every group's learning rate multiplied by ``finite``, so NaN/inf never
    reaches a weight (Adam's moments decay once). The trainer raises on the non-finite loss after the iteration.

    Args:
        optimizer: the optimiser about to step.
        params: the parameters it updates.
        finite: a boolean scalar tensor on the parameters' device.

    Examples:
        >>> p = nn.Parameter(torch.ones(2)); p.grad = torch.full((2,), float("nan"))
        >>> opt = torch.optim.Adam([p], lr=0.1, fused=True)
        >>> with skip_if_nonfinite(opt, [p], torch.isfinite(p.grad).all()):
        ...     opt.step()
        >>> p.data
        tensor([1., 1.])
    """
    # torch's own fused kernels read found_inf (Adam, AdamW, SGD, Adagrad); another class's "fused" flag may not
    if type(optimizer).__module__.startswith("torch.optim.") and all(g.get("fused") for g in optimizer.param_groups):
        optimizer.found_inf = (~finite).to(torch.float32)  # the kernels' flag, as torch.amp.GradScaler sets it
        try:
            yield
        finally:
            del optimizer.found_inf
        return
    scale = finite.to(params[0].dtype)
    for p in params:
        if p.grad is not None:
            torch.nan_to_num_(p.grad.mul_(scale), nan=0.0, posinf=0.0, neginf=0.0)
    saved = [g["lr"] for g in optimizer.param_groups]
    for g in optimizer.param_groups:
        g["lr"] = g["lr"] * scale if isinstance(g["lr"], torch.Tensor) else torch.where(finite, g["lr"], 0.0).item()
    try:
        yield
    finally:
        for g, lr in zip(optimizer.param_groups, saved):
            g["lr"] = lr


class ClippedGradientStepper(OptimizationStepper):
    """One optimiser step: sum the ``loss_*`` terms, backprop, clip the global grad norm, step.

    Everything stays on the device: the grad norm and the loss terms come back as tensors and
    the (optional) KL-adaptive learning rate is updated without a host sync.

    Args:
        max_grad_norm: global L2 clip (paper: 1.0); ``None`` disables clipping.
        lr_schedule: a :class:`LearningRateSchedule` told the minibatch's KL after each step.
        kl_key: the loss output holding the KL when ``kl_actor`` is not given.
        kl_actor: a Gaussian actor; when given and the schedule is adaptive, the KL fed to the
            schedule is the analytic :func:`gaussian_kl` of the minibatch before the step
            (rl_games / rsl_rl), reported as ``"kl"``. It costs one extra no-grad actor pass per
            minibatch, so a fixed or linear schedule skips it.
        kl_reduction: ``"mean"`` over the minibatch's on-policy rows, or ``"max_policy"``: the
            largest per-policy mean (:func:`gaussian_kl`; needs ``kl_actor.num_policies``).
        compile: run :meth:`loss_step` (loss forward, analytic KL, sum of ``loss_*``; its backward is
            compiled with it) through ``torch.compile``: ``False``, ``True`` or a dict of
            ``torch.compile`` keyword arguments.
        cudagraphs: compile with ``mode="reduce-overhead"`` (CUDA graphs; CUDA only).
        compile_warmup: loss steps run eagerly before :meth:`loss_step` is compiled (settable later,
            before the steps reach it; :class:`OnPolicyTrainer` sets one update's steps).
    """

    def __init__(
        self,
        *,
        max_grad_norm: float | None = 1.0,
        lr_schedule: LearningRateSchedule | None = None,
        kl_key: str = "kl_approx",
        kl_actor=None,
        kl_reduction: str = "mean",
        compile: bool | dict = False,
        cudagraphs: bool = False,
        compile_warmup: int = 0,
    ):
        if kl_reduction not in ("mean", "max_policy"):
            raise ValueError(f"kl_reduction={kl_reduction!r}: choose 'mean' or 'max_policy'.")
        options = dict(compile) if isinstance(compile, dict) else {}
        if cudagraphs:
            options.setdefault("mode", "reduce-overhead")
        self.compiled = bool(compile) or bool(cudagraphs)
        self.cudagraphs = bool(cudagraphs)
        self._compile_options = options
        self.compile_warmup = compile_warmup
        self.max_grad_norm = max_grad_norm
        self.lr_schedule = lr_schedule
        self.kl_key = kl_key
        self.kl_actor = kl_actor
        self.kl_reduction = kl_reduction
        self._params: list[nn.Parameter] | None = None

    @property
    def compile_warmup(self) -> int:
        """Loss steps run eagerly before the compiled one takes over.

        Traced code guards on Python-side caches that the first eager update still fills (tensordict's
        type memo grows when the trainer divides its summed losses): compiled before they settle, the
        step compiles a second time at the next update (docs/throughput.md).

        Examples:
            >>> stepper = ClippedGradientStepper(compile=True)
            >>> stepper.compile_warmup = 20  # e.g. 5 epochs x 4 minibatches: the first update runs eagerly
            >>> stepper.compile_warmup
            20
        """
        return self._compile_warmup

    @compile_warmup.setter
    def compile_warmup(self, steps: int) -> None:
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise ValueError(f"compile_warmup={steps!r}: give the number of eager loss steps, an int >= 0.")
        if steps and not self.compiled:
            raise ValueError(f"compile_warmup={steps} does nothing without compile=True (or cudagraphs=True); "
                             "turn compilation on, or leave compile_warmup at 0.")
        self._compile_warmup = steps
        # TorchRL's wrapper: the first `steps` calls run loss_step itself, then torch.compile takes over
        self._loss_step = (
            compile_with_warmup(self.loss_step, warmup=steps, **self._compile_options) if self.compiled
            else self.loss_step
        )

    def check_device(self, device: torch.device) -> None:
        """Raise now, not one update into the run: CUDA graphs off CUDA, or inductor on a CPU without a C++ compiler.

        Args:
            device: where the loss runs.

        Examples:
            >>> ClippedGradientStepper(compile=False).check_device(torch.device("cpu"))  # eager: nothing to check
            >>> ClippedGradientStepper(cudagraphs=True).check_device(torch.device("cpu"))  # doctest: +ELLIPSIS
            Traceback (most recent call last):
            ...
            ValueError: cudagraphs=True needs the loss on a CUDA device, not cpu: ...
        """
        if self.cudagraphs and device.type != "cuda":
            raise ValueError(f"cudagraphs=True needs the loss on a CUDA device, not {device}: pass device=cuda, or "
                             "compile=True alone (recipe: train.cudagraphs=false).")
        if not self.compiled or device.type != "cpu" or self._compile_options.get("backend", "inductor") != "inductor":
            return
        try:
            from torch._inductor.cpp_builder import get_cpp_compiler
        except ImportError:  # another torch layout: torch.compile reports it itself
            return
        try:
            get_cpp_compiler()
        except Exception as err:  # torch's InvalidCxxCompiler (its class moves between releases)
            raise RuntimeError(
                f"compile=True on CPU needs a C++ compiler for inductor's kernels, and none works here ({err}). "
                "Install g++ or clang++ (or point CXX at one), compile with another backend "
                "(compile={'backend': 'aot_eager'}), or run eagerly: compile=False (recipe: train.compile=false)."
            ) from err

    @property
    def _analytic_kl(self) -> bool:
        """Only the adaptive rule reads the KL: the analytic one costs an extra actor pass."""
        return self.kl_actor is not None and self.lr_schedule is not None and self.lr_schedule.mode == "adaptive"

    @property
    def minibatch_reads(self) -> frozenset[str]:
        """The loss outputs :meth:`step` needs after each minibatch: the KL an adaptive learning rate follows.

        Examples:
            >>> ClippedGradientStepper().minibatch_reads  # no schedule: nothing
            frozenset()
        """
        if self.lr_schedule is None or self.lr_schedule.mode != "adaptive":
            return frozenset()
        return frozenset({"kl" if self._analytic_kl else self.kl_key})

    def _kl(self, losses: TensorDictBase) -> torch.Tensor | None:
        kl = losses.get("kl") if self._analytic_kl else losses.get(self.kl_key, None)
        return None if kl is None else kl.detach().float().mean().reshape(1)

    def loss_step(self, loss_module: nn.Module, sub_batch: TensorDictBase) -> tuple[TensorDictBase, torch.Tensor]:
        """The loss terms of one minibatch (plus the analytic KL) and their sum: the compiled region.

        Args:
            loss_module: the trainer's loss.
            sub_batch: the minibatch.
        """
        losses = loss_module(sub_batch)
        if self._analytic_kl and "kl" not in losses.keys():  # else: the loss computed it in its own forward
            losses.set("kl", gaussian_kl(
                self.kl_actor, sub_batch, reduction=self.kl_reduction,
                num_policies=getattr(self.kl_actor, "num_policies", None),
            ))
        return losses, sum(v for k, v in losses.items() if k.startswith("loss_"))

    def step(self, trainer: Trainer, sub_batch: TensorDictBase) -> TensorDictBase:
        optimizer = trainer.optimizer
        if self._params is None:
            self._params = [p for g in optimizer.param_groups for p in g["params"]]
        losses, loss = self._loss_step(trainer.loss_module, sub_batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        kl = self._kl(losses) if self.lr_schedule is not None else None
        sync = getattr(trainer, "sync", None)
        if sync is not None:  # one all-reduce: the gradients and the KL the learning rate follows
            sync.average_gradients_(self._params, [] if kl is None else [kl])
        if self.max_grad_norm is not None:
            grad_norm = nn.utils.clip_grad_norm_(self._params, self.max_grad_norm)
        else:
            grad_norm = torch.linalg.vector_norm(
                torch.stack([p.grad.norm() for p in self._params if p.grad is not None])
            )
        with skip_if_nonfinite(optimizer, self._params, torch.isfinite(loss.detach()) & torch.isfinite(grad_norm)):
            optimizer.step()
        if self.lr_schedule is not None:
            self.lr_schedule.on_minibatch(kl)
        out = losses.detach()
        out.set("grad_norm", grad_norm.detach())
        return out
