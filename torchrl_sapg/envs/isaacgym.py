"""Isaac Gym (Preview 4) backend: TorchRL's ``IsaacGymEnv`` with our key layout.

Isaac Gym Preview 4 is not on PyPI and there is no ``torchrl-sapg`` extra for it: download it from
NVIDIA (https://developer.nvidia.com/isaac-gym, Linux, Python <= 3.8 officially), ``pip install -e
isaacgym/python``, then ``pip install -e IsaacGymEnvs`` (https://github.com/isaac-sim/IsaacGymEnvs,
which provides ``isaacgymenvs.make`` and the tasks ``AllegroHand``, ``ShadowHand``, ``Ant``, ...).
Nothing here imports it at module load.

Import order. ``isaacgym`` refuses to load once ``torch`` is imported ("PyTorch was imported before
isaacgym modules"). Since this package imports torch, a real process must run ``import isaacgym``
*before* anything from ``torchrl_sapg``/``torch``. The recipe does not do this for you; launch it as::

    python -c "import isaacgym, runpy, sys; sys.argv = sys.argv[1:]; \\
               runpy.run_path(sys.argv[0], run_name='__main__')" recipes/<script>.py env.name=isaacgym:AllegroHand

(or add ``import isaacgym`` as the first line of your own entry point). :func:`make_isaacgym_env`
checks for this and raises an ImportError that says so instead of Isaac Gym's bare message.

Keys. TorchRL's wrapper exposes IsaacGymEnvs' ``obs_dict``: ``"obs"`` (the actor's input) and, for
tasks with an asymmetric critic, ``"states"``. :func:`wrap_isaacgym_env` renames them to
``"observation"`` and ``"critic_observation"`` (the names the Isaac Lab and Playground backends
use). Isaac Gym resets finished envs inside ``step`` (``reset_buf``), like Isaac Lab.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
from typing import Any

import torch
from torchrl.envs import EnvBase, RenameTransform, TransformedEnv

__all__ = [
    "ISAACGYM_PREFIX",
    "import_isaacgym",
    "isaacgym_install_hint",
    "make_isaacgym_env",
    "wrap_isaacgym_env",
]

#: ``make_env`` name prefix that selects this backend, e.g. ``"isaacgym:AllegroHand"``.
ISAACGYM_PREFIX = "isaacgym:"

_INSTALL_HINT = (
    "Isaac Gym is not installed. Isaac Gym Preview 4 is not on PyPI and torchrl-sapg has no extra "
    "for it: download it from NVIDIA (https://developer.nvidia.com/isaac-gym), run "
    "`pip install -e isaacgym/python`, then install IsaacGymEnvs "
    "(`pip install -e IsaacGymEnvs`, https://github.com/isaac-sim/IsaacGymEnvs). Needs Linux and an "
    "NVIDIA GPU; `import isaacgym` must come before `import torch`."
)
_ORDER_HINT = (
    "isaacgym is installed but torch was imported first; Isaac Gym must be imported before torch. "
    "Start the process with `import isaacgym` (e.g. python -c \"import isaacgym, runpy, sys; "
    "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')\" script.py ...)."
)


def isaacgym_install_hint() -> str:
    """The message of the ImportError raised when Isaac Gym is missing."""
    return _INSTALL_HINT


def import_isaacgym():
    """Import ``isaacgym`` and ``isaacgymenvs`` (in that order) or raise an explanatory ImportError."""
    if "isaacgym" not in sys.modules or sys.modules["isaacgym"] is None:
        try:
            found = importlib.util.find_spec("isaacgym") is not None
        except (ImportError, ValueError):  # sys.modules["isaacgym"] is None
            found = False
        if not found:
            raise ImportError(_INSTALL_HINT)
        if "torch" in sys.modules:
            try:
                importlib.import_module("isaacgym")
            except ImportError as err:
                raise ImportError(_ORDER_HINT) from err
    try:
        module = importlib.import_module("isaacgym")
        importlib.import_module("isaacgymenvs")
    except ImportError as err:
        raise ImportError(_INSTALL_HINT) from err
    return module


def wrap_isaacgym_env(
    env: EnvBase,
    *,
    observation_key: str = "observation",
    critic_key: str = "critic_observation",
) -> TransformedEnv:
    """Rename IsaacGymEnvs' ``"obs"`` / ``"states"`` to ``observation_key`` / ``critic_key``.

    ``env`` is TorchRL's ``IsaacGymEnv`` (or any EnvBase with those keys). A ``"observation"``
    key (TorchRL renames a dict ``"state"`` to it) is kept as is.
    """
    keys = [k for k in env.observation_spec.keys() if isinstance(k, str)]
    src, dst = [], []
    if "obs" in keys:
        src.append("obs"), dst.append(observation_key)
    elif observation_key not in keys and "observation" not in keys:
        raise KeyError(f"Isaac Gym env has no 'obs' observation; keys: {sorted(keys)}")
    if "states" in keys:
        src.append("states"), dst.append(critic_key)
    out = env if isinstance(env, TransformedEnv) else TransformedEnv(env)
    if src:
        out.append_transform(RenameTransform(in_keys=src, out_keys=dst, create_copy=False))
    return out


def make_isaacgym_env(
    task: str,
    num_envs: int,
    *,
    device: str | torch.device = "cuda:0",
    seed: int | None = None,
    headless: bool = True,
    **kwargs: Any,
) -> TransformedEnv:
    """Build IsaacGymEnvs task ``task`` (``"AllegroHand"``, ``"ShadowHand"``, ``"Ant"``, ...).

    Extra keyword arguments go to ``isaacgymenvs.make`` through TorchRL's ``IsaacGymEnv``.
    """
    if not isinstance(num_envs, int) or num_envs < 1:
        raise ValueError(f"num_envs must be a positive int, got {num_envs!r}.")
    import_isaacgym()
    from torchrl.envs.libs.isaacgym import IsaacGymEnv

    device = str(device)
    if device == "cuda":
        device = "cuda:0"
    env = IsaacGymEnv(task=task, num_envs=num_envs, device=device, seed=seed, headless=headless, **kwargs)
    return wrap_isaacgym_env(env)
