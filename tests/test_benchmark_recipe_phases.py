"""``benchmarks/recipe_phases.py`` splits the recipe's iterations into phases and compares SAPG with PPO on its rows."""
import json
import statistics
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import recipe_phases  # noqa: E402

TINY = ["env.num_envs=12", "train.horizon=8", "model.hidden_sizes=[8]"]


def test_phases_ratio_and_floor_of_a_tiny_recipe(tmp_path):
    out = tmp_path / "phases.json"
    result = recipe_phases.main(["--env", "pendulum", "--seeds", "0", "1", "--warmup", "1", "--rounds", "3",
                                 "--extra", *TINY, "--out", str(out)])
    assert json.loads(out.read_text())["summary"] == result["summary"]
    on_rows = recipe_phases.ON_ROWS
    for seed in result["seeds"]:
        # 12 envs, 6 policies: the leader adds 12 / 6 = 2 off-policy env-rows of 8 steps; PPO then runs 14 envs
        assert seed["rows"] == {"ppo": 96, "sapg": 112, on_rows: 112}
        assert seed["minibatch_size"]["sapg"] == seed["minibatch_size"][on_rows] == 28  # 4 minibatches each
        med = seed["median_seconds"]
        assert med["sapg"]["aggregate"] > 10 * max(med["ppo"]["aggregate"], med[on_rows]["aggregate"])
        assert all(med[a][k] > 0 for a in med for k in ("collect", "value", "minibatch", "loss_forward", "backward"))
        walls = seed["iteration_seconds"]
        assert {len(w) for w in walls.values()} == {3} and sorted(walls["ppo"])[1] == med["ppo"]["iteration"]
        assert seed["ratio"] == sorted(s / p for s, p in zip(walls["sapg"], walls["ppo"]))[1]  # paired by round
        assert seed["excess"] == pytest.approx(seed["ratio"] - seed["floor"])
        # the excess split by round into SAPG's extra collection time and the rest (the learner's)
        c, v = seed["collect_seconds"], seed["value_seconds"]
        collect = [(cs - cp) / ip for cs, cp, ip in zip(c["sapg"], c["ppo"], walls["ppo"])]
        assert seed["collect_excess"] == pytest.approx(sorted(collect)[1])
        learner = [(i_s - c_p - v_p - (i_q - c_q - v_q)) / i_p - x for i_s, i_p, i_q, c_p, c_q, v_p, v_q, x in
                   zip(walls["sapg"], walls["ppo"], walls[on_rows], c["ppo"], c[on_rows], v["ppo"], v[on_rows], collect)]
        assert seed["learner_excess"] == pytest.approx(sorted(learner)[1])
    floors = sorted(s["floor"] for s in result["seeds"])
    assert result["summary"]["floor"]["median_ratio"] == pytest.approx(statistics.mean(floors))
    assert "| loss_forward |" in result["table_markdown"] and "| floor |" in result["table_markdown"]
    assert "| of which collection | of which learner |" in result["table_markdown"]
    assert set(result["summary"]) == {"ratio", "floor", "excess", "collect_excess", "learner_excess"}


def test_design_floor_adds_ppo_on_sapgs_rows_beyond_collection_and_value_estimation():
    ppo = {"collect": 0.10, "value": 0.01, "iteration": 0.30}
    assert recipe_phases.design_floor(ppo, ppo) == pytest.approx(1.0)  # no extra rows: no extra cost
    on_rows = {"collect": 0.12, "value": 0.02, "iteration": 0.36}  # 0.22 beyond collection and value estimation
    assert recipe_phases.design_floor(ppo, on_rows) == pytest.approx((0.10 + 0.01 + 0.22) / 0.30)


def test_bad_round_counts_are_refused():
    with pytest.raises(SystemExit, match="--rounds 0"):
        recipe_phases.main(["--rounds", "0"])


def test_the_in_process_population_is_compared_on_ppos_own_rows():
    """``--algo pbt``: 8 members on their own env blocks train on PPO's N env-rows, so no third trainer is
    built, the floor is 1 and the excess beyond collection is the learner's."""
    result = recipe_phases.main(["--env", "pendulum", "--algo", "pbt", "--seeds", "0", "--warmup", "1", "--rounds", "3",
                                 "--extra", "env.num_envs=16", "train.horizon=8", "model.hidden_sizes=[8]"])
    (seed,) = result["seeds"]
    assert seed["rows"] == {"ppo": 128, "pbt": 128} and seed["minibatch_size"] == {"ppo": 32, "pbt": 32}
    assert recipe_phases.ON_ROWS not in seed["median_seconds"] and seed["floor"] == pytest.approx(1.0)
    walls, c = seed["iteration_seconds"], seed["collect_seconds"]
    collect = [(cb - cp) / ip for cb, cp, ip in zip(c["pbt"], c["ppo"], walls["ppo"])]
    learner = [(ib - ip) / ip - x for ib, ip, x in zip(walls["pbt"], walls["ppo"], collect)]
    assert seed["learner_excess"] == pytest.approx(sorted(learner)[1])
    assert "| PBT / PPO |" in result["table_markdown"]
    med = seed["median_seconds"]["pbt"]  # the population's own loss and optimiser are timed too
    assert med["loss_forward"] > 0 and med["optimizer"] > 0 and med["backward"] > 0


def test_report_headlines_each_phases_file(tmp_path, monkeypatch):
    """docs/results.md's headlines carry one line per ``<env>_*phases.json``: which method against PPO, the IQM
    and its interval."""
    import report

    out = tmp_path / "pendulum_pbt_phases.json"
    result = recipe_phases.main(["--env", "pendulum", "--algo", "pbt", "--seeds", "0", "--warmup", "0", "--rounds", "1",
                                 "--extra", "env.num_envs=16", "train.horizon=8", "model.hidden_sizes=[8]", "--out", str(out)])
    monkeypatch.setattr(report, "RESULTS", tmp_path)
    (line,) = [row for row in report.headlines() if row.startswith("- Recipe iteration")]
    r = result["summary"]["ratio"]
    overrides = "(env.num_envs=16 train.horizon=8 model.hidden_sizes=[8])"  # the run's --extra, named
    assert line.startswith(f"- Recipe iteration, PBT / PPO on pendulum {overrides}: IQM {r['iqm_ratio']:.3f} [")
    assert result["protocol"].startswith("recipe defaults with env.num_envs=16 train.horizon=8 model.hidden_sizes=[8], ")
    assert "over 1 seeds" in line and "`pendulum_pbt_phases.json`" in line


def test_a_recurrent_recipe_gets_the_recipes_recurrent_env():
    """``model.lstm_hidden > 0``: the env gets ``InitTracker`` and the hidden-state primers as in ``recipes/train.py``
    (without them the LSTM actor finds no ``is_init``); the minibatches are whole env-rows."""
    result = recipe_phases.main(["--env", "pendulum", "--algo", "pbt", "--seeds", "0", "--warmup", "0", "--rounds", "1",
                                 "--extra", "env.num_envs=64", "train.horizon=4", "model.hidden_sizes=[8]",
                                 "model.lstm_hidden=8"])
    (seed,) = result["seeds"]
    assert seed["rows"] == {"ppo": 64, "pbt": 64}  # env-rows: 8 members x 8, and PPO's 64
    assert seed["median_seconds"]["pbt"]["loss_forward"] > 0
