"""Decentralised PBT under faults, with real processes where the fault is about processes: a
second launch (or a second process) on a member slot that is taken refuses and leaves the first
run alone; SIGKILLs at random moments of a member's writes leave a workspace its peers still read,
and the restarted member re-acquires its slot, removes its dead writer's temp files and resumes;
half-written records and checkpoints are skipped with a warning (selection included); what the
member checkpoints loads with ``torch.load(weights_only=True)``."""
from __future__ import annotations

import importlib.util
import io
import json
import os
import pathlib
import random
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
from torchrl.objectives import ClipPPOLoss
from torchrl.objectives.value import GAE

from torchrl_sapg import OnPolicyTrainer, PopulationCollector, make_actor_critic, make_env
from torchrl_sapg.population.workspace import (
    RECORD_FORMAT,
    PBTMember,
    PBTWorkspace,
    WorkspaceBusyError,
    member_owner,
    owner_lock_path,
)
from torchrl_sapg.trainers import LearningRateSchedule

REPO = pathlib.Path(__file__).resolve().parents[1]
LAUNCH = REPO / "recipes" / "pbt_launch.py"

# A member without a trainer: the real PBTWorkspace protocol (claim, resume from the newest loadable
# checkpoint, atomic checkpoint + record per round, pruning), fast to start. It takes the
# launcher's Hydra-style overrides; `+until=FILE` runs until FILE exists.
FAKE_MEMBER = r'''
import os, sys, time
import torch
from torchrl_sapg.population.workspace import PBTWorkspace
args = dict(a.lstrip("+").split("=", 1) for a in sys.argv[1:] if "=" in a)
ws = PBTWorkspace(args["pbt.workspace"], int(args["pbt.member_id"]), keep_last=int(args.get("keep", 1000)))
time.sleep(float(args.get("claim_delay", 0)))
lock = ws.claim()
start, rec = 0, ws.newest_record()
while rec is not None:
    try:
        assert float(ws.load_checkpoint(rec)["w"][0]) == rec["iteration"]
        start = rec["iteration"]
        break
    except Exception:
        rec = ws.newest_record(max_iteration=rec["iteration"] - 1)
print(f"claimed pid={os.getpid()} resume={start} removed={','.join(lock.removed_temp_files)}", flush=True)
size, until = int(args.get("size", 100)), args.get("until")
it = start
while it < start + int(args.get("rounds", 5)) and not (until and os.path.exists(until)):
    it += 1
    ws.write(it, state={"w": torch.full((size,), float(it))}, objective=float(it), frames=100 * it,
             hyperparameters={"lr": 1e-3})
    ws.prune()
    time.sleep(float(args.get("sleep", 0)))
print(f"done {it}", flush=True)
'''


def _env() -> dict[str, str]:
    env = os.environ.copy()
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in [env.get("PYTHONPATH")] if p])
    env["OMP_NUM_THREADS"] = "1"
    env.pop("TORCHRL_SAPG_PBT_LAUNCH_ID", None)
    return env


def _fake_member(tmp_path: pathlib.Path) -> pathlib.Path:
    script = tmp_path / "fake_member.py"
    script.write_text(FAKE_MEMBER)
    return script


def _records(ws: pathlib.Path, member_id: int) -> list[dict]:
    view = PBTWorkspace(ws, member_id)
    return [r for r in (view.newest_record(member_id, it) for it in sorted(view.iterations(member_id)))
            if r is not None]


def _wait_for(condition, timeout: float, proc: subprocess.Popen | None = None, what: str = "") -> None:
    deadline = time.time() + timeout
    while not condition():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{what}: the process exited with {proc.returncode}: {proc.stdout.read()[-3000:]}")
        assert time.time() < deadline, f"timeout waiting for {what}"
        time.sleep(0.05)


def _temp_files(folder: pathlib.Path) -> set[str]:
    return {n for n in os.listdir(folder) if n.startswith(".") and n.endswith(".tmp")} if folder.is_dir() else set()


# ---------------------------------------------------------------------------------- two runs, one slot
def test_second_launch_on_taken_members_refuses_and_the_first_is_unaffected(tmp_path):
    ws, stop = tmp_path / "ws", tmp_path / "stop"
    base = [sys.executable, str(LAUNCH), "--members", "2", "--workspace", str(ws), "--poll-interval", "0.05",
            "--train-script", str(_fake_member(tmp_path))]
    first = subprocess.Popen(base + ["--", "+rounds=100000", "+sleep=0.02", f"+until={stop}"], cwd=tmp_path,
                             env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _wait_for(lambda: all(len(_records(ws, i)) >= 2 for i in (0, 1)), 60, first, "both members writing")
        pids = {i: int((ws / "logs" / f"member_{i:03d}.pid").read_text()) for i in (0, 1)}
        logs_before = {i: (ws / "logs" / f"member_{i:03d}.log").read_text() for i in (0, 1)}
        # the second launcher: refused before it writes anything (exit 2), naming each owner and the fix
        second = subprocess.run(base + ["--restart", "--", "+rounds=3"], cwd=tmp_path, env=_env(),
                                capture_output=True, text=True, timeout=60)
        assert second.returncode == 2, second.stdout + second.stderr
        for i in (0, 1):
            assert f"member {i}: pid {pids[i]} on host {socket.gethostname()}" in second.stderr
        assert "another workspace (--workspace NEW_DIR) or other member ids (--member-ids)" in second.stderr
        assert {i: int((ws / "logs" / f"member_{i:03d}.pid").read_text()) for i in (0, 1)} == pids
        for i in (0, 1):
            log = (ws / "logs" / f"member_{i:03d}.log").read_text()
            assert log.startswith(logs_before[i]) and log.count("==== pbt_launch: starting member") == 1
        assert not (ws / "launcher_summary.json").exists()
        # a member started by hand on a taken slot (a start race the launcher's probe missed) refuses too
        direct = subprocess.run([sys.executable, str(_fake_member(tmp_path)), f"pbt.workspace={ws}",
                                 "pbt.member_id=1", "+rounds=1"], env=_env(), capture_output=True, text=True,
                                timeout=60)
        assert direct.returncode != 0 and "WorkspaceBusyError: PBT member 1 of workspace" in direct.stderr
        assert f"pid {pids[1]} on host {socket.gethostname()}" in direct.stderr
        assert "Stop the other run, or start this one with another workspace" in direct.stderr
        stop.write_text("")
        out, _ = first.communicate(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, out[-3000:]
    summary = json.loads(out.strip().splitlines()[-1])["pbt_launch_summary"]
    assert [(m["exit_code"], m["restarts"], m["refused_by"]) for m in summary["members"]] == [(0, 0, None)] * 2
    for i in (0, 1):  # one writer per member folder: every round once, all from the first launch
        recs = _records(ws, i)
        assert [r["iteration"] for r in recs] == list(range(1, len(recs) + 1))
        assert {r["launch_id"] for r in recs} == {summary["launch_id"]}
        assert member_owner(ws, i) is None  # released when the member exited


def test_member_that_lost_the_slot_race_is_not_restarted(tmp_path):
    ws = tmp_path / "ws"
    cmd = [sys.executable, str(LAUNCH), "--members", "1", "--workspace", str(ws), "--restart", "--max-restarts", "3",
           "--restart-delay", "0.1", "--poll-interval", "0.05", "--train-script", str(_fake_member(tmp_path)),
           "--", "+claim_delay=1.0", "+rounds=2"]
    launcher = subprocess.Popen(cmd, cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
    lock = None
    try:
        # the launcher probed a free slot and started its member; another run takes the slot first
        _wait_for(lambda: (ws / "logs" / "member_000.pid").exists(), 30, launcher, "the member's start")
        lock = PBTWorkspace(ws, 0).claim(launch_id="other-run")
        out, _ = launcher.communicate(timeout=60)
    finally:
        if launcher.poll() is None:
            launcher.kill()
        if lock is not None:
            lock.release()
    assert launcher.returncode == 1, out[-3000:]
    member = json.loads(out.strip().splitlines()[-1])["pbt_launch_summary"]["members"][0]
    assert member["restarts"] == 0 and member["exit_code"] == 1
    assert (member["refused_by"]["pid"], member["refused_by"]["launch_id"]) == (os.getpid(), "other-run")
    log = (ws / "logs" / "member_000.log").read_text()
    assert "WorkspaceBusyError" in log and f"pid {os.getpid()}" in log
    assert _records(ws, 0) == []  # the loser wrote nothing


# ---------------------------------------------------------------------------------- kills mid-write
def test_sigkill_at_random_moments_peers_still_read_and_the_member_is_readmitted(tmp_path):
    ws = tmp_path / "ws"
    script = _fake_member(tmp_path)
    peer = PBTWorkspace(ws, 0)
    peer_tmp = peer.member_dir() / ".ckpt_000000001.pt.peer.tmp"  # a peer's write in progress: never ours
    peer_tmp.write_bytes(b"half")
    folder = PBTWorkspace(ws, 1).member_dir()
    rng = random.Random(0)
    resume_expected, left_behind, removed_total = 0, set(), 0
    for cycle in range(4):
        last = cycle == 3
        args = ["+rounds=2"] if last else ["+rounds=100000", "+size=2000000", "+keep=3"]
        proc = subprocess.Popen([sys.executable, str(script), f"pbt.workspace={ws}", "pbt.member_id=1", *args],
                                env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            head = proc.stdout.readline()
            assert head.startswith("claimed"), head + proc.stdout.read()[-3000:]
            fields = dict(f.split("=", 1) for f in head.split()[1:])
            # re-admitted: the slot is its own again, it resumes from the newest readable checkpoint and
            # it removed exactly the temp files the killed writer left (nothing else)
            assert int(fields["resume"]) == resume_expected
            removed = set(filter(None, fields["removed"].split(",")))
            assert removed == left_behind and not (_temp_files(folder) & removed)
            removed_total += len(removed)
            if last:
                out, _ = proc.communicate(timeout=60)
                assert proc.returncode == 0 and f"done {resume_expected + 2}" in out
                break
            _wait_for(lambda: (peer.newest_record(1) or {}).get("iteration", 0) >= resume_expected + 2, 60, proc,
                      "two new rounds")
            time.sleep(rng.uniform(0.0, 0.3))
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
        # a peer reads the dead member at once: its newest record and that record's checkpoint
        t0 = time.monotonic()
        rec = peer.peer_records(10**9, [0, 1])[1]
        assert float(peer.load_checkpoint(rec)["w"][0]) == rec["iteration"] >= resume_expected + 2
        assert time.monotonic() - t0 < 5.0
        assert member_owner(ws, 1) is None  # the kernel released the dead member's lock
        resume_expected, left_behind = rec["iteration"], _temp_files(folder)
    assert _temp_files(folder) == set() and peer_tmp.exists()
    print(f"temp files left by the kills and removed at the restarts: {removed_total}")


# ---------------------------------------------------------------------------------- half-written files
SPECS = {"lr": {"kind": "multiplicative"}, "num_epochs": {"kind": "integer", "min": 1, "max": 8}}
INTERVAL = 256


def _member_trainer(root, member_id, *, objective, total, seed, **member_kw):
    torch.manual_seed(seed)
    env = make_env("pendulum", 16, seed=seed, max_episode_steps=8)
    ac = make_actor_critic(3, 1, hidden_sizes=[16])
    collector = PopulationCollector(env, ac.actor, num_policies=1, frames_per_batch=16 * 8)
    loss = ClipPPOLoss(ac.actor, ac.critic, clip_epsilon=0.2)
    optim = torch.optim.Adam(loss.parameters(), lr=3e-4)
    trainer = OnPolicyTrainer(
        collector=collector, loss_module=loss, optimizer=optim, total_frames=total, num_epochs=1,
        num_minibatches=2, value_estimator=GAE(gamma=0.99, lmbda=0.95, value_network=ac.critic),
        lr_schedule=LearningRateSchedule(optim, mode="fixed"), obs_normalizers=[ac.obs_normalizer],
        progress_bar=False, seed=seed,
    )
    member = PBTMember(root, member_id, hyperparameters=SPECS, interval_frames=INTERVAL, objective=objective,
                       num_members=2, seed=seed, verbose=False, **member_kw)
    member.register(trainer)
    return trainer, member


def test_half_written_records_and_checkpoints_are_skipped_and_the_restart_resumes(tmp_path):
    # member 1 (objective 10) runs rounds 1..4, then "dies" mid-write: round 3's record is
    # truncated, round 4's checkpoint is truncated (its record is fine), two temp files are left
    t1, m1 = _member_trainer(tmp_path, 1, objective=lambda tr: 10.0, total=4 * INTERVAL, seed=1)
    t1.train()
    m1.lock.release()  # what the kernel does when the process dies
    folder = m1.workspace.member_dir()
    rec3 = folder / "record_000000003.json"
    rec3.write_text(rec3.read_text()[:40])
    ckpt4 = folder / "ckpt_000000004.pt"
    ckpt4.write_bytes(ckpt4.read_bytes()[:1000])
    stray = {".ckpt_000000005.pt.k1ll3d.tmp", ".record_000000005.json.x9.tmp"}
    for name in stray:
        (folder / name).write_bytes(b"\x80half")
    # member 0 (objective -1, bottom; no decision before round 4) wants to copy member 1
    t0, m0 = _member_trainer(tmp_path, 0, objective=lambda tr: -1.0, total=5 * INTERVAL, seed=0,
                             start_frames=4 * INTERVAL)
    reports = []
    t0.register_op("post_steps", lambda: reports.append(m0.last_report))
    with pytest.warns(UserWarning) as caught:
        t0.train()
    messages = " ".join(str(w.message) for w in caught)
    assert "round 4: its checkpoint" in messages and "cannot be loaded" in messages
    assert f"skipping unreadable record {str(rec3)!r}: not valid JSON" in messages
    by_round = {r.iteration: r for r in reports if r is not None}
    # round 4: member 1's round-4 record ranks it, its checkpoint does not load: the round is skipped
    assert (by_round[4].action, by_round[4].reason) == ("skip", "source_unreadable")
    # round 5: round 4 is skipped from now on, round 3 is unreadable: member 1's round 2 is copied
    assert (by_round[5].action, by_round[5].source, by_round[5].source_iteration) == ("replace", 1, 2)

    peer_tmp = m0.workspace.member_dir() / ".ckpt_000000006.pt.busy.tmp"  # member 0 (alive) mid-write
    peer_tmp.write_bytes(b"peer")
    # member 1 restarts: re-admitted to its slot, its own temp files removed (not the peer's),
    # resumed from round 2 (the newest record whose checkpoint loads), frames continue from there
    t1b, m1b = _member_trainer(tmp_path, 1, objective=lambda tr: 10.0, total=6 * INTERVAL, seed=1)
    first = []
    t1b.register_op("batch_process", lambda b: first.append(t1b.collected_frames) or b)
    with pytest.warns(UserWarning) as caught:
        t1b.train()
    messages = " ".join(str(w.message) for w in caught)
    assert "round 4: its checkpoint" in messages and f"skipping unreadable record {str(rec3)!r}" in messages
    assert m1b.lock is not m1.lock and m1b.lock.held and m1b.lock.enforced
    assert set(m1b.lock.removed_temp_files) == stray and peer_tmp.exists() and _temp_files(folder) == set()
    assert first[0] == 2 * INTERVAL and t1b.collected_frames == 6 * INTERVAL
    recs = _records(tmp_path, 1)
    assert [r["iteration"] for r in recs] == [1, 2, 3, 4, 5, 6]  # rounds 3 and 4 rewritten whole
    assert float(PBTWorkspace(tmp_path, 0).load_checkpoint(recs[3])["frames"]) == 4 * INTERVAL

    # what the member checkpoints (its hook state) and writes (records) is weights_only-safe
    buf = io.BytesIO()
    torch.save(m0.state_dict(), buf)
    buf.seek(0)
    back = torch.load(buf, weights_only=True)
    assert back["lineage"] == m0.lineage and back["last_report"]["source"] == 1
    assert back["rng"] == m0.rng.getstate() and back["hyperparameters"] == m0.current_hyperparameters()
    assert all(json.loads(p.read_text())["format"] == RECORD_FORMAT for p in folder.glob("record_*.json"))
    full = torch.load(folder / "ckpt_000000006.pt", weights_only=True)  # what a peer copies
    assert full["frames"] == 6 * INTERVAL and full["trainer"]["pbt"]["member_id"] == 1
    for m in (m0, m1b):
        m.lock.release()


def test_claim_is_per_process_and_records_the_owner(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHRL_SAPG_PBT_LAUNCH_ID", "launch-42")
    ws = PBTWorkspace(tmp_path, member_id=3)
    own = ws.member_dir()
    old, fresh = own / ".record_000000001.json.a.tmp", own / ".ckpt_000000001.pt.b.tmp"
    keep = [own / "notes.tmp", own / "record_000000001.json.tmp"]  # not a writer's hidden temp file
    for p in [old, fresh, *keep]:
        p.write_text("x")
    os.utime(old, (time.time() - 3600,) * 2)
    lock = ws.claim()
    try:
        assert lock.path == owner_lock_path(tmp_path, 3) == tmp_path / "locks" / "member_003.lock"
        assert sorted(lock.removed_temp_files) == sorted([old.name, fresh.name])  # any age: the slot is ours
        assert all(p.exists() for p in keep)
        owner = json.loads(lock.path.read_text())
        assert (owner["pid"], owner["host"], owner["launch_id"], owner["member_id"]) == (
            os.getpid(), socket.gethostname(), "launch-42", 3)
        assert PBTWorkspace(tmp_path, member_id=3).claim() is lock  # a restart inside the process
        assert member_owner(tmp_path, 3)["launch_id"] == "launch-42" and member_owner(tmp_path, 4) is None
        assert ws.write(1, state={}, objective=1.0, frames=1, hyperparameters={})["launch_id"] == "launch-42"
        assert "launch_id" not in PBTWorkspace(tmp_path, 4).write(1, state={}, objective=1.0, frames=1,
                                                                  hyperparameters={})
    finally:
        lock.release()
    assert member_owner(tmp_path, 3) is None and not lock.held
    again = PBTWorkspace(tmp_path, member_id=3).claim()
    assert again is not lock and again.held  # re-acquired after the release
    again.release()


def test_launcher_summary_skips_malformed_records(tmp_path):
    spec = importlib.util.spec_from_file_location("pbt_launch_faults", LAUNCH)
    launch = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(launch)
    ws = PBTWorkspace(tmp_path, member_id=0)
    ws.write(1, state={}, objective=3.0, frames=10, hyperparameters={})
    folder = ws.member_dir()
    (folder / "record_000000002.json").write_text('{"format": "torchrl-sapg-pbt/1", "it')
    (folder / "record_000000003.json").write_text("[1, 2]")
    (folder / "record_000000004.json").write_text(json.dumps({"format": "other"}))
    assert launch.read_newest_record(tmp_path, 0)["iteration"] == 1
    assert launch.owner_lock_path(tmp_path, 7) == owner_lock_path(tmp_path, 7)
    assert launch.probe_owner(tmp_path, 0) is None
    lock = ws.claim(launch_id="probe-test")
    try:
        # the probe sees the owner (a same-process claim is another open file: flock conflicts)
        assert launch.probe_owner(tmp_path, 0)["launch_id"] == "probe-test"
    finally:
        lock.release()
    with pytest.raises(WorkspaceBusyError, match="PBT member 0 of workspace"):
        fd = os.open(owner_lock_path(tmp_path, 0), os.O_RDWR)
        try:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # another holder, as a second process would be
            PBTWorkspace(tmp_path, member_id=0).claim(wait_s=0.1)
        finally:
            os.close(fd)
