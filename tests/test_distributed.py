"""Data-parallel training under torchrun: 2 CPU ranks with gloo, launched as a user would.

Each test starts ``python -m torch.distributed.run --nproc_per_node=2`` on
``tests/distributed_worker.py`` (or on ``recipes/train.py``) and compares what the ranks wrote.
"""
from __future__ import annotations

import json
import os
import pathlib
import socket
import subprocess
import sys

import pytest
import torch
from test_trainer import _assert_same as _assert_identical  # bitwise, NaN == NaN

REPO = pathlib.Path(__file__).resolve().parents[1]
WORKER = REPO / "tests" / "distributed_worker.py"
TRAIN = REPO / "recipes" / "train.py"

TINY = [
    "env=pendulum",
    "env.num_envs=48",
    "+env.kwargs.max_episode_steps=16",
    "train.horizon=16",
    "train.num_epochs=2",
    "train.num_minibatches=2",
    "model.hidden_sizes=[16]",
    "algo.latent_dim=4",
    "threads=1",
    "progress_bar=false",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(script: pathlib.Path, args: list[str], cwd: pathlib.Path, nproc: int = 2) -> subprocess.CompletedProcess:
    env = os.environ.copy()
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in [env.get("PYTHONPATH")] if p])
    env["OMP_NUM_THREADS"] = "1"
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
           "--master_addr=127.0.0.1", f"--master_port={_free_port()}", str(script), *args]
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def _load(path: pathlib.Path) -> dict:
    return torch.load(path, weights_only=True)


def test_collectives_match_a_hand_computation_on_the_pooled_data(tmp_path):
    _torchrun(WORKER, [str(tmp_path), "collectives"], tmp_path)
    r = [_load(tmp_path / f"rank{i}.pt") for i in range(2)]
    # averaged gradient == gradient of the mean of the two ranks' losses (equal row counts)
    lin = torch.nn.Linear(3, 2)
    with torch.no_grad():
        for k, p in lin.named_parameters():
            p.copy_(r[0]["params"][k])
    (0.5 * sum(lin(r[i]["x"]).pow(2).mean() for i in range(2))).backward()
    for k, p in lin.named_parameters():
        for i in range(2):
            torch.testing.assert_close(r[i]["grads"][k], p.grad, rtol=1e-6, atol=1e-7)
        assert torch.equal(r[0]["grads"][k], r[1]["grads"][k])
    assert r[0]["kl"].item() == r[1]["kl"].item() == 1.5
    # normaliser: the history (rank 0's first 7 rows) plus both ranks' batches, pooled
    pooled = torch.cat([r[0]["obs"][:7], r[0]["obs"], r[1]["obs"]]).double()
    eps = 1e-4  # RunningMeanStd's initial count (mean 0, var 1)
    n = pooled.shape[0]
    mean = pooled.sum(0) / (n + eps)
    var = (eps * (1 + mean.pow(2)) + (pooled - mean).pow(2).sum(0)) / (n + eps)
    for i in range(2):
        torch.testing.assert_close(r[i]["norm"]["stats.mean"].double(), mean, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(r[i]["norm"]["stats.var"].double(), var, rtol=1e-4, atol=1e-5)
        assert r[i]["norm"]["stats.count"].item() == pytest.approx(n + eps)
    _assert_identical(r[0]["norm"], r[1]["norm"])
    # stacked population: member j's statistics over both ranks' rows of member j
    ens_pooled = torch.cat([r[0]["ens_obs"], r[1]["ens_obs"]], 1).double()  # [2, 12, 4]
    m = ens_pooled.shape[1]
    e_mean = ens_pooled.sum(1) / (m + eps)
    torch.testing.assert_close(r[0]["ens_stats"]["mean"].double(), e_mean, rtol=1e-5, atol=1e-5)
    _assert_identical(r[0]["ens_stats"], r[1]["ens_stats"])
    # episode stats: count-weighted means over ranks; NaN where no rank finished an episode
    red = r[0]["reduced"]
    assert red["count"].tolist() == [4.0, 0.0, 3.0]
    assert red["return"][0].item() == pytest.approx((2 * 1.0 + 2 * 2.0) / 4)
    assert red["return"][1].isnan()
    assert red["return"][2].item() == pytest.approx((1 * 0.0 + 2 * -2.0) / 3)
    _assert_identical(r[0]["reduced"], r[1]["reduced"])
    assert r[0]["summed"].tolist() == r[1]["summed"].tolist() == [3.0, 6.0]
    assert r[0]["broadcast"].item() == r[1]["broadcast"].item() == 0.0  # rank 0's value


@pytest.mark.parametrize(
    "algo",
    [
        ["algo=ppo", "algo.num_policies=1"],
        ["algo=epo", "algo.num_policies=6", "algo.epo.trigger=interval", "algo.epo.interval_frames=3000", "algo.epo.warmup_frames=0",
         "algo.epo.num_elites=2"],
        ["pbt=inprocess", "algo.num_policies=4", "pbt.interval_frames=3000", "pbt.start_frames=0"],
    ],
    ids=["ppo", "epo", "pbt"],
)
def test_ranks_stay_bit_identical_and_population_steps_agree(tmp_path, algo):
    frames = 48 * 16 * 2 * 6  # 6 iterations of both ranks
    _torchrun(WORKER, [str(tmp_path), "train", *TINY, *algo, f"total_frames={frames}"], tmp_path)
    r = [_load(tmp_path / f"rank{i}.pt") for i in range(2)]
    assert r[0]["frames"] == r[1]["frames"] == frames  # the frame counter is global
    _assert_identical(r[0]["model"], r[1]["model"], "model")
    _assert_identical(r[0]["optimizer"], r[1]["optimizer"], "optimizer")
    _assert_identical(r[0]["hooks"], r[1]["hooks"], "hooks")
    # ...while each rank collected its own experience (its own env seeds and action noise)
    assert not torch.equal(r[0]["batch"]["observation"], r[1]["batch"]["observation"])
    assert not torch.equal(r[0]["batch"]["action"], r[1]["batch"]["action"])
    # the logged per-policy returns are the merged ones, identical on both ranks
    assert [h.get("episode/return") for h in r[0]["history"]] == pytest.approx(
        [h.get("episode/return") for h in r[1]["history"]], nan_ok=True
    )
    if "algo=epo" in algo:
        epo = r[0]["hooks"]["genetic_scheduler"]
        assert epo["num_steps"] >= 2 and epo["num_replaced_total"] > 0
    if "pbt=inprocess" in algo:
        assert r[0]["hooks"]["pbt"]["num_steps"] >= 2


def test_recipe_under_torchrun_writes_once_and_resumes(tmp_path):
    run = tmp_path / "run"
    fpb = 48 * 16 * 2
    args = [*TINY, "algo=sapg", f"hydra.run.dir={run}", f"checkpoint_interval={fpb * 2}"]
    out = _torchrun(TRAIN, [*args, f"total_frames={fpb * 4}"], tmp_path)
    summaries = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert len(summaries) == 1  # rank 0 only
    assert summaries[0]["world_size"] == 2 and summaries[0]["frames"] == fpb * 4
    assert summaries[0]["ranks_identical"] and len(set(summaries[0]["rank_parameter_digests"])) == 1
    ckpt = _load(run / "checkpoints" / "last.pt")
    assert ckpt["frames"] == fpb * 4 and len(ckpt["ranks"]) == 2
    assert not torch.equal(ckpt["ranks"][0]["rng"]["torch"], ckpt["ranks"][1]["rng"]["torch"])
    logged = (run / "sapg-pendulum" / "scalars" / "train" / "fps_per_rank.csv").read_text().splitlines()
    assert len(logged) == 4
    resumed = tmp_path / "resumed"
    out = _torchrun(TRAIN, [*args[:-2], f"hydra.run.dir={resumed}", f"resume={run / 'checkpoints' / 'last.pt'}",
                            f"total_frames={fpb * 7}"], tmp_path)
    assert f"resumed from {run / 'checkpoints' / 'last.pt'} at {fpb * 4} frames" in out.stdout
    summary = json.loads([line for line in out.stdout.splitlines() if line.startswith("{")][0])
    assert summary["frames"] == fpb * 7
    frames = [float(line.split(",")[0]) for line in
              (resumed / "sapg-pendulum" / "scalars" / "train" / "frames.csv").read_text().splitlines()]
    assert frames == [fpb * k for k in (5, 6, 7)]
