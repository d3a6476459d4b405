"""The recipe on the hard-exploration tasks: configs compose, per-policy success / true_objective are logged and
evaluated, and benchmarks/population_diagnostics.py reads the run (tiny runs, subprocesses)."""
from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

TINY = ["algo=sapg", "algo.num_policies=2", "algo.latent_dim=4", "env.num_envs=16", "train.horizon=8",
        "train.num_epochs=1", "train.num_minibatches=2", "model.hidden_sizes=[16]", "progress_bar=false",
        "eval_episodes=2", "total_frames=256", "+env.kwargs.max_episode_steps=8", "threads=1"]


def _train(tmp: pathlib.Path, env: str) -> pathlib.Path:
    run_dir = tmp / env
    envs = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]))
    res = subprocess.run([sys.executable, str(REPO / "recipes" / "train.py"), f"env={env}", *TINY,
                          f"hydra.run.dir={run_dir}"], cwd=tmp, env=envs, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    return run_dir


@pytest.mark.parametrize("env,keys", [("point_maze_u", ["success"]), ("reach_grasp_carry", ["success", "true_objective"]),
                                      ("sparse_mountain_car", ["success"])])
def test_recipe_logs_and_evaluates_success(tmp_path, env, keys):
    run_dir = _train(tmp_path, env)
    summary = json.loads((run_dir / "summary.json").read_text())
    for key in keys:
        assert len(summary[f"eval_{key}"]) == 2  # one value per policy
        assert (next(run_dir.glob("sapg-*/scalars/policy/1")) / f"{key}.csv").is_file()
    if env == "point_maze_u":
        import population_diagnostics

        (row,) = population_diagnostics.main([str(run_dir), "--episodes", "2"])
        maze = row["maze"]
        assert len(maze["coverage"]) == 2 and all(0 < c <= 1 for c in maze["coverage"])
        assert sum(map(sum, maze["visits"])) == 2 * 2 * 8  # policies x episodes x steps
        assert 0 <= maze["mean_pairwise_tv"] <= 1
        assert set(row["off_policy"]) >= {"mu_mean", "ESS_off"}
        assert row["label"] == "sapg"  # a folder not named by scaling.py: the algorithm's name
        # scaling.py's folder name <label>-<env>-s<seed> gives a variant its own label
        import shutil

        variant_dir = shutil.copytree(run_dir, tmp_path / "sapg-wide-point_maze_u-s0")
        (variant,) = population_diagnostics.main([str(variant_dir), "--episodes", "1"])
        assert (variant["label"], variant["algo"]) == ("sapg-wide", "sapg")
        # --append: a later call's runs join the file's, a run diagnosed again replaces its row, and without
        # --append the file holds this call's runs only
        out = tmp_path / "diagnostics.json"
        stored = lambda: [r["run_dir"] for r in json.loads(out.read_text())["runs"]]  # noqa: E731
        population_diagnostics.main([str(run_dir), "--episodes", "1", "--out", str(out)])
        population_diagnostics.main([str(variant_dir), str(run_dir), "--episodes", "1", "--out", str(out), "--append"])
        assert sorted(stored()) == sorted([str(run_dir), str(variant_dir)])
        assert len(json.loads(out.read_text())["commands"]) == 2
        population_diagnostics.main([str(variant_dir), "--episodes", "1", "--out", str(out)])
        assert stored() == [str(variant_dir)]
