"""Read and change a hyperparameter of a running trainer in place (decentralised PBT).

:func:`get_hyperparameter` / :func:`set_hyperparameter` reach the learning rate, PPO clip, loss
coefficients, GAE's gamma / lambda, mini-epochs, grad-norm clip, env attributes or any user
getter/setter of an :class:`~torchrl_sapg.trainers.OnPolicyTrainer`.
"""
from __future__ import annotations

import warnings
from typing import Any, Iterable, Mapping

import torch

from torchrl_sapg.population.pbt_common import HyperparameterSpec, parse_hyperparameter_specs, resolve_callable

__all__ = [
    "BUILTIN_HYPERPARAMETERS",
    "get_hyperparameter",
    "get_hyperparameters",
    "set_hyperparameter",
    "set_hyperparameters",
]

#: hyperparameters :func:`get_hyperparameter` / :func:`set_hyperparameter` know on a trainer;
#: names ``"env.<attribute path>"`` reach the collector's env, anything else needs a getter/setter.
BUILTIN_HYPERPARAMETERS = (
    "lr",
    "kl_threshold",
    "clip_epsilon",
    "entropy_coeff",
    "critic_coeff",
    "off_policy_coeff",
    "gamma",
    "lmbda",
    "num_epochs",
    "max_grad_norm",
    "reward_scale",
)


def _set_scalar(obj: Any, attr: str, value: float) -> None:
    """Write ``obj.attr = value``; a tensor attribute (a buffer) is filled in place."""
    current = getattr(obj, attr)
    if torch.is_tensor(current):
        with torch.no_grad():
            current.fill_(value)
    else:
        setattr(obj, attr, type(current)(value) if isinstance(current, (int, float)) and not isinstance(current, bool) else value)


def _loss_buffer(trainer, name: str) -> torch.Tensor:
    loss = trainer.loss_module
    buf = getattr(loss, name, None)
    if buf is None or not torch.is_tensor(buf):
        raise AttributeError(
            f"the loss module {type(loss).__name__} has no tensor {name!r} (ClipPPOLoss / SAPGLoss buffers: "
            "clip_epsilon, entropy_coeff, critic_coeff; OffPolicyClipPPOLoss adds off_policy_coeff)."
        )
    return buf


def _estimators(trainer) -> list[Any]:
    out = []
    est = getattr(trainer, "value_estimator", None)
    if est is not None:
        out.append(est)
    loss_est = getattr(trainer.loss_module, "_value_estimator", None)
    if loss_est is not None and all(loss_est is not e for e in out):
        out.append(loss_est)
    return out


def _env_of(trainer):
    collector = getattr(trainer, "collector", None)
    env = getattr(collector, "env", None)
    if env is None:
        raise AttributeError("env.* hyperparameters need trainer.collector.env (a TorchRL collector).")
    return env


def _owns(obj, attr: str) -> bool:
    """``attr`` lives on ``obj`` itself (not reached through a wrapper's ``__getattr__`` forwarding)."""
    if attr in getattr(obj, "__dict__", {}):
        return True
    for store in ("_buffers", "_parameters"):
        if attr in (getattr(obj, "__dict__", {}).get(store) or {}):
            return True
    return any(attr in vars(klass) for klass in type(obj).__mro__)


def _walk_env(env, path: list[str]):
    """The object holding ``path[-1]``: ``env`` or, breadth-first, the envs it wraps."""
    queue, seen = [env], []
    while queue and len(seen) < 16:
        obj = queue.pop(0)
        if any(obj is s for s in seen):
            continue
        seen.append(obj)
        target = obj
        try:
            for part in path[:-1]:
                target = getattr(target, part)
        except AttributeError:
            target = None
        if target is not None and _owns(target, path[-1]):
            return target
        for inner in ("base_env", "_env", "env"):
            try:
                child = obj.__dict__.get(inner) if inner != "base_env" else getattr(obj, "base_env", None)
            except Exception:  # a property that fails on this env type
                child = None
            if child is not None:
                queue.append(child)
    raise AttributeError(
        f"no attribute {'.'.join(path)!r} on the collector's env or the envs it wraps "
        f"(searched {', '.join(type(o).__name__ for o in seen)})."
    )


def get_hyperparameter(trainer, name: str, spec: HyperparameterSpec | None = None) -> float | int:
    """Read hyperparameter ``name`` from a running :class:`~torchrl_sapg.trainers.OnPolicyTrainer`.

    ``spec.getter`` wins when given. Built-ins (:data:`BUILTIN_HYPERPARAMETERS`):

    * ``lr`` — the first optimiser param group's learning rate (in ``"linear"`` schedule mode the
      schedule's initial rate ``lr0``, which the schedule scales every iteration);
    * ``kl_threshold`` — the adaptive schedule's target KL (the paper's "adapt. LR D_KL");
    * ``clip_epsilon``, ``entropy_coeff``, ``critic_coeff``, ``off_policy_coeff`` — the loss
      module's buffers;
    * ``gamma``, ``lmbda`` — the trainer's value estimator (TorchRL's GAE stores them as buffers);
    * ``num_epochs`` — mini-epochs; ``max_grad_norm`` — the optimisation stepper's clip;
      ``reward_scale`` — the trainer's reward multiplier;
    * ``env.<path>`` — an attribute of the collector's env, searched through its wrappers
      (``TransformedEnv.base_env``, a wrapper's ``_env``), e.g. ``env.cfg.rew_scale_reach``.
    """
    if spec is not None and spec.getter is not None:
        return resolve_callable(spec.getter, f"{name}.getter")(trainer)
    if name == "lr":
        sched = getattr(trainer, "lr_schedule", None)
        if sched is not None and getattr(sched, "mode", None) == "linear":
            return float(sched.initial_lrs[0])
        return float(trainer.optimizer.param_groups[0]["lr"])
    if name == "kl_threshold":
        return float(trainer.lr_schedule.kl_threshold)
    if name in ("clip_epsilon", "entropy_coeff", "critic_coeff", "off_policy_coeff"):
        if name == "entropy_coeff" and torch.is_tensor(getattr(trainer.loss_module, "entropy_coeffs", None)):
            raise AttributeError(
                "SAPGLoss uses per-policy entropy_coeffs ([M] buffer), not a scalar entropy_coeff; give the "
                "'entropy_coeff' hyperparameter a getter/setter that maps it onto loss.entropy_coeffs."
            )
        buf = _loss_buffer(trainer, name)
        return float(buf.reshape(-1)[0])
    if name in ("gamma", "lmbda"):
        for est in _estimators(trainer):
            if hasattr(est, name):
                return float(getattr(est, name))
        if name == "gamma" and isinstance(getattr(trainer.loss_module, "gamma", None), float):
            return float(trainer.loss_module.gamma)
        raise AttributeError(f"{name!r}: the trainer has no value estimator (trainer.value_estimator is None).")
    if name == "num_epochs":
        return int(trainer.num_epochs)
    if name == "max_grad_norm":
        value = trainer.optimization_stepper.max_grad_norm
        if value is None:
            raise AttributeError("max_grad_norm: gradient clipping is off (max_grad_norm=None); nothing to mutate.")
        return float(value)
    if name == "reward_scale":
        return float(trainer.reward_scale)
    if name.startswith("env."):
        path = name[4:].split(".")
        holder = _walk_env(_env_of(trainer), path)
        value = getattr(holder, path[-1])
        return float(value) if not isinstance(value, int) or isinstance(value, bool) else value
    raise KeyError(
        f"hyperparameter {name!r} is not built in ({', '.join(BUILTIN_HYPERPARAMETERS)}, env.<attr>): "
        "declare a getter (or init) and a setter for it."
    )


def set_hyperparameter(trainer, name: str, value: float | int, spec: HyperparameterSpec | None = None) -> None:
    """Set hyperparameter ``name`` on a running trainer, effective from the next iteration.

    Tensors are changed **in place** (optimiser learning rates stored as 0-d tensors, loss
    buffers, GAE's gamma / lmbda buffers), so optimisers, compiled code and the adaptive
    learning-rate rule keep holding the same objects. ``lr`` is written to every param group
    (in ``"linear"`` mode: the schedule's ``lr0`` of every group, and the current rate
    ``lr0·(1 - frames/total)``). ``gamma`` is written to the trainer's value estimator, to the
    loss's own value estimator if it built one, and to ``SAPGLoss.gamma`` (its one-step
    off-policy target). ``spec.setter`` wins when given.
    """
    if spec is not None and spec.setter is not None:
        resolve_callable(spec.setter, f"{name}.setter")(trainer, value)
        return
    if name == "lr":
        _set_lr(trainer, float(value))
        return
    if name == "kl_threshold":
        trainer.lr_schedule.kl_threshold = float(value)
        return
    if name in ("clip_epsilon", "entropy_coeff", "critic_coeff", "off_policy_coeff"):
        _set_loss_coeff(trainer, name, float(value))
        return
    if name in ("gamma", "lmbda"):
        _set_discount(trainer, name, float(value))
        return
    if name == "num_epochs":
        value = int(round(float(value)))
        if value < 1:
            raise ValueError(f"num_epochs must be >= 1, got {value}.")
        trainer.num_epochs = value
        return
    if name == "max_grad_norm":
        trainer.optimization_stepper.max_grad_norm = float(value)
        return
    if name == "reward_scale":
        trainer.reward_scale = float(value)
        return
    if name.startswith("env."):
        path = name[4:].split(".")
        holder = _walk_env(_env_of(trainer), path)
        _set_scalar(holder, path[-1], value)
        return
    raise KeyError(
        f"hyperparameter {name!r} is not built in ({', '.join(BUILTIN_HYPERPARAMETERS)}, env.<attr>): "
        "declare a setter for it (HyperparameterSpec(setter=...) or 'pkg.module:function' in the config)."
    )


def get_hyperparameters(trainer, specs: Iterable[HyperparameterSpec] | Any) -> dict[str, float | int]:
    """``{name: value}`` for every spec, read live from ``trainer`` (``spec.init`` for a
    hyperparameter with a setter but no getter), cast to int for ``"integer"`` specs."""
    if not isinstance(specs, (list, tuple)) or (specs and not isinstance(specs[0], HyperparameterSpec)):
        specs = parse_hyperparameter_specs(specs)
    out = {}
    for spec in specs:
        if spec.getter is None and spec.setter is not None and spec.name not in BUILTIN_HYPERPARAMETERS \
                and not spec.name.startswith("env."):
            if spec.init is None:
                raise ValueError(
                    f"hyperparameter {spec.name!r} has a setter but neither a getter nor an init value."
                )
            out[spec.name] = spec.cast(spec.init)
        else:
            out[spec.name] = spec.cast(get_hyperparameter(trainer, spec.name, spec))
    return out


def set_hyperparameters(
    trainer, values: Mapping[str, float | int], specs: Iterable[HyperparameterSpec] | Any = None
) -> None:
    """Apply ``values`` with :func:`set_hyperparameter` (each spec's setter when it has one)."""
    by_name = {}
    if specs is not None:
        if not isinstance(specs, (list, tuple)) or (specs and not isinstance(specs[0], HyperparameterSpec)):
            specs = parse_hyperparameter_specs(specs)
        by_name = {s.name: s for s in specs}
    for name, value in values.items():
        spec = by_name.get(name)
        set_hyperparameter(trainer, name, spec.cast(value) if spec is not None else value, spec)


def _set_lr(trainer, value: float) -> None:
    """Every param group's rate (in place for tensor rates); the linear schedule's ``lr0`` too."""
    sched = getattr(trainer, "lr_schedule", None)
    linear = sched is not None and getattr(sched, "mode", None) == "linear"
    scale = 1.0
    if linear:
        sched.initial_lrs = [value for _ in sched.initial_lrs]
        scale = max(0.0, 1.0 - trainer.collected_frames / sched.total_frames)
    for group in trainer.optimizer.param_groups:
        lr = group["lr"]
        if torch.is_tensor(lr):
            with torch.no_grad():
                lr.fill_(value * scale)
        else:
            group["lr"] = value * scale


def _set_loss_coeff(trainer, name: str, value: float) -> None:
    """Fill the loss module's buffer ``name`` in place (SAPG's per-policy entropy refused)."""
    if name == "entropy_coeff":
        loss = trainer.loss_module
        if torch.is_tensor(getattr(loss, "entropy_coeffs", None)):
            get_hyperparameter(trainer, name)  # raises the SAPG explanation
        if value != 0.0 and getattr(loss, "entropy_bonus", True) is False:
            warnings.warn(
                "entropy_coeff set on a loss built with entropy_bonus=False: the entropy term is not "
                "computed. Build ClipPPOLoss with a positive entropy_coeff to let PBT tune it.",
                stacklevel=3,
            )
    buf = _loss_buffer(trainer, name)
    with torch.no_grad():
        buf.fill_(value)


def _set_discount(trainer, name: str, value: float) -> None:
    """``gamma`` / ``lmbda`` on every value estimator (and ``SAPGLoss.gamma``)."""
    done = False
    for est in _estimators(trainer):
        if hasattr(est, name):
            _set_scalar(est, name, value)
            done = True
    if name == "gamma" and isinstance(getattr(trainer.loss_module, "gamma", None), float):
        trainer.loss_module.gamma = value
        done = True
    if not done:
        raise AttributeError(f"{name!r}: the trainer has no value estimator (trainer.value_estimator is None).")
