"""Train PPO (and, as they land, SAPG / EPO / PBT) on a batched env.

    python recipes/train.py algo=ppo env=pendulum
    python recipes/train.py algo=ppo env=cartpole logger=wandb seed=1 total_frames=3e6
    python recipes/train.py resume=runs/ppo-pendulum/<date>/checkpoints/last.pt

Writes to the run folder: the resolved config (``config.yaml``), the logs (CSV by default),
``checkpoints/last.pt`` and ``summary.json``.
"""
from __future__ import annotations

import json
import os
import sys
import time

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (  # noqa: E402
    build_agent,
    build_env,
    build_loss,
    build_pbt_trainer,
    headline_policy,
    is_recurrent_config,
    register_algorithm_hooks,
)

from torchrl_sapg.collectors import PopulationCollector  # noqa: E402
from torchrl_sapg.modules.recurrent import add_recurrent_transforms, collection_policy  # noqa: E402
from torchrl_sapg.trainers import LearningRateSchedule, OnPolicyTrainer  # noqa: E402
from torchrl_sapg.trainers.evaluation import evaluate_policies  # noqa: E402
from torchrl_sapg.trainers.logging import make_logger  # noqa: E402


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> dict:
    run_dir = HydraConfig.get().runtime.output_dir
    os.makedirs(run_dir, exist_ok=True)
    OmegaConf.save(cfg, os.path.join(run_dir, "config.yaml"), resolve=True)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    torch.manual_seed(cfg.seed)

    env = build_env(cfg)
    agent = build_agent(cfg, env)
    t = cfg.train
    num_envs = cfg.env.num_envs
    recurrent = is_recurrent_config(cfg)
    if recurrent:  # InitTracker + the LSTM hidden-state primers; collect with actor and critic
        env = add_recurrent_transforms(env, agent)
    collector = PopulationCollector(
        env, collection_policy(agent) if recurrent else agent.actor, num_policies=cfg.algo.num_policies, frames_per_batch=num_envs * t.horizon
    )
    logger = make_logger(
        cfg.logger.backend, run_dir, exp_name=f"{cfg.algo.name}-{cfg.env.name}", project=cfg.logger.project,
        offline=cfg.logger.get("offline", True),
    )
    common = dict(
        total_frames=int(cfg.total_frames),
        logger=logger,
        log_interval=cfg.log_interval,
        checkpoint_path=os.path.join(run_dir, "checkpoints", "last.pt"),
        checkpoint_interval=int(cfg.checkpoint_interval),
        progress_bar=cfg.progress_bar,
        seed=cfg.seed,
        checkpoint_extra=lambda: {"config": resolved},
        headline_policy=headline_policy(cfg),
    )
    if cfg.algo.name == "pbt":
        trainer = build_pbt_trainer(cfg, agent, collector, **common)
    else:
        loss, value_estimator = build_loss(cfg, agent)
        optimizer = torch.optim.Adam(loss.parameters(), lr=t.lr)
        schedule = LearningRateSchedule(
            optimizer, mode=t.lr_schedule, kl_threshold=t.kl_threshold, min_lr=t.min_lr, max_lr=t.max_lr,
            total_frames=int(cfg.total_frames),
        )
        trainer = OnPolicyTrainer(
            collector=collector,
            loss_module=loss,
            optimizer=optimizer,
            num_epochs=t.num_epochs,
            num_minibatches=t.num_minibatches,
            minibatch_size=t.minibatch_size,
            value_estimator=value_estimator,
            max_grad_norm=t.max_grad_norm,
            lr_schedule=schedule,
            kl_actor=agent.actor,
            sequence_minibatches=recurrent,  # whole env-rows, TorchRL's recurrent mode
            reward_scale=t.reward_scale,
            obs_normalizers=[n for n in (agent.obs_normalizer,) if n is not None]
            + ([(agent.critic_obs_normalizer, "critic_observation")] if agent.critic_obs_normalizer is not None else []),
            **common,
        )
        register_algorithm_hooks(cfg, trainer, loss, agent, optimizer)
    if cfg.resume:
        trainer.load(cfg.resume)
        print(f"resumed from {cfg.resume} at {trainer.collected_frames} frames")
    start = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - start
    summary = {
        "algo": cfg.algo.name,
        "env": cfg.env.name,
        "seed": cfg.seed,
        "frames": trainer.collected_frames,
        "wall_seconds": wall,
        "final_return": trainer.last_return,
        "headline_policy": headline_policy(cfg),
        "batch_layout": getattr(trainer, "batch_layout", None),
        "run_dir": run_dir,
    }
    if cfg.eval_episodes > 0:
        eval_env = build_env(cfg, num_envs=cfg.algo.num_policies * cfg.eval_episodes, seed=cfg.seed + 10_000)
        if recurrent:
            eval_env = add_recurrent_transforms(eval_env, agent)
        stats = evaluate_policies(eval_env, agent.actor, num_policies=cfg.algo.num_policies)
        summary["eval_return"] = stats["return"].tolist()
        if cfg.algo.name == "pbt":  # a population's headline is its best member
            summary["headline_policy"] = int(stats["return"].argmax())
    with open(os.path.join(run_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print(json.dumps(summary))
    collector.shutdown()
    return summary


if __name__ == "__main__":
    main()
