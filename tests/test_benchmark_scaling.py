"""benchmarks/scaling.py end to end on a tiny config: JSON layout, the frames of each protocol, resuming."""
from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "scaling.py"
sys.path.insert(0, str(REPO / "benchmarks"))

import scaling  # noqa: E402

HORIZON, UPDATES, NS = 16, 2, (8, 16)
FRAMES = UPDATES * NS[1] * HORIZON  # the frames protocol's run at N=16 is the updates protocol's run
TINY = [f"train.horizon={HORIZON}", "train.num_epochs=1", "train.num_minibatches=2", "model.hidden_sizes=[16]",
        "+env.kwargs.max_episode_steps=16"]  # 16-step episodes: every batch ends episodes, so curves are not empty


def _run(tmp: pathlib.Path, out: pathlib.Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]))
    cmd = [sys.executable, str(SCRIPT), "--env", "pendulum", "--algos", "ppo", "--num-envs", *map(str, NS),
           "--seeds", "0", "--updates", str(UPDATES), "--frames", str(FRAMES), "--eval-episodes", "1",
           "--out", str(out), "--runs-dir", str(tmp / "runs"), "--no-plot", "--", *TINY]
    res = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


def test_scaling_tiny_end_to_end(tmp_path):
    out = tmp_path / "scaling_tiny.json"
    res = _run(tmp_path, out)
    assert "3 runs planned, 0 already" in res.stdout  # 2 N x 2 protocols, one run shared
    d = json.loads(out.read_text())
    assert d["protocols"] == {"frames": {"frames": FRAMES, "horizon": HORIZON},
                              "updates": {"updates": UPDATES, "horizon": HORIZON}}
    assert len(d["runs"]) == 3
    for r in d["runs"]:
        n = r["num_envs"]
        assert r["horizon"] == HORIZON and r["algo"] == "ppo" and r["seed"] == 0
        assert isinstance(r["eval_return"], float) and math.isfinite(r["eval_return"])
        assert r["curve"] and r["final_train_return"] is not None
        if "updates" in r["protocols"]:
            # fixed updates: total_frames = updates * N * horizon, and the recipe ran exactly that
            assert r["total_frames"] == UPDATES * n * HORIZON
            assert r["frames"] == UPDATES * n * HORIZON
            assert r["iterations"] == UPDATES
        if "frames" in r["protocols"]:
            assert r["total_frames"] == FRAMES
            assert r["iterations"] == math.ceil(FRAMES / (n * HORIZON))
            assert r["frames"] == r["iterations"] * n * HORIZON
    shared = [r for r in d["runs"] if sorted(r["protocols"]) == ["frames", "updates"]]
    assert [r["num_envs"] for r in shared] == [NS[1]]
    rows = {(t["protocol"], t["num_envs"]): t for t in d["table"]}
    assert set(rows) == {(p, n) for p in ("frames", "updates") for n in NS}
    assert rows["updates", NS[0]]["frames"] == UPDATES * NS[0] * HORIZON
    assert rows["frames", NS[0]]["iterations"] == FRAMES // (NS[0] * HORIZON)
    assert "| ppo | 8 |" in scaling.markdown(d)
    assert all(r["code"] == d["code"] and r["code"]["commit"] for r in d["runs"])  # each run names its commit

    # resumable: a second call finds every run in the JSON and runs nothing
    before = {r["key"]: r["wall_seconds"] for r in d["runs"]}
    res = _run(tmp_path, out)
    assert "3 runs planned, 3 already" in res.stdout and "0 to run" in res.stdout
    assert {r["key"]: r["wall_seconds"] for r in json.loads(out.read_text())["runs"]} == before

    pytest.importorskip("matplotlib")
    pngs = scaling.plot(out)
    assert all(p.is_file() and p.stat().st_size > 0 for p in pngs)


def test_runs_written_before_per_run_commits_take_the_study_commit():
    old = {"code": {"commit": "abc", "dirty": False}, "runs": [{"key": "a"}, {"key": "b", "code": {"commit": "def"}}]}
    assert [r["code"]["commit"] for r in scaling.stamp_code(old)["runs"]] == ["abc", "def"]


def _args(**kw) -> argparse.Namespace:
    base = dict(env="pendulum", num_envs=[48, 96], seeds=[0, 1], frames=None, updates=None, overrides=[])
    return argparse.Namespace(**{**base, **kw})


def test_plan_frames_per_protocol_and_divisibility():
    variants = [scaling.parse_variant(v) for v in ("ppo", "sapg")]
    jobs = scaling.plan(_args(updates=10, frames=10 * 96 * 32), variants)
    # pendulum's horizon is 32; the N=96 run of the frames protocol is the updates protocol's
    assert len(jobs) == 2 * 2 * 3
    for j in jobs:
        assert j["horizon"] == 32
        if "updates" in j["protocols"]:
            assert j["total_frames"] == 10 * j["num_envs"] * 32
    assert {j["num_envs"] for j in jobs if len(j["protocols"]) == 2} == {96}
    assert [j["seed"] for j in jobs] == sorted(j["seed"] for j in jobs)  # seed-major
    with pytest.raises(SystemExit, match="multiple of its 64 policies"):
        scaling.plan(_args(updates=1), [scaling.parse_variant("epo")])  # EPO's default K = 64
