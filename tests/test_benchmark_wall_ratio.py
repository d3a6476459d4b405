"""``benchmarks/recipe_wall_ratio.py`` runs the two recipes of a seed side by side and reports their wall-time ratio."""
import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import recipe_wall_ratio  # noqa: E402
import rl_stats  # noqa: E402


def test_wall_ratio_of_two_tiny_runs(tmp_path):
    out = tmp_path / "ratio.json"
    result = recipe_wall_ratio.main([
        "--env", "pendulum", "--seeds", "0", "--out", str(out), "--extra", "total_frames=192", "env.num_envs=12",
        "train.horizon=8", "model.hidden_sizes=[8]", "logger=none",
    ])
    assert [(r["algo"], r["seed"]) for r in result["runs"]] == [("ppo", 0), ("sapg", 0)]
    assert all(r["frames"] >= 192 and r["wall_seconds"] > 0 for r in result["runs"])
    walls = {r["algo"]: r["wall_seconds"] for r in result["runs"]}
    assert result["ratios"]["0"] == walls["sapg"] / walls["ppo"] == result["median_ratio"]
    assert result["iqm_ratio_ci"] == [result["iqm_ratio"]] * 2  # one seed: nothing to resample
    assert json.loads(out.read_text())["table_markdown"].startswith("| seed | PPO wall s | SAPG wall s |")


def test_sequential_protocol_alternates_the_order_and_is_recorded(tmp_path):
    result = recipe_wall_ratio.main([
        "--env", "pendulum", "--seeds", "1", "2", "--sequential", "--extra", "total_frames=96", "env.num_envs=12",
        "train.horizon=8", "model.hidden_sizes=[8]", "logger=none",
    ])
    # PPO first for the first seed, second for the next: a drifting machine does not favour one side
    assert [(r["algo"], r["seed"]) for r in result["runs"]] == [("ppo", 1), ("sapg", 1), ("sapg", 2), ("ppo", 2)]
    assert "one after the other" in result["protocol"] and result["median_ratio"] > 0
    assert set(result["ratios"]) == {"1", "2"}


def test_ratio_summary_is_the_iqm_of_the_seed_ratios_with_a_bootstrap_interval():
    ratios = [1.30, 1.02, 1.10, 1.18, 1.06, 1.50]
    stats = rl_stats.ratio_summary(ratios)
    middle = sorted(ratios)[1:5]  # 6 seeds: one cut from each end
    assert abs(stats["iqm_ratio"] - sum(middle) / 4) < 1e-9
    assert stats["median_ratio"] == (1.10 + 1.18) / 2
    low, high = stats["iqm_ratio_ci"]
    assert min(ratios) <= low < stats["iqm_ratio"] < high <= max(ratios)
    assert rl_stats.ratio_summary(ratios) == stats  # a seeded bootstrap: the same interval every time
    assert rl_stats.ratio_summary([1.1])["iqm_ratio_ci"] == [1.1, 1.1]


def test_interleaved_runs_compute_what_each_recipe_computes_alone(tmp_path):
    """Taking turns in one process, each run ends in the same state, bit for bit, as ``recipes/train.py`` alone."""
    from torchrl_sapg.trainers.checkpoint import load_checkpoint, state_checksum

    extra = ["total_frames=576", "env.num_envs=12", "train.horizon=16", "model.hidden_sizes=[8]", "logger=none",
             "checkpoint_interval=192"]
    (tmp_path / "alone").mkdir()
    alone = recipe_wall_ratio.run_pair("cartpole", ["ppo", "sapg"], 3, extra, tmp_path / "alone", sequential=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the recipe's threads=1 (main() sets it): reductions split alike
    try:
        together = recipe_wall_ratio.interleaved_pair("cartpole", ["sapg", "ppo"], 3, extra, tmp_path / "together")
    finally:
        torch.set_num_threads(threads)
    assert [r["algo"] for r in together] == ["sapg", "ppo"]
    for run in together:  # 576 frames of 192 per iteration: 3 timed iterations, checkpoints included
        assert run["frames"] == 576 and len(run["iteration_seconds"]) == 3
        assert run["wall_seconds"] == pytest.approx(sum(run["iteration_seconds"]), abs=1e-4)
    for algo in ("ppo", "sapg"):
        a = load_checkpoint(tmp_path / "alone" / f"{algo}_seed3" / "checkpoints" / "last.pt")
        b = load_checkpoint(tmp_path / "together" / f"{algo}_seed3" / "checkpoints" / "last.pt")
        assert a["frames"] == b["frames"] == 576
        # weights, optimiser, env and collector state; the torch random streams (the recipe seeds torch only:
        # NumPy's and Python's generators start from OS entropy in each process and nothing draws from them)
        for part in ("trainer", "generator"):
            assert state_checksum({part: a[part]}) == state_checksum({part: b[part]}), (algo, part)
        assert torch.equal(a["rng"]["torch"], b["rng"]["torch"]), algo
        ran_alone = next(r for r in alone if r["algo"] == algo)
        assert next(r for r in together if r["algo"] == algo)["final_return"] == ran_alone["final_return"]
