"""Isaac Lab backend: task-id aliases, app launch, and a TorchRL env with our key layout.

Isaac Lab is an optional dependency (``pip install "torchrl-sapg[isaaclab]"``): nothing here
imports it at module load. The chain is::

    launch_isaaclab_app()            # AppLauncher first (2.x), before Isaac Lab task modules
    import isaaclab_tasks            # registers the gymnasium ids
    gym.make(task, cfg=env_cfg)      # a DirectRLEnv / ManagerBasedRLEnv, tensors on the sim device
    IsaacLabWrapper(env, native_autoreset=True)   # TorchRL's wrapper (without its per-step host read of done),
                                                  # Isaac Lab resets in step
    + RenameTransform("policy" -> "observation", "critic" -> "critic_observation")
    + TerminalObservationFill        # finite ("next", obs) at auto-resets (see below)

Auto-reset. Isaac Lab resets finished sub-envs inside ``step`` and returns the *reset*
observation for them; the true terminal observation is never returned. TorchRL's wrapper with
``native_autoreset=True`` (the path it supports for both Direct and manager-based envs) keeps
the reset observation as the next root observation, reports ``("next", "done")`` correctly and
marks the lost terminal ``("next", obs)`` with NaN. NaN would poison GAE (NaN * 0 is NaN), so
:class:`TerminalObservationFill` replaces it by the pre-step observation of the same row, the
convention of Isaac Lab's own rl_games / rsl_rl runners (they bootstrap time-outs with the
value of the last observed state). ``terminal_obs="nan"`` keeps TorchRL's marker.
"""
from __future__ import annotations

import importlib
import importlib.util
from typing import Any, Sequence

import torch
from tensordict.utils import NestedKey
from torchrl.envs import RenameTransform, RewardSum, StepCounter, TransformedEnv
from torchrl.envs.libs.isaac_lab import IsaacLabWrapper  # TorchRL's own module: it does not import Isaac Lab
from torchrl_sapg.envs.one_frame import OneFrameReadDone
from torchrl_sapg.envs.terminal_fill import TerminalObservationFill
from torchrl_sapg.runtime import world_info

__all__ = [
    "ISAACLAB_TASK_ALIASES",
    "TerminalObservationFill",
    "isaaclab_install_hint",
    "launch_isaaclab_app",
    "make_isaaclab_env",
    "resolve_isaaclab_task",
    "wrap_isaaclab_env",
]

# Each row: a short name -> every gymnasium id the task has had, newest (Isaac Lab 3.0) first.
# 3.0 renames: dropped "-v0", Repose-Cube -> Reorient-Cube (isaaclab_tasks changelog), DexSuite ->
# Isaac-Reorient-KukaAllegro / Isaac-Lift-KukaAllegro, Anymal-D -> AnymalD. The 3.0 rough-terrain
# ANYmal id follows the flat one's pattern and was not checked against a release.
ISAACLAB_TASK_ALIASES: dict[str, tuple[str, ...]] = {
    "allegro": ("Isaac-Reorient-Cube-Allegro-Direct", "Isaac-Repose-Cube-Allegro-Direct-v0"),
    "allegro_manager": ("Isaac-Reorient-Cube-Allegro", "Isaac-Repose-Cube-Allegro-v0"),
    "shadow": ("Isaac-Reorient-Cube-Shadow-Direct", "Isaac-Repose-Cube-Shadow-Direct-v0"),
    "shadow_openai_ff": (
        "Isaac-Reorient-Cube-Shadow-OpenAI-FF-Direct",
        "Isaac-Repose-Cube-Shadow-OpenAI-FF-Direct-v0",
    ),
    "kuka_allegro_reorient": ("Isaac-Reorient-KukaAllegro", "Isaac-Dexsuite-Kuka-Allegro-Reorient-v0"),
    "kuka_allegro_lift": ("Isaac-Lift-KukaAllegro", "Isaac-Dexsuite-Kuka-Allegro-Lift-v0"),
    "anymal_flat": ("Isaac-Velocity-Flat-AnymalD", "Isaac-Velocity-Flat-Anymal-D-v0"),
    "anymal_rough": ("Isaac-Velocity-Rough-AnymalD", "Isaac-Velocity-Rough-Anymal-D-v0"),
}

_INSTALL_HINT = (
    'Isaac Lab is not installed. Install the extra: pip install "torchrl-sapg[isaaclab]". '
    "Isaac Lab 3.0 needs Python 3.12 (it pins its own torch); on Python 3.11 the last release is "
    "isaaclab 2.3.2.post1 (with Isaac Sim). Tasks need an NVIDIA GPU and NVIDIA's asset server."
)


def isaaclab_install_hint() -> str:
    """The message of the ImportError raised when Isaac Lab is missing."""
    return _INSTALL_HINT


def _require_isaaclab() -> None:
    if importlib.util.find_spec("isaaclab") is None:
        raise ImportError(_INSTALL_HINT)


def _import_isaaclab_tasks() -> None:
    """Import ``isaaclab_tasks`` (registers the gymnasium ids), or raise an ImportError naming the extra."""
    try:
        importlib.import_module("isaaclab_tasks")
    except ImportError as err:  # also raised when sys.modules["isaaclab_tasks"] is None
        raise ImportError(
            f"isaaclab is installed but its task package isaaclab_tasks could not be imported ({err}). "
            + _INSTALL_HINT.replace("Isaac Lab is not installed. ", "")
        ) from err


def _registered_ids() -> set[str]:
    import gymnasium as gym

    return set(gym.registry.keys())


def resolve_isaaclab_task(task: str, registered: Sequence[str] | None = None) -> str:
    """Map ``task`` (a short alias, a 2.x ``-v0`` id or a 3.0 id) to an id that is registered.

    ``registered`` defaults to gymnasium's registry at call time (after ``import
    isaaclab_tasks``). An id that is registered as given is returned unchanged; otherwise the
    first registered member of its alias row. Raises ``ValueError`` naming the candidates.

    Examples:
        >>> resolve_isaaclab_task("Isaac-Repose-Cube-Allegro-Direct-v0",
        ...                       registered=["Isaac-Reorient-Cube-Allegro-Direct"])
        'Isaac-Reorient-Cube-Allegro-Direct'
        >>> resolve_isaaclab_task("allegro", registered=["Isaac-Repose-Cube-Allegro-Direct-v0"])
        'Isaac-Repose-Cube-Allegro-Direct-v0'
    """
    reg = set(_registered_ids() if registered is None else registered)
    if task in reg:
        return task
    key = task.lower().replace("-", "_")
    candidates: tuple[str, ...] = ()
    if key in ISAACLAB_TASK_ALIASES:
        candidates = ISAACLAB_TASK_ALIASES[key]
    else:
        for ids in ISAACLAB_TASK_ALIASES.values():
            if task in ids:
                candidates = ids
                break
    for cand in candidates:
        if cand in reg:
            return cand
    if candidates:
        raise ValueError(
            f"Isaac Lab task {task!r}: none of its ids {list(candidates)} is registered with "
            "gymnasium (was isaaclab_tasks imported? is the installed Isaac Lab too old/new?)."
        )
    isaac = sorted(i for i in reg if i.startswith("Isaac-"))
    raise ValueError(
        f"unknown Isaac Lab task {task!r}. Aliases: {sorted(ISAACLAB_TASK_ALIASES)}; "
        f"registered Isaac ids: {isaac[:40]}{' ...' if len(isaac) > 40 else ''}"
    )


_APP: dict[str, Any] = {}


def launch_isaaclab_app(headless: bool = True, device: str | torch.device | None = None, **kwargs: Any) -> Any:
    """Start Isaac Lab's ``AppLauncher`` once (idempotent); return the app (``None`` if kit-less).

    Must run before Isaac Lab task modules (``isaaclab_tasks``, ``isaaclab.envs``...) are
    imported. Isaac Lab 2.x always needs the Omniverse app; 3.0 can run kit-less (Newton
    backend), in which case a missing ``isaaclab.app`` or a launch that fails because Isaac
    Sim is absent is reported as "no app needed" and ``None`` is returned. Extra keyword
    arguments go to ``AppLauncher`` (e.g. ``enable_cameras=True``).
    """
    if "app" in _APP:
        return _APP["app"]
    _require_isaaclab()
    try:
        from isaaclab.app import AppLauncher  # lazy: starts nothing by itself
    except ImportError:  # 3.x without the kit app: nothing to launch
        _APP["app"] = None
        return None
    launcher_kwargs: dict[str, Any] = {"headless": headless, **kwargs}
    if device is not None:
        launcher_kwargs["device"] = str(device)
    try:
        launcher = AppLauncher(**launcher_kwargs)
    except (ImportError, ModuleNotFoundError):
        if importlib.util.find_spec("isaacsim") is not None:
            raise
        # Isaac Lab 3.0 without Isaac Sim: kit-less backends need no app.
        _APP["app"] = None
        return None
    _APP["launcher"] = launcher
    _APP["app"] = getattr(launcher, "app", None)
    return _APP["app"]


def _patch_direct_observation_space(env: Any) -> None:
    """DirectRLEnv batches only the ``"policy"`` group into ``observation_space``; batch all groups.

    Manager-based envs already expose the whole group dict; Direct envs with a state space
    put ``"critic"`` only into ``single_observation_space`` / ``state_space`` while ``step``
    returns it in the observation dict. TorchRL builds its spec from ``observation_space``,
    so without this the critic group would be outside the spec.
    """
    import gymnasium as gym

    unwrapped = env.unwrapped
    single = getattr(unwrapped, "single_observation_space", None)
    if not isinstance(single, gym.spaces.Dict) or len(single.spaces) < 2:
        return
    if isinstance(unwrapped.observation_space, gym.spaces.Dict):
        return
    unwrapped.observation_space = gym.vector.utils.batch_space(single, unwrapped.num_envs)


class _OneFrameIsaacLabWrapper(OneFrameReadDone, IsaacLabWrapper):
    """TorchRL's ``IsaacLabWrapper`` whose one-frame step never reads ``done`` on the host."""


def wrap_isaaclab_env(
    env: Any,
    *,
    device: str | torch.device | None = None,
    observation_key: NestedKey = "observation",
    critic_key: NestedKey = "critic_observation",
    terminal_obs: str = "previous",
) -> TransformedEnv:
    """Wrap a ``gym.make``d Isaac Lab env with TorchRL's ``IsaacLabWrapper`` and map its groups.

    ``"policy"`` becomes ``observation_key`` (what our actor reads), ``"critic"`` (when the
    task has an asymmetric critic group) becomes ``critic_key``; other groups keep their
    names. ``terminal_obs``: ``"previous"`` (default, see :class:`TerminalObservationFill`) or
    ``"nan"`` (TorchRL's marker, untouched).
    """
    if terminal_obs not in ("previous", "nan"):
        raise ValueError(f"terminal_obs must be 'previous' or 'nan', got {terminal_obs!r}.")
    _patch_direct_observation_space(env)
    if device is None:
        device = getattr(env.unwrapped, "device", None)
    wrapped = _OneFrameIsaacLabWrapper(env, device=torch.device(device) if device is not None else None,
                                       native_autoreset=True)
    if not isinstance(wrapped, TransformedEnv) or not wrapped.__dict__.get("_torchrl_native_autoreset", False):
        raise RuntimeError(
            "IsaacLabWrapper did not install its native auto-reset path for "
            f"{type(env.unwrapped).__name__}; only DirectRLEnv / ManagerBasedRLEnv subclasses are supported."
        )
    keys = set(wrapped.observation_spec.keys())
    src, dst = [], []
    if "policy" in keys:
        src.append("policy"), dst.append(observation_key)
    elif "observation" not in keys:
        raise KeyError(f"Isaac Lab env has no 'policy' observation group; groups: {sorted(map(str, keys))}")
    if "critic" in keys:
        src.append("critic"), dst.append(critic_key)
    if src:
        # append to the wrapper's own TransformedEnv so its native-autoreset flag stays in force
        wrapped.append_transform(RenameTransform(in_keys=src, out_keys=dst, create_copy=False))
    env_obs_keys = list(wrapped.observation_spec.keys(True, True))
    # episode statistics live here (before the repair transform) so their episode-end values
    # survive the auto-reset; PopulationCollector finds them and adds only "policy_id"
    wrapped.append_transform(RewardSum(in_keys=["reward"], out_keys=["episode_reward"]))
    wrapped.append_transform(StepCounter(step_count_key="step_count"))
    wrapped.append_transform(TerminalObservationFill(env_obs_keys, fill=terminal_obs))
    return wrapped


def _build_env_cfg(task: str, num_envs: int, device: str, seed: int | None) -> Any:
    """The task's env cfg with ``num_envs`` / ``device`` / ``seed`` set."""
    cfg = None
    try:
        from isaaclab_tasks.utils import parse_env_cfg  # 2.x and 3.0

        cfg = parse_env_cfg(task, device=device, num_envs=num_envs)
    except (ImportError, AttributeError, TypeError):
        import gymnasium as gym

        entry = gym.spec(task).kwargs.get("env_cfg_entry_point")
        if entry is None:
            raise
        if isinstance(entry, str):
            module, _, attr = entry.partition(":")
            entry = getattr(importlib.import_module(module), attr)
        cfg = entry() if callable(entry) else entry
        cfg.scene.num_envs = num_envs
        cfg.sim.device = device
    if seed is not None:
        cfg.seed = seed
    return cfg


def make_isaaclab_env(
    task: str,
    num_envs: int,
    *,
    device: str | torch.device = "cuda:0",
    seed: int | None = None,
    headless: bool = True,
    app_kwargs: dict | None = None,
    **wrap_kwargs: Any,
) -> TransformedEnv:
    """Build Isaac Lab task ``task`` (alias, 2.x or 3.0 id) with ``num_envs`` envs as a TorchRL env.

    Launches the app if needed, imports ``isaaclab_tasks``, resolves the id against what is
    registered, builds the env cfg (``num_envs``, ``device``, ``seed``), ``gym.make``s it and
    calls :func:`wrap_isaaclab_env`. The result has batch ``[num_envs]``, ``"observation"``
    (the ``"policy"`` group), ``"critic_observation"`` when the task has a critic group, and
    correct ``("next", "done")`` at Isaac Lab's in-step auto-resets.
    """
    _require_isaaclab()
    _, local_rank, world_size = world_info()
    app_kwargs = dict(app_kwargs or {})
    device = str(device)
    if device == "cuda":  # torchrun: one GPU per local rank, and the app told it is distributed
        device = f"cuda:{local_rank}"
    if world_size > 1:
        app_kwargs.setdefault("distributed", True)
    launch_isaaclab_app(headless=headless, device=device, **app_kwargs)
    import gymnasium as gym

    _import_isaaclab_tasks()  # registers the task ids
    task_id = resolve_isaaclab_task(task)
    cfg = _build_env_cfg(task_id, num_envs, device, seed)
    env = gym.make(task_id, cfg=cfg)
    return wrap_isaaclab_env(env, device=device, **wrap_kwargs)
