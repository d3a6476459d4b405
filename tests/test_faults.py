"""Faults and untrusted files: malicious and corrupted checkpoints, NaN/inf data, a full disk, kills, shared folders.

The table of every fault, what happens and which test shows it: docs/reliability.md. Faults are injected at the
boundary of our code (an env that emits inf, ``os.fsync`` failing with ENOSPC, SIGKILL of a real process), never
by replacing our own code.
"""
from __future__ import annotations

import csv
import errno
import json
import math
import os
import pathlib
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from tensordict import TensorDictBase
from torchrl.envs import Transform, TransformedEnv
from torchrl.objectives import ClipPPOLoss
from torchrl.objectives.value import GAE

from torchrl_sapg import LearningRateSchedule, OnPolicyTrainer, PopulationCollector, make_actor_critic, make_env
from torchrl_sapg.trainers.checkpoint import (
    CheckpointError,
    load_checkpoint,
    remove_stale_temp_files,
    save_checkpoint,
)
from torchrl_sapg.trainers.run_dir import RunFolderError, RunFolderLock, check_fresh_start, trim_csv_logs

REPO = pathlib.Path(__file__).resolve().parents[1]
TRAIN = REPO / "recipes" / "train.py"
LEGACY = REPO / "tests" / "fixtures" / "legacy_ppo_pendulum_2048.pt"  # written by the recipe before safe loading
N_ENVS, HORIZON, M = 16, 8, 2
FPB = N_ENVS * HORIZON
RECIPE_FPB = 64 * 16
# the configuration the legacy fixture was written with (PPO, one policy)
RECIPE = ["algo=ppo", "env=pendulum", "env.num_envs=64", "+env.kwargs.max_episode_steps=16", "train.horizon=16",
          "train.num_epochs=1", "train.num_minibatches=2", "model.hidden_sizes=[16]", "progress_bar=false"]


# ----------------------------------------------------------------------------- helpers
class InjectNonFinite(Transform):
    """An env-side fault: from step ``at`` on, writes ``value`` into ``key`` of env rows ``rows``."""

    def __init__(self, key, at: int, rows, value: float = float("inf")):
        super().__init__(in_keys=[], out_keys=[])
        self.key, self.at, self.rows, self.value, self.steps = key, at, list(rows), value, 0

    def _step(self, tensordict: TensorDictBase, next_tensordict: TensorDictBase) -> TensorDictBase:
        self.steps += 1
        if self.steps >= self.at:
            v = next_tensordict.get(self.key).clone()
            v[self.rows] = self.value
            next_tensordict.set(self.key, v)
        return next_tensordict


def build(tmp_path, *, total_frames=6 * FPB, fault=None, env_kwargs=None, fused=False, **kwargs):
    torch.manual_seed(0)
    env = make_env("pendulum", N_ENVS, seed=0, **(env_kwargs or {}))
    if fault is not None:
        env = TransformedEnv(env, fault)
    ac = make_actor_critic(3, 1, num_policies=M, latent_dim=4, hidden_sizes=(16,))
    collector = PopulationCollector(env, ac.actor, num_policies=M, frames_per_batch=FPB)
    loss = ClipPPOLoss(ac.actor, ac.critic)
    optimizer = torch.optim.Adam(loss.parameters(), lr=1e-3, fused=fused or None)
    kwargs.setdefault("checkpoint_path", str(tmp_path / "checkpoints" / "last.pt"))
    kwargs.setdefault("checkpoint_interval", FPB)
    trainer = OnPolicyTrainer(
        collector=collector, loss_module=loss, optimizer=optimizer, total_frames=total_frames, num_epochs=2,
        num_minibatches=4, value_estimator=GAE(gamma=0.99, lmbda=0.95, value_network=ac.critic),
        lr_schedule=LearningRateSchedule(optimizer, mode="adaptive"), obs_normalizers=[ac.obs_normalizer],
        progress_bar=False, seed=0, **kwargs,
    )
    return trainer


def all_finite(*trees) -> bool:
    def leaves(o):
        if isinstance(o, torch.Tensor):
            yield o
        elif isinstance(o, dict):
            for v in o.values():
                yield from leaves(v)
        elif isinstance(o, (list, tuple)):
            for v in o:
                yield from leaves(v)
    return all(torch.isfinite(t).all() for tree in trees for t in leaves(tree) if t.is_floating_point())


def _env(tmp: pathlib.Path) -> dict:
    env = os.environ.copy()
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in [env.get("PYTHONPATH")] if p])
    env["OMP_NUM_THREADS"] = "1"
    return env


def _train(args, tmp, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(TRAIN), *args], cwd=tmp, env=_env(tmp), capture_output=True, text=True,
                          timeout=240, **kw)


def _ok(res):
    assert res.returncode == 0, f"exit {res.returncode}\n{res.stdout[-2000:]}\n{res.stderr[-3000:]}"
    return res


def _rows(path: pathlib.Path) -> list[tuple[int, float]]:
    with open(path) as f:
        return [(int(r[0]), float(r[1])) for r in csv.reader(f) if r]


# ----------------------------------------------------------------------------- untrusted files
class _Payload:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):  # what a crafted checkpoint does: run a command while being unpickled
        return (os.system, (f"touch {self.marker}",))


def test_malicious_checkpoint_is_refused_and_its_payload_never_runs(tmp_path):
    marker = tmp_path / "payload-ran"
    evil = tmp_path / "last.pt"
    torch.save({"format": "torchrl-sapg/1", "frames": 0, "x": _Payload(str(marker))}, evil)
    with pytest.raises(CheckpointError, match="refused to load checkpoint .*could run code") as err:
        load_checkpoint(evil)
    assert "system" in str(err.value)  # names what the file asked for
    trainer = build(tmp_path)
    with pytest.raises(CheckpointError, match="refused"):
        trainer.load(str(evil))
    # the recipe: resume= with the crafted file stops before building anything, and the payload did not run
    res = _train(RECIPE + [f"resume={evil}", f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert res.returncode != 0 and "refused to load checkpoint" in res.stderr
    assert not marker.exists()
    assert not (tmp_path / "run" / "config.yaml").exists()


def test_legacy_checkpoint_loads_resumes_and_migrates(tmp_path):
    state = load_checkpoint(LEGACY)  # NumPy RNG state: the only allow-listed non-torch type
    assert state["frames"] == 2 * RECIPE_FPB and "checksum" not in state
    run = tmp_path / "run"
    res = _ok(_train(RECIPE + [f"resume={LEGACY}", f"total_frames={3 * RECIPE_FPB}", f"hydra.run.dir={run}"], tmp_path))
    assert f"at {2 * RECIPE_FPB} frames" in res.stdout
    assert json.loads((run / "summary.json").read_text())["frames"] == 3 * RECIPE_FPB
    copy = tmp_path / "legacy.pt"
    shutil.copy(LEGACY, copy)
    out = subprocess.run([sys.executable, "-m", "torchrl_sapg.trainers.checkpoint", "migrate", str(copy)],
                         env=_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert torch.serialization.get_unsafe_globals_in_checkpoint(copy) == []  # no NumPy left: plain weights_only
    migrated = load_checkpoint(copy)
    assert migrated["frames"] == state["frames"] and "checksum" in migrated
    assert torch.equal(migrated["rng"]["torch"], state["rng"]["torch"])


def _flip_a_tensor_byte(path: pathlib.Path, pattern: bytes) -> None:
    blob = bytearray(path.read_bytes())
    at = blob.find(pattern)
    assert at >= 0
    blob[at + 1] ^= 0x40
    path.write_bytes(bytes(blob))


def test_flipped_tensor_bytes_are_detected_and_the_folder_falls_back(tmp_path):
    weights = torch.full((64,), 1.2345)
    path = tmp_path / "last.pt"
    save_checkpoint({"frames": 1, "trainer": {"loss_module": {"w": weights}}}, path, keep_last=3)
    save_checkpoint({"frames": 2, "trainer": {"loss_module": {"w": weights + 1}}}, path, keep_last=3)
    _flip_a_tensor_byte(path, (weights + 1).numpy().tobytes()[:16])  # last.pt and its hard-linked copy
    with pytest.raises(CheckpointError, match="corrupted.*checksum") as err:
        load_checkpoint(path)
    assert "last.000000000001.pt" in str(err.value)  # names the older checkpoint to use
    with pytest.warns(UserWarning, match="skipped 2 unusable"):
        state = load_checkpoint(tmp_path)  # a folder: the newest usable copy
    assert state["frames"] == 1 and torch.equal(state["trainer"]["loss_module"]["w"], weights)


def test_non_finite_weights_are_never_written(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint({"frames": 1, "trainer": {"loss_module": {"w": torch.ones(3)}}}, path)
    with pytest.raises(CheckpointError, match=r"refusing to write .*non-finite.*loss_module/w"):
        save_checkpoint({"frames": 2, "trainer": {"loss_module": {"w": torch.tensor([1.0, float("nan"), 0.0])}}}, path)
    assert load_checkpoint(path)["frames"] == 1
    assert os.listdir(tmp_path) == ["last.pt"]


def test_rotation_keeps_the_last_k(tmp_path):
    path = tmp_path / "last.pt"
    for frames in range(1, 6):
        save_checkpoint({"frames": frames}, path, keep_last=3)
    assert sorted(os.listdir(tmp_path)) == ["last.000000000003.pt", "last.000000000004.pt", "last.000000000005.pt",
                                            "last.pt"]
    assert load_checkpoint(path)["frames"] == 5
    assert os.path.samefile(path, tmp_path / "last.000000000005.pt")  # a hard link, not a second copy


# ----------------------------------------------------------------------------- a full disk
def test_disk_full_keeps_the_previous_checkpoint_and_says_where(tmp_path, monkeypatch):
    path = tmp_path / "checkpoints" / "last.pt"
    save_checkpoint({"frames": 1, "w": torch.ones(4)}, path, keep_last=3)

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)  # the OS boundary: the write fails as on a full disk
    with pytest.raises(OSError, match=r"no space left to write checkpoint .*last.*MiB free.*previous checkpoint is intact") as err:
        save_checkpoint({"frames": 2, "w": torch.zeros(4)}, path, keep_last=3)
    assert err.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert load_checkpoint(path)["frames"] == 1
    assert not [p for p in os.listdir(path.parent) if p.endswith(".tmp")]


# ----------------------------------------------------------------------------- NaN / inf data
def test_inf_observation_stops_before_the_checkpoint_and_the_last_one_resumes(tmp_path):
    fault = InjectNonFinite(("observation"), at=2 * HORIZON + 3, rows=[5, 11])
    trainer = build(tmp_path, fault=fault)
    with pytest.raises(FloatingPointError) as err:
        trainer.train()
    text = str(err.value)
    assert "'observation'" in text and "env rows [5, 11]" in text and f"frames {2 * FPB:,}-{3 * FPB:,}" in text
    assert "nonfinite='drop'" in text
    ckpt = tmp_path / "checkpoints" / "last.pt"
    state = load_checkpoint(ckpt)
    assert state["frames"] == 2 * FPB and all_finite(state["trainer"])  # the normaliser never saw the inf
    assert all_finite(dict(trainer.loss_module.state_dict()))
    clean = build(tmp_path / "again", checkpoint_path=str(tmp_path / "again" / "last.pt"))
    clean.load(str(ckpt))
    clean.train()
    assert clean.collected_frames == 6 * FPB


def test_nan_reward_is_named(tmp_path):
    trainer = build(tmp_path, fault=InjectNonFinite("reward", at=3, rows=[0], value=float("nan")))
    with pytest.raises(FloatingPointError, match=r"\('next', 'reward'\).*env rows \[0\]"):
        trainer.train()
    assert not (tmp_path / "checkpoints").exists()


def test_drop_mode_trains_on_and_counts_the_rows(tmp_path):
    from torchrl.record.loggers import CSVLogger

    fault = InjectNonFinite("observation", at=HORIZON + 1, rows=[3])  # row 3 stays broken from the 2nd batch on
    logger = CSVLogger(exp_name="x", log_dir=str(tmp_path))
    trainer = build(tmp_path, fault=fault, nonfinite="drop", total_frames=4 * FPB, logger=logger)
    trainer.train()
    assert trainer.collected_frames == 4 * FPB
    counts = [v for _, v in _rows(tmp_path / "x" / "scalars" / "train" / "nonfinite_rows.csv")]
    assert counts == [0.0, 1.0, 1.0, 1.0]
    assert all_finite(load_checkpoint(tmp_path / "checkpoints" / "last.pt")["trainer"])


@pytest.mark.parametrize("fused", [False, True], ids=["adam", "fused_adam"])
def test_a_nan_loss_never_reaches_the_weights_or_the_optimiser(tmp_path, fused):
    trainer = build(tmp_path, total_frames=3 * FPB, fused=fused)
    first = {}

    def poison(batch):  # a loss that turns NaN in the 2nd iteration (e.g. a numerically broken term)
        if trainer.iteration == 1:
            first.update({k: v.clone() for k, v in trainer.loss_module.state_dict().items()})
            batch["advantage"][0, 0] = float("nan")
        return batch

    trainer.register_op("batch_process", poison)
    with pytest.raises(FloatingPointError, match="non-finite loss"):
        trainer.train()
    assert all_finite(dict(trainer.loss_module.state_dict()), trainer.optimizer.state_dict()["state"])
    params_now = dict(trainer.loss_module.state_dict())
    # every minibatch touched the NaN row at most once per epoch; the others still trained
    assert any(not torch.equal(first[k], params_now[k]) for k in first if "mlp" in k)
    assert load_checkpoint(tmp_path / "checkpoints" / "last.pt")["frames"] == FPB


def test_resume_restores_the_last_return(tmp_path):
    trainer = build(tmp_path, total_frames=2 * FPB, env_kwargs={"max_episode_steps": HORIZON})
    trainer.train()
    again = build(tmp_path / "b", total_frames=2 * FPB, env_kwargs={"max_episode_steps": HORIZON})
    again.load(str(tmp_path / "checkpoints" / "last.pt"))
    assert not math.isnan(trainer.last_return)  # every batch ends episodes: a real return to restore
    assert again.last_return == trainer.last_return


# ----------------------------------------------------------------------------- kills during checkpoint writes
WRITER = """
import importlib.util, sys, torch
spec = importlib.util.spec_from_file_location("checkpoint", sys.argv[3])  # the module alone: a fast start
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
save_checkpoint = module.save_checkpoint
path, start = sys.argv[1], int(sys.argv[2])
big = torch.randn(1_000_000)  # 4 MB: a write takes long enough to be interrupted
print("ready", flush=True)
for frames in range(start, start + 10_000):
    save_checkpoint({"frames": frames, "trainer": {"loss_module": {"w": big + frames}}}, path, keep_last=3)
"""


def test_sigkill_during_checkpoint_writes_never_leaves_an_unreadable_checkpoint(tmp_path):
    rng = random.Random(0)
    path = tmp_path / "checkpoints" / "last.pt"
    last_frames, kills = -1, 30
    for k in range(kills):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(last_frames + 1),
                                 str(REPO / "torchrl_sapg" / "trainers" / "checkpoint.py")], env=_env(tmp_path),
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.0, 0.15))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        if not path.exists():
            continue
        state = load_checkpoint(path.parent)  # the folder: last.pt or, never needed so far, a rotated copy
        assert state["frames"] >= last_frames
        last_frames = state["frames"]
        remove_stale_temp_files(path.parent)
        assert not [p for p in os.listdir(path.parent) if p.startswith(".")]
    assert last_frames > 0


# ----------------------------------------------------------------------------- run folders
def test_run_folder_lock_refuses_a_second_live_owner(tmp_path):
    lock = RunFolderLock(tmp_path).acquire()
    holder = subprocess.run(
        [sys.executable, "-c", "import sys; from torchrl_sapg.trainers.run_dir import RunFolderLock; "
         "RunFolderLock(sys.argv[1]).acquire()", str(tmp_path)], env=_env(tmp_path), capture_output=True, text=True)
    assert holder.returncode != 0 and f"pid {os.getpid()} on host" in holder.stderr and "hydra.run.dir" in holder.stderr
    lock.release()
    RunFolderLock(tmp_path).acquire().release()  # free again once the owner let go


def test_owner_file_primitives_tell_busy_from_unsupported(tmp_path, monkeypatch):
    import fcntl

    from torchrl_sapg.runtime import read_owner_file, try_exclusive_lock, write_owner_file

    path = tmp_path / "x.lock"
    first, second = (os.open(path, os.O_RDWR | os.O_CREAT) for _ in range(2))
    try:
        assert read_owner_file(first) == {}  # empty
        assert try_exclusive_lock(first) is True
        write_owner_file(first, {"pid": 7})
        write_owner_file(first, {"pid": 8})  # replaces, never appends
        assert try_exclusive_lock(second) is False and read_owner_file(second) == {"pid": 8}
        os.pwrite(first, b"[1, 2]   \n", 0)
        assert read_owner_file(second) == {}  # JSON, but not a record
        monkeypatch.setattr(fcntl, "flock", lambda fd, op: (_ for _ in ()).throw(OSError(errno.ENOLCK, "no locks")))
        assert try_exclusive_lock(second) is None
    finally:
        os.close(first)
        os.close(second)


def test_run_folder_without_file_locking_warns_and_runs(tmp_path, monkeypatch):
    """NFS without a lock manager answers flock with ENOLCK: that is no locking, not another owner."""
    import fcntl

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with pytest.warns(UserWarning, match="no flock on this filesystem"):
        lock = RunFolderLock(tmp_path).acquire()
    assert json.loads((tmp_path / ".owner.lock").read_text())["pid"] == os.getpid()
    lock.release()


def test_fresh_start_in_a_used_folder_is_refused(tmp_path):
    check_fresh_start(tmp_path)  # empty: fine
    (tmp_path / "config.yaml").write_text("seed: 0\n")
    check_fresh_start(tmp_path)  # killed before its first checkpoint: nothing to resume, a fresh start replaces it
    save_checkpoint({"frames": 1}, tmp_path / "checkpoints" / "last.pt")
    with pytest.raises(RunFolderError, match="already holds a run .*resume="):
        check_fresh_start(tmp_path)


def test_trim_csv_logs_drops_rows_after_the_checkpoint_and_cut_rows(tmp_path):
    f = tmp_path / "exp" / "scalars" / "train" / "frames.csv"
    f.parent.mkdir(parents=True)
    f.write_text("100,100.0\n200,200.0\n300,300.0\n40")  # the last row cut by a kill
    assert trim_csv_logs(tmp_path, 200) == 2
    assert _rows(f) == [(100, 100.0), (200, 200.0)]


def test_two_runs_started_together_get_their_own_folders(tmp_path):
    args = RECIPE + [f"total_frames={RECIPE_FPB}"]
    procs = [subprocess.Popen([sys.executable, str(TRAIN), *args, f"seed={0}"], cwd=tmp_path, env=_env(tmp_path),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=240) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    runs = sorted((tmp_path / "runs" / "ppo-pendulum").iterdir())
    assert len(runs) == 2  # same second, same seed: still two folders
    for run in runs:
        assert json.loads((run / "summary.json").read_text())["run_dir"].endswith(run.name)
        assert len(_rows(run / "ppo-pendulum" / "scalars" / "train" / "frames.csv")) == 1


def test_resume_in_place_trims_the_log_and_leaves_a_finished_run_alone(tmp_path):
    run = tmp_path / "run"
    base = RECIPE + [f"hydra.run.dir={run}", f"checkpoint_interval={RECIPE_FPB}"]
    _ok(_train(base + [f"total_frames={3 * RECIPE_FPB}"], tmp_path))
    frames_csv = run / "ppo-pendulum" / "scalars" / "train" / "frames.csv"
    # a crash after the 3rd checkpoint had logged two more iterations that no checkpoint holds
    with open(frames_csv, "a") as f:
        f.write(f"{4 * RECIPE_FPB},{4 * RECIPE_FPB}.0\n{5 * RECIPE_FPB},{5 * RECIPE_FPB}.0\n")
    # a fresh start over it is refused; a resume trims and continues
    res = _train(base + [f"total_frames={3 * RECIPE_FPB}"], tmp_path)
    assert res.returncode != 0 and "already holds a run" in res.stderr
    _ok(_train(base + [f"resume={run / 'checkpoints'}", f"total_frames={5 * RECIPE_FPB}"], tmp_path))
    steps = [RECIPE_FPB * (i + 1) for i in range(5)]
    assert _rows(frames_csv) == [(s, float(s)) for s in steps]
    summary = (run / "summary.json").read_bytes()
    assert json.loads(summary)["frames"] == 5 * RECIPE_FPB and json.loads(summary)["final_return"] < 0
    # a requeued finished job: nothing to train, summary.json untouched
    res = _ok(_train(base + [f"resume={run / 'checkpoints'}", f"total_frames={5 * RECIPE_FPB}"], tmp_path))
    assert "nothing left to train" in res.stdout
    assert (run / "summary.json").read_bytes() == summary
    assert len(_rows(frames_csv)) == 5


def test_resume_with_another_config_says_what_the_checkpoint_holds(tmp_path):
    res = _train([*RECIPE, "algo=sapg", "algo.num_policies=2", "env.num_envs=128", f"resume={LEGACY}",
                  f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert res.returncode != 0
    line = next(ln for ln in res.stderr.splitlines() if ln.startswith("ValueError: resume="))
    assert "algo.name='ppo'" in line and "algo.name='sapg'" in line
    assert "algo.num_policies=1" in line and "env.num_envs=64" in line and "env.num_envs=128" in line
    assert len(res.stderr) < 4000  # one line, not a dump


def test_sigkill_and_resume_a_real_run_loses_and_repeats_nothing(tmp_path):
    sys.path.insert(0, str(REPO / "benchmarks"))
    import kill_resume

    result = kill_resume.run(kills=5, seed=1, workdir=str(tmp_path))  # benchmarks/results/kill_resume.json: 25
    assert result["unreadable_checkpoints"] == 0
    assert result["duplicated_log_rows"] == 0 and result["missing_log_rows"] == 0
    assert result["temp_files_left"] == [] and result["final_frames"] == result["expected_frames"]
    assert result["log_files_checked"] >= 10


def test_pbt_member_with_a_nan_gradient_skips_its_step_and_the_others_train():
    from torchrl_sapg.population.inprocess import StackedAdam

    p = torch.nn.Parameter(torch.zeros(3, 2))
    opt = StackedAdam([p], num_members=3, max_grad_norm=1.0)
    p.grad = torch.tensor([[1.0, 1.0], [float("nan"), 1.0], [1.0, float("inf")]])
    norms = opt.step(lr=torch.full((3,), 0.1))
    assert not torch.isfinite(norms[1:]).any()
    assert torch.all(p.data[0] < 0) and torch.equal(p.data[1:], torch.zeros(2, 2))  # members 1, 2 untouched
    assert all(torch.isfinite(v).all() for v in opt.state[p].values())
    assert opt.state[p]["step"].tolist() == [1.0, 0.0, 0.0]


def test_the_reliability_table_names_real_tests():
    import re

    text = (REPO / "docs" / "reliability.md").read_text()
    rows = [ln for ln in text.splitlines() if ln.startswith("| ") and "`tests/" in ln]
    assert len(rows) >= 25
    for row in rows:
        for path, name in re.findall(r"`(tests/test_\w+\.py)::(\w+)", row):
            assert re.search(rf"^def {name}\(", (REPO / path).read_text(), re.M), (path, name)


def test_a_checkpoint_written_before_the_module_layout_change_resumes(tmp_path):
    """tests/fixtures/sapg_pendulum_2048_before_issue19.pt: a SAPG run (M = 2) written before population/,
    objectives/ and the distributed helpers moved (issue 19); it must still resume."""
    fixture = REPO / "tests" / "fixtures" / "sapg_pendulum_2048_before_issue19.pt"
    args = [a for a in RECIPE if not a.startswith("algo=")] + ["algo=sapg", "algo.num_policies=2"]
    run = tmp_path / "run"
    res = _ok(_train(args + [f"resume={fixture}", f"total_frames={3 * RECIPE_FPB}", f"hydra.run.dir={run}"], tmp_path))
    assert f"at {2 * RECIPE_FPB} frames" in res.stdout
    assert json.loads((run / "summary.json").read_text())["frames"] == 3 * RECIPE_FPB


def test_an_inprocess_pbt_checkpoint_written_with_algo_pbt_resumes_under_pbt_inprocess(tmp_path):
    """tests/fixtures/pbt_inprocess_pendulum_2048_algo_pbt.pt: an in-process PBT run (M = 4, two PBT
    steps) written when the switch was ``algo=pbt`` and its keys were under ``algo.*``; it resumes with
    ``pbt=inprocess`` (the stored algo.name is still ``pbt``) and evaluate.py reads it."""
    fixture = REPO / "tests" / "fixtures" / "pbt_inprocess_pendulum_2048_algo_pbt.pt"
    args = [a for a in RECIPE if not a.startswith("algo=")] + [
        "pbt=inprocess", "algo.num_policies=4", "pbt.interval_frames=1024", "pbt.start_frames=0", "pbt.burn_in_frames=0"]
    run = tmp_path / "run"
    res = _ok(_train(args + [f"resume={fixture}", f"total_frames={3 * RECIPE_FPB}", f"hydra.run.dir={run}"], tmp_path))
    assert f"at {2 * RECIPE_FPB} frames" in res.stdout
    assert json.loads((run / "summary.json").read_text())["frames"] == 3 * RECIPE_FPB
    resumed = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert resumed["trainer"]["pbt"]["num_steps"] == 3  # the old run's two PBT steps, then this run's one
    report = _ok(subprocess.run([sys.executable, str(REPO / "recipes" / "evaluate.py"), f"checkpoint={fixture}",
                                 "episodes=1", "policy=all"], cwd=tmp_path, env=_env(tmp_path), capture_output=True,
                                text=True, timeout=240))
    assert report.stdout.count('"return"') == 4  # every member of the saved population
