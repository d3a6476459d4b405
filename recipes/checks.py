"""Up-front checks of a recipe config: one clear line naming the option, the bad value and the fix.

    from checks import check_config
    check_config(cfg)   # first thing in recipes/train.py's main, before any folder or env is made

Without them a bad option fails late and far from its cause (``train.horizon=0``: TorchRL's
"list_of_tensordicts cannot be empty"; ``device=cuda`` without CUDA: torch's "Torch not
compiled with CUDA enabled") or not at all (``train.gamma=1.5``; ``total_frames`` below one
batch silently trains a whole batch). Every check raises a ``ValueError``, except an unusable
device (``RuntimeError``) and a logger whose package is missing (``ImportError``).
"""
from __future__ import annotations

import math
import numbers
import os
from typing import Any

from omegaconf import DictConfig, OmegaConf

from common import ALGORITHMS as _ALGORITHM_TABLE
from common import pbt_mode
from torchrl_sapg.envs.factory import check_device
from torchrl_sapg.trainers.logging import check_logger_backend

#: the ``algo.name`` values recipes/common.py builds (the keys of its ``ALGORITHMS`` table)
ALGORITHMS = tuple(_ALGORITHM_TABLE)
#: in-process populations' member layouts (``algo=pbt``, chosen by ``pbt=inprocess``)
POPULATION_ALGORITHMS = tuple(name for name, a in _ALGORITHM_TABLE.items() if a.population)
#: config keys that were renamed or moved: old dotted key -> the key (or option) to use now
RENAMED_KEYS = {
    "algo.beta_mut": "pbt.mutation_prob",
    "pbt.beta_mut": "pbt.mutation_prob",
    "pbt.objective": "pbt.fitness_key",
    "pbt.objective_policy": "pbt.fitness_policy",
    "pbt.enabled": "pbt=decentralized",
    "model.actor_hidden_sizes": "model.hidden_sizes",
    "model.mlp_sizes": "model.hidden_sizes",
    "model.critic_mlp_sizes": "model.critic_hidden_sizes",
    **{f"algo.{key}": f"pbt.{key}" for key in (
        "interval_frames", "start_frames", "burn_in_frames", "selection", "mu_min", "mu_max", "fitness_key",
        "fitness_decay", "hyperparameters")},
}
#: device types the recipes run on
DEVICE_TYPES = ("cpu", "cuda", "mps")
_MISSING = object()


def check_config(cfg: DictConfig) -> None:
    """Validate a composed recipe config (``recipes/conf``) before anything is built.

    Args:
        cfg: the Hydra config of ``recipes/train.py`` (interpolations resolve on access).

    Examples:
        >>> cfg = OmegaConf.create({"device": "cpu", "env": {"num_envs": 8}, "algo": {"name": "ppo", "num_policies": 2},
        ...                         "train": {"horizon": 0}})
        >>> check_config(cfg)
        Traceback (most recent call last):
        ...
        ValueError: train.horizon=0 must be an int >= 1 (env steps per env per iteration; e.g. train.horizon=32).
    """
    check_renamed_keys(cfg)
    check_device_option(_get(cfg, "device", "cpu"))
    _check_threads(cfg)
    _check_algo(cfg)
    _check_env_layout(cfg)
    _check_train(cfg)
    _check_budget(cfg)
    _check_run_options(cfg)
    _check_logger(cfg)


def check_device_option(device: Any, *, option: str = "device") -> None:
    """Raise unless ``device`` is ``cpu``, or a ``cuda[:N]`` / ``mps`` device present on this machine.

    Args:
        device: the option's value, e.g. ``"cuda:1"``.
        option: the option's name in the message.

    Examples:
        >>> check_device_option("cpu")
        >>> check_device_option("xla")
        Traceback (most recent call last):
        ...
        ValueError: device='xla' is not supported by the recipes; use cpu, cuda or cuda:<index> (or mps).
    """
    dev = check_device(str(device), option=option)
    if dev.type not in DEVICE_TYPES:
        raise ValueError(f"{option}={str(device)!r} is not supported by the recipes; use cpu, cuda or cuda:<index> (or mps).")


def check_renamed_keys(cfg: DictConfig) -> None:
    """Raise naming the new key if ``cfg`` holds a key of :data:`RENAMED_KEYS` (e.g. set with ``+key=``).

    Args:
        cfg: the composed recipe config.

    Examples:
        >>> check_renamed_keys(OmegaConf.create({"pbt": {"objective": "success"}}))
        Traceback (most recent call last):
        ...
        ValueError: pbt.objective was renamed: use pbt.fitness_key=success (docs/pbt.md).
    """
    for old, new in RENAMED_KEYS.items():
        value = OmegaConf.select(cfg, old, default=_MISSING)
        if value is not _MISSING:
            raise ValueError(_renamed_message(old, new, value))


def check_overrides(overrides: list[str]) -> None:
    """Raise naming the new key for a command-line override of a renamed key (before Hydra composes,
    whose own error for an unknown key does not say what it is called now).

    Args:
        overrides: the recipe's command-line arguments, e.g. ``["algo=pbt", "algo.beta_mut=0.3"]``.

    Examples:
        >>> check_overrides(["env=pendulum", "algo.beta_mut=0.3"])
        Traceback (most recent call last):
        ...
        ValueError: algo.beta_mut was renamed: use pbt.mutation_prob=0.3 with pbt=inprocess (docs/pbt.md).
    """
    for override in overrides:
        key, sep, value = override.lstrip("+~").partition("=")
        for old, new in RENAMED_KEYS.items() if sep else ():
            if key == old or key.startswith(old + "."):  # algo.hyperparameters.lr=null: pbt.hyperparameters.lr
                raise ValueError(_renamed_message(key, new + key[len(old):], value))


def _renamed_message(old: str, new: str, value: Any) -> str:
    shown = OmegaConf.to_container(value) if isinstance(value, DictConfig) else value
    use = new if "=" in new else f"{new}={shown}"  # pbt.enabled's replacement is an option, not a key
    where = " with pbt=inprocess" if old.startswith("algo.") and new.startswith("pbt.") else ""
    return f"{old} was renamed: use {use}{where} ({'docs/pbt.md' if old.startswith(('algo', 'pbt')) else 'docs/architecture.md'})."


# ----------------------------------------------------------------------------- the groups
def _check_threads(cfg: DictConfig) -> None:
    threads = _get(cfg, "threads", None)
    if threads is not None:
        _int_at_least(cfg, "threads", 1, "torch intra-op threads; null keeps torch's default")


def _check_algo(cfg: DictConfig) -> None:
    name = _get(cfg, "algo.name", None)
    if name is not None and name not in ALGORITHMS:
        raise ValueError(f"algo.name={name!r} is unknown; choose one of the algo configs: algo={', '.join(ALGORITHMS)}.")
    _int_at_least(cfg, "algo.num_policies", 1, "policies in the population; algo=ppo uses 1", default=1)
    _check_pbt_mode(cfg)


def _check_pbt_mode(cfg: DictConfig) -> None:
    """The ``pbt`` group is the one PBT switch: ``algo=pbt`` (in-process PBT's member layout) goes
    with ``pbt=inprocess`` only, and ``pbt=inprocess`` with that layout only."""
    mode, name = pbt_mode(cfg), _get(cfg, "algo.name", None)
    if name in POPULATION_ALGORITHMS and mode == "off":
        raise ValueError(f"algo={name} is no longer a switch: in-process PBT is pbt=inprocess (it selects algo={name} "
                         "itself; its keys moved from algo.* to pbt.*, docs/pbt-inprocess.md).")
    if name in POPULATION_ALGORITHMS and mode == "decentralized":
        raise ValueError(f"algo={name} is in-process PBT's member layout (pbt=inprocess); a pbt=decentralized member "
                         "runs algo=ppo|sapg|epo (docs/pbt.md).")
    if mode == "inprocess" and name not in POPULATION_ALGORITHMS:
        raise ValueError(f"pbt=inprocess trains its own PPO members (the algo=pbt layout it selects): drop algo={name} "
                         "(docs/pbt-inprocess.md).")
    if mode == "inprocess" and _get(cfg, "train.lr_schedule", "adaptive") == "linear":
        raise ValueError("train.lr_schedule=linear: pbt=inprocess members take adaptive (the KL rule, each on its own "
                         "learning rate) or fixed; set train.lr_schedule=adaptive or fixed (docs/pbt-inprocess.md).")


def _check_env_layout(cfg: DictConfig) -> None:
    """``env.num_envs >= 1`` and split evenly into ``algo.num_policies`` blocks (as ``block_policy_ids``)."""
    n = _int_at_least(cfg, "env.num_envs", 1, "parallel envs")
    m = int(_get(cfg, "algo.num_policies", 1))
    if n % m:
        raise ValueError(
            f"env.num_envs={n} is not divisible by algo.num_policies={m}: every policy owns an equal block of envs. "
            f"Choose env.num_envs as a multiple of algo.num_policies (e.g. env.num_envs={m * max(1, round(n / m))})."
        )


def _check_train(cfg: DictConfig) -> None:
    """The PPO / SAPG hyperparameters under ``train``."""
    _int_at_least(cfg, "train.horizon", 1, "env steps per env per iteration; e.g. train.horizon=32")
    _int_at_least(cfg, "train.num_epochs", 1, "mini-epochs over each batch; e.g. train.num_epochs=5")
    _check_minibatches(cfg)
    _in_range(cfg, "train.gamma", 0.0, 1.0, low_open=True, meaning="the discount; e.g. train.gamma=0.99")
    _in_range(cfg, "train.lmbda", 0.0, 1.0, meaning="the GAE lambda; e.g. train.lmbda=0.95")
    _positive(cfg, "train.lr", "the learning rate; e.g. train.lr=3e-4")
    _positive(cfg, "train.clip_epsilon", "the PPO clip range; e.g. train.clip_epsilon=0.2")
    _choice(cfg, "train.lr_schedule", ("adaptive", "linear", "fixed"))
    _choice(cfg, "train.normalize_advantage", ("batch", "minibatch", "none"))
    _choice(cfg, "train.nonfinite", ("raise", "drop"))
    fused = _get(cfg, "train.fused_adam", True)
    if not isinstance(fused, bool):
        raise ValueError(f"train.fused_adam={fused!r} must be true or false (true: Adam's fused kernel; "
                         "false: its per-parameter loop).")
    if _get(cfg, "train.cudagraphs", False) and not str(_get(cfg, "device", "cpu")).startswith("cuda"):
        raise ValueError(f"train.cudagraphs=true needs device=cuda (device={_get(cfg, 'device', 'cpu')!r}); "
                         "use train.compile=true alone on this device.")


def _check_minibatches(cfg: DictConfig) -> None:
    """Exactly one of ``train.num_minibatches`` / ``train.minibatch_size``, a positive int."""
    nmb, size = _get(cfg, "train.num_minibatches", _MISSING), _get(cfg, "train.minibatch_size", _MISSING)
    if nmb is _MISSING and size is _MISSING:
        return
    nmb, size = (None if v is _MISSING else v for v in (nmb, size))
    if (nmb is None) == (size is None):
        raise ValueError(
            f"train.num_minibatches={nmb} and train.minibatch_size={size}: give exactly one of them "
            "(set the other to null), e.g. train.num_minibatches=4 train.minibatch_size=null."
        )
    key = "train.num_minibatches" if nmb is not None else "train.minibatch_size"
    _int_at_least(cfg, key, 1, "minibatches per mini-epoch" if nmb is not None else "rows per minibatch")


def _check_budget(cfg: DictConfig) -> None:
    """``total_frames`` covers at least one batch of ``env.num_envs * train.horizon`` frames (every rank's)."""
    total = _number(cfg, "total_frames")
    n, t = int(_get(cfg, "env.num_envs")), int(_get(cfg, "train.horizon"))
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    batch = n * t * world
    if total < batch:
        ranks = f" * {world} ranks (WORLD_SIZE)" if world > 1 else ""
        raise ValueError(
            f"total_frames={_show(total)} is less than one batch: one batch is env.num_envs * train.horizon{ranks} = "
            f"{n} * {t}{f' * {world}' if world > 1 else ''} = {batch} frames. Raise total_frames to at least {batch}, "
            "or lower env.num_envs / train.horizon."
        )


def _check_run_options(cfg: DictConfig) -> None:
    """Counts of the run loop: evaluation, checkpoints, logging."""
    _int_at_least(cfg, "eval_episodes", 0, "episodes per policy evaluated at the end; 0 skips it", default=0)
    _at_least(cfg, "checkpoint_interval", 0, "env frames between checkpoints; 0 writes one at the end only", default=0)
    _int_at_least(cfg, "keep_checkpoints", 0, "rotated copies beside last.pt", default=0)
    _int_at_least(cfg, "log_interval", 1, "iterations between log lines", default=1)
    keep = _get(cfg, "keep_freed_memory", True)
    if not isinstance(keep, bool):
        raise ValueError(f"keep_freed_memory={keep!r} must be true or false (true: glibc keeps freed memory for the "
                         "next large CPU tensor; docs/throughput.md).")


def _check_logger(cfg: DictConfig) -> None:
    backend = _get(cfg, "logger.backend", None)
    if backend is not None:
        check_logger_backend(backend, option="logger.backend")


# ----------------------------------------------------------------------------- helpers
def _get(cfg: DictConfig, key: str, default: Any = _MISSING) -> Any:
    """``cfg``'s value at the dotted ``key``; a missing key without ``default`` raises naming it."""
    value = OmegaConf.select(cfg, key, default=_MISSING)
    if value is _MISSING:
        if default is _MISSING:
            raise ValueError(f"{key} is missing from the config; set it (e.g. {key}=...) or restore recipes/conf.")
        return default
    return value


def _show(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value)


def _number(cfg: DictConfig, key: str, default: Any = _MISSING) -> float:
    """The number at ``key``; a string, bool, null, NaN or inf raises naming ``key``."""
    value = _get(cfg, key, default)
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{key}={_show(value)} is not a finite number; pass a number (recipes/conf/config.yaml has the default).")
    return value


def _int_at_least(cfg: DictConfig, key: str, low: int, meaning: str, default: Any = _MISSING) -> int:
    value = _get(cfg, key, default)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"{key}={_show(value)} must be an int >= {low} ({meaning}).")
    return int(value)


def _at_least(cfg: DictConfig, key: str, low: float, meaning: str, default: Any = _MISSING) -> float:
    value = _number(cfg, key, default)
    if value < low:
        raise ValueError(f"{key}={_show(value)} must be >= {low} ({meaning}).")
    return value


def _positive(cfg: DictConfig, key: str, meaning: str) -> float:
    value = _number(cfg, key)
    if value <= 0:
        raise ValueError(f"{key}={_show(value)} must be > 0 ({meaning}).")
    return value


def _in_range(cfg: DictConfig, key: str, low: float, high: float, *, meaning: str, low_open: bool = False) -> float:
    value = _number(cfg, key)
    if value > high or value < low or (low_open and value == low):
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}]"
        raise ValueError(f"{key}={_show(value)} must lie in {interval} ({meaning}).")
    return value


def _choice(cfg: DictConfig, key: str, choices: tuple[str, ...]) -> None:
    value = _get(cfg, key, None)
    if value is not None and value not in choices:
        raise ValueError(f"{key}={_show(value)} is unknown; choose {', '.join(choices[:-1])} or {choices[-1]}.")
