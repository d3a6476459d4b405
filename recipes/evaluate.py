"""Evaluate a checkpoint: mean return over E episodes per policy, deterministic actions.

    python recipes/evaluate.py checkpoint=runs/ppo-pendulum/<date>/checkpoints/last.pt
    python recipes/evaluate.py checkpoint=... episodes=32 policy=all stochastic=true

By default only the headline policy is reported (the SAPG leader / EPO master, policy 0);
``policy=all`` reports every policy, ``policy=3`` one of them. Works for MLP and recurrent
(``model.lstm_hidden > 0``) runs of every algorithm: a recurrent policy's eval env gets
``InitTracker`` and the hidden-state primers, as in training, so the LSTM state is carried
from step to step and reset at every episode start.

``seed=S`` seeds the eval envs (default ``seed + 20000``); ``seed=<run seed + 10000>
episodes=<eval_episodes> policy=all`` reproduces ``recipes/train.py``'s own end-of-run
``eval_return``.
"""
from __future__ import annotations

import json
import os
import sys
from typing import Any, Mapping

from omegaconf import DictConfig, OmegaConf

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from checks import check_device_option  # noqa: E402
from common import (  # noqa: E402
    add_recurrent_env_transforms,
    algorithm,
    build_agent,
    build_env,
    headline_policy,
    is_recurrent_config,
    seed_everything,
)

from torchrl_sapg.modules import ActorCritic  # noqa: E402
from torchrl_sapg.trainers import load_checkpoint  # noqa: E402
from torchrl_sapg.trainers.evaluation import evaluate_policies  # noqa: E402


def _strip(state: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def load_policy_weights(cfg: DictConfig, agent: ActorCritic, trainer_state: Mapping[str, Any]) -> str:
    """Load a checkpoint's trained policy into ``agent.actor``; returns where the weights came from.

    The source is the trained model itself, whatever policy wrapper the collector ran:
    ``loss_module``'s ``actor_network_params.*`` (TorchRL's PPO / ``SAPGLoss``: the actor's
    own state-dict names) or, for ``pbt=inprocess``, the :class:`PopulationLearner`'s ``ensemble.*``
    (every member's stacked actor and critic). Checkpoints without those fall back to the
    collector's policy weights: the actor's for MLP runs, the actor part (``module.0.*``) of
    the actor-then-critic collection policy for recurrent ones.
    """
    loss = trainer_state.get("loss_module") or {}
    if algorithm(cfg).population:
        candidates = [("loss_module", agent.actor.ensemble, _strip(loss, "ensemble."))]
    else:
        candidates = [("loss_module", agent.actor, _strip(loss, "actor_network_params."))]
    policy = trainer_state.get("collector", {}).get("policy_state_dict") or {}
    if is_recurrent_config(cfg):
        candidates.append(("collector policy", agent.actor, _strip(policy, "module.0.")))
    candidates.append(("collector policy", agent.actor, dict(policy)))
    errors = []
    for source, module, weights in candidates:
        if not weights:
            continue
        try:
            module.load_state_dict(weights)
        except RuntimeError as err:
            errors.append(f"{source}: {err}")
            continue
        return source
    raise SystemExit(
        "could not load the policy weights of this checkpoint into the network its config builds "
        f"(algo={algorithm(cfg).name}, model.lstm_hidden={cfg.model.get('lstm_hidden', 0)}):\n" + "\n".join(errors)
    )


def main(argv: list[str]) -> dict:
    args = OmegaConf.from_dotlist(argv)
    if "checkpoint" not in args:
        raise SystemExit(
            "usage: python recipes/evaluate.py checkpoint=PATH [episodes=16] [policy=0|all] [stochastic=false] "
            "[device=cpu] [seed=S]"
        )
    # the run's config comes from the checkpoint (checked when it trained); only this script's options here
    device = args.get("device", "cpu")
    check_device_option(device)
    episodes = args.get("episodes", 16)
    if isinstance(episodes, bool) or not isinstance(episodes, int) or episodes < 1:
        raise ValueError(f"episodes={episodes!r} must be an int >= 1 (episodes per policy; e.g. episodes=16).")
    state = load_checkpoint(args.checkpoint)
    if "extra" not in state or "config" not in state["extra"]:
        raise SystemExit(f"{args.checkpoint} holds no run config; it was not written by recipes/train.py.")
    cfg = OmegaConf.create(state["extra"]["config"])
    cfg.device = device
    m = cfg.algo.num_policies
    which = str(args.get("policy", headline_policy(cfg)))
    ids = list(range(m)) if which == "all" else [int(which)]
    if any(i < 0 or i >= m for i in ids):
        raise SystemExit(f"policy={which} is out of range: this checkpoint has {m} policies (0..{m - 1}).")
    seed = int(args.get("seed", cfg.seed + 20_000))
    seed_everything(seed)
    env = build_env(cfg, num_envs=m * episodes, seed=seed)
    agent = build_agent(cfg, env)
    recurrent = is_recurrent_config(cfg)
    if recurrent:  # InitTracker + the LSTM hidden-state primers, as recipes/train.py's envs
        env = add_recurrent_env_transforms(cfg, env, agent)
    source = load_policy_weights(cfg, agent, state["trainer"])
    deterministic = not bool(args.get("stochastic", False))
    stats = evaluate_policies(env, agent.actor, num_policies=m, deterministic=deterministic)
    report = {
        "checkpoint": str(args.checkpoint),
        "frames": state["frames"],
        "episodes_per_policy": episodes,
        "deterministic": deterministic,
        "recurrent": recurrent,
        "seed": seed,
        "weights": source,
        "policies": {str(i): {k: float(v[i]) for k, v in stats.items()} for i in ids},
    }
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
