"""Recipe wall time of SAPG (or EPO) against PPO, end to end, at the recipe's defaults.

For each seed it runs ``recipes/train.py algo=ppo`` and ``algo=<other>`` on the same env with the
recipe's defaults (``threads=1``, no progress bar, CSV logs in a temporary folder): the two runs of a
seed at the same time, one per core, so a change in the machine's load hits both, or with
``--sequential`` one after the other, each alone on the machine (no contention between them; the order
alternates from seed to seed, so a drift in the machine's speed does not always favour the same
algorithm). It reads each
run's ``summary.json`` (``wall_seconds``, ``frames``, ``final_return``), prints a table of
the per-seed ratios with their median, their IQM and its 95% bootstrap interval over seeds
(``rl_stats``), and writes JSON (docs/throughput.md, issue 18).

``--interleaved`` runs a seed's two whole runs side by side in this process instead: the trainers are
built as ``recipes/train.py`` builds them and take turns, one iteration each (the order swapping every
round), each with its own global random state, so each computes what it computes alone (the same final
return) while a change in the machine's speed hits both within a second. A run's wall time is the sum
of its iterations and of the checkpoints the recipe writes (every ``checkpoint_interval`` frames and at
the end), which is what the recipe's ``wall_seconds`` times.

Example::

    python benchmarks/recipe_wall_ratio.py --env acrobot --seeds 0 1 2 3 4 --sequential \\
        --out benchmarks/results/acrobot_sequential_wall_ratio.json
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from env_throughput import _device_name  # noqa: E402
from rl_stats import ratio_summary  # noqa: E402


def run_pair(env: str, algos: list[str], seed: int, extra: list[str], workdir: Path, sequential: bool = False) -> list[dict]:
    """One recipe run per algorithm for ``seed``, started at once (or one after the other); their summaries."""
    procs, runs = [], []
    for algo in algos:  # (given in the order to run them)
        run_dir = workdir / f"{algo}_seed{seed}"
        cmd = [sys.executable, str(ROOT / "recipes" / "train.py"), f"algo={algo}", f"env={env}", f"seed={seed}",
               "threads=1", "progress_bar=false", f"hydra.run.dir={run_dir}", *extra]
        log = open(workdir / f"{algo}_seed{seed}.log", "w")
        procs.append((algo, run_dir, cmd, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                                           env={**os.environ, "OMP_NUM_THREADS": "1"}), log))
        if sequential:
            runs += _finish(workdir, seed, procs.pop())
    for entry in procs:
        runs += _finish(workdir, seed, entry)
    return runs


def interleaved_pair(env: str, algos: list[str], seed: int, extra: list[str], workdir: Path) -> list[dict]:
    """The recipe runs of ``seed``, one per algorithm, in this process, taking turns one iteration each; per run
    its seconds (iterations and checkpoint writes, in all and per iteration), frames and final return."""
    from recipe_phases import build_recipe_trainer, recipe_config, train_once

    from torchrl_sapg.trainers.checkpoint import rng_state, set_rng_state

    runs = {}
    for algo in algos:
        cfg = recipe_config(algo, env, seed, extra)
        trainer, frames, _ = build_recipe_trainer(algo, env, seed, extra, workdir / f"{algo}_seed{seed}", cfg)
        runs[algo] = {"trainer": trainer, "frames": frames, "total": int(cfg.total_frames), "rng": rng_state(),
                      "interval": int(cfg.checkpoint_interval), "last_save": 0, "seconds": [],
                      "checkpoint": str(workdir / f"{algo}_seed{seed}" / "checkpoints" / "last.pt")}
    for round_ in itertools.count():
        todo = [a for a in (algos if round_ % 2 == 0 else algos[::-1])
                if runs[a]["trainer"].collected_frames < runs[a]["total"]]
        if not todo:
            break
        for algo in todo:
            run, trainer = runs[algo], runs[algo]["trainer"]
            set_rng_state(run["rng"])  # this run's random streams, as if it ran alone
            start = time.perf_counter()
            train_once(trainer, run["frames"])
            frames = trainer.collected_frames
            if frames >= run["total"] or frames - run["last_save"] >= run["interval"]:  # as the recipe does
                trainer.save(run["checkpoint"])
                run["last_save"] = frames
            run["seconds"].append(time.perf_counter() - start)
            run["rng"] = rng_state()
    for run in runs.values():
        run["trainer"].collector.shutdown()
    return [{"algo": a, "seed": seed, "wall_seconds": sum(r["seconds"]), "frames": r["trainer"].collected_frames,
             "final_return": r["trainer"].last_return, "iteration_seconds": [round(t, 5) for t in r["seconds"]]}
            for a, r in runs.items()]


def _finish(workdir: Path, seed: int, entry) -> list[dict]:
    """Wait for one run; its summary (the tail of its log in the error if it failed)."""
    algo, run_dir, cmd, proc, log = entry
    code = proc.wait()
    log.close()
    if code != 0:
        tail = (workdir / f"{algo}_seed{seed}.log").read_text()[-2000:]
        raise RuntimeError(f"{' '.join(cmd)} exited with {code}:\n{tail}")
    summary = json.loads((run_dir / "summary.json").read_text())
    return [{"algo": algo, "seed": seed, "wall_seconds": summary["wall_seconds"], "frames": summary["frames"],
             "final_return": summary.get("final_return"), "command": " ".join(["python", "recipes/train.py", *cmd[2:]])}]


def markdown(algo: str, wall: dict, ratios: dict, stats: dict) -> str:
    """The per-seed wall times (``wall[algo, seed]``) and ratios, then their median, IQM and its interval."""
    o = algo.upper()
    lines = [f"| seed | PPO wall s | {o} wall s | {o} / PPO |", "|---:|---:|---:|---:|"]
    lines += [f"| {s} | {wall['ppo', s]:.1f} | {wall[algo, s]:.1f} | {r:.3f} |" for s, r in ratios.items()]
    low, high = stats["iqm_ratio_ci"]
    return "\n".join(lines) + (f"\n\n{o} / PPO over {len(ratios)} seeds: median {stats['median_ratio']:.3f}, "
                               f"IQM {stats['iqm_ratio']:.3f} (95% bootstrap interval {low:.3f}-{high:.3f})")


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--env", default="acrobot")
    p.add_argument("--algo", default="sapg", help="the algorithm compared with PPO (sapg | epo)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--extra", nargs="*", default=[], help="further recipe overrides for both runs")
    protocol = p.add_mutually_exclusive_group()
    protocol.add_argument("--sequential", action="store_true",
                          help="run a seed's two recipes one after the other, each alone on the machine (default: at the same time)")
    protocol.add_argument("--interleaved", action="store_true",
                          help="run a seed's two recipes in this process, taking turns one iteration each")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    algos = ["ppo", args.algo]
    t0 = time.time()
    runs = []
    if args.interleaved:
        torch.set_num_threads(1)
        from torchrl_sapg.runtime import keep_freed_host_memory

        keep_freed_host_memory()  # as recipes/train.py does on CPU (keep_freed_memory: true)
    with tempfile.TemporaryDirectory(prefix="wall_ratio_") as tmp:
        for i, seed in enumerate(args.seeds):
            order = algos[::-1] if (args.sequential or args.interleaved) and i % 2 else algos  # PPO first, then second, ...
            if args.interleaved:
                runs += interleaved_pair(args.env, order, seed, args.extra, Path(tmp))
            else:
                runs += run_pair(args.env, order, seed, args.extra, Path(tmp), args.sequential)
    wall = {(r["algo"], r["seed"]): r["wall_seconds"] for r in runs}
    ratios = {s: wall[args.algo, s] / wall["ppo", s] for s in args.seeds}
    stats = ratio_summary(list(ratios.values()))
    table = markdown(args.algo, wall, ratios, stats)
    print(table)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    result = {
        "benchmark": f"recipe wall time, {args.algo.upper()} vs PPO on {args.env}"
                     + (", one run after the other" if args.sequential else "")
                     + (", the two runs taking turns in one process" if args.interleaved else "") + " (issue 18)",
        "command": " ".join(["python", "benchmarks/recipe_wall_ratio.py", *(argv if argv is not None else sys.argv[1:])]),
        "protocol": "recipe defaults, 1 torch thread each; for each seed the two runs ran "
                    + ("one after the other, each alone on the machine, PPO first for the 1st, 3rd... seed and "
                       "second for the others" if args.sequential else
                       "in one process, one iteration of each in turn, the order swapping every round, each with its "
                       "own global random state; wall time = its iterations and the recipe's checkpoint writes"
                       if args.interleaved else "at the same time, one per core"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "cpu_model": _device_name(torch.device("cpu")), "commit": commit,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "seconds": round(time.time() - t0, 1),
        "runs": runs, "ratios": {str(s): r for s, r in ratios.items()}, **stats,
        "table_markdown": table,
    }
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
