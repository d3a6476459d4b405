"""EnvPoolEnv: specs, partial resets across episode ends, seeding, parity with raw EnvPool.

Every test but the missing-install one needs ``envpool`` (``pip install "torchrl-sapg[envpool]"``)
and is skipped without it.
"""
from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from torchrl.envs.utils import check_env_specs

from torchrl_sapg import PopulationCollector, make_actor_critic, make_env

try:
    envpool = pytest.importorskip("envpool")
except pytest.skip.Exception:  # keep the module: the missing-install test below needs no envpool
    envpool = None

needs_envpool = pytest.mark.skipif(envpool is None, reason="envpool is not installed")

TASK = "HalfCheetah-v4"  # obs 17, action 6 in [-1, 1], never terminates: truncation only


def _actions(n: int, steps: int, act_dim: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(steps, n, act_dim, generator=g) * 2 - 1


def _run(env, actions: torch.Tensor):
    """Steps ``env`` with ``actions`` [T, N, A], resetting done envs (TorchRL's protocol)."""
    td = env.reset()
    rows = []
    for a in actions:
        td["action"] = a
        step, td = env.step_and_maybe_reset(td)
        rows.append(step)
    return torch.stack(rows, dim=1)  # [N, T]


def test_missing_envpool_raises_importerror_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "envpool", None)  # "import envpool" now raises ImportError
    with pytest.raises(ImportError, match=r"torchrl-sapg\[envpool\]"):
        make_env(f"envpool:{TASK}", 2)


@needs_envpool
@pytest.mark.parametrize("task", [TASK, "CheetahRun-v1"])  # Box obs; dm_control Dict obs
def test_check_env_specs(task):
    env = make_env(f"envpool:{task}", 4, seed=0)
    check_env_specs(env)
    assert env.batch_size == torch.Size([4])
    obs_spec = env.observation_spec["observation"]
    assert obs_spec.shape == torch.Size([4, 17]) and obs_spec.dtype == torch.float32
    assert env.action_spec.shape == torch.Size([4, 6])
    assert torch.equal(env.action_spec.space.low, -torch.ones(4, 6))
    assert env.reward_spec.shape == torch.Size([4, 1])
    for key in ("done", "terminated", "truncated"):
        assert env.full_done_spec[key].shape == torch.Size([4, 1])
        assert env.full_done_spec[key].dtype == torch.bool
    if task == "CheetahRun-v1":  # Dict obs: concatenated in the space's key order
        assert env.observation_layout == [("position", 0, 8), ("velocity", 8, 17)]
    else:
        assert env.observation_layout == [(None, 0, 17)]


@needs_envpool
def test_matches_raw_envpool_with_explicit_resets():
    """Same seed and actions: obs/reward/done equal raw EnvPool reset with reset(env_id) on done.

    With ``max_episode_steps=5`` every env ends at steps 5 and 10; the observation after a done
    is the new episode's first one (raw ``reset(env_id)``), never EnvPool's auto-reset step.
    """
    n, steps, horizon = 3, 12, 5
    env = make_env(f"envpool:{TASK}", n, seed=7, max_episode_steps=horizon)
    actions = _actions(n, steps, 6)
    data = _run(env, actions)

    raw = envpool.make(TASK, env_type="gymnasium", num_envs=n, seed=7, max_episode_steps=horizon)
    obs, _ = raw.reset()
    for t in range(steps):
        assert np.allclose(data["observation"][:, t].numpy(), obs.astype(np.float32), atol=1e-6), t
        obs, rew, term, trunc, _ = raw.step(actions[t].numpy().astype(np.float64))
        assert np.allclose(data["next", "observation"][:, t].numpy(), obs.astype(np.float32), atol=1e-6)
        assert np.allclose(data["next", "reward"][:, t, 0].numpy(), rew.astype(np.float32), atol=1e-6)
        assert np.array_equal(data["next", "terminated"][:, t, 0].numpy(), term)
        assert np.array_equal(data["next", "truncated"][:, t, 0].numpy(), trunc)
        done = term | trunc
        if done.any():
            new_obs, info = raw.reset(np.flatnonzero(done).astype(np.int32))
            obs = obs.copy()
            obs[info["env_id"]] = new_obs
    done = data["next", "done"][..., 0]
    assert done[:, [4, 9]].all() and done.sum() == 2 * n  # truncations only, every 5 steps
    # no transition spans two episodes: no zero-reward auto-reset steps, and each step after a
    # done starts from an observation different from the terminal one
    assert (data["next", "reward"] != 0).all()
    assert not torch.allclose(data["observation"][:, 5], data["next", "observation"][:, 4])


@needs_envpool
def test_step_past_done_without_reset_still_resets():
    env = make_env(f"envpool:{TASK}", 2, seed=0, max_episode_steps=2)
    td = env.reset()
    for _ in range(3):  # plain env.step, no reset after the done at step 2
        td["action"] = env.action_spec.rand()
        td = env.step(td).get("next").clone()
    # the third step was a real step of the new episode (EnvPool's auto-reset step has reward 0)
    assert not td["done"].any() and (td["reward"] != 0).all()


@needs_envpool
def test_population_collector_episode_counts():
    n, m, horizon, ep_len = 4, 2, 12, 5
    env = make_env(f"envpool:{TASK}", n, seed=0, max_episode_steps=ep_len)
    torch.manual_seed(0)
    actor = make_actor_critic(17, 6, num_policies=m, latent_dim=4, hidden_sizes=(16,)).actor
    collector = PopulationCollector(env, actor, num_policies=m, frames_per_batch=n * horizon)
    try:
        batch = next(iter(collector))
        assert batch.shape == torch.Size([n, horizon])
        assert torch.equal(batch["policy_id"][:, 0], torch.tensor([0, 0, 1, 1]))
        done = batch["next", "done"].squeeze(-1)
        assert done[:, [4, 9]].all() and done.sum() == 2 * n
        # continuing steps chain; after a done the next row starts a fresh episode
        cont = ~done[:, :-1]
        assert torch.equal(batch["next", "observation"][:, :-1][cont], batch["observation"][:, 1:][cont])
        assert (batch["step_count"][:, 1:].squeeze(-1)[done[:, :-1]] == 0).all()
        assert (batch["next", "step_count"].squeeze(-1)[done] == ep_len).all()
        stats = collector.episode_stats()
        assert stats["count"].tolist() == [4.0, 4.0]  # 2 envs x 2 episodes per policy
        assert stats["length"].tolist() == [float(ep_len)] * m
        ret = batch["next", "episode_reward"].squeeze(-1)[done].reshape(m, -1).mean(-1)
        assert torch.allclose(stats["return"], ret, atol=1e-5)
    finally:
        collector.shutdown()


@needs_envpool
def test_seed_determinism_and_set_seed():
    actions = _actions(2, 6, 6, seed=3)
    a = _run(make_env(f"envpool:{TASK}", 2, seed=11, max_episode_steps=4), actions)
    b = _run(make_env(f"envpool:{TASK}", 2, seed=11, max_episode_steps=4), actions)
    c = _run(make_env(f"envpool:{TASK}", 2, seed=12, max_episode_steps=4), actions)
    assert torch.equal(a["next", "observation"], b["next", "observation"])
    assert torch.equal(a["next", "reward"], b["next", "reward"])
    assert not torch.equal(a["next", "observation"], c["next", "observation"])
    env = make_env(f"envpool:{TASK}", 2, seed=12, max_episode_steps=4)
    env.set_seed(11)  # EnvPool fixes seeds at creation: set_seed rebuilds the pool
    d = _run(env, actions)
    assert torch.equal(a["next", "observation"], d["next", "observation"])
