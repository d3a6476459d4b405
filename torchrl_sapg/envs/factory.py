"""``make_env``: one entry point for the embedded tasks (and, later, the real simulators)."""
from __future__ import annotations

from typing import Any

import torch
from torchrl.envs import EnvBase

from torchrl_sapg.envs.classic_control import EMBEDDED_TASKS
from torchrl_sapg.envs.exploration import EXPLORATION_TASKS


#: backend prefixes :func:`make_env` accepts, and where each comes from
BACKEND_PREFIXES = {
    "envpool:": 'pip install "torchrl-sapg[envpool]"',
    "isaaclab:": 'pip install "torchrl-sapg[isaaclab]"',
    "playground:": 'pip install "torchrl-sapg[playground]"',
    "isaacgym:": "Isaac Gym Preview 4 from NVIDIA, no pip extra",
}


def check_device(device: torch.device | str, *, option: str = "device") -> torch.device:
    """Return ``torch.device(device)``, or raise one clear line naming ``option`` and the fix.

    Catches what otherwise fails deep in torch: an unparsable string (``ValueError``), and
    ``cuda``/``cuda:N``/``mps`` on a machine without that device (``RuntimeError``).

    Args:
        device: a torch device or its string (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``).
        option: the name the message gives the setting (``"device"`` for the recipes' option).

    Examples:
        >>> check_device("cpu")
        device(type='cpu')
        >>> check_device("gpu")
        Traceback (most recent call last):
        ...
        ValueError: device='gpu' is not a torch device string; use cpu, cuda or cuda:<index> (e.g. device=cuda:0).
    """
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(
            f"{option}={device!r} is not a torch device string; use cpu, cuda or cuda:<index> (e.g. {option}=cuda:0)."
        ) from err
    if dev.type == "cuda":
        _check_cuda(dev, device, option)
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise RuntimeError(f"{option}={device!r} but torch.backends.mps.is_available() is False on this machine; use {option}=cpu.")
    return dev


def _check_cuda(dev: torch.device, device: torch.device | str, option: str) -> None:
    """Raise a ``RuntimeError`` if ``dev`` (a cuda device) is not usable here."""
    if not torch.cuda.is_available():
        build = "this torch build has no CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
        raise RuntimeError(
            f"{option}={device!r} needs CUDA, but torch.cuda.is_available() is False ({build}; torch "
            f"{torch.__version__}); run with {option}=cpu, or use a CUDA build of torch on a machine with an NVIDIA GPU."
        )
    count = torch.cuda.device_count()
    if dev.index is not None and dev.index >= count:
        raise RuntimeError(
            f"{option}={device!r} but only {count} CUDA device(s) are visible (cuda:0..cuda:{count - 1}); "
            f"pick one of them, or check CUDA_VISIBLE_DEVICES."
        )


def available_envs() -> list[str]:
    """Names :func:`make_env` accepts."""
    return sorted({**EMBEDDED_TASKS, **EXPLORATION_TASKS})


def make_env(
    name: str,
    num_envs: int,
    *,
    device: torch.device | str = "cpu",
    seed: int | None = None,
    **kwargs: Any,
) -> EnvBase:
    """Build ``num_envs`` batched copies of task ``name`` on ``device``.

    Embedded tasks (pure torch, no extra install): ``"pendulum"``, ``"mountain_car"``,
    ``"acrobot"``, ``"cartpole"`` and the hard-exploration tasks ``"point_maze_u"``,
    ``"point_maze_medium"``, ``"point_maze_large"``, ``"reach_grasp_carry"``,
    ``"sparse_mountain_car"``. Extra keyword arguments go to the task's constructor
    (e.g. ``max_episode_steps``, ``reward_type="sparse"`` for a maze).

    Simulator tasks take a backend prefix and need that backend installed (an ``ImportError``
    names the install command when it is missing): ``"envpool:<task>"``, ``"isaaclab:<task>"``,
    ``"playground:<task>"``, ``"isaacgym:<task>"`` (see :data:`BACKEND_PREFIXES`).

    Args:
        name: the task name, or ``"<backend>:<task>"``.
        num_envs: the batch size ``N`` (a positive int).
        device: where the env's tensors live; ``"cuda"`` without CUDA raises a ``RuntimeError``
            naming ``device`` (see :func:`check_device`).
        seed: the env seed (``None``: drawn from torch's global RNG).
        **kwargs: forwarded to the task's constructor.

    Examples:
        >>> env = make_env("pendulum", 16, seed=0)
        >>> env.batch_size
        torch.Size([16])
    """
    if not isinstance(num_envs, int) or num_envs < 1:
        raise ValueError(f"num_envs must be a positive int, got {num_envs!r}.")
    check_device(device)
    if name.lower().startswith("envpool:"):  # optional EnvPool backend, e.g. "envpool:HalfCheetah-v4"
        from torchrl_sapg.envs.envpool_env import EnvPoolEnv

        return EnvPoolEnv(name[len("envpool:"):], num_envs, device=device, seed=seed, **kwargs)
    if name.lower().startswith("isaaclab:"):  # optional Isaac Lab backend, e.g. "isaaclab:allegro"
        from torchrl_sapg.envs.isaaclab import make_isaaclab_env

        return make_isaaclab_env(name[len("isaaclab:"):], num_envs, device=device, seed=seed, **kwargs)
    if name.lower().startswith("playground:"):  # optional MuJoCo Playground backend, e.g. "playground:CheetahRun"
        from torchrl_sapg.envs.playground import make_playground_env

        return make_playground_env(name[len("playground:"):], num_envs, device=device, seed=seed, **kwargs)
    if name.lower().startswith("isaacgym:"):  # optional Isaac Gym Preview 4 backend, e.g. "isaacgym:AllegroHand"
        from torchrl_sapg.envs.isaacgym import make_isaacgym_env

        return make_isaacgym_env(name[len("isaacgym:"):], num_envs, device=device, seed=seed, **kwargs)
    key = name.lower().replace("-", "_")
    if key in EMBEDDED_TASKS:
        return EMBEDDED_TASKS[key](num_envs, device=device, seed=seed, **kwargs)
    if key in EXPLORATION_TASKS:
        return EXPLORATION_TASKS[key](num_envs, device=device, seed=seed, **kwargs)
    raise ValueError(
        f"unknown env name={name!r}; available: {', '.join(available_envs())}; or a simulator task as "
        + ", ".join(f"{p}<task> ({how})" for p, how in BACKEND_PREFIXES.items())
        + "."
    )
