"""The recipe's training iteration split into phases, SAPG (or EPO) against PPO in one process, and
against PPO trained on SAPG's rows: how far SAPG's wall time is from what the paper's design costs
(issue 18, docs/throughput.md).

SAPG's leader also trains on K = N/M relabelled follower env-rows, so its update sees N + K env-rows
where PPO's sees N: the design's price. For each seed three trainers are built as
``recipes/train.py`` builds them (``recipes/common.py``'s ``build_trainer``, the env's
``PopulationCollector``, the recipe's logger in a temporary folder, ``threads=1``), without
checkpoints (the recipe writes one every 500k frames, ~40 Acrobot iterations):

* ``ppo``: the recipe's PPO, N envs;
* ``sapg`` (``--algo``): the recipe's SAPG, N envs, training on N + K env-rows;
* ``ppo_on_sapg_rows``: the recipe's PPO with N + K envs, so its update trains on exactly SAPG's rows
  in the same minibatch layout.

After ``--warmup`` iterations of each, ``--rounds`` rounds run one iteration of each, back to back,
the order rotating. Every timed iteration is split into the phases of ``benchmarks/throughput.py``
(``collect``, ``value``, ``aggregate``, ``minibatch``, ``loss_forward``, ``backward``,
``optimizer``...; the same wrappers, no library code changed). Per seed, the median seconds of each
phase and iteration, and the medians over rounds of:

* ``ratio``: SAPG's iteration time / PPO's;
* ``floor``: ``(C + V + R') / I``: PPO's collect ``C`` and value estimation ``V``, plus ``R'``, the
  rest of an iteration of PPO on SAPG's rows (its iteration less its collect and value estimation),
  over PPO's iteration ``I``. The ratio SAPG would reach if collecting cost what PPO's does and its
  update cost what PPO's costs on the same rows: the design's price and no implementation overhead;
* ``excess``: ``ratio - floor``, what SAPG spends beyond the design's price, split into
* ``collect_excess``: ``(C_sapg - C) / I``, SAPG's collection beyond PPO's. The same number of env
  steps, but a step with an episode end also runs TorchRL's partial reset, so this part follows how
  many steps of the batch hold one (the policies' behaviour, not the learner's code);
* ``learner_excess``: ``excess - collect_excess`` per round, the rest: the implementation's share.

With ``--algo pbt`` the second trainer is the recipe's in-process DexPBT population (``pbt=inprocess``):
its members train on their own env blocks, N env-rows in all as PPO, so there is no third trainer, the
floor is 1 and the whole excess beyond collection is the learner's.

Across seeds: median, IQM and its 95% bootstrap interval (``rl_stats``). One process with paired
rounds: a change in the machine's speed hits the three alike. It times iterations early in training, not
whole runs (no checkpoints), so its ratio is not ``recipe_wall_ratio.py``'s; that script's ``--interleaved``
mode times whole runs taking turns in the same way.

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
from rl_stats import ratio_summary  # noqa: E402
from throughput import PHASES, PhaseProfile, instrument_trainer  # noqa: E402

from torchrl_sapg.runtime import keep_freed_host_memory  # noqa: E402

#: the third trainer: PPO on SAPG's training rows
ON_ROWS = "ppo_on_sapg_rows"
SUMMARY_KEYS = ("ratio", "floor", "excess", "collect_excess", "learner_excess")


def recipe_config(algo: str, env: str, seed: int, extra: list[str]):
    """The recipe's resolved Hydra config for ``algo`` on ``env`` (``threads=1``, no progress bar) plus ``extra``."""
    from hydra import compose, initialize_config_dir

    population = ["pbt=inprocess"] if algo == "pbt" else []  # algo=pbt is the member layout pbt=inprocess selects
    overrides = [f"algo={algo}", *population, f"env={env}", f"seed={seed}", "threads=1", "progress_bar=false", *extra]
    with initialize_config_dir(config_dir=str(ROOT / "recipes" / "conf"), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def build_recipe_trainer(algo: str, env: str, seed: int, extra: list[str], log_dir: Path, cfg=None):
    """``(trainer, frames per iteration, num_envs)`` as ``recipes/train.py`` builds them (its logger writes to
    ``log_dir``), without checkpoints; ``cfg`` is :func:`recipe_config`'s, composed here if not given."""
    from common import (add_recurrent_env_transforms, build_agent, build_collection_policy, build_env, build_trainer,
                        headline_policy, is_recurrent_config, seed_everything)

    from torchrl_sapg.collectors import PopulationCollector
    from torchrl_sapg.trainers.logging import make_logger

    cfg = recipe_config(algo, env, seed, extra) if cfg is None else cfg
    seed_everything(seed)
    built_env = build_env(cfg, seed=seed)
    agent = build_agent(cfg, built_env)
    if is_recurrent_config(cfg):  # InitTracker and the LSTM hidden-state primers, as recipes/train.py adds them
        built_env = add_recurrent_env_transforms(cfg, built_env, agent)
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
    return trainer, frames, int(cfg.env.num_envs)


def train_once(trainer, frames: int) -> None:
    """One more iteration of ``trainer``."""
    trainer.total_frames = trainer.collected_frames + frames
    trainer.train()


def timed_iteration(trainer, frames: int) -> dict[str, float]:
    """One ``train()`` iteration of ``trainer``: its seconds per phase and in all (``"iteration"``)."""
    prof = PhaseProfile(torch.device("cpu"))
    start = time.perf_counter()
    with instrument_trainer(trainer, prof):
        train_once(trainer, frames)
    return {**prof.seconds, "iteration": time.perf_counter() - start}


def design_floor(ppo: dict[str, float], ppo_on_rows: dict[str, float]) -> float:
    """PPO's collection and value estimation plus the rest of an iteration of PPO on SAPG's training rows,
    over PPO's iteration (each a dict of seconds by phase, ``"iteration"`` included).

    >>> round(design_floor({"collect": 1.0, "value": 0.5, "iteration": 3.0}, {"collect": 1.0, "value": 0.5, "iteration": 3.6}), 6)
    1.2
    """
    rest_on_rows = ppo_on_rows["iteration"] - ppo_on_rows["collect"] - ppo_on_rows["value"]
    return (ppo["collect"] + ppo["value"] + rest_on_rows) / ppo["iteration"]


def batch_rows(trainer) -> tuple[int, int]:
    """``(training rows, minibatch rows)`` of a trainer's update, all members together for a population."""
    layout = trainer.batch_layout
    if "rows" in layout:
        return int(layout["rows"]), int(layout["minibatch_size"])
    m = trainer.learner.ensemble.num_members
    return int(layout["rows_per_member"]) * m, int(layout["minibatch_size_per_member"]) * m


def measure_seed(env: str, other: str, seed: int, extra: list[str], warmup: int, rounds: int) -> dict:
    """The three trainers of one seed, warmed up, then ``rounds`` rounds of one timed iteration each (the order
    rotating); per-phase medians, and the medians over rounds of the ratio, the floor and the two parts of the
    excess."""
    with tempfile.TemporaryDirectory(prefix="recipe_phases_") as tmp:
        trainers = {a: build_recipe_trainer(a, env, seed, extra, Path(tmp) / a) for a in ("ppo", other)}
        for trainer, frames, _ in trainers.values():
            for _ in range(warmup):
                train_once(trainer, frames)
        if other != "pbt":  # PPO on as many env-rows as SAPG trains on (N + K), in the same minibatch layout
            trainer, frames, num_envs = trainers[other]
            rows = trainer.batch_layout["rows"]  # steps, or env-rows when the minibatches are whole sequences
            on_rows = rows if trainer.sequence_minibatches else rows * num_envs // frames
            trainers[ON_ROWS] = build_recipe_trainer("ppo", env, seed, [*extra, f"env.num_envs={on_rows}"], Path(tmp) / ON_ROWS)
            for _ in range(warmup):
                train_once(*trainers[ON_ROWS][:2])
        names = list(trainers)
        times: dict[str, list[dict]] = {a: [] for a in names}
        for r in range(rounds):
            k = r % len(names)
            for a in names[k:] + names[:k]:
                times[a].append(timed_iteration(*trainers[a][:2]))
        rows = {a: batch_rows(t)[0] for a, (t, _, _) in trainers.items()}
        layouts = {a: batch_rows(t)[1] for a, (t, _, _) in trainers.items()}
        for trainer, _, _ in trainers.values():
            trainer.collector.shutdown()
    med = {a: {k: statistics.median(t[k] for t in times[a]) for k in (*PHASES, "iteration")} for a in names}
    # a round's iterations ran back to back: medians of per-round quotients are robust to the machine's drift;
    # a population trains on PPO's own rows, so PPO is its own "PPO on those rows" (floor 1)
    per_round = list(zip(times["ppo"], times[other], times[ON_ROWS if ON_ROWS in times else "ppo"]))
    ratio = statistics.median(o["iteration"] / p["iteration"] for p, o, _ in per_round)
    floor = statistics.median(design_floor(p, q) for p, _, q in per_round)
    collect = [(o["collect"] - p["collect"]) / p["iteration"] for p, o, _ in per_round]
    learner = [(o["iteration"] - p["iteration"]) / p["iteration"] - c - (design_floor(p, q) - 1.0)
               for (p, o, q), c in zip(per_round, collect)]
    return {"seed": seed, "rows": rows, "minibatch_size": layouts, "median_seconds": med, "ratio": ratio,
            "floor": floor, "excess": ratio - floor, "collect_excess": statistics.median(collect),
            "learner_excess": statistics.median(learner),
            **{f"{k}_seconds": {a: [t[k] for t in times[a]] for a in names} for k in ("iteration", "collect", "value")}}


def markdown(other: str, seeds: list[dict], stats: dict) -> str:
    """Per-seed ratios, then the phases of the first seed (ms per iteration) with SAPG's excess over PPO."""
    o = other.upper()

    def on_rows(s: dict) -> dict:  # a population trains on PPO's own rows: PPO is its third trainer
        return s["median_seconds"].get(ON_ROWS, s["median_seconds"]["ppo"])

    lines = [f"| seed | PPO iteration s | {o} iteration s | PPO on {o}'s rows s | {o} / PPO | floor | excess "
             "| of which collection | of which learner |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {s['seed']} | {s['median_seconds']['ppo']['iteration']:.4f} | {s['median_seconds'][other]['iteration']:.4f} "
              f"| {on_rows(s)['iteration']:.4f} | {s['ratio']:.3f} | {s['floor']:.3f} | {s['excess']:+.3f} "
              f"| {s['collect_excess']:+.3f} | {s['learner_excess']:+.3f} |" for s in seeds]
    parts = []
    for key in SUMMARY_KEYS:
        low, high = stats[key]["iqm_ratio_ci"]
        parts.append(f"{key} IQM {stats[key]['iqm_ratio']:.3f} [{low:.3f}, {high:.3f}]")
    lines += ["", f"{o} / PPO over {len(seeds)} seeds (95% bootstrap intervals): " + "; ".join(parts), ""]
    first = seeds[0]["median_seconds"]
    lines += [f"Seed {seeds[0]['seed']}, median ms per iteration:", "",
              f"| phase | PPO | {o} | PPO on {o}'s rows | {o} - PPO | {o} - PPO on its rows |", "|---|---:|---:|---:|---:|---:|"]
    for k in (*PHASES, "iteration"):
        ppo, alt, same = first["ppo"][k], first[other][k], on_rows(seeds[0])[k]
        if ppo or alt or same:
            lines.append(f"| {k} | {ppo * 1e3:.2f} | {alt * 1e3:.2f} | {same * 1e3:.2f} | {(alt - ppo) * 1e3:+.2f} "
                         f"| {(alt - same) * 1e3:+.2f} |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--env", default="acrobot")
    p.add_argument("--algo", default="sapg", choices=("sapg", "epo", "pbt"),
                   help="the algorithm compared with PPO (pbt: the in-process population, pbt=inprocess)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--warmup", type=int, default=3, help="untimed iterations of each trainer first")
    p.add_argument("--rounds", type=int, default=16, help="timed iterations of each, the order rotating")
    p.add_argument("--extra", nargs="*", default=[], help="further recipe overrides for all three")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if args.rounds < 1 or args.warmup < 0:
        raise SystemExit(f"--rounds {args.rounds} --warmup {args.warmup}: give at least one round and no negative warm-up.")
    torch.set_num_threads(1)
    kept = keep_freed_host_memory()  # as recipes/train.py does on CPU (keep_freed_memory: true)
    t0 = time.time()
    seeds = [measure_seed(args.env, args.algo, s, args.extra, args.warmup, args.rounds) for s in args.seeds]
    stats = {key: ratio_summary([s[key] for s in seeds]) for key in SUMMARY_KEYS}
    table = markdown(args.algo, seeds, stats)
    print(table)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    result = {
        "benchmark": f"recipe iteration by phase, {args.algo.upper()} vs PPO on {args.env}, one process (issue 18)",
        "command": " ".join(["python", "benchmarks/recipe_phases.py", *(argv if argv is not None else sys.argv[1:])]),
        "overrides": args.extra,
        "protocol": f"recipe defaults{' with ' + ' '.join(args.extra) if args.extra else ''}, 1 torch thread, "
                    f"keep_freed_memory={kept}, no checkpoints; per seed PPO, "
                    f"{args.algo.upper()} and PPO on {args.algo.upper()}'s training rows (for pbt: PPO itself, the same "
                    f"rows) in one process, {args.warmup} "
                    f"warm-up iterations each, then {args.rounds} rounds of one iteration each, the order rotating; "
                    "medians per phase, medians over rounds of the per-round ratio, floor, collection and learner excess",
        "cpu_model": _device_name(torch.device("cpu")), "commit": commit,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "seconds": round(time.time() - t0, 1),
        "seeds": seeds, "summary": stats, "table_markdown": table,
    }
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
