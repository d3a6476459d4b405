"""benchmarks/throughput.py on its --quick config: every variant is measured and every ratio is
the measured figure divided by the same figure of the TorchRL baseline (no timing assertions)."""
from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import throughput  # noqa: E402


def test_nearest_multiple():
    assert throughput.nearest_multiple(4096, 6) == 4098
    assert throughput.nearest_multiple(16384, 6) == 16386
    assert throughput.nearest_multiple(4096, 64) == 4096
    assert throughput.nearest_multiple(3, 8) == 8


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("throughput") / "quick.json"
    threads = torch.get_num_threads()
    try:
        returned = throughput.main(["--quick", "--threads", "1", "--out", str(out)])
    finally:
        torch.set_num_threads(threads)
    data = json.loads(out.read_text())
    assert data["cells"] == json.loads(json.dumps(returned["cells"]))
    return data


def test_every_variant_is_measured(quick):
    (cell,) = quick["cells"]
    rows = {r["variant"]: r for r in cell["results"]}
    assert set(rows) == {"torchrl", "ppo", "sapg", "epo"}
    for r in rows.values():
        assert r["status"] == "ok" and not r["compile"]
        assert r["update_s"] == statistics.median(r["update_s_all"]) > 0
        assert r["e2e_s"] == statistics.median(r["e2e_s_all"]) > 0 and r["peak_memory_bytes"] > 0
    n, m, t = cell["num_envs"], cell["num_policies"], quick["config"]["horizon"]
    assert rows["torchrl"]["rows_per_update"] == rows["ppo"]["rows_per_update"] == n * t
    # leader_follower, off_policy_ratio 1: the leader also trains on one block of follower rows
    assert rows["sapg"]["rows_per_update"] == rows["epo"]["rows_per_update"] == (n + n // m) * t
    # EPO ran its genetic step after every update (warm-up and timed ones)
    cfg = quick["config"]
    assert rows["epo"]["genetic_steps"] == rows["epo"]["genetic_decisions"] == cfg["warmup"] + cfg["repeats"]
    for v in rows:
        assert f"| {v} |" in quick["table_markdown"]
    assert quick["command"].startswith("python benchmarks/throughput.py --quick")
    assert {"torch_version", "torchrl_version", "cpu_model", "torch_num_threads", "timestamp"} <= set(quick)


def test_ratios_are_figures_over_the_baseline(quick):
    (cell,) = quick["cells"]
    rows = {r["variant"]: r for r in cell["results"]}
    base, ppo, epochs = rows["torchrl"], rows["ppo"], cell["epochs"]
    for r in rows.values():
        assert r["samples_per_s"] == pytest.approx(r["rows_per_update"] * epochs / r["update_s"])
        assert r["env_frames_per_s"] == pytest.approx(cell["num_envs"] * quick["config"]["horizon"] / r["update_s"])
        assert r["update_time_vs_torchrl"] == pytest.approx(r["update_s"] / base["update_s"])
        assert r["samples_per_s_vs_torchrl"] == pytest.approx(r["samples_per_s"] / base["samples_per_s"])
        assert r["env_frames_per_s_vs_torchrl"] == pytest.approx(r["env_frames_per_s"] / base["env_frames_per_s"])
        assert r["e2e_frames_per_s"] == pytest.approx(cell["num_envs"] * quick["config"]["horizon"] / r["e2e_s"])
        assert r["e2e_frames_per_s_vs_torchrl"] == pytest.approx(r["e2e_frames_per_s"] / base["e2e_frames_per_s"])
        assert r["e2e_time_vs_torchrl"] == pytest.approx(r["e2e_s"] / base["e2e_s"])
        assert r["peak_memory_vs_torchrl"] == pytest.approx(r["peak_memory_bytes"] / base["peak_memory_bytes"])
    o = cell["overheads"]
    assert o["ppo_over_torchrl_update_time"] == pytest.approx(ppo["update_s"] / base["update_s"])
    for v in ("sapg", "epo"):
        assert o[f"{v}_over_ppo_update_time"] == pytest.approx(rows[v]["update_s"] / ppo["update_s"])
        assert o[f"{v}_over_ppo_e2e_time"] == pytest.approx(ppo["e2e_frames_per_s"] / rows[v]["e2e_frames_per_s"])
        # the leader's off-policy rows: 1 + 1/M more rows than PPO trains on, the time ratio's floor
        assert o[f"{v}_over_ppo_rows"] == pytest.approx(1 + 1 / cell["num_policies"])
        assert o[f"{v}_over_ppo_time_per_row"] == pytest.approx(o[f"{v}_over_ppo_update_time"] / o[f"{v}_over_ppo_rows"])
    # paired by round: each timed round's ratio, from the two times of that round
    for key, a, b in (("ppo_over_torchrl", ppo, base), ("sapg_over_ppo", rows["sapg"], ppo), ("epo_over_ppo", rows["epo"], ppo)):
        paired = o[f"{key}_update_time_paired"]
        by_hand = [x / y for x, y in zip(a["update_s_all"], b["update_s_all"])]
        assert paired["per_round"] == pytest.approx(by_hand) and len(by_hand) == quick["config"]["repeats"]
        assert paired["median_ratio"] == pytest.approx(statistics.median(by_hand))
        low, high = paired["iqm_ratio_ci"]
        assert min(by_hand) <= low <= paired["iqm_ratio"] <= high <= max(by_hand)
    assert "Update time, paired by round" in quick["table_markdown"]


def test_population_overrides_reach_sapg_and_not_ppo(tmp_path):
    """``--population-override algo.off_policy_ratio=0.5``: SAPG's leader trains on half a block of
    follower rows (1 + 0.5 / M of PPO's rows); PPO and the baseline keep theirs."""
    out = tmp_path / "half.json"
    threads = torch.get_num_threads()
    try:
        throughput.main(["--quick", "--threads", "1", "--variants", "ppo", "sapg", "--no-profile", "--e2e-iters", "0",
                         "--population-override", "algo.off_policy_ratio=0.5", "--out", str(out)])
    finally:
        torch.set_num_threads(threads)
    (cell,) = json.loads(out.read_text())["cells"]
    rows = {r["variant"]: r["rows_per_update"] for r in cell["results"]}
    n, m, t = cell["num_envs"], cell["num_policies"], 4
    assert rows == {"torchrl": n * t, "ppo": n * t, "sapg": (n + n // m // 2) * t}
    assert cell["overheads"]["sapg_over_ppo_rows"] == pytest.approx(1 + 0.5 / m)


def test_paired_round_ratios_by_hand():
    """Four rounds: the per-round ratios, their median and IQM (middle two of four), a bootstrap interval inside them."""
    row, ref = {"update_s_all": [2.5, 3.75, 3.0, 8.0]}, {"update_s_all": [2.0, 3.0, 2.0, 4.0]}
    paired = throughput.paired_round_ratios(row, ref)
    assert paired["per_round"] == [1.25, 1.25, 1.5, 2.0]
    assert paired["median_ratio"] == paired["iqm_ratio"] == 1.375
    low, high = paired["iqm_ratio_ci"]
    assert 1.25 <= low < 1.375 < high <= 2.0
    with pytest.raises(ValueError):  # rounds must pair up
        throughput.paired_round_ratios(row, {"update_s_all": [1.0]})


def test_flop_floor_is_counted_for_every_variant(quick):
    """Every cell has the update's matmul FLOPs, counted as they run, a same-run GEMM of the
    largest minibatch matmul, and achieved / GEMM as the floor ratio."""
    (cell,) = quick["cells"]
    rows = {r["variant"]: r for r in cell["results"]}
    cfg, n = quick["config"], cell["num_envs"]
    t, epochs, hidden = cfg["horizon"], cell["epochs"], cfg["hidden"]

    def fwd(sizes):  # 2 x in x out per linear layer, per row
        return sum(2 * i * o for i, o in zip(sizes[:-1], sizes[1:]))

    plain = fwd([3, *hidden, 1])  # Pendulum: 3 observation dims, 1 action; the critic has one output too
    # plain MLPs: the count is the textbook one. Ours runs its first layer as one GEMM of [obs, 1] (the bias as a
    # fourth input column), so its first layer counts 4 inputs where TorchRL's MLP counts 3
    for v, first_in in (("torchrl", 3), ("ppo", 4)):
        r = rows[v]
        parts, rows_trained = r["flops"]["per_update"], r["rows_per_update"]
        assert r["flops"]["actor_forward_flops_per_row"] == r["flops"]["critic_forward_flops_per_row"] == plain
        net = fwd([first_in, *hidden, 1])  # the forward as it runs
        # forward + 2x backward, except the first layer's input gradient (observations need none): actor and critic
        assert parts["train_forward_backward"] == (3 * 2 * net - 2 * 2 * first_in * hidden[0]) * rows_trained * epochs
        # TorchRL's GAE: V(s) and V(s') in two calls; the recipe's: one call on T + 1 states per row (no episode
        # ends inside the quick run's 200-step Pendulum episodes, so a budget of one slot)
        assert parts["value_estimation"] == (2 * net * n * t if v == "torchrl" else net * n * (t + 1))
        assert parts["aggregate"] == parts["other"] == 0
    assert rows["torchrl"]["flops"]["per_update"]["analytic_kl"] == 0
    # an extra actor pass for the adaptive learning rate, where the trainer makes one: one no-grad forward
    assert rows["ppo"]["flops"]["per_update"]["analytic_kl"] in (0, plain * rows["ppo"]["rows_per_update"] * epochs)
    for v in ("sapg", "epo"):  # latent-conditioned nets; aggregate re-scores the off-policy rows
        parts = rows[v]["flops"]["per_update"]
        assert parts["train_forward_backward"] > rows["ppo"]["flops"]["per_update"]["train_forward_backward"]
        assert parts["aggregate"] > 0 and parts["value_estimation"] > 0
    assert rows["sapg"]["flops"]["per_update"] == rows["epo"]["flops"]["per_update"]
    for v, r in rows.items():
        f, parts = r["flops"], r["flops"]["per_update"]
        assert f["analytic_kl_pass"] == (parts["analytic_kl"] > 0)
        assert r["flops_per_update"] == parts["total"] == sum(x for k, x in parts.items() if k != "total")
        # the largest forward matmul of the loss: a minibatch through the hidden layer with most weights
        mb = r["rows_per_update"] // cfg["minibatches"]
        assert r["gemm"]["shape"] == f["largest_matmul"] == [mb, hidden[0], hidden[1]]
        assert r["achieved_flops_per_s"] == pytest.approx(r["flops_per_update"] / r["update_s"])
        assert r["flop_floor_ratio"] == pytest.approx(r["achieved_flops_per_s"] / r["gemm_flops_per_s"])
        assert r["floor_update_s"] == pytest.approx(r["flops_per_update"] / r["gemm_flops_per_s"])
    assert "achieved / GEMM" in quick["table_markdown"]


def test_flop_counter_counts_forward_and_backward_matmuls():
    """2 x m x k x n per matmul, forward and the backward autograd really runs, by the open phase."""
    prof, counts = throughput.PhaseProfile(torch.device("cpu")), {}
    layer = torch.nn.Linear(5, 7)
    x = torch.randn(11, 5, requires_grad=True)
    with throughput.flop_counter(prof, counts):
        with prof.phase("loss_forward"):
            y = layer(x).sum()
        with prof.phase("backward"):
            y.backward()
        with prof.phase("value"), torch.no_grad():
            torch.vmap(layer)(torch.randn(2, 11, 5))  # physical shapes under vmap
    fwd = 2 * 11 * 5 * 7
    assert counts.pop("largest_forward_mm") == (11, 5, 7)  # the loss forward's largest matmul: the GEMM to time
    assert counts == {"train_forward_backward": 3 * fwd, "value_estimation": 2 * fwd}


def test_profile_splits_every_variant_into_phases(quick):
    (cell,) = quick["cells"]
    rows = {r["variant"]: r for r in cell["results"]}
    for v, r in rows.items():
        p = r["profile"]
        assert set(p["seconds"]) == set(throughput.PHASES) and p["iterations"] == quick["config"]["profile_iters"]
        assert all(s >= 0 for s in p["seconds"].values())
        assert p["update_s"] == pytest.approx(sum(s for k, s in p["seconds"].items() if k != "collect"))
        assert sum(p["share_of_update"].values()) == pytest.approx(1.0)
        # the phases every variant has
        for phase in ("collect", "value", "minibatch", "loss_forward", "backward", "optimizer"):
            assert p["seconds"][phase] > 0, (v, phase)
        # the KL pass is timed where the trainer makes one (it is FLOP-counted in the same phase)
        assert (p["seconds"]["analytic_kl"] > 0) == r["flops"]["analytic_kl_pass"]
        if v == "torchrl":  # the plain loop has no hooks, normaliser or log
            assert p["seconds"]["aggregate"] == p["seconds"]["normalizer"] == p["seconds"]["logging"] == 0
        else:
            assert p["seconds"]["normalizer"] > 0 and p["seconds"]["logging"] > 0
    # PPO's batch_process stage is an empty loop; SAPG/EPO's runs aggregate
    assert min(rows["sapg"]["profile"]["seconds"]["aggregate"], rows["epo"]["profile"]["seconds"]["aggregate"]) > \
        rows["ppo"]["profile"]["seconds"]["aggregate"]
    excess = cell["overheads"]["profile_excess_s"]
    assert excess["ppo"]["reference"] == "torchrl" and excess["sapg"]["reference"] == "ppo"
    for v, e in excess.items():
        ref = rows[e["reference"]]["profile"]
        assert e["update_s"] == pytest.approx(rows[v]["profile"]["update_s"] - ref["update_s"])
    assert "Per-phase profile" in quick["table_markdown"]


def test_profile_instrumentation_is_removed_afterwards():
    """The timers wrap bound methods of the benchmark's own trainer and two process-wide functions
    only while the block runs; afterwards the trainer, torch and the library are as before."""
    from torchrl_sapg.objectives import kl as kl_module
    from torchrl_sapg.trainers import on_policy

    args = throughput.parse_args(["--quick"])
    runner = throughput.EndToEnd("sapg", 8, 2, args)
    trainer = runner.trainer
    backward, collector = torch.Tensor.backward, trainer.collector
    kl, kl2 = on_policy.gaussian_kl, kl_module.gaussian_kl
    try:
        seconds = runner.profile_step()
    finally:
        runner.close()
    assert torch.Tensor.backward is backward and on_policy.gaussian_kl is kl and kl_module.gaussian_kl is kl2
    assert trainer.collector is collector
    for name in ("_estimate_values", "_process_batch_hook", "optim_steps", "_metrics"):
        assert name not in vars(trainer)
    assert "forward" not in vars(trainer.loss_module) and "step" not in vars(trainer.optimization_stepper)
    assert seconds["backward"] > 0 and seconds["aggregate"] > 0


def test_learner_update_is_a_wrapper_over_throughput(monkeypatch, tmp_path):
    """One learner benchmark: learner_update.py calls throughput.main with our PPO and SAPG."""
    import learner_update

    seen = {}
    monkeypatch.setattr(throughput, "main", lambda argv: seen.setdefault("argv", argv))
    learner_update.main(["--threads", "1"])
    argv = seen["argv"]
    args = throughput.parse_args([a for a in argv if a != "--worker"])
    assert args.variants == ["torchrl", "ppo", "sapg", "sapg_td0"] and not args.compile and not args.memory
    assert args.out.endswith("learner_update_cpu.json") and args.threads == 1


def test_report_puts_the_grid_before_a_single_cell_rerun(quick, tmp_path, monkeypatch):
    """docs/results.md: a grid's section comes first, a one-cell rerun (``throughput_cell_*``) after it,
    and the headline reads the grid (``throughput_cpu*``), not the rerun."""
    import report

    grid = {**quick, "cells": [quick["cells"][0], {**quick["cells"][0], "num_envs": 2 * quick["cells"][0]["num_envs"]}]}
    rerun = {**quick, "note": "one cell, more rounds", "timestamp": "2999-01-01T00:00:00+00:00"}
    (tmp_path / "throughput_cpu.json").write_text(json.dumps(grid))
    (tmp_path / "throughput_cell_cpu_n8_m2.json").write_text(json.dumps(rerun))
    monkeypatch.setattr(report, "RESULTS", tmp_path)
    lines: list[str] = []
    report.throughput(lines)
    sources = [line for line in lines if line.startswith("`python benchmarks/throughput.py")]
    assert len(sources) == 2
    assert "(`throughput_cpu.json`" in sources[0] and "(`throughput_cell_cpu_n8_m2.json`" in sources[1]
    assert "Note: one cell, more rounds" in sources[1]
    (headline,) = [row for row in report.headlines() if row.startswith("- Update-time overhead")]
    assert headline.count("N=") == 2  # both cells of the grid
