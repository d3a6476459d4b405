"""Batched, pure-torch hard-exploration tasks: a deceptive maze, a multi-stage task, sparse MountainCar.

Same contract as :mod:`torchrl_sapg.envs.classic_control` (one batch of tensor ops per step for all
``num_envs`` copies, seeded ``torch.Generator``, ``"_reset"`` partial resets, Gymnasium-style
``terminated``/``truncated``), plus per-episode ``"success"`` (bool, sticky: true from the first
success until the episode ends) and, for the multi-stage task, ``"true_objective"`` (the episode's
success count). Every per-episode memory lives in ``env.state``, so partial resets clear it.
Origins, simplifications and measured throughput: ``docs/embedded-tasks.md``.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from torchrl_sapg.envs.batched import BatchedClassicControlEnv
from torchrl_sapg.envs.classic_control import MountainCarContinuousEnv

__all__ = [
    "EXPLORATION_TASKS",
    "MAZE_LAYOUTS",
    "PointMazeEnv",
    "ReachGraspCarryEnv",
    "SparseMountainCarEnv",
]

# Gymnasium-Robotics ``maps.U_MAZE``, ``MEDIUM_MAZE``, ``LARGE_MAZE`` (1 = wall), with a fixed
# reset cell and goal cell (row, col) chosen so that the straight line to the goal is blocked:
# the dense reward ``exp(-distance)`` leads into a dead end (Lehman & Stanley's deceptive maze).
MAZE_LAYOUTS: dict[str, dict] = {
    "u_maze": {
        "map": ["11111",
                "10001",
                "11101",
                "10001",
                "11111"],
        "reset_cell": (3, 1), "goal_cell": (1, 1), "max_episode_steps": 300,
    },
    "medium": {
        "map": ["11111111",
                "10011001",
                "10010001",
                "11000111",
                "10010001",
                "10100101",
                "10001001",
                "11111111"],
        "reset_cell": (1, 1), "goal_cell": (1, 6), "max_episode_steps": 600,
    },
    "large": {
        "map": ["111111111111",
                "100001000001",
                "101101010101",
                "100000010001",
                "101111011101",
                "100101000001",
                "110101010111",
                "100100010001",
                "111111111111"],
        "reset_cell": (7, 1), "goal_cell": (7, 10), "max_episode_steps": 800,
    },
}


class PointMazeEnv(BatchedClassicControlEnv):
    """Batched PointMaze (Gymnasium-Robotics ``PointMaze_*-v3``) with a fixed, deceptive start and goal.

    * map: Gymnasium-Robotics' ``U_MAZE`` / ``MEDIUM_MAZE`` / ``LARGE_MAZE``, unit cells, cell
      ``(i, j)`` centred at ``x = j + 0.5 - W/2``, ``y = H/2 - i - 0.5``
    * start and goal: the layout's ``reset_cell`` / ``goal_cell`` centre plus ``U(-0.25, 0.25)``
      noise per axis (Gymnasium-Robotics' ``options={"reset_cell", "goal_cell"}``)
    * state ``[x, y, vx, vy, goal_x, goal_y, reached]``; observation the first six
      (Gymnasium-Robotics' ``observation`` ++ ``desired_goal``)
    * action: force in ``[-1, 1]^2`` (clipped), gear 100, on a ball of radius 0.1 and mass
      ``1000 * 4/3 pi 0.1^3``, joint damping 1, ``dt = 0.01``, velocity clipped to ``[-5, 5]``
      before each step; walls stop the ball (velocity component zeroed)
    * reward: ``"dense"`` ``exp(-|p - g|)``, ``"sparse"`` ``1[|p - g| <= 0.45]``
    * ``continuing_task=True`` (Gymnasium-Robotics' default): never terminates, truncated at the
      layout's limit (300 / 600 / 800 steps); ``False``: terminates on reaching the goal
    * ``"success"``: the goal was reached at some step of this episode

    Args:
        num_envs: number of environments simulated in one batch.
        layout: ``"u_maze"``, ``"medium"`` or ``"large"``.
        reward_type: ``"dense"`` or ``"sparse"``.
        continuing_task: whether the episode goes on after the goal is reached.
        **kwargs: ``device``, ``seed``, ``dtype``, ``max_episode_steps`` (see the base class).

    Examples:
        >>> import torch
        >>> env = PointMazeEnv(4, layout="u_maze", reward_type="dense", seed=0)
        >>> data = env.rollout(3, break_when_any_done=False)
        >>> data["next", "observation"].shape, data["next", "success"].any().item()
        (torch.Size([4, 3, 6]), False)
    """

    action_dim = 2
    obs_dim = 6
    state_dim = 7
    has_success = True
    goal_threshold: ClassVar[float] = 0.45
    position_noise: ClassVar[float] = 0.25
    radius: ClassVar[float] = 0.1
    dt: ClassVar[float] = 0.01
    gear: ClassVar[float] = 100.0
    damping: ClassVar[float] = 1.0
    mass: ClassVar[float] = 1000.0 * 4.0 / 3.0 * torch.pi * 0.1**3
    max_speed: ClassVar[float] = 5.0

    def __init__(
        self,
        num_envs: int,
        *,
        layout: str = "u_maze",
        reward_type: str = "dense",
        continuing_task: bool = True,
        **kwargs,
    ) -> None:
        if layout not in MAZE_LAYOUTS:
            raise ValueError(f"layout={layout!r} is not a maze layout; choose one of {sorted(MAZE_LAYOUTS)}.")
        if reward_type not in ("dense", "sparse"):
            raise ValueError(f"reward_type={reward_type!r}; choose 'dense' (exp(-distance)) or 'sparse'.")
        spec = MAZE_LAYOUTS[layout]
        self.layout, self.reward_type, self.continuing_task = layout, reward_type, bool(continuing_task)
        self.default_max_episode_steps = spec["max_episode_steps"]
        super().__init__(num_envs, **kwargs)
        rows = [[int(c) for c in row] for row in spec["map"]]
        self.map_length, self.map_width = len(rows), len(rows[0])
        self.walls = torch.tensor(rows, dtype=torch.bool, device=self.device)
        self._walls_flat = self.walls.reshape(-1)
        self.reset_xy = self.cell_to_xy(spec["reset_cell"])
        self.goal_xy = self.cell_to_xy(spec["goal_cell"])

    def cell_to_xy(self, cell: tuple[int, int]) -> torch.Tensor:
        """Centre ``[x, y]`` of maze cell ``(row, col)`` (Gymnasium-Robotics' ``cell_rowcol_to_xy``)."""
        i, j = cell
        x = (j + 0.5) - self.map_width / 2
        y = self.map_length / 2 - (i + 0.5)
        return torch.tensor([x, y], dtype=self.dtype, device=self.device)

    def _is_wall(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Whether points ``(x, y)`` lie in a wall cell (outside the map counts as wall)."""
        col = torch.floor(x + self.map_width / 2).long()
        row = torch.floor(self.map_length / 2 - y).long()
        inside = (col >= 0) & (col < self.map_width) & (row >= 0) & (row < self.map_length)
        idx = (row.clamp(0, self.map_length - 1) * self.map_width + col.clamp(0, self.map_width - 1))
        return self._walls_flat[idx] | ~inside

    def _sample_initial_state(self) -> torch.Tensor:
        noise = self._uniform(torch.full((4,), self.position_noise, dtype=self.dtype, device=self.device))
        start = self.reset_xy + noise[:, :2]
        goal = self.goal_xy + noise[:, 2:]
        zeros = torch.zeros(self.num_envs, 2, dtype=self.dtype, device=self.device)
        return torch.cat((start, zeros, goal, zeros[:, :1]), dim=-1)

    def _observation(self, state: torch.Tensor) -> torch.Tensor:
        return state[:, :6].clone()

    def _move_axis(self, pos: torch.Tensor, other: torch.Tensor, vel: torch.Tensor, axis: int):
        """Moves along one axis and stops at a wall: the ball's leading edge may not enter a wall cell."""
        new = pos + vel * self.dt
        edge = new + torch.sign(vel) * self.radius
        inset = self.radius * 0.999
        if axis == 0:
            hit = self._is_wall(edge, other - inset) | self._is_wall(edge, other + inset)
            boundary = torch.where(vel > 0, torch.floor(edge + self.map_width / 2), torch.floor(edge + self.map_width / 2) + 1)
            boundary = boundary - self.map_width / 2
        else:
            hit = self._is_wall(other - inset, edge) | self._is_wall(other + inset, edge)
            boundary = torch.where(vel > 0, torch.ceil(edge - self.map_length / 2) - 1, torch.ceil(edge - self.map_length / 2))
            boundary = boundary + self.map_length / 2
        hit = hit & (vel != 0)
        stopped = boundary - torch.sign(vel) * self.radius
        return torch.where(hit, stopped, new), torch.where(hit, torch.zeros_like(vel), vel)

    def _dynamics(self, state: torch.Tensor, action: torch.Tensor):
        x, y, vx, vy, gx, gy, reached = state.unbind(-1)
        force = action.clamp(-1.0, 1.0) * self.gear
        vx, vy = vx.clamp(-self.max_speed, self.max_speed), vy.clamp(-self.max_speed, self.max_speed)
        # MuJoCo's Euler integrator treats joint damping implicitly: (m + dt*d) v' = m v + dt f
        denom = self.mass + self.dt * self.damping
        vx = (self.mass * vx + self.dt * force[:, 0]) / denom
        vy = (self.mass * vy + self.dt * force[:, 1]) / denom
        x, vx = self._move_axis(x, y, vx, 0)
        y, vy = self._move_axis(y, x, vy, 1)
        dist = torch.hypot(x - gx, y - gy)
        at_goal = dist <= self.goal_threshold
        reward = torch.exp(-dist) if self.reward_type == "dense" else at_goal.to(self.dtype)
        reached = torch.maximum(reached, at_goal.to(self.dtype))
        terminated = None if self.continuing_task else at_goal
        return torch.stack((x, y, vx, vy, gx, gy, reached), dim=-1), reward, terminated

    def _success(self, state: torch.Tensor, terminated: torch.Tensor | None) -> torch.Tensor:
        return state[:, 6] > 0


class ReachGraspCarryEnv(BatchedClassicControlEnv):
    """Reach, grasp and carry an object to a sequence of targets: a staged reward with a plateau.

    The cheap analogue of AllegroKuka Regrasping/Reorientation (SAPG Sec. 5; IsaacGymEnvs'
    ``allegro_kuka`` reward: hand-object shaping, a lifting bonus, object-goal shaping, a success
    bonus and a new goal after each success). A point "hand" moves in the square ``[-2, 2]^2``.

    * stage 0, reach: reward ``0.1 exp(-|h - o| / 0.5)`` — the plateau: hovering at the object
      pays this forever
    * grasp: the hand within 0.2 of the object **and** the grip action ``a[2] > 0.5`` for
      ``grasp_steps`` (5) consecutive steps; pays ``+1`` once and the object moves with the hand
    * stage 1, carry: reward ``0.1 exp(-|o - t| / 0.5)``; opening the grip (``a[2] < 0``) drops
      the object (back to stage 0)
    * success: the held object within 0.2 of the target pays ``+5``, counts one success and draws
      a new target (the object stays held)
    * ``"true_objective"``: the episode's success count; ``"success"``: at least one success
    * dynamics ``v' = clip(v + dt (10 a - 2 v), +-2)``, ``p' = clip(p + dt v', +-2)``, ``dt = 0.05``;
      hand, object and target start uniform in ``[-1.8, 1.8]^2``; truncated after 200 steps

    Observation ``[h, v, o - h, t - o, holding, grip_count / grasp_steps]`` (10-d).

    Args:
        num_envs: number of environments simulated in one batch.
        grasp_steps: consecutive closed-grip steps at the object needed to grasp it.
        **kwargs: ``device``, ``seed``, ``dtype``, ``max_episode_steps`` (see the base class).

    Examples:
        >>> env = ReachGraspCarryEnv(4, seed=0)
        >>> data = env.rollout(3, break_when_any_done=False)
        >>> data["next", "observation"].shape, data["next", "true_objective"].sum().item()
        (torch.Size([4, 3, 10]), 0.0)
    """

    default_max_episode_steps = 200
    action_dim = 3
    obs_dim = 10
    # [hx, hy, vx, vy, ox, oy, tx, ty, grip_count, holding, successes]
    state_dim = 11
    has_success = True
    has_true_objective = True
    arena: ClassVar[float] = 2.0
    spawn: ClassVar[float] = 1.8
    dt: ClassVar[float] = 0.05
    accel: ClassVar[float] = 10.0
    damping: ClassVar[float] = 2.0
    max_speed: ClassVar[float] = 2.0
    grasp_radius: ClassVar[float] = 0.2
    target_radius: ClassVar[float] = 0.2
    shaping_scale: ClassVar[float] = 0.5
    shaping_weight: ClassVar[float] = 0.1
    grasp_bonus: ClassVar[float] = 1.0
    success_bonus: ClassVar[float] = 5.0

    def __init__(self, num_envs: int, *, grasp_steps: int = 5, **kwargs) -> None:
        if grasp_steps < 1:
            raise ValueError(f"grasp_steps must be >= 1, got {grasp_steps}.")
        self.grasp_steps = int(grasp_steps)
        super().__init__(num_envs, **kwargs)
        self._spawn_high = torch.full((6,), self.spawn, dtype=self.dtype, device=self.device)

    def _sample_initial_state(self) -> torch.Tensor:
        xyz = self._uniform(self._spawn_high)  # hand, object, target
        zeros = torch.zeros(self.num_envs, 2, dtype=self.dtype, device=self.device)
        return torch.cat((xyz[:, :2], zeros, xyz[:, 2:], zeros, zeros[:, :1]), dim=-1)

    def _observation(self, state: torch.Tensor) -> torch.Tensor:
        h, v, o, t = state[:, 0:2], state[:, 2:4], state[:, 4:6], state[:, 6:8]
        return torch.cat((h, v, o - h, t - o, state[:, 9:10], state[:, 8:9] / self.grasp_steps), dim=-1)

    def _dynamics(self, state: torch.Tensor, action: torch.Tensor):
        h, v, o, t = state[:, 0:2], state[:, 2:4], state[:, 4:6], state[:, 6:8]
        grip_count, holding, successes = state[:, 8], state[:, 9] > 0, state[:, 10]
        a = action.clamp(-1.0, 1.0)
        v = (v + self.dt * (self.accel * a[:, :2] - self.damping * v)).clamp(-self.max_speed, self.max_speed)
        h_new = (h + self.dt * v).clamp(-self.arena, self.arena)
        v = torch.where(h_new.abs() >= self.arena, torch.zeros_like(v), v)  # the arena's walls stop the hand
        grip = a[:, 2]
        holding = holding & (grip >= 0)  # opening the grip drops the object
        o = torch.where(holding.unsqueeze(-1), o + (h_new - h), o)
        near = torch.linalg.vector_norm(h_new - o, dim=-1) <= self.grasp_radius
        grip_count = torch.where(near & (grip > 0.5) & ~holding, grip_count + 1, torch.zeros_like(grip_count))
        grasped = grip_count >= self.grasp_steps
        holding = holding | grasped
        grip_count = torch.where(grasped, torch.zeros_like(grip_count), grip_count)
        d_ot = torch.linalg.vector_norm(o - t, dim=-1)
        delivered = holding & (d_ot <= self.target_radius)
        new_t = self._uniform(self._spawn_high[:2])
        t = torch.where(delivered.unsqueeze(-1), new_t, t)
        d_ho = torch.linalg.vector_norm(h_new - o, dim=-1)
        shaping = torch.where(holding, torch.exp(-d_ot / self.shaping_scale), torch.exp(-d_ho / self.shaping_scale))
        reward = (self.shaping_weight * shaping + self.grasp_bonus * grasped.to(self.dtype)
                  + self.success_bonus * delivered.to(self.dtype))
        successes = successes + delivered.to(self.dtype)
        new_state = torch.cat((h_new, v, o, t, grip_count.unsqueeze(-1), holding.to(self.dtype).unsqueeze(-1),
                               successes.unsqueeze(-1)), dim=-1)
        return new_state, reward, None

    def _success(self, state: torch.Tensor, terminated: torch.Tensor | None) -> torch.Tensor:
        return state[:, 10] > 0

    def _true_objective(self, state: torch.Tensor) -> torch.Tensor:
        return state[:, 10].clone()


class SparseMountainCarEnv(MountainCarContinuousEnv):
    """``MountainCarContinuous-v0`` with a sparse reward: 1 on reaching the flag, 0 otherwise.

    The physics, reset, goal test and 999-step limit are :class:`MountainCarContinuousEnv`'s; only
    the action penalty ``-0.1 a^2`` and the +100 scale are gone (the sparse MountainCar of the
    exploration literature, e.g. VIME, Houthooft et al. 2016). Terminates with ``"success"``.

    Examples:
        >>> import torch
        >>> env = SparseMountainCarEnv(2, seed=0)
        >>> td = env.reset()
        >>> td["action"] = torch.ones(2, 1) * 0.3
        >>> env.step(td)["next", "reward"].tolist()
        [[0.0], [0.0]]
    """

    def _dynamics(self, state: torch.Tensor, action: torch.Tensor):
        new_state, _, terminated = super()._dynamics(state, action)
        return new_state, terminated.to(self.dtype), terminated


def _maze(layout: str):
    def make(num_envs: int, **kwargs) -> PointMazeEnv:
        return PointMazeEnv(num_envs, layout=layout, **kwargs)

    make.__name__ = f"point_maze_{layout}"
    make.__doc__ = f"``PointMazeEnv(num_envs, layout={layout!r}, **kwargs)``."
    return make


EXPLORATION_TASKS = {
    "point_maze_u": _maze("u_maze"),
    "point_maze_medium": _maze("medium"),
    "point_maze_large": _maze("large"),
    "reach_grasp_carry": ReachGraspCarryEnv,
    "sparse_mountain_car": SparseMountainCarEnv,
}
"""The hard-exploration tasks by :func:`~torchrl_sapg.envs.make_env` name."""
