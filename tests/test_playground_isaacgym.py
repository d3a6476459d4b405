"""MuJoCo Playground and Isaac Gym backends.

Error paths always run (the packages are hidden with ``sys.modules[name] = None``). The Playground
backend test runs when ``mujoco_playground`` is installed; it uses ``PendulumSwingup`` (the cheapest
JIT compile, ~10 s on one CPU core) with 4 envs. ``TORCHRL_SAPG_SLOW_TESTS=1`` adds ``CheetahRun``
(~1 min of MJX compilation on a CPU). Isaac Gym cannot run here; its key mapping is tested against a
stand-in env with IsaacGymEnvs' ``"obs"`` / ``"states"`` keys.
"""
from __future__ import annotations

import importlib.util
import os
import sys

import pytest
import torch
from tensordict import TensorDict
from torchrl.data import Bounded, Composite, Unbounded
from torchrl.envs import EnvBase
from torchrl.envs.utils import check_env_specs

from torchrl_sapg import make_env

_HAS_PLAYGROUND = importlib.util.find_spec("mujoco_playground") is not None
_SLOW = os.environ.get("TORCHRL_SAPG_SLOW_TESTS", "") == "1"


# --------------------------------------------------------------------------- error paths
@pytest.mark.parametrize("hidden", ["mujoco_playground", "jax"])
def test_playground_missing_raises_install_hint(monkeypatch, hidden):
    monkeypatch.setitem(sys.modules, hidden, None)
    with pytest.raises(ImportError, match=r'pip install "torchrl-sapg\[playground\]"'):
        make_env("playground:CheetahRun", 4)


def test_isaacgym_missing_raises_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "isaacgym", None)
    with pytest.raises(ImportError, match="Preview 4 is not on PyPI") as info:
        make_env("isaacgym:AllegroHand", 4, device="cpu")
    assert "developer.nvidia.com/isaac-gym" in str(info.value)
    assert "torchrl-sapg[" not in str(info.value)  # there is no extra


def test_playground_task_name_resolution():
    from torchrl_sapg.envs.playground import resolve_playground_task

    names = ["CheetahRun", "HumanoidRun", "LeapCubeReorient"]
    assert resolve_playground_task("CheetahRun", names) == "CheetahRun"
    assert resolve_playground_task("humanoid_run", names) == "HumanoidRun"
    assert resolve_playground_task("leap-cube-reorient", names) == "LeapCubeReorient"
    with pytest.raises(ValueError, match="unknown MuJoCo Playground task"):
        resolve_playground_task("CheetahWalk", names)


# --------------------------------------------------------------------------- Isaac Gym mapping
class _IsaacGymStandIn(EnvBase):
    """What TorchRL's IsaacGymEnv exposes: ``"obs"`` (+ ``"states"`` for an asymmetric critic)."""

    def __init__(self, n=3, obs_dim=5, state_dim=7, act_dim=2):
        super().__init__(batch_size=torch.Size([n]))
        self.observation_spec = Composite(
            obs=Unbounded((n, obs_dim)), states=Unbounded((n, state_dim)), shape=(n,)
        )
        self.action_spec = Bounded(-1.0, 1.0, (n, act_dim))
        self.reward_spec = Unbounded((n, 1))
        self._t = torch.zeros(n)

    def _obs(self):
        n = self.batch_size[0]
        return {"obs": self._t[:, None].expand(n, 5).clone(), "states": self._t[:, None].expand(n, 7).clone()}

    def _reset(self, td):
        self._t.zero_()
        done = torch.zeros(*self.batch_size, 1, dtype=torch.bool)
        return TensorDict({**self._obs(), "done": done, "terminated": done.clone()}, self.batch_size)

    def _step(self, td):
        self._t += 1
        done = torch.zeros(*self.batch_size, 1, dtype=torch.bool)
        return TensorDict(
            {**self._obs(), "reward": td["action"].sum(-1, keepdim=True), "done": done, "terminated": done.clone()},
            self.batch_size,
        )

    def _set_seed(self, seed):
        pass


def test_isaacgym_key_mapping_on_stand_in():
    from torchrl_sapg.envs.isaacgym import wrap_isaacgym_env

    env = wrap_isaacgym_env(_IsaacGymStandIn())
    keys = set(env.observation_spec.keys())
    assert {"observation", "critic_observation"} <= keys and not {"obs", "states"} & keys
    check_env_specs(env)
    td = env.rollout(3)
    assert td["next", "observation"].shape == (3, 3, 5)
    assert td["next", "critic_observation"].shape == (3, 3, 7)


# --------------------------------------------------------------------------- real Playground
@pytest.fixture(scope="module")
def pendulum_env():
    return make_env("playground:pendulum_swingup", 4, seed=0, max_episode_steps=5)


@pytest.mark.skipif(not _HAS_PLAYGROUND, reason="mujoco_playground not installed")
def test_playground_specs_and_partial_reset(pendulum_env):
    env = pendulum_env
    assert env.observation_spec["observation"].dtype == torch.float32
    assert env.observation_spec["observation"].shape[0] == 4
    check_env_specs(env)
    td = env.reset()
    td["action"] = env.action_spec.rand()
    td = env.step(td)
    nxt = td["next"].clone()
    before = nxt["observation"].clone()
    nxt["_reset"] = torch.tensor([[True], [False], [True], [False]])
    out = env.reset(nxt)
    changed = (out["observation"] - before).abs().sum(-1) > 0
    assert changed.tolist() == [True, False, True, False]  # only masked rows restart
    assert out["step_count"].squeeze(-1).tolist() == [0, 1, 0, 1]


@pytest.mark.skipif(not _HAS_PLAYGROUND, reason="mujoco_playground not installed")
def test_playground_population_collector_time_limit(pendulum_env):
    from torchrl_sapg import PopulationCollector

    env = pendulum_env
    act_dim = env.action_spec.shape[-1]

    def policy(td):
        td["action"] = torch.zeros(*td.batch_size, act_dim)
        return td

    collector = PopulationCollector(env, policy, num_policies=2, frames_per_batch=4 * 12, total_frames=4 * 12)
    batch = next(iter(collector))
    collector.shutdown()
    assert batch.shape == (4, 12)
    done = batch["next", "done"].squeeze(-1)
    assert done[:, 4].all() and done[:, 9].all() and done.sum() == 8  # time limit 5, auto-reset
    assert batch["next", "truncated"].squeeze(-1)[:, 4].all()
    assert batch["policy_id"].squeeze(-1)[:, 0].tolist() == [0, 0, 1, 1]


@pytest.mark.skipif(not (_HAS_PLAYGROUND and _SLOW), reason="needs mujoco_playground and TORCHRL_SAPG_SLOW_TESTS=1")
def test_playground_cheetah_run_slow():
    env = make_env("playground:CheetahRun", 4, seed=0, max_episode_steps=5)
    check_env_specs(env)
    td = env.rollout(12, break_when_any_done=False)
    assert td["next", "done"].squeeze(-1).sum() == 8
    assert td["observation"].shape == (4, 12, 17)


@pytest.mark.skipif(not _HAS_PLAYGROUND, reason="mujoco_playground not installed")
def test_playground_menagerie_task_without_assets_is_clear(tmp_path, monkeypatch):
    from mujoco_playground._src import mjx_env

    monkeypatch.setattr(mjx_env, "MENAGERIE_PATH", tmp_path / "no_menagerie")
    with pytest.raises(FileNotFoundError, match="Menagerie"):
        make_env("playground:LeapCubeReorient", 4)
