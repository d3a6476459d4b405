"""Isaac Gym (Preview 4) backend: IsaacGymEnvs tasks through TorchRL's ``IsaacGymWrapper``, with our key layout.

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
use).

Episode ends. IsaacGymEnvs' ``VecTask.step`` returns ``(obs_dict, reward, reset_buf, extras)`` and
resets the envs flagged in ``reset_buf`` itself, at the start of a later step; ``extras["time_outs"]``
marks the flagged envs that hit the episode-length limit. TorchRL 0.14's ``IsaacGymWrapper`` reports
every end as a truncation and cannot run past the first one (see :class:`VecTaskWrapper`), so this
backend wraps the task in :class:`VecTaskWrapper` instead.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
from typing import Any

import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.data import Composite
from torchrl.envs import EnvBase, RenameTransform, RewardSum, StepCounter, TransformedEnv
from torchrl.envs.libs.isaacgym import IsaacGymWrapper

from torchrl_sapg.envs.one_frame import OneFrameReadDone
from torchrl_sapg.envs.terminal_fill import TerminalObservationFill

__all__ = [
    "ISAACGYM_PREFIX",
    "import_isaacgym",
    "isaacgym_install_hint",
    "make_isaacgym_env",
    "VecTaskWrapper",
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


class VecTaskWrapper(OneFrameReadDone, IsaacGymWrapper):
    """An IsaacGymEnvs ``VecTask`` as a TorchRL env that runs through episode ends (TorchRL 0.14's wrapper could not).

    * ``terminated = reset_buf & ~extras["time_outs"]``, ``truncated = time_outs`` (all ends terminated when
      the task sets no ``time_outs``): rl_games' ``value_bootstrap`` split.
    * A reset with a ``"_reset"`` mask returns the current observations: ``VecTask`` resets flagged envs
      itself, in a later ``step``. The observation at an end is the terminal one.
    * Done and reward entries are ``[num_envs, 1]``; observations are read from a copy of ``obs_dict``.
    * With one frame per step, no ``done`` is read on the host.

    What each change fixes in TorchRL's wrapper: docs/playground-isaacgym.md.

    Args:
        env: an IsaacGymEnvs ``VecTask`` (what ``isaacgymenvs.make`` returns).
        task: the task name, for ``repr`` (default: the class name of ``env``).
        **kwargs: forwarded to ``IsaacGymWrapper``.

    Examples:
        >>> import isaacgym, isaacgymenvs  # doctest: +SKIP
        >>> task = isaacgymenvs.make(seed=0, task="Ant", num_envs=64, sim_device="cuda:0",
        ...                          rl_device="cuda:0", headless=True)  # doctest: +SKIP
        >>> env = VecTaskWrapper(task)  # doctest: +SKIP
        >>> env.rollout(100, break_when_any_done=False)["next", "terminated"].shape  # doctest: +SKIP
        torch.Size([64, 100, 1])
    """

    def __init__(self, env: Any, task: str | None = None, **kwargs: Any):
        self.task = task if task is not None else type(env).__name__
        super().__init__(env, **kwargs)

    @property
    def _is_batched(self) -> bool:
        return False

    def _get_batch_size(self, env: Any) -> torch.Size:
        return torch.Size([env.num_envs])

    def _make_specs(self, env: Any) -> None:
        super()._make_specs(env)
        # TorchRL squeezes the done entries to [num_envs]; every other backend (and the collector) has [num_envs, 1]
        self.full_done_spec = Composite(
            {key: spec.unsqueeze(-1) for key, spec in self.full_done_spec.items(True, True)}, shape=self.batch_size
        )

    def read_obs(self, observations: Any) -> dict[str, Any]:
        if isinstance(observations, dict):
            observations = dict(observations)
        return super().read_obs(observations)

    def _output_transform(self, output: tuple) -> tuple:
        obs, reward, reset_buf, extras = output
        done = reset_buf.bool().unsqueeze(-1)
        time_outs = extras.get("time_outs") if isinstance(extras, dict) else None
        truncated = done & time_outs.bool().unsqueeze(-1) if time_outs is not None else torch.zeros_like(done)
        return obs, reward, done & ~truncated, truncated, done, extras

    def read_reward(self, total_reward: torch.Tensor) -> torch.Tensor:
        return total_reward.unsqueeze(-1)  # VecTask's rew_buf is [num_envs]; the reward spec is [num_envs, 1]

    def _reset(self, tensordict: TensorDictBase | None = None, **kwargs: Any) -> TensorDictBase:
        if tensordict is None or "_reset" not in tensordict.keys():
            return super()._reset(tensordict, **kwargs)
        # VecTask resets the flagged envs itself, in a later step: their observation is still the terminal one
        out = TensorDict(self.read_obs(self._env.obs_dict), batch_size=self.batch_size)
        return out.to(self.device) if self.device is not None else out


def wrap_isaacgym_env(
    env: EnvBase,
    *,
    observation_key: str = "observation",
    critic_key: str = "critic_observation",
) -> TransformedEnv:
    """Rename IsaacGymEnvs' ``"obs"`` / ``"states"`` to ``observation_key`` / ``critic_key``; run without TorchRL's reset loop.

    ``env`` is a :class:`VecTaskWrapper` (or any EnvBase with those keys). A ``"observation"``
    key (TorchRL renames a dict ``"state"`` to it) is kept as is. ``VecTask`` resets finished envs
    itself, so the result takes TorchRL's native auto-reset path (no host read of ``done`` per step),
    with ``RewardSum`` (``"episode_reward"``), ``StepCounter`` (``"step_count"``) and a
    :class:`~torchrl_sapg.envs.terminal_fill.TerminalObservationFill` that puts back the terminal
    ``("next", ...)`` values that path blanks.
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
    # the observation at an end is the terminal one, and the root the policy acts on next (as in
    # rl_games): TorchRL's native path keeps it as the root, the fill puts it back into ("next", ...)
    out._torchrl_native_autoreset = True
    if src:
        out.append_transform(RenameTransform(in_keys=src, out_keys=dst, create_copy=False))
    present = set(out.observation_spec.keys())
    if "episode_reward" not in present:
        out.append_transform(RewardSum(in_keys=["reward"], out_keys=["episode_reward"]))
    if "step_count" not in present:
        out.append_transform(StepCounter(step_count_key="step_count"))
    out.append_transform(TerminalObservationFill(env_obs_keys=()))
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

    Extra keyword arguments go to ``isaacgymenvs.make``; the task is wrapped in :class:`VecTaskWrapper`.
    """
    if not isinstance(num_envs, int) or num_envs < 1:
        raise ValueError(f"num_envs must be a positive int, got {num_envs!r}.")
    import_isaacgym()
    device = str(device)
    if device == "cuda":
        device = "cuda:0"
    vec_task = IsaacGymWrapper._make_envs(task=task, num_envs=num_envs, device=device, seed=seed,
                                          headless=headless, virtual_screen_capture=False, **kwargs)
    return wrap_isaacgym_env(VecTaskWrapper(vec_task, task=task))
