"""Tests of the hard-exploration tasks: contracts, hand-computed physics and rewards, scripted solvers."""

from __future__ import annotations

import math
from collections import deque

import pytest
import torch
from tensordict import TensorDict
from torchrl.envs.utils import check_env_specs

from torchrl_sapg.envs import make_env
from torchrl_sapg.envs.exploration import (
    EXPLORATION_TASKS,
    MAZE_LAYOUTS,
    PointMazeEnv,
    ReachGraspCarryEnv,
    SparseMountainCarEnv,
)

TASKS = list(EXPLORATION_TASKS)


# --------------------------------------------------------------------------- scripted policies
def maze_next_cell_table(env: PointMazeEnv) -> torch.Tensor:
    """``[rows * cols, 2]``: for each free cell, the next cell on a shortest path to the goal (BFS)."""
    rows, cols = env.map_length, env.map_width
    goal = MAZE_LAYOUTS[env.layout]["goal_cell"]
    nxt = {goal: goal}
    queue = deque([goal])
    while queue:
        i, j = queue.popleft()
        for di, dj in ((1, 0), (-1, 0), (0, 1), (0, -1)):
            c = (i + di, j + dj)
            if 0 <= c[0] < rows and 0 <= c[1] < cols and not env.walls[c] and c not in nxt:
                nxt[c] = (i, j)
                queue.append(c)
    table = torch.zeros(rows * cols, 2)
    for (i, j), n in nxt.items():
        table[i * cols + j] = env.cell_to_xy(n)
    return table


def maze_policy(env: PointMazeEnv, table: torch.Tensor, obs: torch.Tensor) -> torch.Tensor:
    """Steer to the centre of the next cell on the shortest path (PD control), then to the goal."""
    p, v, g = obs[:, :2], obs[:, 2:4], obs[:, 4:6]
    col = torch.floor(p[:, 0] + env.map_width / 2).long()
    row = torch.floor(env.map_length / 2 - p[:, 1]).long()
    waypoint = table[row * env.map_width + col]
    goal_cell = torch.stack((torch.floor(g[:, 0] + env.map_width / 2), torch.floor(env.map_length / 2 - g[:, 1])), -1)
    in_goal_cell = (torch.stack((col, row), -1).float() == goal_cell).all(-1, keepdim=True)
    target = torch.where(in_goal_cell, g, waypoint)
    return (4.0 * (target - p) - 1.0 * v).clamp(-1, 1)


def carry_policy(obs: torch.Tensor) -> torch.Tensor:
    """Go to the object, stop and close the grip; holding it, go to the target with the grip closed."""
    v, to_obj, to_target, holding = obs[:, 2:4], obs[:, 4:6], obs[:, 6:8], obs[:, 8:9] > 0
    direction = torch.where(holding, to_target, to_obj)
    move = (3.0 * direction - 0.6 * v).clamp(-1, 1)
    grip = torch.ones(obs.shape[0], 1)
    return torch.cat((move, grip), -1)


def run_policy(env, policy, steps: int):
    td = env.reset()
    ends = []
    for _ in range(steps):
        td["action"] = policy(td["observation"])
        data, td = env.step_and_maybe_reset(td)
        ends.append(data["next"].select("done", "success", *(["true_objective"] if env.has_true_objective else [])))
    return torch.stack(ends, 1)


def observe(env):
    """A TensorDict to step from, without resetting any env (an all-false mask). Only its action slot is
    used: TorchRL takes the non-reset rows from the (empty) input, so its observation entries are zeros."""
    return env.reset(TensorDict({"_reset": torch.zeros(env.num_envs, 1, dtype=torch.bool)}, [env.num_envs]))


# --------------------------------------------------------------------------- contracts
@pytest.mark.parametrize("name", TASKS)
def test_check_env_specs(name):
    check_env_specs(make_env(name, 8, seed=0))


@pytest.mark.parametrize("name", TASKS)
def test_seeding_and_determinism(name):
    def roll(seed):
        env = make_env(name, 8, seed=seed)
        torch.manual_seed(0)
        return env.rollout(40, break_when_any_done=False)

    a, b, c = roll(1), roll(1), roll(2)
    assert torch.equal(a["next", "observation"], b["next", "observation"])
    assert torch.equal(a["next", "reward"], b["next", "reward"])
    assert not torch.equal(a["observation"][:, 0], c["observation"][:, 0])


@pytest.mark.parametrize("name", TASKS)
def test_partial_reset_only_changes_masked_envs(name):
    env = make_env(name, 6, seed=0)
    td = env.reset()
    td["action"] = env.action_spec.rand()
    env.step(td)
    before = env.state.clone()
    steps_before = env.elapsed_steps.clone()
    mask = torch.tensor([True, False, True, False, False, True]).unsqueeze(-1)
    env.reset(td.empty().set("_reset", mask))
    keep = ~mask.squeeze(-1)
    assert torch.equal(env.state[keep], before[keep])
    assert torch.equal(env.elapsed_steps[keep], steps_before[keep])
    assert (env.elapsed_steps[~keep] == 0).all()
    if isinstance(env, PointMazeEnv):  # the sticky success flag is per-episode state
        assert (env.state[~keep, 6] == 0).all()


@pytest.mark.parametrize("layout,limit", [("u_maze", 300), ("medium", 600), ("large", 800)])
def test_maze_time_limits_match_gymnasium_robotics(layout, limit):
    env = PointMazeEnv(2, layout=layout, seed=0)
    assert env.max_episode_steps == limit
    data = env.rollout(limit, break_when_any_done=False)
    assert not data["next", "truncated"][:, : limit - 1].any() and data["next", "truncated"][:, -1].all()


def test_bad_arguments_name_the_parameter():
    with pytest.raises(ValueError, match="layout="):
        PointMazeEnv(2, layout="spiral")
    with pytest.raises(ValueError, match="reward_type="):
        PointMazeEnv(2, reward_type="shaped")
    with pytest.raises(ValueError, match="grasp_steps"):
        ReachGraspCarryEnv(2, grasp_steps=0)


# --------------------------------------------------------------------------- maze physics and reward
def test_maze_cells_and_walls():
    env = PointMazeEnv(1, layout="u_maze")
    # Gymnasium-Robotics: x = (j + 0.5) - W/2, y = H/2 - (i + 0.5)
    assert env.cell_to_xy((3, 1)).tolist() == [-1.0, -1.0]
    assert env.cell_to_xy((1, 1)).tolist() == [-1.0, 1.0]
    assert bool(env._is_wall(torch.tensor([-1.0]), torch.tensor([0.0])))  # cell (2, 1)
    assert not bool(env._is_wall(torch.tensor([1.0]), torch.tensor([0.0])))  # cell (2, 3)
    assert bool(env._is_wall(torch.tensor([9.0]), torch.tensor([0.0])))  # off the map


def test_maze_free_motion_matches_hand_computation():
    env = PointMazeEnv(1, layout="medium", dtype=torch.float64)
    env.reset()
    state = torch.tensor([[0.5, 0.5, 1.0, -6.0, 2.5, 2.5, 0.0]], dtype=torch.float64)  # cell (3, 4): free
    env.set_state(state)
    td = observe(env)
    td["action"] = torch.tensor([[0.5, 2.0]], dtype=torch.float64)
    out = env.step(td)["next"]
    m, dt = 1000 * 4 / 3 * math.pi * 0.1**3, 0.01
    vx = (m * 1.0 + dt * 50.0) / (m + dt)
    vy = (m * -5.0 + dt * 100.0) / (m + dt)  # clipped to -5 first, the action to 1
    x, y = 0.5 + dt * vx, 0.5 + dt * vy
    assert out["observation"][0, :4].tolist() == pytest.approx([x, y, vx, vy], abs=1e-12)
    assert out["reward"].item() == pytest.approx(math.exp(-math.hypot(x - 2.5, y - 2.5)), abs=1e-12)


def test_maze_wall_stops_the_ball():
    env = PointMazeEnv(1, layout="u_maze", dtype=torch.float64)
    env.reset()
    # cell (3, 1) centre (-1, -1); the wall cell (2, 1) starts at y = -0.5: push up hard
    env.set_state(torch.tensor([-1.0, -0.62, 0.0, 5.0, -1.0, 1.0, 0.0], dtype=torch.float64))
    td = observe(env)
    td["action"] = torch.tensor([[0.0, 1.0]], dtype=torch.float64)
    out = env.step(td)["next"]["observation"][0]
    assert out[1].item() == pytest.approx(-0.5 - 0.1)  # resting on the wall, one radius below it
    assert out[3].item() == 0.0
    # the outer wall on the left: cell (3, 0) is wall, the ball stops at x = -1.5 + 0.1
    env.set_state(torch.tensor([-1.35, -1.0, -5.0, 0.0, -1.0, 1.0, 0.0], dtype=torch.float64))
    td["action"] = torch.tensor([[-1.0, 0.0]], dtype=torch.float64)
    out = env.step(td)["next"]["observation"][0]
    assert out[0].item() == pytest.approx(-1.4) and out[2].item() == 0.0


@pytest.mark.parametrize("reward_type", ["dense", "sparse"])
def test_maze_reward_and_sticky_success(reward_type):
    env = PointMazeEnv(2, layout="u_maze", reward_type=reward_type, dtype=torch.float64)
    env.reset()
    # env 0 starts 0.38 from the goal and moves away; env 1 far away
    env.set_state(torch.tensor([[-0.62, 1.0, 5.0, 0.0, -1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0, -1.0, 1.0, 0.0]],
                               dtype=torch.float64))
    td = observe(env)
    rewards, success = [], []
    for _ in range(3):
        td["action"] = torch.tensor([[1.0, 0.0], [0.0, 0.0]], dtype=torch.float64)
        data, td = env.step_and_maybe_reset(td)
        rewards.append(data["next", "reward"][:, 0])
        success.append(data["next", "success"][:, 0])
        d = torch.hypot(data["next", "observation"][:, 0] + 1.0, data["next", "observation"][:, 1] - 1.0)
        expected = torch.exp(-d) if reward_type == "dense" else (d <= 0.45).double()
        assert torch.allclose(rewards[-1], expected)
    # env 0: 0.38 + 0.052 after the first step (inside), then outside: success stays true
    assert [s.tolist() for s in success] == [[True, False]] * 3
    if reward_type == "sparse":
        assert rewards[0][0] == 1.0 and rewards[2][0] == 0.0


def test_maze_non_continuing_terminates_at_the_goal():
    env = PointMazeEnv(1, layout="u_maze", continuing_task=False, reward_type="sparse")
    env.reset()
    env.set_state(torch.tensor([-1.0, 0.7, 0.0, 0.0, -1.0, 1.0, 0.0]))
    td = observe(env)
    td["action"] = torch.zeros(1, 2)
    out = env.step(td)["next"]
    assert out["terminated"].item() and out["success"].item() and out["reward"].item() == 1.0


@pytest.mark.parametrize("layout", ["u_maze", "medium", "large"])
def test_scripted_policy_solves_every_maze_and_random_actions_do_not(layout):
    env = PointMazeEnv(64, layout=layout, reward_type="dense", seed=0)
    table = maze_next_cell_table(env)
    limit = env.max_episode_steps
    ends = run_policy(env, lambda obs: maze_policy(env, table, obs), limit)
    assert ends["done"][:, -1].all()
    assert ends["success"][:, -1].all(), f"scripted solver reached the goal in {ends['success'][:, -1].float().mean():.0%}"
    env = PointMazeEnv(256, layout=layout, seed=0)
    gen = torch.Generator().manual_seed(0)
    ends = run_policy(env, lambda obs: torch.rand(obs.shape[0], 2, generator=gen) * 2 - 1, limit)
    # a random walk: often in the small U-maze (its deception is the dense reward), rarely beyond
    assert ends["success"][:, -1].float().mean() < (0.5 if layout == "u_maze" else 0.05)


def test_maze_dense_reward_is_deceptive():
    """Going around the U-maze's wall first takes the ball *farther* from the goal."""
    env = PointMazeEnv(1, layout="u_maze")
    start, goal, corner = env.cell_to_xy((3, 1)), env.cell_to_xy((1, 1)), env.cell_to_xy((3, 3))
    assert torch.dist(corner, goal) > torch.dist(start, goal)


def test_maze_layouts_match_gymnasium_robotics():
    maps = pytest.importorskip("gymnasium_robotics.envs.maze.maps", reason="gymnasium-robotics is not installed")
    ours = {"u_maze": maps.U_MAZE, "medium": maps.MEDIUM_MAZE, "large": maps.LARGE_MAZE}
    for layout, theirs in ours.items():
        assert [[int(c) for c in row] for row in MAZE_LAYOUTS[layout]["map"]] == theirs


def test_maze_goal_test_and_reward_match_gymnasium_robotics():
    maze = pytest.importorskip("gymnasium_robotics.envs.maze.maze", reason="gymnasium-robotics is not installed")
    import numpy as np

    rng = np.random.default_rng(0)
    achieved, desired = rng.uniform(-2, 2, (64, 2)), rng.uniform(-2, 2, (64, 2))
    achieved[:8] = desired[:8] + rng.uniform(-0.3, 0.3, (8, 2))  # some inside the 0.45 ball
    for reward_type in ("dense", "sparse"):
        ref = maze.MazeEnv.__new__(maze.MazeEnv)
        ref.reward_type = reward_type
        theirs = ref.compute_reward(achieved, desired, {})
        env = PointMazeEnv(64, layout="u_maze", reward_type=reward_type, dtype=torch.float64)
        env.reset()
        state = torch.zeros(64, 7, dtype=torch.float64)
        state[:, :2] = torch.as_tensor(achieved)
        state[:, 4:6] = torch.as_tensor(desired)
        ours = env._dynamics(state, torch.zeros(64, 2, dtype=torch.float64))[1]  # zero velocity: no move
        assert np.allclose(ours.numpy(), theirs)


# --------------------------------------------------------------------------- reach-grasp-carry
def _carry_env(state, grasp_steps=5):
    env = ReachGraspCarryEnv(state.shape[0], grasp_steps=grasp_steps, dtype=torch.float64)
    env.reset()
    env.set_state(state)
    td = observe(env)
    return env, td


def test_carry_grasp_needs_consecutive_closed_grip_steps():
    s = torch.zeros(1, 11, dtype=torch.float64)
    s[0, 4:6] = torch.tensor([0.1, 0.0])  # object 0.1 from the hand
    s[0, 6:8] = torch.tensor([1.5, 1.5])
    env, td = _carry_env(s, grasp_steps=3)
    grips, rewards, holding = [1.0, 1.0, 0.0, 1.0, 1.0, 1.0], [], []
    for g in grips:
        td["action"] = torch.tensor([[0.0, 0.0, g]], dtype=torch.float64)
        data, td = env.step_and_maybe_reset(td)
        rewards.append(data["next", "reward"].item())
        holding.append(bool(data["next", "observation"][0, 8]))
    assert holding == [False, False, False, False, False, True]  # the open step restarts the count
    shaping = 0.1 * math.exp(-0.1 / 0.5)
    assert rewards[:5] == pytest.approx([shaping] * 5)
    d_ot = math.hypot(1.5 - 0.1, 1.5)
    assert rewards[5] == pytest.approx(1.0 + 0.1 * math.exp(-d_ot / 0.5))


def test_carry_delivery_counts_successes_and_dropping_releases():
    s = torch.zeros(2, 11, dtype=torch.float64)
    s[:, 4:6] = torch.tensor([0.0, 0.0])
    s[:, 6:8] = torch.tensor([0.15, 0.0])  # target 0.15 from the held object
    s[:, 9] = 1.0  # holding
    env, td = _carry_env(s)
    td["action"] = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, -1.0]], dtype=torch.float64)  # env 1 drops it
    out = env.step(td)["next"]
    assert out["true_objective"][:, 0].tolist() == [1.0, 0.0]
    assert out["success"][:, 0].tolist() == [True, False]
    # the carry shaping is measured to the target just reached, before the new one is drawn
    assert out["reward"][0].item() == pytest.approx(5.0 + 0.1 * math.exp(-0.15 / 0.5))
    assert env.state[1, 9].item() == 0.0  # dropped
    assert out["reward"][1].item() == pytest.approx(0.1)  # reach shaping at distance 0


def test_scripted_policy_solves_reach_grasp_carry():
    env = ReachGraspCarryEnv(128, seed=0)
    ends = run_policy(env, carry_policy, 200)
    final = ends[:, -1]
    assert final["done"].all()
    assert final["success"].float().mean() > 0.95
    assert final["true_objective"].mean() > 3  # several deliveries per episode
    # a random policy almost never grasps: the plateau
    env = ReachGraspCarryEnv(256, seed=0)
    gen = torch.Generator().manual_seed(0)
    ends = run_policy(env, lambda obs: torch.rand(obs.shape[0], 3, generator=gen) * 2 - 1, 200)
    assert ends["true_objective"][:, -1].mean() < 0.05


# --------------------------------------------------------------------------- sparse mountain car
def test_sparse_mountain_car_reward_is_the_success_indicator():
    env = SparseMountainCarEnv(64, seed=0)
    td = env.reset()
    seen_success = False
    for _ in range(400):  # pump energy: push along the velocity
        vel = td["observation"][:, 1:]
        td["action"] = torch.sign(vel) + (vel == 0)
        data, td = env.step_and_maybe_reset(td)
        r, s = data["next", "reward"], data["next", "success"]
        assert torch.equal(r, s.float())
        seen_success |= bool(s.any())
    assert seen_success
    gen = torch.Generator().manual_seed(0)
    env = SparseMountainCarEnv(256, seed=0)
    ends = run_policy(env, lambda obs: torch.rand(obs.shape[0], 1, generator=gen) * 2 - 1, 999)
    assert ends["success"].float().sum(1).gt(0).float().mean() < 0.05


def test_maze_free_motion_matches_mujoco_point_maze():
    """Away from walls our integrator is MuJoCo's: same positions and velocities as ``PointMaze_UMaze-v3``."""
    gym = pytest.importorskip("gymnasium")
    robotics = pytest.importorskip("gymnasium_robotics", reason="gymnasium-robotics is not installed")
    import numpy as np

    gym.register_envs(robotics)
    ref = gym.make("PointMaze_UMaze-v3", reward_type="dense").unwrapped
    obs, _ = ref.reset(seed=0, options={"goal_cell": np.array([1, 1]), "reset_cell": np.array([3, 1])})
    env = PointMazeEnv(1, layout="u_maze", dtype=torch.float64)
    env.reset()
    env.set_state(torch.as_tensor(np.concatenate([obs["observation"], obs["desired_goal"], [0.0]])))
    td = observe(env)
    rng = np.random.default_rng(0)
    for _ in range(20):  # along the bottom corridor, clear of the walls, up to the 5 m/s velocity clip
        action = np.array([1.0, 0.3]) + rng.uniform(-0.1, 0.1, 2)
        theirs, reward, *_ = ref.step(action)
        td["action"] = torch.as_tensor(action)[None]
        data, td = env.step_and_maybe_reset(td)
        assert np.allclose(data["next", "observation"][0, :4].numpy(), theirs["observation"], atol=1e-9)
        assert data["next", "reward"].item() == pytest.approx(reward, abs=1e-9)
    ref.close()
