"""Data-parallel scale-out on one machine: torchrun ranks vs one process, through recipes/train.py.

    python benchmarks/distributed_fps.py                       # pendulum, sapg, 2 gloo ranks
    python benchmarks/distributed_fps.py --algo ppo --ranks 2 --num-envs 768 --frames 1500000

Three runs of the same recipe, each torch process with ONE intra-op thread, at the same
global frame budget:

* ``1 process``: ``env.num_envs = N``;
* ``1 process, 2N envs``: the same data per iteration as the ranks together;
* ``R ranks``: ``torchrun --nproc_per_node=R``, each rank ``N`` envs (so ``R·N`` in total).

Frames/s are the recipe's own (``summary.json``: all ranks' frames over the training wall
time). The ranks' models are compared by the SHA-256 of every parameter and buffer at the end
(``ranks_identical``). Prints a table and writes ``benchmarks/results/distributed_fps_cpu.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import socket
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ROOT / "recipes" / "train.py"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(label: str, ranks: int, num_envs: int, args, out: Path) -> dict:
    run_dir = out / re.sub(r"[^A-Za-z0-9]+", "_", label)  # Hydra's override grammar rejects "(", ","
    overrides = [f"algo={args.algo}", f"env={args.env}", f"env.num_envs={num_envs}", f"total_frames={args.frames}",
                 "threads=1", "progress_bar=false", "logger=none", "checkpoint_interval=1e12",
                 f"seed={args.seed}", f"hydra.run.dir={run_dir}", *args.overrides]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    if ranks == 1:
        cmd = [sys.executable, str(TRAIN), *overrides]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={ranks}", "--master_addr=127.0.0.1",
               f"--master_port={_free_port()}", str(TRAIN), *overrides]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"{label} failed:\n{proc.stderr[-4000:]}")
    summary = json.loads((run_dir / "summary.json").read_text())
    return {
        "label": label,
        "ranks": ranks,
        "num_envs_per_process": num_envs,
        "total_envs": num_envs * ranks,
        "frames": summary["frames"],
        "wall_seconds": summary["wall_seconds"],
        "frames_per_second": summary["frames_per_second"],
        "frames_per_second_per_rank": summary["frames_per_second"] / ranks,
        "final_return": summary["final_return"],
        "ranks_identical": summary.get("ranks_identical"),
        "rank_parameter_digests": summary.get("rank_parameter_digests"),
        "command": ("python" if ranks == 1 else f"torchrun --nproc_per_node={ranks}")
        + " recipes/train.py " + " ".join(o for o in overrides if not o.startswith("hydra.run.dir")),
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--algo", default="sapg")
    p.add_argument("--env", default="pendulum")
    p.add_argument("--num-envs", type=int, default=384, help="envs per process / rank")
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--frames", type=int, default=1_000_000, help="global frame budget of every run")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "distributed_fps_cpu.json"))
    p.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run")
    args = p.parse_args(argv)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [
            run("1 process", 1, args.num_envs, args, Path(tmp)),
            run(f"1 process, {args.ranks}x envs", 1, args.num_envs * args.ranks, args, Path(tmp)),
            run(f"{args.ranks} ranks (gloo)", args.ranks, args.num_envs, args, Path(tmp)),
        ]
    base = rows[0]["frames_per_second"]
    for r in rows:
        r["speedup_vs_1_process"] = r["frames_per_second"] / base
    result = {
        "benchmark": "distributed_fps",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": "cpu",
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "load_average_1_5_15min_before": list(load_before),
        "algo": args.algo,
        "env": args.env,
        "command": "python benchmarks/distributed_fps.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "rows": rows,
    }
    print(f"| run | envs in total | frames/s (all) | frames/s per rank | vs 1 process | final return | ranks identical |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for r in rows:
        same = "—" if r["ranks_identical"] is None else ("yes" if r["ranks_identical"] else "**NO**")
        print(f"| {r['label']} | {r['total_envs']} | {r['frames_per_second']:,.0f} | {r['frames_per_second_per_rank']:,.0f} "
              f"| {r['speedup_vs_1_process']:.2f}x | {r['final_return']:.1f} | {same} |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
