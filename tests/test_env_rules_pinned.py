"""Embedded-simulator rules pinned by number: the cases the other tests left free (found by mutation testing).

Each test compares one step (or one reset) with Gymnasium's own env stepped from the same state, or with
a direct hand computation on a small input: the classic-control clamps and termination boundaries the
long Gymnasium runs never reach, the spec bounds, the action dtype, ``"success"`` at reset; the maze's
reset noise, goal test, wall stops in every direction and the x-then-y move order; reach-grasp-carry's
dynamics, grasp, drop, carry and delivery rules and its observation; the policy-id helpers' edge cases.
"""
from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
import torch
from tensordict import TensorDict
from torchrl.data import Categorical, Composite, Unbounded

from torchrl_sapg.envs import PendulumEnv, block_policy_ids
from torchrl_sapg.envs.classic_control import (
    AcrobotEnv,
    CartPoleEnv,
    MountainCarContinuousEnv,
)
from torchrl_sapg.envs.exploration import EXPLORATION_TASKS, PointMazeEnv, ReachGraspCarryEnv
from torchrl_sapg.envs.policy_id import PolicyIdTransform, check_policy_id_spec

F64 = torch.float64


def _step(env, action):
    """One ``env.step`` with the given ``[N, action_dim]`` action; returns ``td["next"]``."""
    action = torch.as_tensor(action, dtype=env.dtype)
    return env.step(TensorDict({"action": action}, [env.num_envs]))["next"]


def _env_at(cls, state, **kwargs):
    """A float64 env whose state is ``state`` ([N, state_dim]) after a reset."""
    state = torch.as_tensor(state, dtype=F64)
    env = cls(state.shape[0], seed=0, dtype=F64, **kwargs)
    env.reset()
    env.set_state(state)
    return env


def _gym_step(gym_id, state, action):
    """Gymnasium's unwrapped env stepped once from ``state`` (float64): ``(next_state, reward, terminated)``."""
    genv = gym.make(gym_id).unwrapped
    genv.reset(seed=0)
    genv.state = np.array(state, dtype=np.float64)
    _, reward, terminated, _, _ = genv.step(action)
    next_state = np.asarray(genv.state, dtype=np.float64)
    genv.close()
    return next_state, reward, terminated


# ----------------------------------------------------------------------------- classic control
def test_mountain_car_velocity_and_right_edge_clamps_match_gymnasium():
    """Velocity clipped to +-0.07 and position to <= 0.6, as Gymnasium's MountainCarContinuous-v0 step."""
    states = [[-0.5, 0.0695], [-0.5, -0.0695], [0.59, 0.05]]
    actions = [[1.0], [-1.0], [1.0]]
    env = _env_at(MountainCarContinuousEnv, states)
    out = _step(env, actions)
    for i, (s, a) in enumerate(zip(states, actions)):
        theirs, reward, term = _gym_step("MountainCarContinuous-v0", s, np.array(a))
        np.testing.assert_allclose(env.state[i].numpy(), theirs, atol=1e-7, rtol=0)  # Gymnasium stores float32
        assert out["reward"][i, 0].item() == pytest.approx(reward, abs=1e-12)
        assert out["terminated"][i, 0].item() == term
    assert env.state[:, 1].tolist()[:2] == [0.07, -0.07] and env.state[2, 0].item() == 0.6


def test_mountain_car_goal_test_is_inclusive_at_position_and_velocity():
    """Terminated at exactly position 0.45 or velocity 0 (Gymnasium: ``position >= 0.45 and velocity >= 0``)."""
    pos = torch.tensor([0.45, 0.5], dtype=F64)
    v0 = 0.0025 * torch.cos(3 * pos)  # cancels the hill's pull exactly: the new velocity is 0.0
    env = _env_at(MountainCarContinuousEnv, torch.stack((pos, v0), -1))
    out = _step(env, [[0.0], [0.0]])
    assert env.state.tolist() == [[0.45, 0.0], [0.5, 0.0]]
    assert out["terminated"][:, 0].tolist() == [True, True] and out["success"][:, 0].tolist() == [True, True]
    assert out["reward"][:, 0].tolist() == [100.0, 100.0]
    for s in torch.stack((pos, v0), -1).tolist():
        assert _gym_step("MountainCarContinuous-v0", s, np.array([0.0]))[2]


def test_acrobot_velocity_clamps_match_gymnasium():
    """Both joint velocities are clipped to +-4 pi and +-9 pi after the RK4 step, as Gymnasium's Acrobot-v1."""
    states = [[0.3, -0.2, 14.0, 30.0], [-0.3, 0.2, -14.0, -30.0]]
    torques = [1.0, -1.0]
    env = _env_at(AcrobotEnv, states)
    out = _step(env, [[t] for t in torques])
    for i, (s, t) in enumerate(zip(states, torques)):
        theirs, reward, term = _gym_step("Acrobot-v1", s, int(t) + 1)
        np.testing.assert_allclose(env.state[i].numpy(), theirs, atol=1e-9, rtol=0)
        assert out["reward"][i, 0].item() == reward and out["terminated"][i, 0].item() == term
    assert env.state[:, 2].abs().tolist() == [4 * math.pi] * 2  # the clamps bind
    assert env.state[:, 3].abs().tolist() == [9 * math.pi] * 2


def test_cartpole_position_limits_match_gymnasium():
    """Terminated when x leaves [-2.4, 2.4] on either side, not inside it (Gymnasium's CartPole-v1)."""
    states = [[2.39, 1.0, 0.0, 0.0], [-2.39, -1.0, 0.0, 0.0], [2.39, 0.4, 0.0, 0.0], [-2.39, -0.4, 0.0, 0.0]]
    env = _env_at(CartPoleEnv, states)
    out = _step(env, [[1.0], [-1.0], [1.0], [-1.0]])
    flags = []
    for i, s in enumerate(states):
        theirs, reward, term = _gym_step("CartPole-v1", s, int(i % 2 == 0))
        np.testing.assert_allclose(env.state[i].numpy(), theirs, atol=1e-12, rtol=0)
        assert out["terminated"][i, 0].item() == term and out["reward"][i, 0].item() == reward
        flags.append(term)
    assert flags == [True, True, False, False]


@pytest.mark.parametrize("task_cls", [PendulumEnv, MountainCarContinuousEnv, AcrobotEnv], ids=lambda c: c.__name__)
def test_observation_and_action_bounds_match_gymnasium_spaces(task_cls):
    """The Bounded observation and action specs carry Gymnasium's observation_space / action_space bounds."""
    genv = gym.make(task_cls.gym_id)
    env = task_cls(2)
    obs = env.observation_spec["observation"].space
    np.testing.assert_allclose(obs.low[0].numpy(), genv.observation_space.low, atol=1e-6, rtol=0)
    np.testing.assert_allclose(obs.high[0].numpy(), genv.observation_space.high, atol=1e-6, rtol=0)
    if isinstance(genv.action_space, gym.spaces.Box):
        act = env.action_spec.space
        np.testing.assert_allclose(act.low[0].numpy(), genv.action_space.low, atol=1e-6, rtol=0)
        np.testing.assert_allclose(act.high[0].numpy(), genv.action_space.high, atol=1e-6, rtol=0)
    genv.close()


# ----------------------------------------------------------------------------- the base class
def test_float64_action_in_a_float32_env_keeps_float32():
    """A float64 action is cast to the env's float32: state, observation and reward stay float32, same values."""
    a32, a64 = PendulumEnv(3, seed=0), PendulumEnv(3, seed=0)
    a32.reset(), a64.reset()
    action = torch.tensor([[0.3], [-1.7], [2.5]])
    out32 = a32.step(TensorDict({"action": action}, [3]))["next"]
    out64 = a64.step(TensorDict({"action": action.double()}, [3]))["next"]
    assert a64.state.dtype == torch.float32
    assert out64["observation"].dtype == torch.float32 and out64["reward"].dtype == torch.float32
    assert torch.equal(a64.state, a32.state) and torch.equal(out64["reward"], out32["reward"])


def test_success_is_false_after_reset():
    """``"success"`` is false at every reset, also for an env whose last episode succeeded (partial reset)."""
    for cls in (MountainCarContinuousEnv, AcrobotEnv, PointMazeEnv, ReachGraspCarryEnv):
        assert not cls(4, seed=0).reset()["success"].any()
    env = _env_at(PointMazeEnv, [[-1.0, 1.0, 0.0, 0.0, -1.0, 1.0, 0.0]] * 2)
    data = env.step(TensorDict({"action": torch.zeros(2, 2, dtype=F64)}, [2]))
    assert data["next", "success"][:, 0].tolist() == [True, True]
    td = data["next"].clone()
    td["_reset"] = torch.tensor([[True], [False]])
    out = env.reset(td)
    assert out["success"][:, 0].tolist() == [False, True]
    assert env.state[:, 6].tolist() == [0.0, 1.0]


# ----------------------------------------------------------------------------- point maze
_MAZE_CELLS = {"u_maze": ((3, 1), (1, 1)), "medium": ((1, 1), (1, 6)), "large": ((7, 1), (7, 10))}  # docs


def _cell_centre(env, cell):
    i, j = cell
    return torch.tensor([j + 0.5 - env.map_width / 2, env.map_length / 2 - i - 0.5], dtype=F64)


@pytest.mark.parametrize("layout", list(_MAZE_CELLS))
def test_maze_reset_draws_independent_noise_around_the_documented_cells(layout):
    """Start and goal are the documented cells' centres plus independent U(-0.25, 0.25) noise per axis."""
    env = PointMazeEnv(4096, layout=layout, seed=0, dtype=F64)
    env.reset()
    start, goal = env.state[:, :2], env.state[:, 4:6]
    ds, dg = start - _cell_centre(env, _MAZE_CELLS[layout][0]), goal - _cell_centre(env, _MAZE_CELLS[layout][1])
    for d in (ds, dg):
        assert d.abs().max() <= 0.25 and (d.abs().amax(0) > 0.24).all()
        assert d.mean(0).abs().max() < 0.02
    noise = torch.cat((ds, dg), -1)
    corr = torch.corrcoef(noise.T) - torch.eye(4, dtype=F64)
    assert corr.abs().max() < 0.1  # four independent draws
    assert (env.state[:, 2:4] == 0).all() and (env.state[:, 6] == 0).all()


def test_maze_task_names_map_to_their_layouts():
    """``point_maze_u/medium/large`` build the U, medium and large layouts with their 300/600/800 limits."""
    for name, layout, limit in (("point_maze_u", "u_maze", 300), ("point_maze_medium", "medium", 600),
                                ("point_maze_large", "large", 800)):
        env = EXPLORATION_TASKS[name](2)
        assert (env.layout, env.max_episode_steps) == (layout, limit)


def test_maze_goal_distance_0_45_counts():
    """The goal test is inclusive: a ball exactly 0.45 from the goal is at the goal (Gymnasium-Robotics' ``<=``)."""
    env = _env_at(PointMazeEnv, [[0.45, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0], [0.46, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0]],
                  reward_type="sparse", continuing_task=False)
    out = _step(env, torch.zeros(2, 2))
    assert out["reward"][:, 0].tolist() == [1.0, 0.0]
    assert out["success"][:, 0].tolist() == [True, False] and out["terminated"][:, 0].tolist() == [True, False]


def _maze_velocity(v, f):
    m, dt = 1000 * 4 / 3 * math.pi * 0.1**3, 0.01
    return (m * max(-5.0, min(5.0, v)) + dt * 100 * f) / (m + dt)


def test_maze_walls_stop_the_ball_moving_down_and_right():
    """Moving down onto a wall the ball rests one radius above it; moving right, one radius left of it."""
    env = _env_at(PointMazeEnv, [[-1.0, 0.62, 0.0, -5.0, 1.0, -1.0, 0.0],   # cell (1, 1), wall (2, 1) below
                                 [1.35, -1.0, 5.0, 0.0, -1.0, 1.0, 0.0]])  # cell (3, 3), outer wall right
    _step(env, [[0.0, -1.0], [1.0, 0.0]])
    assert env.state[0, :4].tolist() == pytest.approx([-1.0, 0.5 + 0.1, 0.0, 0.0], abs=1e-12)
    assert env.state[1, :4].tolist() == pytest.approx([1.5 - 0.1, -1.0, 0.0, 0.0], abs=1e-12)


def test_maze_ball_is_a_square_of_half_width_radius_against_corners():
    """A ball whose centre column is free but whose edge overlaps a wall column is stopped by that wall."""
    # centre x = 0.55 is in free column 3; its left edge 0.45 is in column 2, whose cell (2, 2) is wall
    env = _env_at(PointMazeEnv, [[0.55, -0.62, 0.0, 5.0, -1.0, 1.0, 0.0]])
    _step(env, [[0.0, 1.0]])
    assert env.state[0, :4].tolist() == pytest.approx([0.55, -0.5 - 0.1, 0.0, 0.0], abs=1e-12)


def test_maze_moves_x_first_then_y():
    """Diagonally into the corner of wall cell (2, 2): x moves freely first, then y hits the wall."""
    env = _env_at(PointMazeEnv, [[0.62, -0.62, -5.0, 5.0, -1.0, 1.0, 0.0]])
    _step(env, [[0.0, 0.0]])
    vx = _maze_velocity(-5.0, 0.0)
    assert env.state[0, :4].tolist() == pytest.approx([0.62 + 0.01 * vx, -0.6, vx, 0.0], abs=1e-12)


def test_maze_clips_each_velocity_component_to_5():
    """vx and vy are each clipped to [-5, 5] before the step (free motion in medium cell (3, 4))."""
    env = _env_at(PointMazeEnv, [[0.5, 0.5, -6.0, 5.5, 2.5, 2.5, 0.0]], layout="medium")
    _step(env, [[0.0, 0.0]])
    vx, vy = _maze_velocity(-6.0, 0.0), _maze_velocity(5.5, 0.0)
    assert env.state[0, :4].tolist() == pytest.approx([0.5 + 0.01 * vx, 0.5 + 0.01 * vy, vx, vy], abs=1e-12)


# ----------------------------------------------------------------------------- reach-grasp-carry
def _carry_state(h=(0.0, 0.0), v=(0.0, 0.0), o=(-1.5, -1.5), t=(-1.5, 1.5), count=0.0, holding=0.0, succ=0.0):
    return [*h, *v, *o, *t, count, holding, succ]


def _carry_by_hand(h, v, a, o):
    """One step of the documented dynamics for a hand that holds nothing: ``(h', v', reach reward)``."""
    a = [max(-1.0, min(1.0, x)) for x in a[:2]]
    v = [max(-2.0, min(2.0, vi + 0.05 * (10 * ai - 2 * vi))) for vi, ai in zip(v, a)]
    h = [max(-2.0, min(2.0, hi + 0.05 * vi)) for hi, vi in zip(h, v)]
    v = [0.0 if abs(hi) >= 2.0 else vi for hi, vi in zip(h, v)]
    return h, v, 0.1 * math.exp(-math.dist(h, o) / 0.5)


def test_carry_hand_dynamics_and_reach_reward_match_hand_computation():
    """``v' = clip(v + dt(10 clip(a) - 2v), +-2)``, ``p' = clip(p + dt v', +-2)``; a wall zeroes that component."""
    cases = [((0.0, 0.0), (1.9, -1.9), (1.0, -1.0, 0.0)),    # speed clip
             ((0.5, 0.5), (-1.9, 0.4), (3.0, -0.7, 0.0)),    # action clip, damping, acceleration
             ((1.95, -1.95), (1.5, -1.5), (1.0, -1.0, 0.0)),  # both walls
             ((1.95, 0.0), (1.5, 0.5), (1.0, 0.0, 0.0))]     # one wall: only vx stops
    o = (-1.5, -1.5)
    env = _env_at(ReachGraspCarryEnv, [_carry_state(h, v, o) for h, v, _ in cases])
    out = _step(env, [a for *_, a in cases])
    for i, (h, v, a) in enumerate(cases):
        h2, v2, reward = _carry_by_hand(h, v, a, o)
        assert env.state[i, :4].tolist() == pytest.approx(h2 + v2, abs=1e-12), i
        assert out["reward"][i, 0].item() == pytest.approx(reward, abs=1e-12), i
    assert env.state[2, :4].tolist()[:2] == [2.0, -2.0] and env.state[3, 2:4].tolist() == pytest.approx([0.0, 0.45])


def test_carry_observation_is_hand_velocity_offsets_holding_and_scaled_grip_count():
    """Observation ``[h, v, o - h, t - o, holding, grip_count / grasp_steps]``, by hand."""
    env = _env_at(ReachGraspCarryEnv, [_carry_state((0.3, -0.2), (0.0, 0.0), (0.4, -0.1), (1.0, 1.0), holding=1.0),
                                       _carry_state((0.3, -0.2), (0.0, 0.0), (0.4, -0.1), (1.0, 1.0))], grasp_steps=4)
    out = _step(env, [[0.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    assert out["observation"][0].tolist() == pytest.approx([0.3, -0.2, 0, 0, 0.1, 0.1, 0.6, 1.1, 1.0, 0.0])
    assert out["observation"][1].tolist() == pytest.approx([0.3, -0.2, 0, 0, 0.1, 0.1, 0.6, 1.1, 0.0, 0.25])


def test_carry_grip_count_rises_then_resets_to_zero_on_the_grasp():
    """With grasp_steps=4 the observed count reads 1/4, 2/4, 3/4, then 0 on the grasping step (+1 once)."""
    env = _env_at(ReachGraspCarryEnv, [_carry_state(o=(0.1, 0.0), t=(1.5, 1.5))], grasp_steps=4)
    counts, holding, bonus = [], [], []
    for _ in range(4):
        out = _step(env, [[0.0, 0.0, 1.0]])
        counts.append(out["observation"][0, 9].item())
        holding.append(out["observation"][0, 8].item())
        bonus.append(out["reward"][0, 0].item() > 0.5)
    assert counts == [0.25, 0.5, 0.75, 0.0]
    assert holding == [0.0, 0.0, 0.0, 1.0] and bonus == [False, False, False, True]


def test_carry_grasp_thresholds():
    """Grasp needs the new hand position within 0.2 (inclusive) of the object and grip strictly above 0.5."""
    states = [_carry_state((0.0, 0.0), (1.0, 0.0), o=(0.25, 0.0)),  # 0.25 away, 0.18 after the move
              _carry_state(o=(0.2, 0.0)),                        # exactly 0.2
              _carry_state(o=(0.1, 0.0)), _carry_state(o=(0.1, 0.0))]
    env = _env_at(ReachGraspCarryEnv, states, grasp_steps=1)
    out = _step(env, [[1.0, 0.0, 1.0], [0.0, 0.0, 1.0], [0.0, 0.0, 0.5], [0.0, 0.0, 0.5 + 1e-6]])
    assert env.state[:, 9].tolist() == [1.0, 1.0, 0.0, 1.0]
    assert env.state[:, 8].tolist() == [0.0] * 4  # the count restarts after a grasp
    assert out["reward"][:, 0].gt(1.0).tolist() == [True, True, False, True]


def test_carry_holding_pays_no_second_grasp_bonus():
    """While the object is held, a closed grip does not count towards another grasp: no further +1."""
    env = _env_at(ReachGraspCarryEnv, [_carry_state(o=(0.0, 0.0), t=(1.5, 1.5), holding=1.0)], grasp_steps=2)
    shaping = 0.1 * math.exp(-math.hypot(1.5, 1.5) / 0.5)
    for _ in range(5):
        out = _step(env, [[0.0, 0.0, 1.0]])
        assert out["reward"].item() == pytest.approx(shaping, abs=1e-12)
        assert out["observation"][0, 8:].tolist() == [1.0, 0.0]


def test_carry_grip_zero_keeps_the_object_and_negative_drops_it():
    """Only ``a[2] < 0`` opens the grip: grip 0 keeps holding, grip -1e-6 drops."""
    env = _env_at(ReachGraspCarryEnv, [_carry_state(o=(0.0, 0.0), t=(1.5, 1.5), holding=1.0)] * 2)
    _step(env, [[0.0, 0.0, 0.0], [0.0, 0.0, -1e-6]])
    assert env.state[:, 9].tolist() == [1.0, 0.0]


def test_carry_held_object_moves_by_the_hand_displacement():
    """A held object keeps its offset to the hand: ``o' = o + (h' - h)``."""
    state = _carry_state((0.0, 0.0), (1.0, 0.0), o=(0.1, 0.05), t=(1.5, 1.5), holding=1.0)
    env = _env_at(ReachGraspCarryEnv, [state])
    out = _step(env, [[1.0, 0.0, 1.0]])
    hx = 0.05 * (1.0 + 0.05 * (10.0 - 2.0))
    assert env.state[0, 4:6].tolist() == pytest.approx([0.1 + hx, 0.05], abs=1e-12)
    assert out["observation"][0, 4:6].tolist() == pytest.approx([0.1, 0.05], abs=1e-12)


def test_carry_delivery_at_exactly_0_2_counts():
    """The held object exactly 0.2 from the target is delivered (inclusive), paying 5 + carry shaping."""
    env = _env_at(ReachGraspCarryEnv, [_carry_state(o=(0.0, 0.0), t=(0.2, 0.0), holding=1.0),
                                       _carry_state(o=(0.0, 0.0), t=(0.21, 0.0), holding=1.0)])
    out = _step(env, [[0.0, 0.0, 1.0]] * 2)
    assert out["true_objective"][:, 0].tolist() == [1.0, 0.0]
    assert out["reward"][0, 0].item() == pytest.approx(5.0 + 0.1 * math.exp(-0.2 / 0.5), abs=1e-12)


def test_carry_new_target_is_drawn_uniformly_in_the_spawn_square():
    """After a delivery the new target is U(-1.8, 1.8)^2, one independent draw per env."""
    n = 2048
    env = _env_at(ReachGraspCarryEnv, [_carry_state(o=(0.0, 0.0), t=(0.1, 0.0), holding=1.0)] * n)
    out = _step(env, [[0.0, 0.0, 1.0]] * n)
    assert (out["true_objective"] == 1).all()
    t = env.state[:, 6:8]
    assert t.abs().max() <= 1.8 and (t.amax(0) > 1.75).all() and (t.amin(0) < -1.75).all()
    assert torch.unique(t, dim=0).shape[0] == n


def test_carry_reset_spawns_hand_object_and_target_independently():
    """Reset: hand, object and target independent U(-1.8, 1.8)^2; velocity, count, holding, successes 0."""
    env = ReachGraspCarryEnv(4096, seed=0, dtype=F64)
    env.reset()
    xyz = env.state[:, [0, 1, 4, 5, 6, 7]]
    assert xyz.abs().max() <= 1.8 and (xyz.abs().amax(0) > 1.75).all()
    assert (torch.corrcoef(xyz.T) - torch.eye(6, dtype=F64)).abs().max() < 0.1
    assert (env.state[:, [2, 3, 8, 9, 10]] == 0).all()


# ----------------------------------------------------------------------------- policy ids
def test_policy_id_transform_follows_the_batch_it_is_given():
    """One transform writes the blocks of whatever batch it tags: N=4, then N=6, then N=4 again."""
    transform = PolicyIdTransform(2)
    for n, ids in ((4, [0, 0, 1, 1]), (6, [0, 0, 0, 1, 1, 1]), (4, [0, 0, 1, 1])):
        assert transform(TensorDict({}, [n]))["policy_id"].tolist() == ids


def test_block_policy_ids_rejects_zero_policies_with_value_error():
    """``num_policies=0`` is a ValueError naming the argument, not a ZeroDivisionError."""
    with pytest.raises(ValueError, match="num_policies"):
        block_policy_ids(4, 0)


def test_check_policy_id_spec_rejects_a_bool_id():
    """A bool ``policy_id`` is not an integer id: the check names the dtype."""
    spec = Composite(observation=Unbounded((4, 3)), policy_id=Categorical(2, shape=(4,), dtype=torch.bool), shape=(4,))
    with pytest.raises(ValueError, match="dtype torch.bool"):
        check_policy_id_spec(spec, 2)

