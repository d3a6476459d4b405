"""algo=sapg end to end through recipes/train.py and recipes/evaluate.py."""
from __future__ import annotations

import csv
import json
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _run(args, cwd=ROOT):
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_sapg_recipe_logs_leader_and_every_policy_and_evaluates_the_leader(tmp_path):
    run_dir = tmp_path / "run"
    res = _run([
        "recipes/train.py", "algo=sapg", "env=pendulum", "env.num_envs=24", "train.horizon=100",
        "total_frames=4800", "algo.num_policies=3", "algo.latent_dim=8", "model.hidden_sizes=[32]",
        "progress_bar=false", f"hydra.run.dir={run_dir}",
    ])
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["algo"] == "sapg" and summary["frames"] == 4800
    # 24 on-policy env rows + 8 relabelled follower rows for the leader, T = 100
    assert summary["batch_layout"]["rows"] == (24 + 8) * 100
    scalars = run_dir / "sapg-pendulum" / "scalars"
    for name in ["train/clip_fraction_on", "train/clip_fraction_off", "train/ESS_on", "train/ESS_off",
                 "train/mu_mean", "train/mu_min", "train/mu_max", "episode/return"]:
        assert (scalars / f"{name}.csv").is_file(), name
    for i in range(3):
        assert (scalars / "policy" / str(i) / "return.csv").is_file()
    # the headline is the leader's (policy 0) return
    with open(scalars / "episode" / "return.csv") as f:
        headline = [float(r[1]) for r in csv.reader(f)]
    with open(scalars / "policy" / "0" / "return.csv") as f:
        leader = [float(r[1]) for r in csv.reader(f)]
    assert headline == leader and len(leader) >= 1
    with open(scalars / "train" / "off_policy_fraction.csv") as f:
        frac = float(next(csv.reader(f))[1])
    assert abs(frac - 8 / 32) < 0.02  # minibatches are shuffled: the fraction is about 1/4

    res = _run(["recipes/evaluate.py", f"checkpoint={run_dir / 'checkpoints' / 'last.pt'}", "episodes=2"])
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads(res.stdout[res.stdout.index("{"):])
    assert list(report["policies"]) == ["0"]  # the leader by default
    assert -3300 < report["policies"]["0"]["return"] <= 0
