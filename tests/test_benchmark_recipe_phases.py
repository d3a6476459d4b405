"""``benchmarks/recipe_phases.py`` splits the recipe's iterations into phases and compares SAPG with its row floor."""
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import recipe_phases  # noqa: E402

TINY = ["env.num_envs=12", "train.horizon=8", "model.hidden_sizes=[8]"]


def test_phases_ratios_and_row_floor_of_a_tiny_recipe(tmp_path):
    out = tmp_path / "phases.json"
    result = recipe_phases.main(["--env", "pendulum", "--seeds", "0", "1", "--warmup", "1", "--rounds", "3",
                                 "--extra", *TINY, "--out", str(out)])
    assert json.loads(out.read_text())["summary"] == result["summary"]
    for seed in result["seeds"]:
        # 12 envs, 6 policies: the leader adds 12 / 6 = 2 off-policy env-rows of 8 steps to PPO's 12
        assert seed["rows"] == {"ppo": 96, "sapg": 112} and seed["rows_ratio"] == pytest.approx(14 / 12)
        ppo, sapg = seed["median_seconds"]["ppo"], seed["median_seconds"]["sapg"]
        assert sapg["aggregate"] > 10 * ppo["aggregate"]  # only SAPG runs SAPGLoss.aggregate (PPO: an empty hook loop)
        assert all(t[k] > 0 for t in (ppo, sapg) for k in ("collect", "value", "minibatch", "loss_forward", "backward"))
        walls = seed["iteration_seconds"]
        assert len(walls["ppo"]) == len(walls["sapg"]) == 3 and sorted(walls["ppo"])[1] == ppo["iteration"]
        assert seed["ratio"] == sorted(s / p for s, p in zip(walls["sapg"], walls["ppo"]))[1]  # paired by round
        update = ppo["iteration"] - ppo["collect"]
        assert seed["row_floor"] == pytest.approx((ppo["collect"] + update * 14 / 12) / ppo["iteration"])
        assert seed["excess"] == pytest.approx(seed["ratio"] - seed["row_floor"])
    floors = sorted(s["row_floor"] for s in result["seeds"])
    assert result["summary"]["row_floor"]["median_ratio"] == pytest.approx(sum(floors) / 2)
    assert "| loss_forward |" in result["table_markdown"] and "row floor" in result["table_markdown"]


def test_row_floor_is_the_rows_ratio_applied_to_the_update_only():
    assert recipe_phases.row_floor(0.0, 2.0, 7 / 6) == pytest.approx(7 / 6)  # nothing but update: the rows ratio
    assert recipe_phases.row_floor(1.0, 1.0, 7 / 6) == 1.0  # nothing but collection: no extra cost
    assert recipe_phases.row_floor(0.1, 0.3, 1.15) == pytest.approx((0.1 + 0.2 * 1.15) / 0.3)


def test_bad_round_counts_are_refused():
    with pytest.raises(SystemExit, match="--rounds 0"):
        recipe_phases.main(["--rounds", "0"])
