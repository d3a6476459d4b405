"""Train PPO, SAPG, EPO or an in-process PBT population on a batched env.

    python recipes/train.py algo=ppo env=pendulum
    python recipes/train.py pbt=inprocess env=pendulum                   # 8 PPO members in this process
    python recipes/train.py algo=ppo env=cartpole logger=wandb seed=1 total_frames=3e6
    python recipes/train.py resume=runs/ppo-pendulum/<date>/checkpoints/last.pt
    torchrun --nproc_per_node=2 recipes/train.py algo=sapg env=pendulum    # data-parallel ranks

Writes to the run folder: the resolved config (``config.yaml``), the logs (CSV by default),
``checkpoints/last.pt`` and ``summary.json``.

Under ``torchrun`` every rank runs ``env.num_envs`` envs of its own (seeded per rank) with the
full population layout; ``total_frames`` counts all ranks; rank 0 writes everything
(``docs/distributed.md``).
"""
from __future__ import annotations

import hashlib
import json
import os
import secrets
import sys
import time

import hydra
import torch
import torch.distributed as dist
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from checks import check_config, check_overrides  # noqa: E402
from common import (  # noqa: E402
    add_recurrent_env_transforms,
    algorithm,
    build_agent,
    build_collection_policy,
    build_env,
    build_trainer,
    headline_policy,
    is_recurrent_config,
    pbt_mode,
    register_algorithm_hooks,  # noqa: F401  (kept importable from train: tests wrap it)
    seed_everything,
)

from torchrl_sapg.collectors import PopulationCollector  # noqa: E402
from torchrl_sapg.runtime import keep_freed_host_memory  # noqa: E402
from torchrl_sapg.trainers.distributed import init_distributed, rank_seed, world_info  # noqa: E402
from torchrl_sapg.trainers.evaluation import evaluate_policies  # noqa: E402
from torchrl_sapg.trainers.checkpoint import load_checkpoint, remove_stale_temp_files  # noqa: E402
from torchrl_sapg.trainers.logging import make_logger  # noqa: E402
from torchrl_sapg.trainers.run_dir import RunFolderLock, check_fresh_start, trim_csv_logs  # noqa: E402

# the default run folder's suffix: two runs started in the same second never share a folder
OmegaConf.register_new_resolver("run_token", lambda: f"{os.getpid()}{secrets.token_hex(2)}", use_cache=True, replace=True)

#: config entries a checkpoint must agree with to be resumed (the rest may change, e.g. total_frames)
RESUME_MUST_MATCH = ("algo.name", "algo.num_policies", "algo.latent_dim", "env.name", "env.num_envs",
                     "model.hidden_sizes", "model.critic_hidden_sizes", "model.lstm_hidden")


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> dict:
    check_config(cfg)  # one clear line for a bad option, before any folder, env or network is made
    rank, local_rank, world_size = world_info()
    if world_size > 1 and str(cfg.device) == "cuda":
        cfg.device = f"cuda:{local_rank}"  # one GPU per local rank
    sync = init_distributed(cfg.device, backend=cfg.dist_backend)
    is_main = sync is None or sync.is_main
    run_dir = HydraConfig.get().runtime.output_dir
    if sync is not None:  # rank 0's folder (the ranks' timestamps may differ)
        run_dir = sync.broadcast_object(run_dir)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    resolved["world_size"] = world_size
    resume_state = None
    if cfg.resume:  # read and validate the checkpoint before anything is written
        resume_state = load_checkpoint(cfg.resume)
        check_resume_config(resume_state, resolved, cfg.resume)
    lock = None
    if is_main:
        lock = RunFolderLock(run_dir).acquire()  # held until the process exits (released by the kernel on a kill)
        pbt_member = pbt_mode(cfg) == "decentralized"  # a member resumes from its workspace
        if resume_state is None and not pbt_member:
            check_fresh_start(run_dir)
        remove_stale_temp_files(os.path.join(run_dir, "checkpoints"))
        OmegaConf.save(cfg, os.path.join(run_dir, "config.yaml"), resolve=True)
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    # the learner's activations live in host memory only on a CPU device
    freed_memory_kept = bool(cfg.get("keep_freed_memory", True)) and torch.device(cfg.device).type == "cpu" and keep_freed_host_memory()
    seed_everything(cfg.seed)  # the same initial weights everywhere (rank 0's are broadcast anyway)

    algo = algorithm(cfg)  # recipes/common.py's ALGORITHMS entry: networks, loss, trainer, hooks
    env = build_env(cfg, seed=rank_seed(cfg.seed, rank))  # each rank its own episodes
    agent = build_agent(cfg, env)
    recurrent = is_recurrent_config(cfg)
    if recurrent:  # InitTracker + the LSTM hidden-state primers; collect with actor and critic
        env = add_recurrent_env_transforms(cfg, env, agent)
    collector = PopulationCollector(
        env, build_collection_policy(cfg, agent), num_policies=cfg.algo.num_policies,
        frames_per_batch=cfg.env.num_envs * cfg.train.horizon,
    )
    logger = make_logger(
        cfg.logger.backend if is_main else "none", run_dir, exp_name=f"{algo.name}-{cfg.env.name}", project=cfg.logger.project,
        offline=cfg.logger.get("offline", True),
    )
    trainer = build_trainer(  # the loss, optimiser, LR schedule and the algorithm's hooks (PBT member last)
        cfg,
        agent,
        collector,
        total_frames=int(cfg.total_frames),
        logger=logger,
        log_interval=cfg.log_interval,
        checkpoint_path=os.path.join(run_dir, "checkpoints", "last.pt"),
        checkpoint_interval=int(cfg.checkpoint_interval),
        keep_checkpoints=int(cfg.keep_checkpoints),
        nonfinite=cfg.train.nonfinite,
        compile=bool(cfg.train.compile),
        cudagraphs=bool(cfg.train.cudagraphs),
        seed=cfg.seed,
        checkpoint_extra=lambda: {"config": resolved},
        headline_policy=headline_policy(cfg),
        progress_bar=cfg.progress_bar and is_main,
        sync=sync,
    )
    if resume_state is not None:
        trainer.restore(resume_state, source=str(cfg.resume))
        print(f"resumed from {cfg.resume} at {trainer.collected_frames} frames")
    if is_main and cfg.logger.backend == "csv":
        # after every hook's setup (a PBT member resumes from its workspace there): rows logged after the
        # resumed checkpoint are logged again by this run
        trainer.register_op("setup", lambda: trim_csv_logs(run_dir, trainer.collected_frames))
    frames_before = trainer.collected_frames
    start = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - start
    summary_path = os.path.join(run_dir, "summary.json")
    if is_main and trainer.collected_frames == frames_before and resume_state is not None and os.path.exists(summary_path):
        print(f"nothing left to train (total_frames={int(cfg.total_frames)}); {summary_path} left as it was")
        collector.shutdown()
        if lock is not None:
            lock.release()
        with open(summary_path) as f:
            return json.load(f)
    digests = None
    if sync is not None:  # a cheap end-of-run check that the ranks really trained one model
        digests = sync.gather_objects(parameter_digest(trainer.loss_module))
    if not is_main:  # rank 0 evaluates and writes the summary
        collector.shutdown()
        dist.destroy_process_group()
        return {}
    summary = {
        "algo": algo.name,
        "env": cfg.env.name,
        "seed": cfg.seed,
        "frames": trainer.collected_frames,
        "wall_seconds": wall,
        "final_return": trainer.last_return,
        "headline_policy": headline_policy(cfg),
        "batch_layout": getattr(trainer, "batch_layout", None),
        "run_dir": run_dir,
        "world_size": world_size,
        "frames_per_second": trainer.collected_frames / max(wall, 1e-9),
        "keep_freed_memory": freed_memory_kept,
    }
    if digests is not None:
        summary["rank_parameter_digests"] = digests
        summary["ranks_identical"] = len(set(digests)) == 1
    if cfg.eval_episodes > 0:
        eval_env = build_env(cfg, num_envs=cfg.algo.num_policies * cfg.eval_episodes, seed=cfg.seed + 10_000)
        if recurrent:
            eval_env = add_recurrent_env_transforms(cfg, eval_env, agent)
        stats = evaluate_policies(eval_env, agent.actor, num_policies=cfg.algo.num_policies)
        summary["eval_return"] = stats["return"].tolist()
        for key in ("success", "true_objective"):  # tasks that report them: per-policy episode means
            if key in stats.keys():
                summary[f"eval_{key}"] = stats[key].tolist()
        if algo.population:  # a population's headline is its best member
            summary["headline_policy"] = int(stats["return"].argmax())
    tmp = summary_path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(summary, f, indent=2)
    os.replace(tmp, summary_path)
    print(json.dumps(summary))
    collector.shutdown()
    if lock is not None:
        lock.release()
    if sync is not None:
        dist.destroy_process_group()
    return summary


def check_resume_config(state: dict, resolved: dict, source: str) -> None:
    """Raise a one-line error if the checkpoint was written by a run whose :data:`RESUME_MUST_MATCH` entries differ."""
    saved = (state.get("extra") or {}).get("config")
    if not isinstance(saved, dict):
        return  # written outside the recipe: the state-dict match in restore() decides

    def get(cfg: dict, dotted: str):
        for part in dotted.split("."):
            cfg = cfg.get(part) if isinstance(cfg, dict) else None
        return cfg

    diff = [(k, get(saved, k), get(resolved, k)) for k in RESUME_MUST_MATCH if get(saved, k) != get(resolved, k)]
    if diff:
        held = ", ".join(f"{k}={a!r}" for k, a, _ in diff)
        asked = ", ".join(f"{k}={b!r}" for k, _, b in diff)
        raise ValueError(f"resume={source}: the checkpoint holds {held} but this run asks for {asked}; "
                         "pass the checkpoint's values (its config.yaml) or start a new run.")


def parameter_digest(module: torch.nn.Module) -> str:
    """SHA-256 of every parameter and buffer's bytes (equal digests: bit-identical models)."""
    h = hashlib.sha256()
    for name, t in (*module.named_parameters(), *module.named_buffers()):
        h.update(name.encode())
        h.update(t.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def strip_launcher_flags(argv: list[str]) -> list[str]:
    """Drop the argparse-style flags launchers add (Isaac Lab's ``--distributed``, the legacy
    ``torch.distributed.launch`` ``--local-rank=N``), which Hydra would reject; torchrun's
    environment (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``) is what the recipe reads."""
    out, skip = [], False
    for i, arg in enumerate(argv):
        if skip:
            skip = False
            continue
        if arg == "--distributed":
            continue
        if arg.startswith(("--local-rank", "--local_rank")):
            value = arg.split("=", 1)[1] if "=" in arg else (argv[i + 1] if i + 1 < len(argv) else None)
            skip = "=" not in arg
            if value is not None:
                os.environ.setdefault("LOCAL_RANK", value)
            continue
        out.append(arg)
    return out


if __name__ == "__main__":
    sys.argv = [sys.argv[0], *strip_launcher_flags(sys.argv[1:])]
    try:
        check_overrides(sys.argv[1:])  # a renamed key: one line naming the new one, before Hydra's own error
    except ValueError as err:
        sys.exit(f"recipes/train.py: {err}")
    main()
