"""Start a decentralised DexPBT population on this machine: P members of ``recipes/train.py``.

    python recipes/pbt_launch.py --members 4 --workspace /tmp/pbt/run1 -- algo=ppo env=pendulum \\
        pbt.interval_frames=200000 pbt.start_frames=1000000 pbt.burn_in_frames=400000

Each member ``i`` is an ordinary training run with
``pbt=decentralized pbt.workspace=DIR pbt.member_id=i pbt.num_members=P seed=<base+i>
hydra.run.dir=DIR/runs/member_<i>`` plus the overrides after ``--``; members talk only through
the workspace directory (docs/pbt.md), so the same members can instead be started by Slurm
(one per task), on several hosts, or as multi-GPU ``torchrun`` jobs (``--prefix``).

The launcher waits for all members, restarts a member that crashed when ``--restart`` is given
(it resumes from its newest checkpoint in the workspace), writes each member's output to
``DIR/logs/member_<i>.log`` (its pid to ``member_<i>.pid``), and prints a summary of the
population (and writes it to ``DIR/launcher_summary.json``). Exit status 0 iff every member
finished successfully.

Each member holds the owner lock of its slot (``DIR/locks/member_<i>.lock``, see
``PBTWorkspace.claim``) while it runs. Before starting anything, the launcher checks those locks:
if another run already owns one of its member ids on this workspace it **refuses** (exit status
2, nothing written) and names the owner. A member that lost a start race against another run
exits with ``WorkspaceBusyError`` and is not restarted. The launcher never holds a member lock
itself (it only probes), so its members can take theirs.

Options:
    --members P           population size
    --workspace DIR       the shared directory
    --member-ids 0,2-3    start only these members (e.g. one host of several); default all
    --base-seed S         member i gets seed S+i (a ``seed=S`` override after ``--`` does the same)
    --restart             restart crashed members (at most --max-restarts times each)
    --threads N           OMP_NUM_THREADS and ``threads=N`` for each member (default 1)
    --gpus-per-member G   member i sees GPUs [i*G, (i+1)*G) through CUDA_VISIBLE_DEVICES
    --prefix CMD          run ``CMD recipes/train.py ...`` instead of ``python recipes/train.py ...``
                          (e.g. ``--prefix "torchrun --standalone --nproc_per_node 2"``)
    --dry-run             print the member commands and exit
"""
from __future__ import annotations

import argparse
import errno
import json
import os
import pathlib
import re
import shlex
import signal
import socket
import subprocess
import sys
import time

try:
    import fcntl
except ImportError:  # not POSIX: no probe; members still report a taken slot when they can
    fcntl = None

HERE = pathlib.Path(__file__).resolve().parent
LAUNCHER_KEYS = ("pbt.workspace", "pbt.member_id", "pbt.num_members")
# keep in sync with torchrl_sapg.population.workspace (this script imports no torch)
LAUNCH_ID_ENV = "TORCHRL_SAPG_PBT_LAUNCH_ID"
RECORD_FORMAT = "torchrl-sapg-pbt/1"
BUSY_EXIT_CODE = 2


def parse_ids(text: str | None, members: int) -> list[int]:
    if not text:
        return list(range(members))
    ids: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part:
            lo, hi = part.split("-", 1)
            ids.update(range(int(lo), int(hi) + 1))
        else:
            ids.add(int(part))
    bad = [i for i in ids if not 0 <= i < members]
    if bad:
        raise SystemExit(f"--member-ids {bad} are outside 0..{members - 1}.")
    return sorted(ids)


def pbt_group_override(train_script: pathlib.Path) -> str:
    """``pbt=decentralized`` if the recipe's defaults list has a ``pbt`` entry, else ``+pbt=...``."""
    for config in (train_script.parent / "conf" / "config.yaml", HERE / "conf" / "config.yaml"):
        try:
            text = config.read_text()
            break
        except OSError:
            continue
    else:
        return "pbt=decentralized"
    return "pbt=decentralized" if re.search(r"^\s*-\s*pbt\s*:", text, re.M) else "+pbt=decentralized"


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def member_command(args, member_id: int, overrides: list[str], train_script: pathlib.Path) -> list[str]:
    workspace = pathlib.Path(args.workspace).absolute()
    user = list(overrides)
    keys = {_key(o): o for o in user if "=" in o}
    for k in LAUNCHER_KEYS:
        if k in keys:
            raise SystemExit(f"{keys[k]!r}: the launcher sets {k} for each member; remove it.")
    base_seed = args.base_seed
    if "seed" in keys:
        base_seed = int(keys["seed"].split("=", 1)[1])
        user = [o for o in user if _key(o) != "seed"]
    ours = [
        pbt_group_override(train_script),
        f"pbt.workspace={workspace}",
        f"pbt.member_id={member_id}",
        f"pbt.num_members={args.members}",
        f"seed={base_seed + member_id}",
    ]
    if "hydra.run.dir" not in keys:
        ours.append(f"hydra.run.dir={workspace / 'runs' / f'member_{member_id:03d}'}")
    if "threads" not in keys and args.threads:
        ours.append(f"threads={args.threads}")
    if any(_key(o) == "pbt" for o in user):
        ours = ours[1:]  # the user picked the pbt group (e.g. a custom one)
    head = shlex.split(args.prefix) if args.prefix else [args.python]
    return head + [str(train_script)] + ours + user


def member_env(args, member_id: int, launch_id: str | None = None) -> dict[str, str]:
    env = os.environ.copy()
    if launch_id:
        env[LAUNCH_ID_ENV] = launch_id
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    else:
        env.setdefault("OMP_NUM_THREADS", "1")
    env["PYTHONUNBUFFERED"] = "1"
    if args.gpus_per_member:
        g = args.gpus_per_member
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(member_id * g + j) for j in range(g))
    return env


def read_newest_record(workspace: pathlib.Path, member_id: int) -> dict | None:
    """The member's newest readable record; partial, foreign or malformed files are skipped."""
    folder = workspace / f"member_{member_id:03d}"
    try:
        names = sorted((n for n in os.listdir(folder) if re.match(r"^record_\d+\.json$", n)), reverse=True)
    except OSError:
        return None
    for name in names:
        try:
            with open(folder / name) as f:
                rec = json.load(f)
        except (OSError, ValueError):
            continue
        if not isinstance(rec, dict) or rec.get("format") != RECORD_FORMAT:
            continue
        obj = rec.get("objective")
        if obj is not None and not isinstance(obj, (int, float)):
            rec["objective"] = None
        return rec
    return None


def owner_lock_path(workspace: pathlib.Path, member_id: int) -> pathlib.Path:
    """``PBTWorkspace.owner_lock_path``: ``<workspace>/locks/member_<id>.lock``."""
    return pathlib.Path(workspace).absolute() / "locks" / f"member_{member_id:03d}.lock"


def probe_owner(workspace: pathlib.Path, member_id: int) -> dict | None:
    """Who holds the member's owner lock now (its details, ``{}`` if unreadable), or ``None`` if
    the slot is free. The lock is taken for the probe only, never kept."""
    path = owner_lock_path(workspace, member_id)
    if fcntl is None:
        return None
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError:
        return None  # never claimed (or unreadable: the member will tell)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return None  # free; closing the descriptor releases the probe's lock
        except OSError as err:
            if err.errno not in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):
                return None  # no locking on this filesystem
        try:
            data = json.loads(os.read(fd, 65536).decode("utf-8", "replace") or "{}")
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}
    finally:
        os.close(fd)


def describe_owner(owner: dict) -> str:
    if not owner:
        return "another process (details not written yet)"
    return (f"pid {owner.get('pid', '?')} on host {owner.get('host', '?')} (started {owner.get('started', '?')}, "
            f"launch id {owner.get('launch_id', '?')})")


def busy_message(workspace: pathlib.Path, busy: dict[int, dict]) -> str:
    lines = [f"pbt_launch: refusing to start: {len(busy)} member slot(s) of workspace {workspace} are owned by "
             "another run:"]
    for i, owner in sorted(busy.items()):
        lines.append(f"  member {i}: {describe_owner(owner)}; lock {owner_lock_path(workspace, i)}")
    lines.append("Two runs on one member id would mix their checkpoints. Stop the other run, or use another "
                 "workspace (--workspace NEW_DIR) or other member ids (--member-ids).")
    return "\n".join(lines)


class Member:
    def __init__(self, member_id: int, cmd: list[str], env: dict[str, str], log_dir: pathlib.Path, cwd: str):
        self.id = member_id
        self.cmd, self.env, self.cwd = cmd, env, cwd
        self.log_path = log_dir / f"member_{member_id:03d}.log"
        self.pid_path = log_dir / f"member_{member_id:03d}.pid"
        self.proc: subprocess.Popen | None = None
        self.restarts = 0
        self.returncodes: list[int] = []
        self._log = None

    def start(self) -> None:
        self._log = open(self.log_path, "a")
        self._log.write(f"\n==== pbt_launch: starting member {self.id} (restart {self.restarts}): {shlex.join(self.cmd)}\n")
        self._log.flush()
        self.proc = subprocess.Popen(self.cmd, env=self.env, cwd=self.cwd, stdout=self._log, stderr=subprocess.STDOUT)
        self.pid_path.write_text(str(self.proc.pid))

    def poll(self) -> int | None:
        rc = self.proc.poll() if self.proc is not None else None
        if rc is not None and self._log is not None:
            self._log.close()
            self._log = None
        return rc

    def stop(self, sig=signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.proc.send_signal(sig)
            except OSError:
                pass


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    overrides: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, overrides = argv[:i], argv[i + 1:]
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--members", type=int, required=True)
    p.add_argument("--workspace", required=True)
    p.add_argument("--member-ids", default=None)
    p.add_argument("--base-seed", type=int, default=0)
    p.add_argument("--restart", action="store_true")
    p.add_argument("--max-restarts", type=int, default=3)
    p.add_argument("--restart-delay", type=float, default=1.0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--gpus-per-member", type=int, default=0)
    p.add_argument("--prefix", default=None)
    p.add_argument("--python", default=sys.executable)
    p.add_argument("--train-script", default=str(HERE / "train.py"))
    p.add_argument("--log-dir", default=None)
    p.add_argument("--poll-interval", type=float, default=0.5)
    p.add_argument("--dry-run", action="store_true")
    args = p.parse_args(argv)
    if args.members < 1:
        raise SystemExit("--members must be >= 1.")
    workspace = pathlib.Path(args.workspace).absolute()
    train_script = pathlib.Path(args.train_script).absolute()
    ids = parse_ids(args.member_ids, args.members)
    log_dir = pathlib.Path(args.log_dir).absolute() if args.log_dir else workspace / "logs"
    cmds = {i: member_command(args, i, overrides, train_script) for i in ids}
    if args.dry_run:
        for i in ids:
            env = member_env(args, i)
            extra = f"CUDA_VISIBLE_DEVICES={env['CUDA_VISIBLE_DEVICES']} " if args.gpus_per_member else ""
            print(f"OMP_NUM_THREADS={env['OMP_NUM_THREADS']} {extra}{shlex.join(cmds[i])}")
        return 0
    busy = {i: owner for i in ids if (owner := probe_owner(workspace, i)) is not None}
    if busy:  # before writing anything: the other run's logs, pid files and summary stay as they are
        print(busy_message(workspace, busy), file=sys.stderr, flush=True)
        return BUSY_EXIT_CODE
    launch_id = f"{socket.gethostname()}-{os.getpid()}-{int(time.time())}"
    workspace.mkdir(parents=True, exist_ok=True)
    log_dir.mkdir(parents=True, exist_ok=True)
    members = {i: Member(i, cmds[i], member_env(args, i, launch_id), log_dir, os.getcwd()) for i in ids}
    print(f"pbt_launch: {len(members)} of {args.members} members, workspace {workspace}, logs {log_dir}, "
          f"launch id {launch_id}", flush=True)
    for m in members.values():
        m.start()
        print(f"pbt_launch: member {m.id} started (pid {m.proc.pid})", flush=True)

    stopping = {"flag": False}

    def _stop(signum, frame):
        stopping["flag"] = True

    old_int = signal.signal(signal.SIGINT, _stop)
    old_term = signal.signal(signal.SIGTERM, _stop)
    start = time.time()
    pending_restart: dict[int, float] = {}
    done: dict[int, int] = {}
    refused: dict[int, dict] = {}
    try:
        while len(done) < len(members):
            if stopping["flag"]:
                print("pbt_launch: stopping all members", flush=True)
                for m in members.values():
                    m.stop()
                deadline = time.time() + 30
                for m in members.values():
                    if m.proc is not None:
                        try:
                            m.proc.wait(timeout=max(0.1, deadline - time.time()))
                        except subprocess.TimeoutExpired:
                            m.stop(signal.SIGKILL)
                            m.proc.wait()
                        done.setdefault(m.id, m.proc.returncode)
                break
            now = time.time()
            for i, when in list(pending_restart.items()):
                if now >= when:
                    del pending_restart[i]
                    members[i].start()
                    print(f"pbt_launch: member {i} restarted (pid {members[i].proc.pid}, "
                          f"restart {members[i].restarts}/{args.max_restarts})", flush=True)
            for m in members.values():
                if m.id in done or m.id in pending_restart:
                    continue
                rc = m.poll()
                if rc is None:
                    continue
                m.returncodes.append(rc)
                owner = probe_owner(workspace, m.id) if rc != 0 else None
                if owner is not None:  # lost the slot to another run: restarting would fail again
                    refused[m.id] = owner
                    done[m.id] = rc
                    print(f"pbt_launch: member {m.id} exited with {rc}: its slot is owned by another run, "
                          f"{describe_owner(owner)}; not restarting (log {m.log_path})", flush=True)
                elif rc != 0 and args.restart and m.restarts < args.max_restarts:
                    m.restarts += 1
                    pending_restart[m.id] = time.time() + args.restart_delay
                    print(f"pbt_launch: member {m.id} exited with {rc}; restarting in {args.restart_delay:g}s "
                          f"(log {m.log_path})", flush=True)
                else:
                    done[m.id] = rc
                    print(f"pbt_launch: member {m.id} finished with exit code {rc}", flush=True)
            time.sleep(args.poll_interval)
    finally:
        signal.signal(signal.SIGINT, old_int)
        signal.signal(signal.SIGTERM, old_term)

    summary = {"workspace": str(workspace), "launch_id": launch_id, "wall_seconds": time.time() - start,
               "members": []}
    for i in ids:
        rec = read_newest_record(workspace, i) or {}
        summary["members"].append({
            "member_id": i, "exit_code": done.get(i), "restarts": members[i].restarts,
            "returncodes": members[i].returncodes, "round": rec.get("iteration"), "frames": rec.get("frames"),
            "objective": rec.get("objective"), "replacements": rec.get("replacements"),
            "hyperparameters": rec.get("hyperparameters"), "log": str(members[i].log_path),
            "refused_by": refused.get(i),
        })
    scored = [m for m in summary["members"] if m["objective"] is not None]
    summary["best_member"] = max(scored, key=lambda m: m["objective"])["member_id"] if scored else None
    print("\nmember  exit  restarts  round      frames     objective  replacements")
    for m in summary["members"]:
        obj = "n/a" if m["objective"] is None else f"{m['objective']:.4g}"
        print(f"{m['member_id']:>6}  {str(m['exit_code']):>4}  {m['restarts']:>8}  {str(m['round']):>5}  "
              f"{str(m['frames']):>10}  {obj:>12}  {str(m['replacements']):>12}")
    print(f"best member: {summary['best_member']}")
    try:
        (workspace / "launcher_summary.json").write_text(json.dumps(summary, indent=2))
    except OSError:
        pass
    print(json.dumps({"pbt_launch_summary": summary}), flush=True)
    ok = all(done.get(i) == 0 for i in ids)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
