"""benchmarks/rl_stats.py (IQM, stratified bootstrap, probability of improvement) and the scaling study's analysis."""
from __future__ import annotations

import json
import pathlib
import sys

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import rl_stats  # noqa: E402
import scaling  # noqa: E402


def test_iqm_is_the_mean_of_the_middle_half():
    x = np.array([[9.0, 0.0], [1.0, 5.0], [2.0, 100.0], [7.0, 3.0]])  # 8 scores: cut 2 from each end
    flat = sorted(x.reshape(-1))  # 0 1 2 3 5 7 9 100
    assert rl_stats.iqm(x) == pytest.approx(np.mean(flat[2:6]))
    assert rl_stats.iqm([4.0, -1.0, 2.0, 50.0, 3.0]) == pytest.approx((2.0 + 3.0 + 4.0) / 3)  # n=5: cut 1 each end
    scipy_stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    for n in (5, 8, 10, 13):
        y = rng.normal(size=(n, 3))
        assert rl_stats.iqm(y) == pytest.approx(scipy_stats.trim_mean(y, 0.25, axis=None))


def test_probability_of_improvement_counts_pairs_and_ties():
    x, y = np.array([[3.0], [1.0], [2.0]]), np.array([[2.0], [0.0]])
    # pairs (x > y): 3>2 3>0 1>0 2>0 = 4 wins, 1<2 a loss, 2=2 a tie -> (4 + 0.5) / 6
    assert rl_stats.probability_of_improvement(x, y) == pytest.approx(4.5 / 6)
    assert rl_stats.probability_of_improvement(x, x) == pytest.approx(0.5)
    two_tasks = rl_stats.probability_of_improvement(np.array([[1.0, 0.0]]), np.array([[0.0, 1.0]]))
    assert two_tasks == pytest.approx(0.5)  # won one task, lost the other: averaged over tasks
    with pytest.raises(ValueError, match="same tasks"):
        rl_stats.probability_of_improvement(np.zeros((2, 2)), np.zeros((2, 3)))


def test_matches_rliable_metrics():
    metrics = pytest.importorskip("rliable.metrics", reason="rliable is not installed")
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(7, 4)), rng.normal(0.3, size=(5, 4)).round(1)
    assert rl_stats.iqm(x) == pytest.approx(metrics.aggregate_iqm(x))
    assert rl_stats.probability_of_improvement(x, y) == pytest.approx(metrics.probability_of_improvement(x, y))


def test_stratified_bootstrap_resamples_within_each_task():
    # task 0 is constant 0, task 1 constant 10: any within-task resample keeps the IQM at 5 exactly,
    # while a pooled resample would not
    x = np.stack([np.zeros(6), np.full(6, 10.0)], axis=1)
    assert rl_stats.stratified_bootstrap_ci(x, reps=200) == (5.0, 5.0)
    rng = np.random.default_rng(0)
    y = rng.normal(size=(10, 1))
    lo, hi = rl_stats.stratified_bootstrap_ci(y, reps=2000, seed=3)
    assert lo < rl_stats.iqm(y) < hi
    assert (lo, hi) == rl_stats.stratified_bootstrap_ci(y, reps=2000, seed=3)  # seeded: reproducible
    # the interval is the percentile interval of the resampled IQMs: recompute it by hand
    idx = np.random.default_rng(3).integers(0, 10, size=(2000, 10, 1))
    stats = [rl_stats.iqm(y[idx[r, :, 0]]) for r in range(2000)]
    assert (lo, hi) == pytest.approx((np.quantile(stats, 0.025), np.quantile(stats, 0.975)))


def test_summary_fields():
    s = rl_stats.summary([0.0, 0.5, 1.0, 1.0, 1.0], baseline=[0.0, 0.0, 0.0, 0.5, 0.0], reps=500)
    assert s["iqm"] == pytest.approx((0.5 + 1.0 + 1.0) / 3) and s["n"] == 5
    assert s["iqm_ci"][0] <= s["iqm"] <= s["iqm_ci"][1]
    # x=0: 4 ties with y=0 (2.0); x=0.5: 4 wins + 1 tie (4.5); x=1 three times: 5 wins each (15)
    assert s["p_improve"] == pytest.approx((2.0 + 4.5 + 15.0) / 25)
    assert s["p_improve_ci"][0] <= s["p_improve"] <= s["p_improve_ci"][1]


def test_saturation_n_is_where_larger_n_stops_beating_the_ci():
    cell = lambda m, lo, hi: {"iqm": m, "iqm_ci": [lo, hi]}  # noqa: E731
    assert scaling.saturation({1: cell(0.1, 0.0, 0.2), 4: cell(0.5, 0.4, 0.6), 16: cell(0.55, 0.3, 0.8)}) == 4
    assert scaling.saturation({1: cell(0.1, 0.0, 0.2), 4: cell(0.5, 0.4, 0.6), 16: cell(0.9, 0.8, 1.0)}) == 16
    assert scaling.saturation({1: cell(0.5, 0.2, 0.9), 4: cell(0.6, 0.4, 0.7), 16: cell(0.4, 0.3, 0.5)}) == 1


def test_summarise_adds_iqm_ci_and_p_improve_per_cell():
    runs = []
    for algo, base in (("ppo", 0.0), ("sapg", 0.5)):
        for seed in range(5):
            runs.append({"algo": algo, "algo_name": algo, "num_envs": 8, "seed": seed, "protocols": ["updates"],
                         "iterations": 2, "frames": 256, "eval_return": 1.0, "final_train_return": None,
                         "wall_seconds": 1.0, "eval_success": base + 0.1 * seed})
    assert scaling.default_metric(runs) == "eval_success"
    table = scaling.summarise(runs, ["ppo", "sapg"], None, "eval_success")
    ppo, sapg = table
    assert ppo["iqm"] == pytest.approx(0.2) and "p_improve" not in ppo
    assert sapg["iqm"] == pytest.approx(0.7) and sapg["p_improve"] == pytest.approx(1.0)
    assert "successes" not in scaling.markdown({"table": table, "protocols": {"updates": {"updates": 2, "horizon": 16}},
                                                "metric": "eval_success"})


def test_report_tables_from_a_hard_task_scaling_json(tmp_path, monkeypatch):
    import report

    runs = [{"algo": a, "algo_name": a, "num_envs": n, "seed": s, "protocols": ["updates"], "iterations": 2,
             "frames": 2 * n * 16, "eval_return": 1.0, "final_train_return": None, "wall_seconds": 1.0,
             "eval_success": (0.5 if a == "sapg" else 0.1) + 0.01 * s + (0.2 if n == 4096 else 0.0)}
            for a in ("ppo", "sapg") for n in (1024, 4096) for s in range(5)]
    d = {"env": "point_maze_u", "protocols": {"updates": {"updates": 2, "horizon": 16}}, "runs": runs,
         **scaling.analysis(runs, ["ppo", "sapg"], None, None)}
    assert d["metric"] == "eval_success" and d["ppo_saturation_n"] == {"updates": 4096}
    (tmp_path / "scaling_point_maze_u.json").write_text(__import__("json").dumps(d))
    monkeypatch.setattr(report, "RESULTS", tmp_path)
    table = report.hard_scaling_table()
    assert len(table) == 3 and table[2].startswith("| point_maze_u (success rate) | 4,096 | 2 | 5 | 0.32 [")
    sat = report.saturation_table()
    assert "| 4096 | 4,096 |" in sat[2] and "P(>PPO) 1.00" in sat[2]
    png = report.hard_scaling_plot()  # None without matplotlib
    assert ("scaling_hard_tasks.png" in report.readme_table()) == (png is not None)


def test_leader_vs_followers_from_a_scaling_json(tmp_path):
    import json

    import population_diagnostics

    runs = [{"algo": "sapg", "num_envs": 12, "seed": s, "horizon": 2, "total_frames": 48,
             "eval_per_policy": {"eval_success": [0.0, 0.5, 0.25]},
             "success_curves": {"0": [[10, 0.1]], "1": [[10, 0.4]], "2": [[5, 0.0], [10, 0.2 * s]]}}
            for s in range(2)]
    # a fixed-frames run of the same cell must not enter the fixed-updates row
    runs.append({**runs[0], "seed": 2, "total_frames": 96, "eval_per_policy": {"eval_success": [1.0, 1.0, 1.0]}})
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"metric": "eval_success", "protocols": {"updates": {"updates": 2}, "frames": {"frames": 96}},
                                "runs": runs}))
    (frames_row,) = population_diagnostics.leader_vs_followers(path, protocol="frames")
    assert frames_row["seeds"] == 1 and frames_row["eval_policy0"] == 1.0
    (row,) = population_diagnostics.leader_vs_followers(path)
    assert row["seeds"] == 2
    assert row["eval_policy0"] == 0.0 and row["eval_best_other"] == 0.5
    assert row["train_policy0"] == pytest.approx(0.1) and row["train_best_other"] == pytest.approx(0.4)
    assert row["train_population_mean"] == pytest.approx(((0.1 + 0.4 + 0.0) / 3 + (0.1 + 0.4 + 0.2) / 3) / 2)


def test_seed_determined_flags_outcomes_that_do_not_depend_on_n():
    runs = [{"algo": "ppo", "num_envs": n, "seed": s, "protocols": ["updates"], "eval_success": float(s % 2)}
            for n in (8, 16) for s in range(4)]
    # seeds 0-2 succeed more at N=16 (success 0.45, then 0.9); seed 3 at neither
    runs += [{"algo": "sapg", "num_envs": n, "seed": s, "protocols": ["updates"], "eval_success": 0.9 * n / 16 * (s < 3)}
             for n in (8, 16) for s in range(4)]
    # 14 of 16 episodes at one N, 16 at the other: the same, within the 2-episode tolerance
    runs += [{"algo": "epo", "num_envs": n, "seed": s, "protocols": ["updates"], "eval_success": 0.875 + (n == 16) / 8,
              "eval_return": float(n)} for n in (8, 16) for s in range(4)]
    assert scaling.seed_determined(runs, "eval_success") == {"ppo": 1.0, "sapg": 0.25, "epo": 1.0}
    # any other metric: the same value
    assert scaling.seed_determined([r for r in runs if r["algo"] == "epo"], "eval_return") == {"epo": 0.0}


def _hard_task_json(tmp_path, env, score):
    """A scaling JSON of ``env`` whose eval success is ``score(algo, n, seed)``, written where report reads it."""
    import json

    runs = [{"algo": a, "algo_name": a, "num_envs": n, "seed": s, "protocols": ["updates"], "iterations": 2,
             "frames": 2 * n * 16, "eval_return": 1.0, "final_train_return": None, "wall_seconds": 1.0,
             "eval_success": score(a, n, s)}
            for a in ("ppo", "sapg") for n in (1024, 4096) for s in range(5)]
    d = {"env": env, "protocols": {"updates": {"updates": 2, "horizon": 16}}, "runs": runs,
         "code": {"commit": "0123456789abcdef", "dirty": False}, **scaling.analysis(runs, ["ppo", "sapg"], None, None)}
    (tmp_path / f"scaling_{env}.json").write_text(json.dumps(d))


def test_report_tells_a_floor_apart_from_a_seed_determined_task(tmp_path, monkeypatch):
    import report

    monkeypatch.setattr(report, "RESULTS", tmp_path)
    # every seed but one scores 0 at every N: a floor, not an outcome set by the seed
    _hard_task_json(tmp_path, "point_maze_u", lambda a, n, s: 0.5 * (a == "sapg" and s == 3 and n == 4096))
    # each seed scores the same at every N, and the seeds differ: seed-determined
    _hard_task_json(tmp_path, "sparse_mountain_car", lambda a, n, s: float(s % 2))
    notes = [line for line in report.hard_scaling_table() if line and not line.startswith("|")]
    assert notes == [
        "On point_maze_u nearly every run scores 0.00 (at least 80% of each method's seeds, at every N): this protocol "
        "does not tell the methods apart there (docs/scaling.md).",
        "Caution: on sparse_mountain_car most seeds score the same at every N for every method (a success rate within "
        "2 of 16 evaluation episodes): the outcome is set by the seed (its initial weights and first updates), not by N "
        "(docs/scaling.md).",
    ]
    assert "recipe defaults (runs at commit 0123456)" in report.readme_table()
    # a study resumed at a later commit: the header names every commit its runs ran at
    path = tmp_path / "scaling_sparse_mountain_car.json"
    d = json.loads(path.read_text())
    d["runs"][0]["code"] = {"commit": "fedcba9876543210", "dirty": False}
    path.write_text(json.dumps(d))
    assert "recipe defaults (runs at commit 0123456, fedcba9)" in report.readme_table()
    # solved seeds whose success varies a little with N, one seed at 0 everywhere: seed-determined, not a floor
    _hard_task_json(tmp_path, "point_maze_u", lambda a, n, s: 0.0 if s == 0 else 0.75 + n / 32768)
    notes = [line for line in report.hard_scaling_table() if line and not line.startswith("|")]
    assert notes[0].startswith("Caution: on point_maze_u, sparse_mountain_car most seeds score the same at every N")
    # a task where N changes most seeds' scores gets neither note
    _hard_task_json(tmp_path, "sparse_mountain_car", lambda a, n, s: n / 4096 * (s + 1) / 5)
    _hard_task_json(tmp_path, "point_maze_u", lambda a, n, s: n / 4096 * (s + 1) / 5)
    assert [line for line in report.hard_scaling_table() if line and not line.startswith("|")] == []


def test_readme_shows_the_longer_runs_of_the_four_methods_only(tmp_path, monkeypatch):
    import json

    import report

    monkeypatch.setattr(report, "RESULTS", tmp_path)
    _hard_task_json(tmp_path, "point_maze_u", lambda a, n, s: 0.1 * s)
    # a 200-update study: PPO at 0, PBT at 1 on every seed, an ablation label beside them; N = 4096 has no SAPG
    runs = [{"algo": a, "algo_name": a.split("-")[0], "num_envs": n, "seed": s, "protocols": ["updates"], "iterations": 200,
             "frames": 200 * n * 16, "eval_return": 1.0, "final_train_return": None, "wall_seconds": 1.0,
             "eval_success": float(a == "pbt"), "code": {"commit": "abcdef0123456789", "dirty": False}}
            for a in ("ppo", "sapg", "sapg-wide", "pbt") for n in (1024, 4096) for s in range(5 if n == 1024 else 3)
            if not (n == 4096 and a.startswith("sapg"))]
    d = {"env": "point_maze_u", "protocols": {"updates": {"updates": 200, "horizon": 16}}, "runs": runs,
         **scaling.analysis(runs, ["ppo", "sapg", "sapg-wide", "pbt"], None, None)}
    (tmp_path / next(iter(report.LONG_RUNS))).write_text(json.dumps(d))
    table = report.long_run_table()
    assert table[2] == ("| point_maze_u (success rate) | 1,024 | 200 | 5 | 0.00 [0.00, 0.00] | 0.00 [0.00, 0.00] | — | "
                        "1.00 [1.00, 1.00] |")
    assert table[3] == "| point_maze_u (success rate) | 4,096 | 200 | 3 | 0.00 [0.00, 0.00] | — | — | 1.00 [1.00, 1.00] |"
    assert table[-1] == ("P(method > PPO) [95% CI]: point_maze_u, N = 1,024, 200 updates: SAPG 0.50 [0.50, 0.50], "
                         "PBT 1.00 [1.00, 1.00]; point_maze_u, N = 4,096, 200 updates: PBT 1.00 [1.00, 1.00].")
    readme = report.readme_table()
    assert "sapg-wide" not in readme and "| 1,024 | 200 | 5 |" in readme
    assert "recipe defaults (runs at commit 0123456, abcdef0)" in readme and "over 3/5 seeds" in readme
    (tmp_path / next(iter(report.LONG_RUNS))).unlink()
    assert report.long_run_table() == [] and "200" not in report.readme_table()


def test_diagnostics_table_leaves_off_policy_columns_empty_without_off_policy_rows(tmp_path, monkeypatch):
    import json

    import report

    def run(algo, off_policy, **label):
        return {"env": "point_maze_u", "algo": algo, "num_envs": 12, "seed": 0, "off_policy": off_policy, **label,
                "maze": {"coverage": [0.5], "union_coverage": 0.5, "mean_pairwise_tv": 0.0, "goal_cell_visit_share": [0.0]}}

    runs = [run("ppo", {"ESS_off": 0.0, "mu_min_overall": 1.0, "mu_max_overall": 1.0, "off_policy_fraction": 0.0}),
            run("sapg", {"ESS_off": 0.9, "mu_min_overall": 0.2, "mu_max_overall": 4.0, "off_policy_fraction": 0.14}),
            run("sapg", {"ESS_off": 0.5, "mu_min_overall": 0.1, "mu_max_overall": 8.0, "off_policy_fraction": 0.14},
                label="sapg-wide")]  # a variant (its own row), where older files have no label
    (tmp_path / "diagnostics_point_maze_u.json").write_text(json.dumps({"runs": runs}))
    monkeypatch.setattr(report, "RESULTS", tmp_path)
    ppo, sapg, wide = report.diagnostics_table()[2:]
    assert ppo.endswith("| – | – | – |") and sapg.endswith("| 0.90 | 0.20 / 4.0 | – |")
    assert "| sapg-wide | 12 | 1 |" in wide and wide.endswith("| 0.50 | 0.10 / 8.0 | – |")


def test_pbt_rounds_counts_each_round_once_and_the_diagnostics_table_averages_them(tmp_path, monkeypatch):
    import population_diagnostics
    import report

    log = tmp_path / "scalars" / "pbt"
    log.mkdir(parents=True)
    # one row per batch; a round's counts repeat on every row until the next round
    columns = {"num_steps": [0, 0, 1, 1, 2], "num_replaced": [0, 0, 3, 3, 1], "num_mutated": [0, 0, 1, 1, 0],
               "best_objective": ["nan", "nan", "nan", "nan", 5.0]}
    for name, values in columns.items():
        (log / f"{name}.csv").write_text("".join(f"{100 * (i + 1)},{v}\n" for i, v in enumerate(values)))
    rounds = population_diagnostics.pbt_rounds(tmp_path / "scalars")
    assert rounds == {"rounds": 2, "rounds_with_fitness": 1, "replaced": 4, "mutated": 1}
    assert population_diagnostics.pbt_rounds(tmp_path / "elsewhere") is None

    maze = {"coverage": [0.5], "union_coverage": 0.5, "mean_pairwise_tv": 0.0, "goal_cell_visit_share": [0.0]}
    runs = [{"env": "point_maze_u", "algo": "pbt", "num_envs": 12, "seed": s, "maze": maze, "pbt_rounds": r}
            for s, r in enumerate([rounds, {"rounds": 4, "rounds_with_fitness": 0, "replaced": 0, "mutated": 0}, None])]
    (tmp_path / "diagnostics_point_maze_u.json").write_text(json.dumps({"runs": runs}))
    monkeypatch.setattr(report, "RESULTS", tmp_path)
    (row,) = report.diagnostics_table()[2:]
    assert row.endswith("| – | – | 0.5 / 3.0; 2.0, 0.5 (2 runs) |")  # the third run predates the field


def test_velocity_sign_agreement_tells_a_pump_from_a_brake():
    import types

    import population_diagnostics
    import torch
    from tensordict.nn import TensorDictModule

    # policy 0 pushes along the velocity, 1 against it, 2 always right: a pump, a brake, neither
    def act(obs, ids):
        vel = obs[:, 1:]
        return torch.where(ids[:, None] == 0, vel, torch.where(ids[:, None] == 1, -vel, torch.ones_like(vel)))

    actor = TensorDictModule(act, in_keys=["observation", "policy_id"], out_keys=["action"])
    agree = population_diagnostics.velocity_sign_agreement(types.SimpleNamespace(actor=actor), 3, grid=8)
    assert agree == [1.0, 0.0, 0.5]


def test_results_page_names_the_call_that_ran_each_protocol(tmp_path, monkeypatch):
    import report

    both = "python benchmarks/scaling.py --env point_maze_u --seeds 0 --updates 2 --frames 64 --out /tmp/x.json"
    more_seeds = "python benchmarks/scaling.py --env point_maze_u --seeds 0 1 --updates 2 --runs-dir /tmp/r"
    table = [{"protocol": p, "algo": "ppo", "num_envs": 16, "seeds": [0], "iqm": 0.5, "iqm_ci": [0.0, 1.0]}
             for p in ("updates", "frames")]
    d = {"env": "point_maze_u", "metric": "eval_success", "commands": [both, more_seeds], "table": table,
         "protocols": {"updates": {"updates": 2, "horizon": 16}, "frames": {"frames": 64, "horizon": 16}}}
    (tmp_path / "scaling_point_maze_u.json").write_text(json.dumps(d))
    monkeypatch.setattr(report, "RESULTS", tmp_path)
    lines = []
    report.scaling(lines)
    titles = [line for line in lines if line.startswith("**fixed")]
    # the frames table was made by the first call only; machine-local paths are dropped
    assert titles == ["**fixed 2 updates**: `python benchmarks/scaling.py --env point_maze_u --seeds 0 1 --updates 2`",
                      "**fixed 64 frames**: `python benchmarks/scaling.py --env point_maze_u --seeds 0 --updates 2 "
                      "--frames 64`"]


def test_expected_best_of_k_matches_enumerating_every_draw():
    import itertools

    rng = np.random.default_rng(3)
    select_by = rng.integers(0, 3, 5).astype(float)  # ties on purpose
    score = rng.random(5)
    for k in (1, 2, 3):
        picks = []
        for draw in itertools.product(range(5), repeat=k):  # every k-tuple of runs, equally likely
            best = max(select_by[i] for i in draw)
            picks.append(np.mean([score[i] for i in draw if select_by[i] == best]))
        assert rl_stats.expected_best_of_k(select_by, score, k) == pytest.approx(np.mean(picks), abs=1e-12)
    assert rl_stats.expected_best_of_k(select_by, score, 1) == pytest.approx(score.mean())
    # by hand: runs (return, success) (1, 0), (2, 1), (3, 0); of 2 draws the pick is run 3 with probability 5/9,
    # run 2 with 4/9 - 1/9 = 3/9
    assert rl_stats.expected_best_of_k([1.0, 2.0, 3.0], [0.0, 1.0, 0.0], 2) == pytest.approx(3 / 9)
    with pytest.raises(ValueError, match="one length"):
        rl_stats.expected_best_of_k([1.0, 2.0], [1.0], 2)
    with pytest.raises(ValueError, match="k must be"):
        rl_stats.expected_best_of_k([1.0], [1.0], 0)


def test_selection_table_sets_pbts_headline_beside_the_best_of_k_ppo_runs(tmp_path, monkeypatch):
    import report

    def run(algo, seed, ret, success, members=None):
        r = {"algo": algo, "algo_name": algo, "num_envs": 16, "seed": seed, "protocols": ["updates"],
             "eval_return": ret, "eval_success": success}
        if members:
            r["eval_per_policy"] = {"eval_return": [1.0] * len(members), "eval_success": members}
        return r

    runs = [run("ppo", 0, 1.0, 0.0), run("ppo", 1, 2.0, 1.0),
            run("pbt", 0, 5.0, 1.0, [0.0, 1.0]), run("pbt", 1, 5.0, 0.5, [0.5, 0.0])]
    d = {"env": "point_maze_u", "metric": "eval_success", "protocols": {"updates": {"updates": 2, "horizon": 16}},
         "table": [], "runs": runs}
    (tmp_path / "scaling_point_maze_u.json").write_text(json.dumps(d))
    monkeypatch.setattr(report, "RESULTS", tmp_path)
    (row,) = report.selection_table(k=2)[2:]
    # PPO runs 0.5; members (0 + 1 + 0.5 + 0) / 4; member 0 (0 + 0.5) / 2; headline (1 + 0.5) / 2; best of 2 PPO
    # runs by return: run 1 with probability 3/4; no PPO runs on N/2 envs yet
    assert row == "| point_maze_u (success rate) | 16 | 2 | 2 | 0.500 | – / – | 0.375 | 0.250 | 0.750 | – / – | 0.750 |"
    # PPO on a member's share (16 / 2 = 8 envs): runs at another N or protocol are not read
    small = [run("ppo", 0, 3.0, 0.0), run("ppo", 1, 1.0, 1.0), run("ppo", 2, 2.0, 1.0), run("ppo", 3, 9.0, 1.0),
             run("ppo-fixed-lr", 0, 1.0, 1.0)]
    for r in small[:3] + small[4:]:
        r["num_envs"] = 8
    small[2]["protocols"] = ["frames"]
    (tmp_path / "ablation_point_maze_u_ppo_member_envs.json").write_text(json.dumps({"runs": small}))
    (row,) = report.selection_table(k=2)[2:]
    # recipe lr: two runs on 8 envs, mean success 0.5; the best of 2 by return is run 0 (return 3, success 0) unless
    # both draws are run 1: expected success 1/4. Fixed lr: one run, success 1
    assert row == ("| point_maze_u (success rate) | 16 | 2 | 2 | 0.500 | 0.500 (2) / 1.000 (1) | 0.375 | 0.250 | 0.750 | "
                   "0.250 / 1.000 | 0.750 |")
    # a longer study of the same task follows, with its own study of PPO on a member's share
    long_name, long_member_envs = next(iter(report.LONG_RUNS.items()))
    for r in runs:
        r["eval_success"] = 1.0 - r["eval_success"]
        if "eval_per_policy" in r:
            r["eval_per_policy"]["eval_success"] = [1.0 - v for v in r["eval_per_policy"]["eval_success"]]
    (tmp_path / long_name).write_text(json.dumps({**d, "protocols": {"updates": {"updates": 200, "horizon": 16}}}))
    (tmp_path / long_member_envs).write_text(json.dumps({"runs": [run("ppo", 0, 1.0, 0.25) | {"num_envs": 8}]}))
    main, longer = report.selection_table(k=2)[2:]
    assert main.startswith("| point_maze_u (success rate) | 16 | 2 | 2 | 0.500 | 0.500 (2) / 1.000 (1) |")
    assert longer == ("| point_maze_u (success rate) | 16 | 200 | 2 | 0.500 | 0.250 (1) / – | 0.625 | 0.750 | 0.250 | "
                      "0.250 / – | 0.250 |")


def test_controller_table_counts_pumping_and_braking_leaders(tmp_path, monkeypatch):
    import report

    def run(seed, agreement, success):
        return {"env": "sparse_mountain_car", "algo": "sapg", "label": "sapg", "num_envs": 12, "seed": seed,
                "eval_success": success, "velocity_sign_agreement": agreement}

    runs = [run(0, [0.9, 0.8, 0.2], [1.0, 0.0, 0.0]), run(1, [0.1, 0.3, 0.35], [0.0, 1.0, 1.0]),
            run(2, [0.5, 0.6, 0.7], None),
            {"env": "point_maze_u", "algo": "ppo", "num_envs": 12, "seed": 0, "maze": {}}]  # no controller: no row
    (tmp_path / "diagnostics_sparse_mountain_car.json").write_text(json.dumps({"runs": runs}))
    monkeypatch.setattr(report, "RESULTS", tmp_path)
    (row,) = report.controller_table()[2:]
    # every policy on the leader's side: run 1 (all brake); not run 0 (one brakes) nor run 2 (one pumps, the
    # leader neither)
    assert row == "| sparse_mountain_car | sapg | 12 | 3 | 0.33 | 0.50 | 1 / 1 | 0.49 [0.20, 0.80] | 1 of 3 | – |"


def test_each_task_ablation_lands_in_its_own_block_of_the_scaling_doc(tmp_path, monkeypatch, capsys):
    import json

    import report

    for task, value in (("point_maze_u", 0.25), ("mountain_car", 0.75), ("point_maze_u_sapg_defaults", 0.5),
                        ("sparse_mountain_car_unplaced", 0.125)):
        runs = [{"algo": a, "algo_name": "sapg", "num_envs": 48, "seed": s, "protocols": ["updates"], "iterations": 2,
                 "frames": 2 * 48 * 16, "eval_return": 1.0, "final_train_return": 0.5, "wall_seconds": 1.0,
                 "eval_success": value} for a in ("sapg", "sapg-td0") for s in range(3)]
        d = {"env": task, "commands": [f"python benchmarks/scaling.py --env {task} --out /tmp/x.json"], "runs": runs,
             **scaling.analysis(runs, ["sapg", "sapg-td0"], None, None)}
        (tmp_path / f"ablation_{task}.json").write_text(json.dumps(d))
    doc = tmp_path / "docs" / "scaling.md"
    doc.parent.mkdir()
    doc.write_text("maze\n<!-- ablation-point_maze_u:start -->\nold\n<!-- ablation-point_maze_u:end -->\n"
                   "car\n<!-- ablation-mountain_car:start -->\n<!-- ablation-mountain_car:end -->\n"
                   "defaults\n<!-- ablation-point_maze_u_sapg_defaults:start -->\n"
                   "<!-- ablation-point_maze_u_sapg_defaults:end -->\n")
    monkeypatch.setattr(report, "RESULTS", tmp_path)
    monkeypatch.setattr(report, "ROOT", tmp_path)
    report.update_scaling_doc()
    maze, rest = doc.read_text().split("car\n", 1)
    car, defaults = rest.split("defaults\n", 1)
    assert "ablation_point_maze_u.json" in maze and "0.25 [0.25, 0.25]" in maze and "old" not in maze
    assert "ablation_mountain_car.json" in car and "0.75 [0.75, 0.75]" in car and "point_maze_u" not in car
    assert "ablation_point_maze_u_sapg_defaults.json" in defaults and "0.50 [0.50, 0.50]" in defaults
    assert "0.50" not in maze + car and "--out" not in doc.read_text()
    # a file without a block in the doc is named, not dropped in silence
    assert "ablation_sparse_mountain_car_unplaced.json is not shown" in capsys.readouterr().out
    assert "0.12" not in doc.read_text()


def test_a_run_folder_name_gives_its_variant_label_back():
    from compare_algos import label_of_run_folder, run_folder_name

    assert run_folder_name("sapg-td0", "point_maze_u", 3) == "sapg-td0-point_maze_u-s3"
    assert label_of_run_folder(run_folder_name("sapg-td0", "point_maze_u", 3), "point_maze_u", 3) == "sapg-td0"
    # another seed or task, an empty label, or a folder named otherwise: no label
    for name in ("sapg-point_maze_u-s13", "sapg-mountain_car-s3", "-point_maze_u-s3", "point_maze_u"):
        assert label_of_run_folder(name, "point_maze_u", 3) is None
