from torchrl_sapg.envs.classic_control import (
    EMBEDDED_TASKS,
    AcrobotEnv,
    BatchedClassicControlEnv,
    CartPoleEnv,
    MountainCarContinuousEnv,
    PendulumEnv,
)
from torchrl_sapg.envs.exploration import (
    EXPLORATION_TASKS,
    PointMazeEnv,
    ReachGraspCarryEnv,
    SparseMountainCarEnv,
)
from torchrl_sapg.envs.factory import available_envs, make_env
from torchrl_sapg.envs.policy_id import PolicyIdTransform, block_policy_ids, check_policy_id_spec

__all__ = [
    "EMBEDDED_TASKS",
    "EXPLORATION_TASKS",
    "PointMazeEnv",
    "ReachGraspCarryEnv",
    "SparseMountainCarEnv",
    "AcrobotEnv",
    "BatchedClassicControlEnv",
    "CartPoleEnv",
    "MountainCarContinuousEnv",
    "PendulumEnv",
    "PolicyIdTransform",
    "available_envs",
    "block_policy_ids",
    "check_policy_id_spec",
    "make_env",
]
