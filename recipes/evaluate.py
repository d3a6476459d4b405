"""Evaluate a checkpoint: mean return over E episodes per policy, deterministic actions.

    python recipes/evaluate.py checkpoint=runs/ppo-pendulum/<date>/checkpoints/last.pt
    python recipes/evaluate.py checkpoint=... episodes=32 policy=all stochastic=true

By default only the headline policy is reported (the SAPG leader / EPO master, policy 0);
``policy=all`` reports every policy, ``policy=3`` one of them.
"""
from __future__ import annotations

import json
import os
import sys

import torch
from omegaconf import OmegaConf

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import build_agent, build_env, headline_policy  # noqa: E402

from torchrl_sapg.trainers import load_checkpoint  # noqa: E402
from torchrl_sapg.trainers.evaluation import evaluate_policies  # noqa: E402


def main(argv: list[str]) -> dict:
    args = OmegaConf.from_dotlist(argv)
    if "checkpoint" not in args:
        raise SystemExit("usage: python recipes/evaluate.py checkpoint=PATH [episodes=16] [policy=0|all] [stochastic=false] [device=cpu]")
    state = load_checkpoint(args.checkpoint)
    if "extra" not in state or "config" not in state["extra"]:
        raise SystemExit(f"{args.checkpoint} holds no run config; it was not written by recipes/train.py.")
    cfg = OmegaConf.create(state["extra"]["config"])
    cfg.device = args.get("device", "cpu")
    episodes = int(args.get("episodes", 16))
    m = cfg.algo.num_policies
    torch.manual_seed(int(args.get("seed", cfg.seed + 20_000)))
    env = build_env(cfg, num_envs=m * episodes, seed=int(args.get("seed", cfg.seed + 20_000)))
    agent = build_agent(cfg, env)
    policy_state = state["trainer"]["collector"]["policy_state_dict"]
    agent.actor.load_state_dict(policy_state)
    stats = evaluate_policies(env, agent.actor, num_policies=m, deterministic=not bool(args.get("stochastic", False)))
    which = str(args.get("policy", headline_policy(cfg)))
    ids = list(range(m)) if which == "all" else [int(which)]
    if any(i < 0 or i >= m for i in ids):
        raise SystemExit(f"policy={which} is out of range: this checkpoint has {m} policies (0..{m - 1}).")
    report = {
        "checkpoint": str(args.checkpoint),
        "frames": state["frames"],
        "episodes_per_policy": episodes,
        "deterministic": not bool(args.get("stochastic", False)),
        "policies": {str(i): {k: float(v[i]) for k, v in stats.items()} for i in ids},
    }
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
