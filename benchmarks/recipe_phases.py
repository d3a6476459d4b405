"""The recipe's training iteration split into phases, PPO against SAPG (or EPO) in one process, and the
wall-time ratio the paper's design alone would give (issue 18, docs/throughput.md).

For each seed it builds both trainers as ``recipes/train.py`` does (``recipes/common.py``'s
``build_trainer``, the env's ``PopulationCollector``, the recipe's logger (CSV) in a temporary folder,
``threads=1``) but without checkpoints (the recipe writes one every 500k frames, ~40 Acrobot
iterations), runs ``--warmup`` iterations of each, then ``--rounds`` rounds of one iteration each,
alternating which goes first. Every timed iteration is split into the phases of
``benchmarks/throughput.py`` (``collect``, ``value``, ``aggregate``, ``minibatch``, ``loss_forward``,
``backward``, ``optimizer``...; the same wrappers, no library code changed). Per seed it reports the
median seconds of every phase and of the iteration, and three ratios:

* ``ratio``: the median over rounds of SAPG's iteration time / PPO's in the same round;
* ``row_floor``: ``(C + U·rho) / (C + U)`` with PPO's collect time ``C``, PPO's update time ``U``
  (iteration minus collect) and ``rho`` = SAPG's training rows / PPO's (``(N + K) / N``, K = N/M the
  leader's off-policy env-rows). The ratio SAPG would reach if collecting cost what PPO's does and its
  update cost exactly its extra rows: what the paper's design costs, no implementation overhead;
* ``excess``: ``ratio - row_floor``, the implementation's share.

Across seeds: their median, IQM and its 95% bootstrap interval (``rl_stats``). One process, round
robin: a change in the machine's speed hits both alike, which the two-process protocol of
``recipe_wall_ratio.py`` cannot promise. It times iterations, not whole runs (no start-up, no final
checkpoint), so its ratio is not that script's.

Example::

    python benchmarks/recipe_phases.py --env acrobot --seeds 0 1 2 3 4 \\
        --out benchmarks/results/acrobot_phases.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "recipes"))
from env_throughput import _device_name  # noqa: E402
from recipe_wall_ratio import ratio_summary  # noqa: E402
from throughput import PHASES, PhaseProfile, instrument_trainer  # noqa: E402

from torchrl_sapg.runtime import keep_freed_host_memory  # noqa: E402


def build_recipe_trainer(algo: str, env: str, seed: int, extra: list[str], log_dir: Path):
    """``(trainer, frames per iteration)`` as ``recipes/train.py`` builds them (its logger writes to ``log_dir``),
    without checkpoints."""
    from common import build_agent, build_collection_policy, build_env, build_trainer, headline_policy
    from hydra import compose, initialize_config_dir

    from torchrl_sapg.collectors import PopulationCollector
    from torchrl_sapg.trainers.logging import make_logger

    overrides = [f"algo={algo}", f"env={env}", f"seed={seed}", "threads=1", "progress_bar=false", *extra]
    with initialize_config_dir(config_dir=str(ROOT / "recipes" / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    torch.manual_seed(seed)
    built_env = build_env(cfg, seed=seed)
    agent = build_agent(cfg, built_env)
    frames = int(cfg.env.num_envs) * int(cfg.train.horizon)
    collector = PopulationCollector(built_env, build_collection_policy(cfg, agent), num_policies=cfg.algo.num_policies,
                                    frames_per_batch=frames)
    logger = make_logger(cfg.logger.backend, str(log_dir), exp_name=f"{algo}-{env}", project=cfg.logger.project,
                         offline=cfg.logger.get("offline", True))
    # no checkpoints: every train() call here ends a "run", which would write one per timed iteration
    trainer = build_trainer(
        cfg, agent, collector, total_frames=frames, logger=logger, log_interval=cfg.log_interval,
        checkpoint_path=None, nonfinite=cfg.train.nonfinite, compile=False, cudagraphs=False, seed=seed,
        headline_policy=headline_policy(cfg), progress_bar=False, sync=None,
    )
    return trainer, frames


def timed_iteration(trainer, frames: int) -> dict[str, float]:
    """One ``train()`` iteration of ``trainer``: its seconds per phase and in all (``"iteration"``)."""
    prof = PhaseProfile(torch.device("cpu"))
    trainer.total_frames = trainer.collected_frames + frames
    start = time.perf_counter()
    with instrument_trainer(trainer, prof):
        trainer.train()
    return {**prof.seconds, "iteration": time.perf_counter() - start}


def row_floor(collect_s: float, iteration_s: float, rows_ratio: float) -> float:
    """``(C + U·rho) / (C + U)``: the iteration ratio when only the training rows grow (``U = iteration - collect``).

    >>> row_floor(1.0, 3.0, 1.5)
    1.5
    """
    update = iteration_s - collect_s
    return (collect_s + update * rows_ratio) / iteration_s


def measure_seed(env: str, other: str, seed: int, extra: list[str], warmup: int, rounds: int) -> dict:
    """Both trainers of one seed, warmed up, then ``rounds`` alternating timed iterations; medians and ratios."""
    algos = ["ppo", other]
    with tempfile.TemporaryDirectory(prefix="recipe_phases_") as tmp:
        trainers = {a: build_recipe_trainer(a, env, seed, extra, Path(tmp) / a) for a in algos}
        for trainer, frames in trainers.values():
            for _ in range(warmup):
                trainer.total_frames = trainer.collected_frames + frames
                trainer.train()
        times: dict[str, list[dict]] = {a: [] for a in algos}
        for r in range(rounds):
            for a in (algos if r % 2 == 0 else algos[::-1]):
                times[a].append(timed_iteration(*trainers[a]))
        rows = {a: int(trainers[a][0].batch_layout["rows"]) for a in algos}
        for trainer, _ in trainers.values():
            trainer.collector.shutdown()
    med = {a: {k: statistics.median(t[k] for t in times[a]) for k in (*PHASES, "iteration")} for a in algos}
    ppo, alt = med["ppo"], med[other]
    rho = rows[other] / rows["ppo"]
    floor = row_floor(ppo["collect"], ppo["iteration"], rho)
    # each round's two iterations ran back to back: the median of their ratios is robust to the machine's drift
    ratio = statistics.median(o["iteration"] / p["iteration"] for o, p in zip(times[other], times["ppo"]))
    return {"seed": seed, "rows": rows, "rows_ratio": rho, "median_seconds": med, "ratio": ratio,
            "row_floor": floor, "excess": ratio - floor,
            "iteration_seconds": {a: [t["iteration"] for t in times[a]] for a in algos}}


def markdown(other: str, seeds: list[dict], stats: dict) -> str:
    """Per-seed ratios, then the phases of the first seed (ms per iteration) with SAPG's excess over PPO."""
    o = other.upper()
    lines = [f"| seed | PPO iteration s | {o} iteration s | {o} / PPO | row floor | excess |", "|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {s['seed']} | {s['median_seconds']['ppo']['iteration']:.4f} | {s['median_seconds'][other]['iteration']:.4f} "
              f"| {s['ratio']:.3f} | {s['row_floor']:.3f} | {s['excess']:+.3f} |" for s in seeds]
    parts = []
    for key in ("ratio", "row_floor", "excess"):
        low, high = stats[key]["iqm_ratio_ci"]
        parts.append(f"{key} IQM {stats[key]['iqm_ratio']:.3f} [{low:.3f}, {high:.3f}]")
    lines += ["", f"{o} / PPO over {len(seeds)} seeds (95% bootstrap intervals): " + "; ".join(parts), ""]
    first = seeds[0]["median_seconds"]
    lines += [f"Seed {seeds[0]['seed']}, median ms per iteration:", "",
              f"| phase | PPO | {o} | {o} - PPO |", "|---|---:|---:|---:|"]
    for k in (*PHASES, "iteration"):
        if first["ppo"][k] or first[other][k]:
            lines.append(f"| {k} | {first['ppo'][k] * 1e3:.2f} | {first[other][k] * 1e3:.2f} | "
                         f"{(first[other][k] - first['ppo'][k]) * 1e3:+.2f} |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--env", default="acrobot")
    p.add_argument("--algo", default="sapg", help="the algorithm compared with PPO (sapg | epo)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--warmup", type=int, default=3, help="untimed iterations of each trainer first")
    p.add_argument("--rounds", type=int, default=16, help="timed iterations of each, alternating which goes first")
    p.add_argument("--extra", nargs="*", default=[], help="further recipe overrides for both")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if args.rounds < 1 or args.warmup < 0:
        raise SystemExit(f"--rounds {args.rounds} --warmup {args.warmup}: give at least one round and no negative warm-up.")
    torch.set_num_threads(1)
    kept = keep_freed_host_memory()  # as recipes/train.py does on CPU (keep_freed_memory: true)
    t0 = time.time()
    seeds = [measure_seed(args.env, args.algo, s, args.extra, args.warmup, args.rounds) for s in args.seeds]
    stats = {key: ratio_summary([s[key] for s in seeds]) for key in ("ratio", "row_floor", "excess")}
    table = markdown(args.algo, seeds, stats)
    print(table)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    result = {
        "benchmark": f"recipe iteration by phase, {args.algo.upper()} vs PPO on {args.env}, one process (issue 18)",
        "command": " ".join(["python", "benchmarks/recipe_phases.py", *(argv if argv is not None else sys.argv[1:])]),
        "protocol": f"recipe defaults, 1 torch thread, keep_freed_memory={kept}; per seed both trainers in one process, "
                    f"{args.warmup} warm-up iterations each, then {args.rounds} rounds of one iteration each, alternating "
                    "which goes first; medians per phase",
        "cpu_model": _device_name(torch.device("cpu")), "commit": commit,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "seconds": round(time.time() - t0, 1),
        "seeds": seeds, "summary": stats, "table_markdown": table,
    }
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
