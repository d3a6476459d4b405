"""In-process PBT (M members in one process, evaluated together) vs M separate processes of one member.

Both sides run the same learner (``PopulationLearner``) on the embedded Pendulum with the same
per-member size (``--envs-per-member`` envs, horizon T, network): the in-process side is one
process with M members on M·n envs; the other side is M concurrent processes with one member on
n envs each. Every process runs one torch thread (OMP_NUM_THREADS=1), so the in-process side
uses one core while the separate processes share all of them. Each
runs ``--iters`` iterations (collection + update) after a warm-up. Reported: wall time for all
members to finish, collection and update time, and peak memory (process peak RSS; summed over
the separate processes).

    python benchmarks/pbt_memory.py                  # M = 8, 48 envs per member, CPU
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def worker(members: int, args) -> dict:
    import torch

    from torchrl_sapg.collectors import PopulationCollector
    from torchrl_sapg.envs import make_env
    from torchrl_sapg.population.ensemble import EnsembleActor, PolicyEnsemble
    from torchrl_sapg.population.inprocess import PopulationLearner

    torch.manual_seed(0)
    n = members * args.envs_per_member
    ens = PolicyEnsemble(3, 1, num_members=members, hidden_sizes=args.hidden)
    collector = PopulationCollector(make_env("pendulum", n, seed=0), EnsembleActor(ens), num_policies=members,
                                    frames_per_batch=n * args.horizon)
    learner = PopulationLearner(ens, {"lr": 3e-4, "clip_epsilon": 0.2, "entropy_coeff": 0.0, "critic_coeff": 2.0,
                                      "gamma": 0.99, "lmbda": 0.95, "num_epochs": args.epochs},
                                num_minibatches=args.minibatches)
    it = iter(collector)
    t_collect = t_update = 0.0
    start = None
    for i in range(args.iters + 1):
        if i == 1:
            start = time.perf_counter()
            t_collect = t_update = 0.0
        t0 = time.perf_counter()
        batch = next(it)
        t1 = time.perf_counter()
        learner.update(learner.estimate(batch))
        t2 = time.perf_counter()
        t_collect += t1 - t0
        t_update += t2 - t1
    wall = time.perf_counter() - start
    return {"members": members, "envs": n, "wall_seconds": wall, "collect_seconds": t_collect, "update_seconds": t_update,
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "torch_threads": torch.get_num_threads()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--members", type=int, default=8)
    p.add_argument("--envs-per-member", type=int, default=48)
    p.add_argument("--horizon", type=int, default=32)
    p.add_argument("--hidden", type=int, nargs="+", default=[64, 64])
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--minibatches", type=int, default=4)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--out", default=None)
    p.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker is not None:
        print(json.dumps(worker(args.worker, args)))
        return
    base = [sys.executable, __file__, *sys.argv[1:]]
    env1 = dict(os.environ, OMP_NUM_THREADS="1")  # one torch thread everywhere: spinning OpenMP workers of
    # concurrent processes slow each other ~10x on few cores, and the comparison must be like for like
    res = subprocess.run([*base, "--worker", str(args.members)], capture_output=True, text=True, cwd=ROOT, env=env1)
    if res.returncode:
        raise RuntimeError(res.stderr[-3000:])
    inproc = json.loads(res.stdout.strip().splitlines()[-1])
    t0 = time.perf_counter()
    procs = [subprocess.Popen([*base, "--worker", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              cwd=ROOT, env=env1) for _ in range(args.members)]
    outs = [pr.communicate() for pr in procs]
    total_wall = time.perf_counter() - t0
    if any(pr.returncode for pr in procs):
        raise RuntimeError(next(err for (_, err), pr in zip(outs, procs) if pr.returncode)[-3000:])
    sep = [json.loads(o.strip().splitlines()[-1]) for o, _ in outs]
    separate = {"members": args.members, "processes": args.members,
                "wall_seconds_slowest": max(s["wall_seconds"] for s in sep),
                "collect_seconds_mean": sum(s["collect_seconds"] for s in sep) / len(sep),
                "update_seconds_mean": sum(s["update_seconds"] for s in sep) / len(sep),
                "peak_rss_bytes_sum": sum(s["peak_rss_bytes"] for s in sep),
                "launch_to_finish_seconds": total_wall}
    print(f"{'':<22}{'timed wall (s)':>15}{'collect (s)':>13}{'update (s)':>12}{'peak memory (MiB)':>19}")
    print(f"{'in-process (1 proc)':<22}{inproc['wall_seconds']:>15.2f}{inproc['collect_seconds']:>13.2f}"
          f"{inproc['update_seconds']:>12.2f}{inproc['peak_rss_bytes'] / 2**20:>19.1f}")
    print(f"{f'{args.members} processes':<22}{separate['wall_seconds_slowest']:>15.2f}{separate['collect_seconds_mean']:>13.2f}"
          f"{separate['update_seconds_mean']:>12.2f}{separate['peak_rss_bytes_sum'] / 2**20:>19.1f}")
    import torch

    out = {"benchmark": "in-process PBT vs separate processes (benchmarks/pbt_memory.py)",
           "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"), "cpu_count": os.cpu_count(),
           "torch_version": torch.__version__, "python_version": platform.python_version(),
           "config": {k: v for k, v in vars(args).items() if k != "worker"},
           "in_process": inproc, "separate_processes": separate, "separate_runs": sep,
           "memory_ratio_separate_over_inprocess": separate["peak_rss_bytes_sum"] / inproc["peak_rss_bytes"],
           "time_ratio_separate_over_inprocess": separate["wall_seconds_slowest"] / inproc["wall_seconds"]}
    path = Path(args.out or ROOT / "benchmarks" / "results" / "pbt_memory_cpu.json")
    path.write_text(json.dumps(out, indent=2))
    print(f"separate/in-process: memory {out['memory_ratio_separate_over_inprocess']:.2f}x, "
          f"time {out['time_ratio_separate_over_inprocess']:.2f}x; wrote {path}")


if __name__ == "__main__":
    main()
