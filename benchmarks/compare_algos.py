"""Compare algorithms at the same frame budget over several seeds, through recipes/train.py.

Each (algo, seed) is one ordinary recipe run; the figure of merit is the headline policy's
(PPO: the only policy; SAPG: the leader) deterministic evaluation return over ``--eval-episodes``
episodes at the end, plus the mean of the last ``--last`` logged training returns.

    python benchmarks/compare_algos.py --env pendulum --algos ppo sapg --seeds 0 1 2 --jobs 2
    python benchmarks/compare_algos.py --env pendulum --algos ppo sapg "sapg-ref=sapg:algo.mu_correction=false"
    python benchmarks/compare_algos.py --env cartpole --frames 2000000 -- train.num_epochs=8

An algo entry is ``NAME`` or ``LABEL=NAME:override,override`` (a variant with its own Hydra
overrides). Extra Hydra overrides after ``--`` go to every run. ``--jobs J`` runs J recipes at
once, each with one torch thread (OMP_NUM_THREADS=1: several multi-threaded torch processes on
few cores slow each other down by an order of magnitude). Prints a table and writes
``benchmarks/results/compare_<env>.json`` with every run's curve.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def read_curve(run_dir: Path, algo: str, env: str) -> list[tuple[int, float]]:
    """The headline training curve: the best member's return for a PBT population, else the headline policy's."""
    # the logger's folder is "<algo>-<env.name>", and env.name may differ from the config group
    found = sorted(run_dir.glob(f"{algo}-*/scalars/episode"))
    if not found:
        return []
    scalars = found[0]
    path = scalars / "best_return.csv" if algo == "pbt" else scalars / "return.csv"
    if not path.is_file():
        return []
    with open(path) as f:
        return [(int(float(r[0])), float(r[1])) for r in csv.reader(f)]


def parse_variant(entry: str) -> tuple[str, str, list[str]]:
    """``"ppo"`` -> ("ppo", "ppo", []); ``"ref=sapg:a=1,b=2"`` -> ("ref", "sapg", ["a=1", "b=2"])."""
    if "=" not in entry.split(":")[0]:
        return entry, entry, []
    label, rest = entry.split("=", 1)
    algo, _, overrides = rest.partition(":")
    return label, algo, [o for o in overrides.split(",") if o]


def run_folder_name(label: str, env: str, seed: int) -> str:
    """A run's folder name, ``<label>-<env>-s<seed>``; ``label_of_run_folder`` reads the label back."""
    return f"{label}-{env}-s{seed}"


def label_of_run_folder(name: str, env: str, seed: int) -> str | None:
    """The variant label in a folder named by ``run_folder_name``; None for any other name."""
    suffix = run_folder_name("", env, seed)
    return name.removesuffix(suffix) if name.endswith(suffix) and len(name) > len(suffix) else None


def run_one(label: str, algo: str, env: str, seed: int, frames: int | None, eval_episodes: int, extra: list[str],
            out_root: Path, threads: int | None) -> dict:
    run_dir = out_root / run_folder_name(label, env, seed)
    switch = "pbt=inprocess" if algo == "pbt" else f"algo={algo}"  # in-process PBT is a pbt mode
    cmd = [sys.executable, str(ROOT / "recipes" / "train.py"), switch, f"env={env}", f"seed={seed}",
           "progress_bar=false", f"eval_episodes={eval_episodes}", "logger=csv", f"hydra.run.dir={run_dir}", *extra]
    if frames is not None:
        cmd.append(f"total_frames={frames}")
    env_vars = dict(os.environ)
    if threads is not None:
        env_vars["OMP_NUM_THREADS"] = str(threads)
    t0 = time.perf_counter()
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env_vars)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{res.stderr[-4000:]}")
    summary = json.loads((run_dir / "summary.json").read_text())
    curve = read_curve(run_dir, algo, env)
    return {"algo": label, "seed": seed, "frames": summary["frames"], "wall_seconds": wall,
            "eval_return": summary["eval_return"][summary.get("headline_policy", 0)] if "eval_return" in summary else None,
            **{f"eval_{k}": summary[f"eval_{k}"][summary.get("headline_policy", 0)]
               for k in ("success", "true_objective") if f"eval_{k}" in summary},
            "eval_per_policy": {k: summary[k] for k in ("eval_return", "eval_success", "eval_true_objective") if k in summary},
            "curve": curve, "command": " ".join(cmd[1:])}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", default="pendulum")
    p.add_argument("--algos", nargs="+", default=["ppo", "sapg"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--frames", type=int, default=None, help="default: the env config's total_frames")
    p.add_argument("--eval-episodes", type=int, default=16)
    p.add_argument("--last", type=int, default=5, help="training returns averaged at the end")
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("--out", default=None)
    p.add_argument("overrides", nargs="*", help="extra Hydra overrides (after --)")
    args = p.parse_args()
    out_root = Path(tempfile.mkdtemp(prefix="compare_"))
    variants = [parse_variant(a) for a in args.algos]
    jobs = [(v, seed) for v in variants for seed in args.seeds]
    threads = 1 if args.jobs > 1 else None

    def work(job):
        (label, algo, overrides), seed = job
        r = run_one(label, algo, args.env, seed, args.frames, args.eval_episodes, [*overrides, *args.overrides],
                    out_root, threads)
        tail = [v for _, v in r["curve"][-args.last:]]
        r["final_train_return"] = statistics.fmean(tail) if tail else None
        fmt = lambda v: "nan" if v is None else f"{v:9.1f}"  # noqa: E731
        print(f"{label:<10} seed {seed}: eval {fmt(r['eval_return'])}  last-{args.last} train "
              f"{fmt(r['final_train_return'])}  ({r['frames']} frames, {r['wall_seconds']:.0f} s)", flush=True)
        return r

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        runs = list(pool.map(work, jobs))
    table = []
    for algo, _, _ in variants:
        ev = [r["eval_return"] for r in runs if r["algo"] == algo]
        tr = [r["final_train_return"] for r in runs if r["algo"] == algo and r["final_train_return"] is not None]
        table.append({"algo": algo, "eval_mean": statistics.fmean(ev), "eval_std": statistics.pstdev(ev),
                      "eval_min": min(ev), "eval_max": max(ev),
                      "train_mean": statistics.fmean(tr) if tr else float("nan"),
                      "train_std": statistics.pstdev(tr) if tr else float("nan"), "seeds": len(ev)})
    print(f"\n{args.env}, {runs[0]['frames']} frames, {len(args.seeds)} seeds (mean ± std over seeds, [min, max])")
    print(f"{'algo':<10} {'eval return':>22} {'last train return':>22}")
    for t in table:
        print(f"{t['algo']:<10} {t['eval_mean']:>9.1f} ± {t['eval_std']:<6.1f} [{t['eval_min']:.0f}, {t['eval_max']:.0f}]"
              f" {t['train_mean']:>9.1f} ± {t['train_std']:.1f}")
    out = {"benchmark": "algorithm comparison at equal frames (benchmarks/compare_algos.py)",
           "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"), "env": args.env,
           "cpu_count": os.cpu_count(), "args": vars(args), "table": table, "runs": runs}
    path = Path(args.out or ROOT / "benchmarks" / "results" / f"compare_{args.env}.json")
    path.write_text(json.dumps(out, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
