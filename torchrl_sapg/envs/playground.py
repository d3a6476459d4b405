"""MuJoCo Playground backend: TorchRL's ``MujocoPlaygroundEnv`` with our key layout.

MuJoCo Playground (PyPI ``playground``, import ``mujoco_playground``) is an optional dependency
(``pip install "torchrl-sapg[playground]"``, which pulls JAX, MuJoCo and MJX); nothing here imports
it at module load. :func:`make_playground_env` builds::

    MujocoPlaygroundEnv(task, batch_size=[N])   # TorchRL's wrapper: jax.vmap(jax.jit(step))
    (subclassed here so that "_reset" masks reset only the finished rows, see below)
    + RenameTransform / CatTensors              # dict observations -> "observation"
    + StepCounter(max_steps=episode_length)     # the time limit (raw Playground envs have none)
    + RewardSum -> "episode_reward"

Keys. ``"observation"`` float32 ``[N, D]``. Tasks with a flat observation (all DM Control suite
tasks) use it as is. Tasks with dict observations (manipulation / locomotion: ``{"state",
"privileged_state"}``) map ``"state"`` to ``"observation"`` (the actor's input) and
``"privileged_state"`` to ``"critic_observation"`` (the asymmetric critic's input), the same names
the Isaac Lab backend uses for ``"policy"`` / ``"critic"``; any other group keeps its name. A dict
without a ``"state"`` group is flattened and concatenated (in the env's key order) into
``"observation"``. ``"reward"`` ``[N, 1]``; ``"done"`` / ``"terminated"`` / ``"truncated"`` bool
``[N, 1]``: ``terminated`` is the task's own ``done`` (fall, NaN), ``truncated`` the time limit.

Partial resets. TorchRL's ``MujocoPlaygroundWrapper`` keeps the JAX state on the instance and
re-initialises the *whole* batch on every ``reset`` (it ignores ``"_reset"``). With a collector
that resets only finished rows that would restart every env whenever one finishes. The subclass
here draws a fresh batch of initial states and keeps it only where ``"_reset"`` is set
(``jnp.where`` over the state pytree, what Brax's ``AutoResetWrapper`` does), so unfinished rows
continue untouched.

Task names: any Playground registry name (``registry.ALL_ENVS``), e.g. DM Control suite
``"CheetahRun"``, ``"HumanoidRun"``, ``"WalkerWalk"``; case and ``_``/``-`` are ignored
(``"cheetah_run"`` works). DM Control suite XMLs ship in the wheel. Locomotion and manipulation
tasks (``"LeapCubeReorient"``, ``"Go1JoystickFlatTerrain"``, ...) need MuJoCo Menagerie, which
Playground git-clones into its package directory at first use; this module refuses to trigger that
clone and raises ``FileNotFoundError`` when the Menagerie checkout is absent (set
``allow_menagerie_download=True`` to let Playground clone it).
"""
from __future__ import annotations

import importlib
from typing import Any

import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.envs import CatTensors, RenameTransform, RewardSum, StepCounter, TransformedEnv
from torchrl.envs.libs.mujoco_playground import MujocoPlaygroundEnv

__all__ = [
    "PLAYGROUND_PREFIX",
    "PartialResetPlaygroundEnv",
    "import_playground",
    "make_playground_env",
    "playground_install_hint",
    "resolve_playground_task",
]

#: ``make_env`` name prefix that selects this backend, e.g. ``"playground:CheetahRun"``.
PLAYGROUND_PREFIX = "playground:"

_INSTALL_HINT = (
    'MuJoCo Playground is not installed. Install the extra: pip install "torchrl-sapg[playground]" '
    "(PyPI 'playground', which brings JAX, MuJoCo and MJX; for GPU simulation also install a CUDA "
    'JAX, e.g. pip install -U "jax[cuda12]").'
)


def playground_install_hint() -> str:
    """The message of the ImportError raised when MuJoCo Playground or JAX is missing."""
    return _INSTALL_HINT


def import_playground():
    """Import and return ``mujoco_playground`` (and JAX), or raise an ImportError naming the extra."""
    try:
        importlib.import_module("jax")
        module = importlib.import_module("mujoco_playground")
    except ImportError as err:  # also raised when sys.modules[name] is None
        raise ImportError(_INSTALL_HINT) from err
    return module


def _norm(name: str) -> str:
    return name.lower().replace("_", "").replace("-", "")


def resolve_playground_task(task: str, available: list[str] | tuple[str, ...] | None = None) -> str:
    """Map ``task`` to a Playground registry name, ignoring case, ``_`` and ``-``.

    Examples:
        >>> resolve_playground_task("cheetah_run", available=["CheetahRun", "HumanoidRun"])
        'CheetahRun'
    """
    if available is None:
        import_playground()
        from mujoco_playground import registry

        available = list(registry.ALL_ENVS)
    if task in available:
        return task
    matches = [a for a in available if _norm(a) == _norm(task)]
    if len(matches) == 1:
        return matches[0]
    raise ValueError(f"unknown MuJoCo Playground task {task!r}; available: {sorted(available)}")


def _needs_menagerie(task: str) -> bool:
    from mujoco_playground import dm_control_suite

    return task not in dm_control_suite.ALL_ENVS


def _check_menagerie(task: str, allow_download: bool) -> None:
    if allow_download or not _needs_menagerie(task):
        return
    from mujoco_playground._src import mjx_env

    path = mjx_env.MENAGERIE_PATH
    if not path.exists():
        raise FileNotFoundError(
            f"MuJoCo Playground task {task!r} needs MuJoCo Menagerie assets, expected at {path}. "
            "Playground would git-clone https://github.com/google-deepmind/mujoco_menagerie there "
            f"(commit {getattr(mjx_env, 'MENAGERIE_COMMIT_SHA', '?')}) at first use, which fails "
            "offline. Clone it yourself to that path, or pass allow_menagerie_download=True. "
            "DM Control suite tasks (CheetahRun, HumanoidRun, ...) need no Menagerie."
        )


class PartialResetPlaygroundEnv(MujocoPlaygroundEnv):
    """``MujocoPlaygroundEnv`` whose ``reset`` honours a ``"_reset"`` mask (see module docstring)."""

    _merge_fn = None

    def _merge(self, mask, new, old):
        if self._merge_fn is None:
            jax = self.jax

            def merge(m, n, o):
                def sel(a, b):
                    if getattr(a, "ndim", 0) == 0 or a.shape[:1] != m.shape:
                        return a
                    return jax.numpy.where(m.reshape(m.shape + (1,) * (a.ndim - 1)), a, b)

                return jax.tree_util.tree_map(sel, n, o)

            type(self)._merge_fn = staticmethod(jax.jit(merge))
        return self._merge_fn(mask, new, old)

    def _reset(self, tensordict: TensorDictBase | None = None, **kwargs) -> TensorDictBase:
        old = getattr(self, "_current_state", None)
        mask = None if tensordict is None else tensordict.get("_reset", None)
        out = super()._reset(tensordict, **kwargs)
        if old is None or mask is None or self.batch_dims != 1:
            return out
        mask = mask.reshape(self.batch_size).cpu()
        if bool(mask.all()):
            return out
        state = self._merge(self.jax.numpy.asarray(mask.numpy()), self._current_state, old)
        self._current_state = state
        from torchrl.envs.libs.jax_utils import _ndarray_to_tensor

        done = _ndarray_to_tensor(state.done).to(self.device).bool().view(*self.batch_size, 1)
        return TensorDict._new_unsafe(
            source={**self._extract_obs(state), "done": done, "terminated": done.clone()},
            batch_size=self.batch_size,
            device=self.device,
        )


def make_playground_env(
    task: str,
    num_envs: int,
    *,
    device: str | torch.device = "cpu",
    seed: int | None = None,
    max_episode_steps: int | None = None,
    config_overrides: dict | None = None,
    allow_menagerie_download: bool = False,
    observation_key: str = "observation",
    critic_key: str = "critic_observation",
) -> TransformedEnv:
    """Build ``num_envs`` vmapped copies of Playground task ``task`` as a TorchRL env.

    Args:
        task: a Playground registry name (``"CheetahRun"``, ``"HumanoidRun"``,
            ``"LeapCubeReorient"``, ...); case, ``_`` and ``-`` are ignored.
        num_envs: batch size ``N`` (one ``jax.vmap``; JAX picks its default device: the GPU
            with a CUDA ``jaxlib``, else the CPU).

    Keyword Args:
        device: torch device of the output tensors (JAX arrays are converted via DLPack/numpy).
        seed: JAX PRNG seed (``None``: 0, TorchRL's convention).
        max_episode_steps: time limit (``"truncated"``); default the task config's
            ``episode_length`` (1000 for DM Control), counted in env steps.
        config_overrides: forwarded to ``registry.load`` (e.g. ``{"impl": "jax"}``). Without a
            GPU, ``impl`` defaults to ``"jax"`` here (Playground's default ``"warp"`` needs CUDA).
        allow_menagerie_download: let Playground git-clone MuJoCo Menagerie for tasks that need it.
    """
    if not isinstance(num_envs, int) or num_envs < 1:
        raise ValueError(f"num_envs must be a positive int, got {num_envs!r}.")
    import_playground()
    from mujoco_playground import registry

    task = resolve_playground_task(task)
    _check_menagerie(task, allow_menagerie_download)
    overrides = dict(config_overrides or {})
    config = registry.get_default_config(task)
    if "impl" in config and "impl" not in overrides:
        import jax

        if jax.default_backend() == "cpu":
            overrides["impl"] = "jax"
    try:
        base = PartialResetPlaygroundEnv(
            task, batch_size=[num_envs], device=torch.device(device),
            config_overrides=overrides or None,
        )
    except TypeError as err:
        if "a_max" in str(err):
            raise RuntimeError(
                f"MuJoCo Playground task {task!r} calls jnp.clip(a_max=...), which the installed "
                "JAX no longer accepts (removed in JAX 0.8); use a Playground release that fixed it "
                "or an older JAX."
            ) from err
        raise
    base.set_seed(0 if seed is None else int(seed))
    if max_episode_steps is None:
        max_episode_steps = int(getattr(base._env, "_config", config).get("episode_length", 1000))

    env = TransformedEnv(base)
    keys = [k for k in base.observation_spec.keys() if isinstance(k, str)]
    if keys != ["observation"]:
        if "state" in keys:
            src, dst = ["state"], [observation_key]
            if "privileged_state" in keys:
                src.append("privileged_state"), dst.append(critic_key)
            env.append_transform(RenameTransform(in_keys=src, out_keys=dst, create_copy=False))
        else:
            env.append_transform(CatTensors(in_keys=keys, out_key=observation_key, del_keys=True))
    elif observation_key != "observation":
        env.append_transform(RenameTransform(["observation"], [observation_key], create_copy=False))
    env.append_transform(StepCounter(max_steps=max_episode_steps, step_count_key="step_count"))
    env.append_transform(RewardSum(in_keys=["reward"], out_keys=["episode_reward"]))
    env.playground_task = task  # type: ignore[attr-defined]
    return env
