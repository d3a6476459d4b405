"""Throughput of the batched classic-control envs through ``env.step_and_maybe_reset``.

``step_and_maybe_reset`` is the path TorchRL collectors and ``env.rollout`` use,
so the numbers include TorchRL's per-step overhead (``step_mdp``, done checks
and the partial resets of finished envs).

Usage::

    python benchmarks/env_throughput.py                      # all tasks, N = 1024 16384 65536, CPU
    python benchmarks/env_throughput.py --tasks pendulum --num-envs 16384 --device cuda
    python benchmarks/env_throughput.py --tasks point_maze_u point_maze_large reach_grasp_carry \
        sparse_mountain_car --num-envs 16384 65536 --threads 1 --out benchmarks/results/env_throughput_cpu_exploration.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

import tensordict
import torch
import torchrl

from torchrl_sapg.envs.classic_control import EMBEDDED_TASKS
from torchrl_sapg.envs.exploration import EXPLORATION_TASKS

TASKS = {**EMBEDDED_TASKS, **EXPLORATION_TASKS}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def bench_one(task: str, num_envs: int, steps: int, warmup: int, repeats: int, device: torch.device) -> dict:
    env = TASKS[task](num_envs, device=device, seed=0)
    gen = torch.Generator().manual_seed(0)
    low, high = env.action_low, env.action_high
    # one fixed action tensor per env count: times the env, not action sampling
    action = (torch.rand(num_envs, env.action_dim, generator=gen) * (high - low) + low).to(device)
    td = env.reset()
    for _ in range(warmup):
        td["action"] = action
        _, td = env.step_and_maybe_reset(td)
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            td["action"] = action
            _, td = env.step_and_maybe_reset(td)
        _sync(device)
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    return {
        "task": task,
        "env_class": type(env).__name__,
        "num_envs": num_envs,
        "steps": steps,
        "repeats": repeats,
        "seconds_median": seconds,
        "env_steps_per_s": num_envs * steps / seconds,
        "ms_per_step": 1e3 * seconds / steps,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", default=list(EMBEDDED_TASKS), choices=list(TASKS),
                        help="default: the classic-control tasks; the hard-exploration ones by name")
    parser.add_argument("--num-envs", nargs="+", type=int, default=[1024, 16384, 65536])
    parser.add_argument("--steps", type=int, default=200, help="timed steps per repeat")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats; the median is reported")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--threads",
        nargs="+",
        type=int,
        default=None,
        help="torch.set_num_threads values to sweep (default: torch's current setting)",
    )
    parser.add_argument("--out", default=None, help="JSON path (default benchmarks/results/env_throughput_<device>.json)")
    args = parser.parse_args(argv)

    thread_counts = args.threads or [torch.get_num_threads()]
    device = torch.device(args.device)
    out = Path(args.out or f"benchmarks/results/env_throughput_{device.type}.json")

    load_before = os.getloadavg()
    results = []
    header = f"{'task':<20}{'N':>8}{'threads':>8}{'env-steps/s':>16}{'ms/step':>10}"
    print(header)
    print("-" * len(header))
    for threads in thread_counts:
        torch.set_num_threads(threads)
        for task in args.tasks:
            for n in args.num_envs:
                r = bench_one(task, n, args.steps, args.warmup, args.repeats, device)
                r["threads"] = threads
                results.append(r)
                print(
                    f"{task:<20}{n:>8}{threads:>8}{r['env_steps_per_s']:>16,.0f}{r['ms_per_step']:>10.3f}",
                    flush=True,
                )

    report = {
        "benchmark": "env.step_and_maybe_reset throughput (benchmarks/env_throughput.py)",
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": str(device),
        "device_name": _device_name(device),
        "cpu_count": os.cpu_count(),
        "torch_num_threads_swept": thread_counts,
        "torch_version": torch.__version__,
        "torchrl_version": torchrl.__version__,
        "tensordict_version": tensordict.__version__,
        "python_version": platform.python_version(),
        "platform": platform.platform(),
        # other processes competing for the cores inflate the timings
        "load_average_1_5_15min_before": list(load_before),
        "load_average_1_5_15min_after": list(os.getloadavg()),
        "omp_env": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY") if k in os.environ},
        "dtype": "float32",
        "steps": args.steps,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "results": results,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return report


if __name__ == "__main__":
    main()
