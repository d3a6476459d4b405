"""Tests of the batched classic-control ports against Gymnasium and TorchRL's contracts."""

from __future__ import annotations

import math
from collections.abc import Callable

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.envs.classic_control.acrobot import wrap as gym_wrap
from tensordict import TensorDict
from torchrl.envs.utils import check_env_specs

from torchrl_sapg.envs.classic_control import (
    EMBEDDED_TASKS,
    AcrobotEnv,
    BatchedClassicControlEnv,
    CartPoleEnv,
    MountainCarContinuousEnv,
    PendulumEnv,
    _wrap_angle,
)

ALL_TASKS = list(EMBEDDED_TASKS.values())
DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=[
            pytest.mark.gpu,
            pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
        ],
    ),
]
N_GYM = 4  # envs compared one-to-one against Gymnasium instances


# --------------------------------------------------------------------------- helpers
def _pendulum_obs64(state: np.ndarray) -> np.ndarray:
    th, thdot = state
    return np.array([np.cos(th), np.sin(th), thdot])


def _acrobot_obs64(state: np.ndarray) -> np.ndarray:
    t1, t2, v1, v2 = state
    return np.array([np.cos(t1), np.sin(t1), np.cos(t2), np.sin(t2), v1, v2])


def _compare_with_gym(
    task_cls: type[BatchedClassicControlEnv],
    policy: Callable[[np.random.Generator, np.ndarray], np.ndarray],
    to_gym_action: Callable[[np.ndarray], object],
    gym_obs64: Callable[[np.ndarray], np.ndarray],
    n_steps: int,
    *,
    sync_every_step: bool,
    atol: float,
) -> dict[str, int]:
    """Steps our float64 env and ``N_GYM`` Gymnasium envs side by side.

    Gymnasium env ``i`` starts from our env ``i``'s reset state and gets the same
    action. After every episode end (ours auto-resets through
    ``step_and_maybe_reset``), the Gymnasium env is reset and our new state is
    copied into it. With ``sync_every_step`` our state is copied into Gymnasium
    before every step, so each transition is checked from an identical state
    while our env still runs on its own.
    """
    env = task_cls(N_GYM, seed=0, dtype=torch.float64)
    gym_envs = [gym.make(task_cls.gym_id, disable_env_checker=True) for _ in range(N_GYM)]
    td = env.reset()
    for i, genv in enumerate(gym_envs):
        genv.reset(seed=i)
        genv.unwrapped.state = env.state[i].numpy().copy()
    rng = np.random.default_rng(0)
    counts = {"terminated": 0, "truncated": 0, "clipped": 0}
    low, high = task_cls.action_low, task_cls.action_high
    for t in range(n_steps):
        if sync_every_step:
            for i, genv in enumerate(gym_envs):
                genv.unwrapped.state = env.state[i].numpy().copy()
        action = policy(rng, env.state.numpy())
        counts["clipped"] += int(((action < low) | (action > high)).sum())
        td["action"] = torch.from_numpy(action)
        data, td = env.step_and_maybe_reset(td)
        nxt = data["next"]
        obs = nxt["observation"].numpy()
        reward = nxt["reward"].numpy()[:, 0]
        terminated = nxt["terminated"].numpy()[:, 0]
        truncated = nxt["truncated"].numpy()[:, 0]
        np.testing.assert_array_equal(nxt["done"].numpy()[:, 0], terminated | truncated)
        if task_cls.has_success:
            np.testing.assert_array_equal(nxt["success"].numpy()[:, 0], terminated)
        for i, genv in enumerate(gym_envs):
            g_obs, g_rew, g_term, g_trunc, _ = genv.step(to_gym_action(action[i]))
            ctx = f"{task_cls.__name__} step {t} env {i}"
            assert bool(terminated[i]) == g_term, ctx
            assert bool(truncated[i]) == g_trunc, ctx
            assert reward[i] == pytest.approx(g_rew, abs=1e-9, rel=0), ctx
            g_state = np.asarray(genv.unwrapped.state, dtype=np.float64)
            np.testing.assert_allclose(obs[i], gym_obs64(g_state), atol=atol, rtol=0, err_msg=ctx)
            # Gymnasium's own (float32) observation
            np.testing.assert_allclose(obs[i], g_obs, atol=1e-6, rtol=0, err_msg=ctx)
            if g_term or g_trunc:
                counts["terminated"] += g_term
                counts["truncated"] += g_trunc
                genv.reset()
                genv.unwrapped.state = env.state[i].numpy().copy()
            else:  # full state, e.g. Acrobot's wrapped angles
                np.testing.assert_allclose(
                    env.state[i].numpy(), g_state, atol=atol, rtol=0, err_msg=ctx
                )
    for genv in gym_envs:
        genv.close()
    return counts


def _in_reset_distribution(task_cls: type[BatchedClassicControlEnv], state: torch.Tensor) -> torch.Tensor:
    """Per-env bool: is ``state`` inside the task's (Gymnasium) reset support?"""
    if task_cls is PendulumEnv:
        return (state[:, 0].abs() <= math.pi) & (state[:, 1].abs() <= 1.0)
    if task_cls is MountainCarContinuousEnv:
        return (state[:, 0] >= -0.6) & (state[:, 0] <= -0.4) & (state[:, 1] == 0)
    bound = 0.1 if task_cls is AcrobotEnv else 0.05
    return (state.abs() <= bound).all(-1)


# ------------------------------------------------------------------ Gymnasium parity
def test_pendulum_matches_gymnasium():
    # Uniform in [-3, 3]: half the actions exceed the [-2, 2] bounds (clipping).
    def policy(rng, state):
        return rng.uniform(-3.0, 3.0, size=(N_GYM, 1))

    counts = _compare_with_gym(
        PendulumEnv,
        policy,
        lambda a: a.copy(),  # float64 actions keep Gymnasium's arithmetic in float64
        _pendulum_obs64,
        260,
        sync_every_step=False,
        atol=1e-10,
    )
    assert counts == {"terminated": 0, "truncated": N_GYM, "clipped": counts["clipped"]}
    assert counts["clipped"] > 100


def test_mountain_car_matches_gymnasium():
    # Envs 0-1 pump energy (reach the goal many times), envs 2-3 act randomly and
    # hit the 999-step limit. Actions go beyond [-1, 1]: the force is clipped but,
    # as in Gymnasium, the penalty uses the raw action.
    def policy(rng, state):
        vel = state[:, 1:]
        pump = np.where(vel >= 0, 1.0, -1.0) * rng.uniform(0.5, 1.5, (N_GYM, 1))
        pump += rng.normal(0.0, 0.3, (N_GYM, 1))
        rand = rng.uniform(-1.3, 1.3, (N_GYM, 1))
        return np.where(np.arange(N_GYM)[:, None] < 2, pump, rand)

    counts = _compare_with_gym(
        MountainCarContinuousEnv,
        policy,
        lambda a: a.copy(),
        lambda s: s.astype(np.float32).astype(np.float64),
        1010,
        # Gymnasium rounds its MountainCar state to float32 after every step, so
        # each transition is checked from our (float64) state instead.
        sync_every_step=True,
        atol=1e-7,
    )
    assert counts["terminated"] >= 4
    assert counts["truncated"] == 2
    assert counts["clipped"] > 100


def test_acrobot_matches_gymnasium_with_discrete_torques():
    # Our torque in {-1, 0, 1} (or +-1.5, clipped to +-1) == Gymnasium action torque + 1.
    # Envs 0-1 pump energy with sign(dtheta2) and reach the goal; envs 2-3 act randomly.
    def policy(rng, state):
        torque = rng.choice([-1.0, 0.0, 1.0], size=(N_GYM, 1))
        pump = np.where(state[:, 3:4] >= 0, 1.0, -1.0)
        pump = np.where(rng.uniform(size=(N_GYM, 1)) < 0.2, torque, pump)
        torque = np.where(np.arange(N_GYM)[:, None] < 2, pump, torque)
        return torque * np.where(rng.uniform(size=(N_GYM, 1)) < 0.2, 1.5, 1.0)

    counts = _compare_with_gym(
        AcrobotEnv,
        policy,
        lambda a: int(np.clip(a[0], -1, 1)) + 1,
        _acrobot_obs64,
        600,
        # Acrobot is chaotic: 1-ulp differences of sin/cos between libms grow over
        # long episodes, so every transition starts from an identical state.
        sync_every_step=True,
        atol=1e-9,
    )
    assert counts["terminated"] >= 4
    assert counts["truncated"] >= 1
    assert counts["clipped"] > 50


def test_cartpole_matches_gymnasium_with_discrete_forces():
    # Our action +-1 (or +-1.7, clipped) -> force +-10 == Gymnasium action 1/0.
    def policy(rng, state):
        sign = rng.choice([-1.0, 1.0], size=(N_GYM, 1))
        return sign * np.where(rng.uniform(size=(N_GYM, 1)) < 0.3, 1.7, 1.0)

    counts = _compare_with_gym(
        CartPoleEnv,
        policy,
        lambda a: int(a[0] > 0),
        lambda s: s,
        300,
        sync_every_step=False,
        atol=1e-10,
    )
    assert counts["terminated"] >= 20
    assert counts["clipped"] > 50


def test_wrap_angle_matches_gymnasium():
    pi = math.pi
    xs = [0.0, 0.5, -0.5, pi, -pi, pi + 1e-9, -pi - 1e-9, 3 * pi, 3 * pi + 0.1, -5 * pi - 0.3, 20.0, -40.0]
    ours = _wrap_angle(torch.tensor(xs, dtype=torch.float64)).numpy()
    theirs = np.array([gym_wrap(x, -pi, pi) for x in xs])
    np.testing.assert_allclose(ours, theirs, atol=1e-12, rtol=0)
    assert np.all(np.abs(ours) <= pi)


@pytest.mark.parametrize("task_cls", ALL_TASKS, ids=lambda c: c.__name__)
def test_time_limits_match_gymnasium_registrations(task_cls):
    assert task_cls.default_max_episode_steps == gym.spec(task_cls.gym_id).max_episode_steps
    assert task_cls(2).max_episode_steps == task_cls.default_max_episode_steps
    assert task_cls(2, max_episode_steps=7).max_episode_steps == 7


def test_reset_distributions():
    n = 4096
    pend = PendulumEnv(n, seed=0, dtype=torch.float64)
    pend.reset()
    assert pend.state[:, 0].abs().max() <= math.pi and pend.state[:, 0].abs().max() > 3.0
    assert pend.state[:, 1].abs().max() <= 1.0 and pend.state[:, 1].abs().max() > 0.99
    mc = MountainCarContinuousEnv(n, seed=0, dtype=torch.float64)
    mc.reset()
    assert mc.state[:, 0].min() >= -0.6 and mc.state[:, 0].max() <= -0.4
    assert mc.state[:, 0].std() > 0.05
    assert (mc.state[:, 1] == 0).all()
    for cls, bound in ((AcrobotEnv, 0.1), (CartPoleEnv, 0.05)):
        env = cls(n, seed=0, dtype=torch.float64)
        env.reset()
        assert env.state.abs().max() <= bound and env.state.abs().max() > 0.99 * bound
        assert env.state.mean(0).abs().max() < 0.1 * bound
    for cls in ALL_TASKS:
        env = cls(n, seed=0)
        env.reset()
        assert _in_reset_distribution(cls, env.state).all()


# ------------------------------------------------------------------- TorchRL contract
@pytest.mark.parametrize("task_cls", ALL_TASKS, ids=lambda c: c.__name__)
def test_check_env_specs(task_cls):
    env = task_cls(8, seed=0)
    check_env_specs(env, seed=0)
    check_env_specs(env, break_when_any_done="both")
    assert set(env.full_done_spec.keys()) == {"done", "terminated", "truncated"}
    assert ("success" in env.observation_spec.keys()) == task_cls.has_success
    assert env.action_spec.shape == (8, task_cls.action_dim)
    assert env.observation_spec["observation"].shape == (8, task_cls.obs_dim)


@pytest.mark.parametrize("task_cls", ALL_TASKS, ids=lambda c: c.__name__)
def test_float64_everywhere(task_cls):
    env = task_cls(3, seed=0, dtype=torch.float64)
    assert env.observation_spec["observation"].dtype == torch.float64
    assert env.action_spec.dtype == torch.float64
    assert env.reward_spec.dtype == torch.float64
    td = env.reset()
    td["action"] = env.action_spec.rand()
    data = env.step(td)
    assert data["next", "observation"].dtype == torch.float64
    assert data["next", "reward"].dtype == torch.float64
    assert env.state.dtype == torch.float64
    # float32 actions fed to a float64 env are promoted, not rejected
    td = data["next"].clone()
    td["action"] = env.action_spec.rand().float()
    assert env.step(td)["next", "observation"].dtype == torch.float64


@pytest.mark.parametrize("mask_shape", ["n1", "n"])
@pytest.mark.parametrize("task_cls", ALL_TASKS, ids=lambda c: c.__name__)
def test_partial_reset_only_changes_masked_envs(task_cls, mask_shape):
    n = 8
    env = task_cls(n, seed=0, dtype=torch.float64, max_episode_steps=10_000)
    td = env.reset()
    for _ in range(3):
        td["action"] = torch.zeros(n, task_cls.action_dim, dtype=torch.float64)
        _, td = env.step_and_maybe_reset(td)
    # move every env out of its reset distribution so that a re-draw is visible
    env.set_state(2.0 + 0.01 * torch.arange(n * task_cls.state_dim).view(n, -1))
    assert not _in_reset_distribution(task_cls, env.state).any()
    td["observation"] = env._observation(env.state)
    state_before = env.state.clone()
    obs_before = td["observation"].clone()
    assert (env.elapsed_steps == 3).all()
    mask = torch.tensor([True, False, False, True, False, True, False, False])
    td.set("_reset", mask.unsqueeze(-1) if mask_shape == "n1" else mask)
    out = env.reset(td)
    assert torch.equal(env.state[~mask], state_before[~mask])
    assert _in_reset_distribution(task_cls, env.state[mask]).all()
    assert torch.equal(env.elapsed_steps, torch.where(mask, 0, 3))
    assert torch.equal(out["observation"][~mask], obs_before[~mask])
    assert torch.equal(out["observation"][mask], env._observation(env.state)[mask])
    assert not out["done"].any()


@pytest.mark.parametrize("task_cls", ALL_TASKS, ids=lambda c: c.__name__)
def test_reset_without_mask_resets_all(task_cls):
    env = task_cls(6, seed=0)
    env.reset()
    td = env.reset()
    td["action"] = torch.zeros(6, task_cls.action_dim)
    env.step(td)
    env.set_state(env.state + 0.3)
    before = env.state.clone()
    env.reset()
    assert (env.state != before).any(-1).all()
    assert (env.elapsed_steps == 0).all()


def test_partial_step_mask_freezes_other_envs():
    env = PendulumEnv(4, seed=0)
    td = env.reset()
    before = env.state.clone()
    td["action"] = torch.ones(4, 1)
    td["_step"] = torch.tensor([True, False, True, False]).unsqueeze(-1)
    env.step(td)
    assert torch.equal(env.state[1::2], before[1::2])
    assert (env.state[0::2] != before[0::2]).any(-1).all()
    assert env.elapsed_steps.tolist() == [1, 0, 1, 0]


def _balance_policy(task_cls: type[BatchedClassicControlEnv], state: torch.Tensor) -> torch.Tensor:
    """Actions that never end an episode early (zero torque / a PD balancer for CartPole)."""
    if task_cls is CartPoleEnv:
        gains = torch.tensor([1.0, 1.5, 20.0, 3.0], dtype=state.dtype)
        return (state @ gains).unsqueeze(-1)
    return torch.zeros(state.shape[0], task_cls.action_dim, dtype=state.dtype)


@pytest.mark.parametrize("task_cls", ALL_TASKS, ids=lambda c: c.__name__)
def test_truncation_exactly_at_gymnasium_limit(task_cls):
    n = 4
    limit = task_cls.default_max_episode_steps
    env = task_cls(n, seed=0)
    td = env.reset()
    truncated_at = []
    for t in range(1, limit + 3):
        td["action"] = _balance_policy(task_cls, env.state)
        data, td = env.step_and_maybe_reset(td)
        nxt = data["next"]
        assert not nxt["terminated"].any()
        if nxt["truncated"].any():
            assert nxt["truncated"].all() and nxt["done"].all()
            truncated_at.append(t)
    assert truncated_at == [limit]
    # auto-reset restarted the counters and drew new states
    assert (env.elapsed_steps == 2).all()
    assert not td["done"].any()


@pytest.mark.parametrize("task_cls", ALL_TASKS, ids=lambda c: c.__name__)
def test_custom_time_limit(task_cls):
    env = task_cls(2, seed=0, max_episode_steps=7)
    td = env.reset()
    flags = []
    for _ in range(15):
        td["action"] = _balance_policy(task_cls, env.state)
        data, td = env.step_and_maybe_reset(td)
        flags.append(bool(data["next", "truncated"].all()))
    assert [i + 1 for i, f in enumerate(flags) if f] == [7, 14]


def test_terminated_and_truncated_on_the_same_step():
    env = MountainCarContinuousEnv(2, seed=0, dtype=torch.float64, max_episode_steps=1)
    env.reset()
    env.set_state(torch.tensor([[0.44, 0.06], [-0.5, 0.0]], dtype=torch.float64))
    td = TensorDict({"action": torch.tensor([[1.0], [0.0]], dtype=torch.float64)}, [2])
    nxt = env.step(td)["next"]
    assert nxt["terminated"][:, 0].tolist() == [True, False]
    assert nxt["truncated"][:, 0].tolist() == [True, True]
    assert nxt["done"][:, 0].tolist() == [True, True]
    assert nxt["success"][:, 0].tolist() == [True, False]
    assert nxt["reward"][0, 0].item() == pytest.approx(100.0 - 0.1)


def test_set_state_with_env_ids():
    env = CartPoleEnv(5, seed=0, dtype=torch.float64)
    env.reset()
    before = env.state.clone()
    env.set_state(torch.tensor([0.1, 0.2, 0.03, 0.4], dtype=torch.float64), env_ids=[1, 3])
    assert torch.equal(env.state[[0, 2, 4]], before[[0, 2, 4]])
    assert env.state[1].tolist() == [0.1, 0.2, 0.03, 0.4]
    env.set_state(torch.zeros(4), env_ids=torch.tensor([True, False, False, False, True]))
    assert (env.state[[0, 4]] == 0).all() and env.state[1].tolist() == [0.1, 0.2, 0.03, 0.4]


def test_rollout_continues_past_episode_ends_and_redraws_state():
    env = PendulumEnv(3, seed=0, dtype=torch.float64, max_episode_steps=5)
    torch.manual_seed(0)
    data = env.rollout(12, break_when_any_done=False)
    assert data.shape == (3, 12)
    trunc = data["next", "truncated"][..., 0]
    assert trunc.any(0).nonzero().flatten().tolist() == [4, 9]
    assert trunc[:, [4, 9]].all()
    for t in (4, 9):
        after_reset = data["observation"][:, t + 1]
        # a new state, from Pendulum's reset distribution (|thdot| <= 1)...
        assert (after_reset != data["next", "observation"][:, t]).any(-1).all()
        assert (after_reset[:, 2].abs() <= 1).all()
        # ...and the step from it continues from that state
        assert not data["done"][:, t + 1].any()
    # every episode starts from a different draw
    starts = torch.cat([data["observation"][:, 0], data["observation"][:, 5], data["observation"][:, 10]])
    assert torch.unique(starts, dim=0).shape[0] == 9


def test_rollout_redraws_state_of_each_finished_env():
    env = CartPoleEnv(16, seed=0, dtype=torch.float64)
    torch.manual_seed(0)
    data = env.rollout(120, break_when_any_done=False)
    done = data["next", "done"][..., 0]
    env_ids, steps = done[:, :-1].nonzero(as_tuple=True)
    assert len(env_ids) >= 16  # random pushes end episodes after a few dozen steps
    for i, t in zip(env_ids.tolist(), steps.tolist()):
        new_obs = data["observation"][i, t + 1]
        assert (new_obs.abs() <= 0.05).all()  # CartPole's reset box
        assert not torch.equal(new_obs, data["next", "observation"][i, t])
    # envs that were not done keep their own trajectory
    not_done = ~done[:, :-1]
    assert torch.equal(
        data["observation"][:, 1:][not_done], data["next", "observation"][:, :-1][not_done]
    )


def test_collector_resets_finished_envs():
    from torchrl.collectors import Collector
    from torchrl.envs.utils import RandomPolicy

    env = MountainCarContinuousEnv(4, seed=0, max_episode_steps=10)
    collector = Collector(env, RandomPolicy(env.action_spec), frames_per_batch=4 * 25, total_frames=4 * 50)
    batches = list(collector)
    collector.shutdown()
    data = torch.cat(batches, dim=1)  # [4, 50]
    truncated = data["next", "truncated"][..., 0]
    assert truncated.any(0).nonzero().flatten().tolist() == [9, 19, 29, 39, 49]
    for t in (9, 19, 29, 39):
        # the next root observation is a fresh reset state: velocity 0, x in [-0.6, -0.4]
        obs = data["observation"][:, t + 1]
        assert (obs[:, 1] == 0).all() and (obs[:, 0] <= -0.4).all() and (obs[:, 0] >= -0.6).all()
    traj_ids = data["collector", "traj_ids"]
    assert (traj_ids[:, 10] != traj_ids[:, 9]).all()


# --------------------------------------------------------------------------- seeding
def _trajectory(env: BatchedClassicControlEnv, n_steps: int = 40) -> torch.Tensor:
    gen = torch.Generator().manual_seed(123)  # same actions for every env instance
    td = env.reset()
    obs = []
    for _ in range(n_steps):
        low, high = env.action_low, env.action_high
        td["action"] = torch.rand(env.num_envs, env.action_dim, generator=gen) * (high - low) + low
        data, td = env.step_and_maybe_reset(td)
        obs.append(data["next", "observation"])
        obs.append(td["observation"])  # includes auto-reset draws
    return torch.stack(obs)


@pytest.mark.parametrize("task_cls", ALL_TASKS, ids=lambda c: c.__name__)
def test_seeding(task_cls):
    kwargs = {"max_episode_steps": 15}  # several auto-resets within the trajectory
    a = _trajectory(task_cls(8, seed=7, **kwargs))
    b = _trajectory(task_cls(8, seed=7, **kwargs))
    c = _trajectory(task_cls(8, seed=8, **kwargs))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    # TorchRL's env.set_seed reseeds a live env
    env = task_cls(8, seed=999, **kwargs)
    _trajectory(env, 5)
    env.set_seed(7)
    assert torch.equal(_trajectory(env), a)


# --------------------------------------------------------------------------- devices
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("task_cls", ALL_TASKS, ids=lambda c: c.__name__)
def test_device_agnostic(task_cls, device):
    n = 16
    env = task_cls(n, seed=0, device=device)
    ref = task_cls(n, seed=0, device="cpu")
    td = env.reset()
    ref.reset()
    ref.set_state(env.state.cpu())
    td_ref = td.to("cpu")
    assert env.state.device.type == torch.device(device).type
    assert env.elapsed_steps.device.type == torch.device(device).type
    gen = torch.Generator().manual_seed(0)
    for _ in range(30):
        action = env.action_spec.rand().cpu().uniform_(-1.2, 1.2, generator=gen)
        td["action"] = action.to(device)
        td_ref["action"] = action
        data, td = env.step_and_maybe_reset(td)
        data_ref, td_ref = ref.step_and_maybe_reset(td_ref)
        for key in ("observation", "reward", "done"):
            value = data["next", key]
            assert value.device.type == torch.device(device).type
        if data_ref["next", "done"].any():  # reset draws differ across devices
            break
        torch.testing.assert_close(
            data["next", "observation"].cpu(), data_ref["next", "observation"], atol=1e-4, rtol=1e-4
        )
        torch.testing.assert_close(data["next", "reward"].cpu(), data_ref["next", "reward"], atol=1e-4, rtol=1e-4)
    # moving a live env keeps its state
    moved = ref.to(device)
    assert moved.state.device.type == torch.device(device).type
    td_moved = moved.reset()
    td_moved["action"] = moved.action_spec.zero()
    assert moved.step(td_moved)["next", "observation"].device.type == torch.device(device).type


def test_embedded_tasks_registry():
    assert list(EMBEDDED_TASKS) == ["pendulum", "mountain_car", "acrobot", "cartpole"]
    assert EMBEDDED_TASKS["pendulum"] is PendulumEnv
    assert EMBEDDED_TASKS["mountain_car"] is MountainCarContinuousEnv
    assert EMBEDDED_TASKS["acrobot"] is AcrobotEnv
    assert EMBEDDED_TASKS["cartpole"] is CartPoleEnv
    for cls in EMBEDDED_TASKS.values():
        assert issubclass(cls, BatchedClassicControlEnv)
        env = cls(2)
        assert env.batch_size == torch.Size([2])
        assert env.state.shape == (2, cls.state_dim)
        assert env.elapsed_steps.dtype == torch.int64
