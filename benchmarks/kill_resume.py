"""SIGKILL a real training run at random moments and resume it each time; count what was lost.

Each cycle starts ``recipes/train.py`` in one run folder (``resume=<run>/checkpoints`` once a checkpoint
exists), waits until it has logged 1-4 new iterations, sleeps a random fraction of an iteration and kills
it with SIGKILL: the kill lands anywhere in collection, the update, the CSV write or the checkpoint write
(one checkpoint per iteration). After each kill the checkpoint folder must load. A last run finishes the
job; then every ``train/*.csv`` row must appear exactly once per iteration.

    python benchmarks/kill_resume.py --kills 25            # writes benchmarks/results/kill_resume.json

Prints a table and writes JSON: kills, unreadable checkpoints, duplicated / missing log rows, temp files
left. ``tests/test_faults.py`` runs it with a few kills.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import pathlib
import platform
import random
import signal
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
TRAIN = REPO / "recipes" / "train.py"
NUM_ENVS, HORIZON = 64, 16
FPB = NUM_ENVS * HORIZON
ARGS = ["algo=ppo", "env=pendulum", f"env.num_envs={NUM_ENVS}", "+env.kwargs.max_episode_steps=16",
        f"train.horizon={HORIZON}", "train.num_epochs=1", "train.num_minibatches=2", "model.hidden_sizes=[16]",
        "progress_bar=false", f"checkpoint_interval={FPB}", "threads=1"]


def _rows(path: pathlib.Path) -> list[int]:
    if not path.exists():
        return []
    with open(path) as f:
        out = []
        for r in csv.reader(f):
            try:
                out.append(int(r[0]))
            except (ValueError, IndexError):
                out.append(-1)  # a row cut by the kill
        return out


def run(kills: int, seed: int = 0, workdir: str | None = None) -> dict:
    """Kill and resume ``kills`` times, finish the run, and count unreadable checkpoints and bad log rows."""
    sys.path.insert(0, str(REPO))
    from torchrl_sapg.trainers.checkpoint import CheckpointError, load_checkpoint

    rng = random.Random(seed)
    root = pathlib.Path(workdir or tempfile.mkdtemp(prefix="kill_resume_"))
    run_dir = root / "run"
    frames_csv = run_dir / "ppo-pendulum" / "scalars" / "train" / "frames.csv"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    total = FPB * (5 * kills + 5)  # never reached before the last kill (at most 4-5 iterations per cycle)
    unreadable, resumed_at, start = 0, [], time.perf_counter()
    for _ in range(kills):
        args = [*ARGS, f"total_frames={total}", f"hydra.run.dir={run_dir}"]
        if (run_dir / "checkpoints" / "last.pt").exists():
            args.append(f"resume={run_dir / 'checkpoints'}")
        proc = subprocess.Popen([sys.executable, str(TRAIN), *args], cwd=root, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        target, seen = rng.randint(1, 4), None
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            n = len(_rows(frames_csv))
            seen = n if seen is None else seen
            if n - seen >= target:
                break
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.05))
        if proc.poll() is not None:
            raise RuntimeError(f"train.py exited before the kill: {proc.stderr.read()[-3000:]}")
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
        try:
            resumed_at.append(load_checkpoint(run_dir / "checkpoints")["frames"])
        except FileNotFoundError:
            resumed_at.append(0)
        except CheckpointError:
            unreadable += 1
    final = subprocess.run([sys.executable, str(TRAIN), *ARGS, f"total_frames={total}", f"hydra.run.dir={run_dir}",
                            f"resume={run_dir / 'checkpoints'}"], cwd=root, env=env, capture_output=True, text=True)
    if final.returncode != 0:
        raise RuntimeError(f"the final resume failed: {final.stderr[-3000:]}")
    expected = [FPB * (i + 1) for i in range(total // FPB)]
    logs = sorted((run_dir / "ppo-pendulum" / "scalars" / "train").glob("*.csv"))
    duplicated = missing = 0
    for path in logs:
        if path.stem == "nonfinite_rows":
            continue
        rows = _rows(path)
        duplicated += len(rows) - len(set(rows)) + rows.count(-1)
        missing += len(set(expected) - set(rows))
    temp_files = [p.name for p in run_dir.rglob(".*.tmp")]
    summary = json.loads((run_dir / "summary.json").read_text())
    return {
        "benchmark": "kill_resume",
        "command": "python benchmarks/kill_resume.py --kills " + str(kills),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch threads 1",
        "kills": kills,
        "unreadable_checkpoints": unreadable,
        "resumed_at_frames": resumed_at,
        "log_files_checked": len(logs),
        "duplicated_log_rows": duplicated,
        "missing_log_rows": missing,
        "temp_files_left": temp_files,
        "final_frames": summary["frames"],
        "expected_frames": total,
        "wall_seconds": time.perf_counter() - start,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kills", type=int, default=25)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "kill_resume.json"))
    args = parser.parse_args(argv)
    result = run(args.kills, args.seed)
    print("| kills | unreadable checkpoints | duplicated log rows | missing log rows | temp files left | final frames |")
    print("|---:|---:|---:|---:|---:|---:|")
    print(f"| {result['kills']} | {result['unreadable_checkpoints']} | {result['duplicated_log_rows']} | "
          f"{result['missing_log_rows']} | {len(result['temp_files_left'])} | {result['final_frames']:,} / "
          f"{result['expected_frames']:,} |")
    if args.out:
        pathlib.Path(args.out).write_text(json.dumps(result, indent=1))
        print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
