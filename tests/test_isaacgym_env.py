"""Isaac Gym backend (``VecTaskWrapper``), tested against a stand-in of IsaacGymEnvs' ``VecTask``.

Isaac Gym cannot run here (no GPU; Preview 4 has no build for Python 3.11). The stand-in honours what
a ``VecTask`` from ``isaacgymenvs.make`` exposes to a wrapper:

* ``num_envs``, ``device``, ``rl_device``, ``num_obs``, ``num_states``, ``observation_space``,
  ``action_space``, ``state_space`` and no ``unwrapped`` (``VecTask`` is not a gym env);
* one persistent ``obs_dict`` (``"obs"``, and ``"states"`` when ``num_states > 0``) that both ``step``
  and ``reset`` return;
* ``step(actions) -> (obs_dict, rew_buf[N], reset_buf[N] (long), extras)`` with
  ``extras["time_outs"] = (progress >= max_episode_length - 1) & reset_buf``; the envs flagged in
  ``reset_buf`` are reset at the start of the next ``step`` (``pre_physics_step``, as AllegroHand and
  ShadowHand do), so the observation returned with the flag is the terminal one;
* ``reset()`` only returns the observations (it resets nothing).

Its spaces are Gymnasium's, as only Gymnasium is installed here; IsaacGymEnvs uses gym 0.23.
"""
from __future__ import annotations

import sys
import types

import gymnasium as gym
import numpy as np
import pytest
import torch
from torchrl.envs.utils import check_env_specs

from torchrl_sapg import OnPolicyTrainer, PopulationCollector, SAPGLoss, make_actor_critic, make_env

OBS_DIM, STATE_DIM, ACT_DIM = 3, 2, 2


class _VecTaskStandIn:
    """Env i gets reward ``i + 1`` per step, fails after ``fail_at[i]`` steps and times out at step
    ``max_episode_length - 1`` (IsaacGymEnvs' convention); feature 0 of ``obs`` is the step count."""

    def __init__(self, num_envs=4, max_episode_length=6, fail_at=(2, 99, 3, 99), device="cpu"):
        self.num_envs, self.num_obs, self.num_states, self.num_actions = num_envs, OBS_DIM, STATE_DIM, ACT_DIM
        self.device = self.rl_device = device
        self.max_episode_length = max_episode_length
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (OBS_DIM,))
        self.state_space = gym.spaces.Box(-np.inf, np.inf, (STATE_DIM,))
        self.action_space = gym.spaces.Box(-1.0, 1.0, (ACT_DIM,))
        self.fail_at = torch.tensor(fail_at, device=device)
        self.obs_buf = torch.zeros(num_envs, OBS_DIM, device=device)
        self.rew_buf = torch.zeros(num_envs, device=device)
        self.reset_buf = torch.ones(num_envs, dtype=torch.long, device=device)
        self.progress_buf = torch.zeros(num_envs, dtype=torch.long, device=device)
        self.extras: dict = {}
        self.obs_dict: dict = {}
        self.reset_calls: list[list[int]] = []

    def _observations(self):
        self.obs_dict["obs"] = self.obs_buf.clone()
        self.obs_dict["states"] = 10 * self.obs_buf[:, :STATE_DIM]
        return self.obs_dict

    def reset(self):
        return self._observations()

    def step(self, actions):
        env_ids = self.reset_buf.nonzero(as_tuple=False).flatten()  # pre_physics_step: reset what was flagged
        if len(env_ids) > 0:
            self.reset_calls.append(env_ids.tolist())
            self.progress_buf[env_ids] = 0
            self.obs_buf[env_ids] = 0
        self.progress_buf += 1
        self.obs_buf[:, 0] = self.progress_buf.float()
        self.rew_buf = torch.arange(1.0, self.num_envs + 1, device=self.device) + 0 * actions.sum(-1)
        failed = self.progress_buf >= self.fail_at
        self.reset_buf = (failed | (self.progress_buf >= self.max_episode_length - 1)).long()
        self.extras["time_outs"] = (self.progress_buf >= self.max_episode_length - 1) & (self.reset_buf != 0)
        return self._observations(), self.rew_buf, self.reset_buf, self.extras


def _env(**kwargs):
    from torchrl_sapg.envs.isaacgym import VecTaskWrapper, wrap_isaacgym_env

    return wrap_isaacgym_env(VecTaskWrapper(_VecTaskStandIn(**kwargs), task="StandIn"))


def test_specs_keys_and_shapes():
    env = _env()
    check_env_specs(env)
    assert env.batch_size == (4,)
    for key in ("done", "terminated", "truncated"):
        assert env.full_done_spec[key].shape == (4, 1)
    td = env.reset()
    assert td["observation"].shape == (4, OBS_DIM) and td["critic_observation"].shape == (4, STATE_DIM)


def test_episode_ends_split_by_time_outs_and_run_past_the_first_reset():
    """step_and_maybe_reset (what collectors call): failures are terminated, time-outs truncated, the
    observation at an end is the terminal one and stays the next root; VecTask alone resets the flagged envs."""
    n, T = 4, 12
    env = _env(num_envs=n, max_episode_length=6, fail_at=(2, 99, 3, 99))
    vec_task = env.base_env._env
    td = env.reset()
    vec_task.reset_buf.fill_(1)  # start every env afresh (the wrapper's spec check stepped the task)
    vec_task.reset_calls.clear()
    rows = []
    for _ in range(T):
        td["action"] = torch.zeros(n, ACT_DIM)
        td, root = env.step_and_maybe_reset(td)
        rows.append((td["next", "done"], td["next", "terminated"], td["next", "truncated"],
                     td["next", "observation"][:, 0], root["observation"][:, 0], td["next", "reward"]))
        td = root
    done, term, trunc, nxt, nxt_root, reward = (torch.stack(x, 1).squeeze(-1) for x in zip(*rows))
    # by hand: envs 0 and 2 fail after 2 and 3 steps; envs 1 and 3 time out at step 5 (max_episode_length - 1)
    length = [2, 5, 3, 5]
    for i in range(n):
        ends = torch.tensor([(t + 1) % length[i] == 0 for t in range(T)])
        assert torch.equal(done[i], ends), i
        assert torch.equal(term[i], ends if i in (0, 2) else torch.zeros(T, dtype=torch.bool)), i
        assert torch.equal(trunc[i], ends if i in (1, 3) else torch.zeros(T, dtype=torch.bool)), i
        assert torch.equal(nxt[i], torch.tensor([float(t % length[i] + 1) for t in range(T)])), i
    assert torch.equal(nxt_root, nxt)  # the terminal observation is the next root, as in rl_games
    assert torch.equal(reward, torch.arange(1.0, n + 1)[:, None].expand(n, T))
    flagged = [torch.nonzero(done[:, t]).flatten().tolist() for t in range(T - 1) if done[:, t].any()]
    assert vec_task.reset_calls == [list(range(n))] + flagged
    assert set(vec_task.obs_dict) == {"obs", "states"}  # nothing of TorchRL's written into VecTask's dict


class _NoTimeOutsStandIn(_VecTaskStandIn):
    """A task whose ``step`` leaves ``extras`` empty."""

    def step(self, actions):
        obs, reward, reset_buf, _ = super().step(actions)
        return obs, reward, reset_buf, {}


def test_a_task_without_time_outs_has_every_end_terminated():
    from torchrl_sapg.envs.isaacgym import VecTaskWrapper

    td = VecTaskWrapper(_NoTimeOutsStandIn()).rollout(10, break_when_any_done=False)
    assert td["next", "done"][1].any()  # env 1 reaches the episode-length limit
    assert torch.equal(td["next", "terminated"], td["next", "done"]) and not td["next", "truncated"].any()


def test_population_collector_and_a_sapg_update():
    """The collector runs through episode ends and GAE stops at failures only (a hand computation with lambda = 0)."""
    from torchrl.objectives.value import GAE

    m = 2
    env = _env(num_envs=4)
    torch.manual_seed(0)
    ac = make_actor_critic(OBS_DIM, ACT_DIM, num_policies=m, latent_dim=4, hidden_sizes=(16,))
    collector = PopulationCollector(env, ac.actor, num_policies=m, frames_per_batch=4 * 8)
    batch = next(iter(collector))
    assert batch.shape == (4, 8) and batch["next", "done"].any()
    assert batch["policy_id"][:, 0].tolist() == [0, 0, 1, 1]
    gamma = 0.9
    out = GAE(gamma=gamma, lmbda=0.0, value_network=ac.critic)(batch.clone())
    with torch.no_grad():
        v = ac.critic(batch.clone())["state_value"]
        v_next = ac.critic(batch["next"].clone())["state_value"]
    not_terminated = (~batch["next", "terminated"]).float()
    expected = batch["next", "reward"] + gamma * not_terminated * v_next - v
    torch.testing.assert_close(out["advantage"], expected)
    assert batch["next", "terminated"].any() and batch["next", "truncated"].any()

    loss = SAPGLoss(ac.actor, ac.critic, num_policies=m)
    trainer = OnPolicyTrainer(
        collector=collector, loss_module=loss, optimizer=torch.optim.Adam(loss.parameters(), lr=3e-4),
        total_frames=3 * 32, num_epochs=2, num_minibatches=2,
        value_estimator=GAE(gamma=0.99, lmbda=0.95, value_network=ac.critic), progress_bar=False, seed=0,
    )
    trainer.register_op("batch_process", loss.aggregate)
    trainer.train()
    assert all(torch.isfinite(p).all() for p in loss.parameters())
    collector.shutdown()


def test_collection_reads_the_host_only_where_torchrl_resets():
    """No host sync per step of our own: TorchRL's partial-reset loop reads ``done`` (as for the embedded envs),
    the stand-in's ``step`` reads ``reset_buf`` (as VecTask does); the wrapper's reset and done read nothing."""
    from test_host_syncs import _CPU_ONLY, TORCHRL_RESET_READS, reads_of_a_collected_batch

    ac = make_actor_critic(OBS_DIM, ACT_DIM, num_policies=2, latent_dim=4, hidden_sizes=(8,))
    batch, reads = reads_of_a_collected_batch(_env(num_envs=4), ac.actor, num_policies=2, frames_per_batch=4 * 8)
    assert batch["next", "done"].any()
    assert set(reads.outside(_CPU_ONLY)) <= TORCHRL_RESET_READS | {"test_isaacgym_env.step"}, reads.sites


def test_frame_skip_still_stops_at_an_end():
    """With several frames per step, TorchRL's loop must still leave at an end (``do_break`` kept)."""
    from torchrl_sapg.envs.isaacgym import VecTaskWrapper

    wrapper = VecTaskWrapper(_VecTaskStandIn(), frame_skip=2)
    done = torch.tensor([[False], [True], [False], [False]])
    assert bool(wrapper.read_done(done, done, done)[-1])
    assert VecTaskWrapper(_VecTaskStandIn()).read_done(done, done, done)[-1] is False


def test_make_env_builds_the_task_through_isaacgymenvs(monkeypatch):
    """``make_env("isaacgym:<task>")`` calls ``isaacgymenvs.make`` as TorchRL does and wraps the VecTask."""
    made = {}

    def make(**kwargs):
        made.update(kwargs)
        return _VecTaskStandIn(num_envs=kwargs["num_envs"])

    isaacgym = types.ModuleType("isaacgym")
    isaacgymenvs = types.ModuleType("isaacgymenvs")
    isaacgymenvs.make = make
    monkeypatch.setitem(sys.modules, "isaacgym", isaacgym)
    monkeypatch.setitem(sys.modules, "isaacgymenvs", isaacgymenvs)
    env = make_env("isaacgym:AllegroHand", 4, device="cpu", seed=3)
    assert made["task"] == "AllegroHand" and made["num_envs"] == 4 and made["seed"] == 3
    assert made["sim_device"] == made["rl_device"] == "cpu" and made["headless"] is True
    check_env_specs(env)
    assert env.rollout(8, break_when_any_done=False)["next", "done"].any()


@pytest.mark.parametrize("bad", [0, -1, 2.5])
def test_num_envs_must_be_a_positive_int(bad):
    from torchrl_sapg.envs.isaacgym import make_isaacgym_env

    with pytest.raises(ValueError, match="num_envs must be a positive int"):
        make_isaacgym_env("Ant", bad, device="cpu")
