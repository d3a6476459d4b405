"""benchmarks/device_check.sh --dry-run: the one-shot GPU check's steps on CPU at tiny sizes (~40 s)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "device_check.sh"


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_device_check_dry_run_writes_every_result(tmp_path):
    out = tmp_path / "check"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(["bash", str(SCRIPT), "--dry-run", "--out", str(out)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert {p.name for p in out.iterdir()} == {"device_check_dryrun.json", "env_throughput_dryrun.json",
                                                "throughput_dryrun.json"}
    summary = json.loads((out / "device_check_dryrun.json").read_text())
    assert summary["dry_run"] and summary["device"] == "cpu"
    assert [s["step"] for s in summary["steps"]] == ["tests", "env_throughput", "throughput"]
    assert all(s["exit_status"] == 0 and s["seconds"] >= 0 for s in summary["steps"])
    # the suite's CUDA tests were selected by their marker (and skip without a GPU)
    assert summary["tests"]["tests"] > 0 and summary["tests"]["failures"] == summary["tests"]["errors"] == 0
    for s in summary["steps"]:
        assert f"== [{s['step']}] exit 0" in proc.stdout

    tp = json.loads((out / "throughput_dryrun.json").read_text())
    assert [c["num_policies"] for c in tp["cells"]] == [4, 8]
    for cell in tp["cells"]:
        rows = cell["results"]
        # every variant eager and compiled (the dry run compiles with the eager backend)
        assert {(r["variant"], r["compile"]) for r in rows} == {
            (v, c) for v in ("torchrl", "ppo", "sapg", "epo") for c in (False, True)}
        assert all(r["status"] == "ok" and r["flop_floor_ratio"] > 0 for r in rows)
        assert all("profile" in r for r in rows if not r["compile"])
    env_tp = json.loads((out / "env_throughput_dryrun.json").read_text())
    assert env_tp["results"] and env_tp["device"] == "cpu"


def test_device_check_rejects_unknown_arguments():
    proc = subprocess.run(["bash", str(SCRIPT), "--bogus"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "unknown argument: --bogus" in proc.stderr
