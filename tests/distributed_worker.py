"""One torchrun rank of ``tests/test_distributed.py`` (launched with 2 gloo ranks on CPU).

    python -m torch.distributed.run --nproc_per_node=2 tests/distributed_worker.py OUT SCENARIO [overrides...]

Scenarios:

* ``collectives``: each rank makes data from ``seed = rank`` and writes what the collectives
  return (averaged gradients, merged normaliser statistics, reduced episode stats and
  fitness); the test recomputes the pooled values by hand.
* ``train``: assembles a run exactly as ``recipes/train.py`` does (Hydra config + the
  recipe's builders) with the given overrides, trains, and writes the rank's full learner
  state (weights, buffers, optimiser state, hook states) and its last collected batch.
"""
from __future__ import annotations

import os
import pathlib
import sys

import torch

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "recipes")]

from torchrl_sapg.trainers.distributed import init_distributed, rank_seed  # noqa: E402


def collectives(out: pathlib.Path, sync) -> None:
    from tensordict import TensorDict

    from torchrl_sapg.modules import ObservationNormalizer
    from torchrl_sapg.population.ensemble import PolicyEnsemble

    g = torch.Generator().manual_seed(sync.rank)
    # gradients of a linear model on this rank's rows, averaged over ranks
    lin = torch.nn.Linear(3, 2)
    sync.broadcast_module(lin)
    x = torch.randn(16, 3, generator=g)
    lin(x).pow(2).mean().backward()
    kl = torch.tensor([float(sync.rank + 1)])
    sync.average_gradients_(lin.parameters(), [kl])
    # normaliser statistics over both ranks' observations (rank-dependent batch sizes)
    obs = torch.randn(10 + 5 * sync.rank, 4, generator=g) * (sync.rank + 1) + 3
    norm = ObservationNormalizer((4,))
    norm.update(obs[:7])  # a history, identical on both ranks
    norm.load_state_dict(sync.broadcast_object(norm.state_dict()))
    norm.update(obs, sync=sync)
    # a stacked population's normalisers: 2 members, each on its own rows
    ens = PolicyEnsemble(4, 1, num_members=2, hidden_sizes=(8,))
    ens_obs = torch.randn(2, 6, 4, generator=g) + sync.rank
    ens.update_normalizers(ens_obs, sync=sync)
    # per-policy episode statistics and a fitness window
    count = torch.tensor([2.0, 0.0, 1.0 + sync.rank])
    ret = torch.tensor([1.0 + sync.rank, float("nan"), -2.0 * sync.rank])
    stats = TensorDict({"return": ret, "count": count}, [3])
    reduced = sync.reduce_episode_stats(stats)
    summed = sync.sum_([torch.tensor([1.0, 2.0]) * (sync.rank + 1)])[0]
    broadcast = sync.broadcast_([torch.tensor([float(sync.rank)])])[0]
    torch.save(
        {
            "params": {k: v.detach().clone() for k, v in lin.named_parameters()},
            "grads": {k: v.grad.clone() for k, v in lin.named_parameters()},
            "x": x,
            "kl": kl,
            "obs": obs,
            "norm": norm.state_dict(),
            "ens_obs": ens_obs,
            "ens_stats": ens.actor_params["backbone", "obs_normalizer", "stats"].to_dict()
            if "backbone" in ens.actor_params.keys()
            else ens.actor_params["obs_normalizer", "stats"].to_dict(),
            "reduced": reduced.to_dict(),
            "summed": summed,
            "broadcast": broadcast,
        },
        out / f"rank{sync.rank}.pt",
    )


def train(out: pathlib.Path, sync, overrides: list[str]) -> None:
    from common import build_agent, build_env, build_loss, build_pbt_trainer, register_algorithm_hooks
    from hydra import compose, initialize_config_dir

    from torchrl_sapg.collectors import PopulationCollector
    from torchrl_sapg.trainers import LearningRateSchedule, OnPolicyTrainer

    with initialize_config_dir(config_dir=str(REPO / "recipes" / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    torch.set_num_threads(1)
    torch.manual_seed(cfg.seed)
    env = build_env(cfg, seed=rank_seed(cfg.seed, sync.rank))
    agent = build_agent(cfg, env)
    t = cfg.train
    collector = PopulationCollector(env, agent.actor, num_policies=cfg.algo.num_policies,
                                    frames_per_batch=cfg.env.num_envs * t.horizon)
    last = {}

    def keep(batch):
        last["batch"] = batch.exclude("advantage", "value_target").clone()
        return batch

    common = dict(total_frames=int(cfg.total_frames), progress_bar=False, seed=cfg.seed, sync=sync,
                  checkpoint_path=str(out / "last.pt"))
    if cfg.algo.name == "pbt":
        trainer = build_pbt_trainer(cfg, agent, collector, **common)
        optimizer = trainer.learner.optimizer
    else:
        loss, value_estimator = build_loss(cfg, agent)
        optimizer = torch.optim.Adam(loss.parameters(), lr=t.lr)
        schedule = LearningRateSchedule(optimizer, mode=t.lr_schedule, kl_threshold=t.kl_threshold,
                                        min_lr=t.min_lr, max_lr=t.max_lr, total_frames=int(cfg.total_frames))
        trainer = OnPolicyTrainer(
            collector=collector, loss_module=loss, optimizer=optimizer, num_epochs=t.num_epochs,
            num_minibatches=t.num_minibatches, value_estimator=value_estimator, max_grad_norm=t.max_grad_norm,
            lr_schedule=schedule, kl_actor=agent.actor,
            obs_normalizers=[n for n in (agent.obs_normalizer,) if n is not None], **common,
        )
        register_algorithm_hooks(cfg, trainer, loss, agent, optimizer)
    trainer.register_op("batch_process", keep)
    trainer.train()
    state = trainer.checkpoint_state()
    torch.save(
        {
            "model": trainer.loss_module.state_dict(),
            "optimizer": optimizer.state_dict(),
            "hooks": {k: v for k, v in state["trainer"].items() if k not in ("loss_module", "optimizer", "collector")},
            "frames": trainer.collected_frames,
            "history": trainer.history,
            "batch": last["batch"].to_dict(),
        },
        out / f"rank{sync.rank}.pt",
    )
    collector.shutdown()


def main() -> None:
    out, scenario, overrides = pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[3:]
    sync = init_distributed("cpu")
    assert sync is not None and sync.world_size == int(os.environ["WORLD_SIZE"])
    if scenario == "collectives":
        collectives(out, sync)
    elif scenario == "train":
        train(out, sync, overrides)
    else:
        raise SystemExit(f"unknown scenario {scenario!r}")
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
