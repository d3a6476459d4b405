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
