"""End-to-end: recipes/train.py and recipes/evaluate.py as a user runs them (subprocesses).

Every run is tiny (64 Pendulum envs, 16-step episodes, a 16-unit network) and writes only
under pytest's tmp dirs; wandb runs offline with its cache/config dirs in tmp too.
"""
from __future__ import annotations

import csv
import glob
import json
import os
import platform
import pathlib
import shutil
import subprocess
import sys

import pytest
import torch
import yaml

REPO = pathlib.Path(__file__).resolve().parents[1]
TRAIN = REPO / "recipes" / "train.py"
EVALUATE = REPO / "recipes" / "evaluate.py"

NUM_ENVS, HORIZON, EPISODE = 64, 16, 16
FPB = NUM_ENVS * HORIZON  # 1024 frames per iteration
M = 2  # two latent-conditioned policies, so per-policy metrics are really per policy
TINY = [
    "algo=ppo",
    f"algo.num_policies={M}",
    "algo.latent_dim=4",
    "env=pendulum",
    f"env.num_envs={NUM_ENVS}",
    f"+env.kwargs.max_episode_steps={EPISODE}",  # every env ends exactly one episode per batch
    f"train.horizon={HORIZON}",
    "train.num_epochs=1",
    "train.num_minibatches=2",
    "model.hidden_sizes=[16]",
    "progress_bar=false",
]
EXP = "ppo-pendulum"  # the TorchRL logger's exp_name: <algo>-<env>


def _env(tmp: pathlib.Path) -> dict:
    env = os.environ.copy()
    # import this checkout even if the installed package points elsewhere
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in [env.get("PYTHONPATH")] if p])
    for var, sub in (("WANDB_DIR", "wandb_dir"), ("WANDB_CACHE_DIR", "wandb_cache"),
                     ("WANDB_CONFIG_DIR", "wandb_config"), ("WANDB_DATA_DIR", "wandb_data"),
                     ("XDG_CACHE_HOME", "xdg_cache")):
        env[var] = str(tmp / sub)
    env["WANDB_MODE"] = "offline"
    env["WANDB_SILENT"] = "true"
    return env


def _start(script: pathlib.Path, args: list[str], tmp: pathlib.Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(script), *args],
        cwd=tmp, env=_env(tmp), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def _finish(proc: subprocess.Popen, timeout: float = 180) -> subprocess.CompletedProcess:
    out, err = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _run(script, args, tmp) -> subprocess.CompletedProcess:
    return _finish(_start(script, args, tmp))


def _ok(res: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert res.returncode == 0, f"exit {res.returncode}\nstdout:\n{res.stdout[-3000:]}\nstderr:\n{res.stderr[-3000:]}"
    return res


def _csv(path: pathlib.Path) -> list[tuple[int, float]]:
    with open(path) as f:
        return [(int(r[0]), float(r[1])) for r in csv.reader(f) if r]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One 4-iteration training run shared by the tests below (read-only for them)."""
    tmp = tmp_path_factory.mktemp("recipe")
    run_dir = tmp / "run"
    res = _run(TRAIN, TINY + [f"total_frames={4 * FPB}", f"hydra.run.dir={run_dir}"], tmp)
    return tmp, run_dir, res


def test_train_writes_config_logs_checkpoint_and_summary(trained):
    tmp, run_dir, res = trained
    _ok(res)
    # the resolved config: no interpolation left, overrides applied
    text = (run_dir / "config.yaml").read_text()
    assert "${" not in text
    cfg = yaml.safe_load(text)
    assert cfg["total_frames"] == 4 * FPB
    assert cfg["env"]["num_envs"] == NUM_ENVS and cfg["env"]["kwargs"]["max_episode_steps"] == EPISODE
    assert cfg["algo"]["name"] == "ppo" and cfg["algo"]["num_policies"] == M
    # TorchRL CSVLogger: <run>/<exp_name>/scalars/<metric>.csv with "step,value" rows, step = frames
    scalars = run_dir / EXP / "scalars"
    steps = [FPB * (i + 1) for i in range(4)]
    assert _csv(scalars / "train" / "frames.csv") == [(s, float(s)) for s in steps]
    assert _csv(scalars / "train" / "iteration.csv") == [(s, float(i + 1)) for i, s in enumerate(steps)]
    for name in ("loss_objective", "loss_critic", "lr", "grad_norm", "fps"):
        assert [s for s, _ in _csv(scalars / "train" / f"{name}.csv")] == steps, name
    # per-policy metrics: each policy owns 32 envs, each ends one 16-step episode per batch
    for i in range(M):
        assert _csv(scalars / "policy" / str(i) / "count.csv") == [(s, float(NUM_ENVS // M)) for s in steps]
        assert _csv(scalars / "policy" / str(i) / "length.csv") == [(s, float(EPISODE)) for s in steps]
        returns = _csv(scalars / "policy" / str(i) / "return.csv")
        assert [s for s, _ in returns] == steps and all(v < 0 for _, v in returns)  # Pendulum costs
    # the headline episode/* metrics are policy 0's
    assert _csv(scalars / "episode" / "return.csv") == _csv(scalars / "policy" / "0" / "return.csv")
    # checkpoint and summary
    assert (run_dir / "checkpoints" / "last.pt").is_file()
    assert not [p for p in os.listdir(run_dir / "checkpoints") if p.startswith(".")]  # no temp files
    assert sorted(os.listdir(run_dir / "checkpoints")) == ["last.000000004096.pt", "last.pt"]  # one rotated copy
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["frames"] == 4 * FPB
    assert summary["batch_layout"]["rows"] == FPB
    assert summary["final_return"] == pytest.approx(_csv(scalars / "policy" / "0" / "return.csv")[-1][1])
    # the recipe's default keep_freed_memory=true took effect on this (glibc, CPU) run
    assert summary["keep_freed_memory"] is (platform.libc_ver()[0] == "glibc")
    # nothing written into the repository or the cwd besides the run dir
    assert sorted(p.name for p in tmp.iterdir() if not p.name.startswith(("wandb", "xdg"))) == ["run"]


def test_resume_continues_to_the_new_total(trained, tmp_path):
    _, run_dir, res = trained
    _ok(res)
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    ckpt = run / "checkpoints" / "last.pt"
    proc = _start(TRAIN, TINY + [f"resume={ckpt}", f"total_frames={8 * FPB}", f"hydra.run.dir={run}"], tmp_path)
    # meanwhile: resuming from a run's checkpoint *folder* at its own total has nothing left to do
    again = _ok(_run(TRAIN, TINY + [f"resume={run_dir / 'checkpoints'}", f"total_frames={4 * FPB}",
                                    f"hydra.run.dir={tmp_path / 'again'}"], tmp_path))
    assert f"at {4 * FPB} frames" in again.stdout
    assert json.loads((tmp_path / "again" / "summary.json").read_text())["frames"] == 4 * FPB
    assert not (tmp_path / "again" / EXP / "scalars" / "train" / "frames.csv").exists()  # no iteration ran

    res = _ok(_finish(proc))
    assert f"at {4 * FPB} frames" in res.stdout
    summary = json.loads((run / "summary.json").read_text())
    assert summary["frames"] == 8 * FPB
    # the CSV history continues (appended, no restart from 0, no duplicates)
    steps = [FPB * (i + 1) for i in range(8)]
    scalars = run / EXP / "scalars"
    assert _csv(scalars / "train" / "frames.csv") == [(s, float(s)) for s in steps]
    assert _csv(scalars / "train" / "iteration.csv") == [(s, float(i + 1)) for i, s in enumerate(steps)]
    assert [s for s, _ in _csv(scalars / "policy" / "1" / "return.csv")] == steps


def test_wandb_offline_and_tensorboard_loggers(tmp_path):
    short = TINY + [f"total_frames={2 * FPB}"]
    procs = {
        backend: _start(TRAIN, short + [f"logger={backend}", f"hydra.run.dir={tmp_path / backend}"], tmp_path)
        for backend in ("wandb", "tensorboard")
    }
    results = {backend: _ok(_finish(p)) for backend, p in procs.items()}
    assert results
    # wandb: an offline run folder with the run's records (metric names are stored verbatim)
    runs = glob.glob(str(tmp_path / "wandb" / "wandb" / "offline-run-*" / "run-*.wandb"))
    assert len(runs) == 1
    blob = pathlib.Path(runs[0]).read_bytes()
    for key in (b"train/frames", b"train/loss_objective", b"policy/0/return", b"policy/1/return"):
        assert key in blob, key
    assert json.loads((tmp_path / "wandb" / "summary.json").read_text())["frames"] == 2 * FPB
    # tensorboard: event file under <run>/<exp_name>/ with the scalars at frame steps
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = glob.glob(str(tmp_path / "tensorboard" / EXP / "events.out.tfevents.*"))
    assert len(events) == 1
    acc = EventAccumulator(str(tmp_path / "tensorboard" / EXP))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/frames", "train/lr", "policy/0/return", "policy/1/count", "episode/return"} <= tags
    assert [(e.step, e.value) for e in acc.Scalars("train/frames")] == [(FPB, FPB), (2 * FPB, 2 * FPB)]
    assert [e.value for e in acc.Scalars("policy/1/length")] == [EPISODE, EPISODE]


def test_evaluate_reports_every_policy_and_rejects_out_of_range(trained, tmp_path):
    _, run_dir, res = trained
    _ok(res)
    ckpt = run_dir / "checkpoints" / "last.pt"
    p_all = _start(EVALUATE, [f"checkpoint={ckpt}", "policy=all", "episodes=2"], tmp_path)
    p_bad = _start(EVALUATE, [f"checkpoint={ckpt}", "policy=5", "episodes=2"], tmp_path)
    p_usage = _start(EVALUATE, [], tmp_path)
    res_all, res_bad, res_usage = _ok(_finish(p_all)), _finish(p_bad), _finish(p_usage)
    report = json.loads(res_all.stdout[res_all.stdout.index("{"):])
    assert report["frames"] == 4 * FPB
    assert report["episodes_per_policy"] == 2 and report["deterministic"] is True
    assert sorted(report["policies"]) == [str(i) for i in range(M)]
    for i in range(M):
        stats = report["policies"][str(i)]
        assert stats["length"] == float(EPISODE)
        assert stats["return"] < 0
    # an id the checkpoint does not have: non-zero exit and a message naming the range
    assert res_bad.returncode != 0
    assert "policy=5 is out of range" in res_bad.stderr
    assert f"{M} policies" in res_bad.stderr
    # no checkpoint: usage message
    assert res_usage.returncode != 0 and "usage" in res_usage.stderr


# ============================================================================= recurrent checkpoints
# model.lstm_hidden > 0: the collector runs actor + critic (both hidden states recorded), so the
# checkpoint's collector weights are not the actor's; evaluate.py loads the trained model's own
# weights and gives the eval env InitTracker + the hidden-state primers, as train.py does.
RECURRENT = [
    "env=pendulum", "env.num_envs=16", "+env.kwargs.max_episode_steps=30", "train.horizon=20",
    "train.num_minibatches=2", "model.hidden_sizes=[16]", "model.lstm_hidden=8", "total_frames=640",
    "eval_episodes=2", "threads=1", "logger=none", "progress_bar=false",
]
SAME_EVAL = ["seed=10000", "episodes=2"]  # train.py's own eval: env seed = seed + 10000, eval_episodes per policy


@pytest.fixture(scope="module")
def evaluate_main():
    """``recipes/evaluate.py``'s ``main(argv) -> report`` run in this process (an interpreter
    start less per call; the CLI itself is exercised by the subprocess tests above)."""
    import importlib.util

    path, modules = list(sys.path), set(sys.modules)
    spec = importlib.util.spec_from_file_location("_evaluate_recipe", EVALUATE)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)  # puts recipes/ on sys.path to import its `common`
    finally:
        sys.path[:] = path
        if "common" not in modules:
            sys.modules.pop("common", None)
    return module.main


def test_the_recipe_seed_sets_python_numpy_and_torch(evaluate_main):
    """``seed=`` seeds all three global generators (a user's env or hook may draw from any)."""
    import random

    import numpy as np

    seed_everything = evaluate_main.__globals__["seed_everything"]

    def draws(seed):
        seed_everything(seed)
        return random.random(), float(np.random.rand()), float(torch.rand(()))

    first = draws(3)
    random.random(), np.random.rand(), torch.rand(())  # move every generator on
    assert draws(3) == first
    assert all(a != b for a, b in zip(draws(4), first))


@pytest.mark.parametrize(
    "algo, extra",
    [
        ("ppo", ["algo.num_policies=2", "algo.latent_dim=4"]),
        ("sapg", ["algo.num_policies=2", "algo.latent_dim=4"]),
        ("pbt", ["algo.num_policies=2"]),
        pytest.param("epo", ["algo.num_policies=4", "algo.latent_dim=4"], marks=pytest.mark.slow),  # EPO needs M >= 4
    ],
)
def test_evaluate_recurrent_checkpoint_reproduces_the_recipes_own_eval(algo, extra, tmp_path, evaluate_main, capsys):
    run_dir = tmp_path / "run"
    switch = "pbt=inprocess" if algo == "pbt" else f"algo={algo}"  # in-process PBT is a pbt mode
    _ok(_run(TRAIN, [switch, *extra, *RECURRENT, f"hydra.run.dir={run_dir}"], tmp_path))
    summary = json.loads((run_dir / "summary.json").read_text())
    m = len(summary["eval_return"])
    ckpt = run_dir / "checkpoints" / "last.pt"
    capsys.readouterr()
    everyone = evaluate_main([f"checkpoint={ckpt}", "policy=all", *SAME_EVAL])
    printed = capsys.readouterr().out
    assert json.loads(printed[printed.index("{"):]) == everyone
    assert everyone["recurrent"] is True and everyone["weights"] == "loss_module"
    assert everyone["frames"] == 640 and everyone["deterministic"] is True
    # the deterministic policy's return on train.py's eval episodes is train.py's eval_return
    returns = [everyone["policies"][str(i)]["return"] for i in range(m)]
    assert returns == pytest.approx(summary["eval_return"], rel=1e-5, abs=1e-4)
    assert all(everyone["policies"][str(i)]["length"] == 30.0 for i in range(m))
    # by default only the headline policy (SAPG/EPO: the leader, policy 0)
    default = evaluate_main([f"checkpoint={ckpt}", *SAME_EVAL])
    assert list(default["policies"]) == ["0"] and default["policies"]["0"] == everyone["policies"]["0"]
    # the same checkpoint without the loss module's weights: evaluate.py falls back to the
    # collector's (actor + critic) policy weights and takes the actor's part
    from torchrl_sapg.trainers.checkpoint import load_checkpoint, save_checkpoint

    state = load_checkpoint(ckpt)
    del state["trainer"]["loss_module"]
    save_checkpoint(state, tmp_path / "no_loss_module.pt")  # a new checksum for the edited state
    fallback = evaluate_main([f"checkpoint={tmp_path / 'no_loss_module.pt'}", "policy=all", *SAME_EVAL])
    assert fallback["weights"] == "collector policy" and fallback["policies"] == everyone["policies"]


def test_evaluate_mlp_checkpoint_reproduces_the_recipes_own_eval(tmp_path, evaluate_main):
    """The MLP path: the same equality (the shared ``trained`` run has no end-of-run eval)."""
    run_dir = tmp_path / "run"
    _ok(_run(TRAIN, TINY + [f"total_frames={FPB}", "eval_episodes=2", "logger=none", f"hydra.run.dir={run_dir}"],
             tmp_path))
    summary = json.loads((run_dir / "summary.json").read_text())
    report = evaluate_main([f"checkpoint={run_dir / 'checkpoints' / 'last.pt'}", "policy=all", *SAME_EVAL])
    assert report["recurrent"] is False and report["weights"] == "loss_module"
    assert [report["policies"][str(i)]["return"] for i in range(M)] == pytest.approx(summary["eval_return"], rel=1e-5)


class _Recorder(torch.nn.Module):
    """Runs ``actor`` and records, per step, ``"is_init"``, the hidden state entering the step and
    the one it writes to ``("next", key)``."""

    def __init__(self, actor, key: str = "recurrent_state_h_actor"):
        super().__init__()
        self.actor, self.key, self.steps = actor, key, []

    def forward(self, td):
        is_init, entering = td.get("is_init").reshape(-1).clone(), td.get(self.key).clone()
        td = self.actor(td)
        n = is_init.shape[0]
        self.steps.append((is_init, entering.reshape(n, -1), td.get(("next", self.key)).reshape(n, -1).clone()))
        return td


def _check_hidden_state_flow(steps) -> None:
    assert len(steps) > 2
    restarts = 0
    for t, (is_init, entering, out) in enumerate(steps):
        if t == 0:
            assert bool(is_init.all())  # the first reset
        assert torch.all(entering[is_init] == 0)  # episode start: the LSTM starts from zeros
        assert not torch.equal(out, entering)  # the step moves the state
        if t > 0:
            carried = ~is_init
            assert torch.equal(entering[carried], steps[t - 1][2][carried])  # carried from the previous step
            restarts += int(is_init.sum())
    assert restarts > 0  # some env finished early, was reset and restarted from zeros mid-run


@pytest.mark.parametrize("population", [False, True])
def test_evaluate_policies_carries_and_resets_the_hidden_state(population):
    """CartPole episodes end at different steps, so envs restart while others go on."""
    from torchrl.envs import Compose, TransformedEnv

    from torchrl_sapg.envs import make_env
    from torchrl_sapg.modules.recurrent import make_recurrent_actor_critic
    from torchrl_sapg.population import RecurrentEnsembleActor, RecurrentPolicyEnsemble
    from torchrl_sapg.trainers.evaluation import evaluate_policies

    torch.manual_seed(0)
    env = make_env("cartpole", 8, seed=0)
    if population:
        ens = RecurrentPolicyEnsemble(4, 1, num_members=2, hidden_sizes=(16,), lstm_hidden=8)
        env = TransformedEnv(env, Compose(*ens.env_transforms()))  # what recipes/evaluate.py adds
        recorder = _Recorder(RecurrentEnsembleActor(ens))
    else:  # no transforms given: evaluate_policies appends InitTracker and the primers itself
        recorder = _Recorder(make_recurrent_actor_critic(4, 1, num_policies=2, latent_dim=4, hidden_sizes=(16,),
                                                         lstm_hidden=8).actor)
    stats = evaluate_policies(env, recorder, num_policies=2)
    assert torch.isfinite(stats["return"]).all()
    assert len(recorder.steps) >= int(stats["length"].max())  # ran until every first episode ended
    _check_hidden_state_flow(recorder.steps)


def test_evaluate_policies_rejects_half_of_the_recurrent_transforms():
    """``"is_init"`` without the primers would silently restart the LSTM from zeros every step."""
    from torchrl.envs import InitTracker, TransformedEnv

    from torchrl_sapg.envs import make_env
    from torchrl_sapg.modules.recurrent import make_recurrent_actor_critic
    from torchrl_sapg.trainers.evaluation import evaluate_policies

    actor = make_recurrent_actor_critic(3, 1, hidden_sizes=(8,), lstm_hidden=4).actor
    with pytest.raises(ValueError, match="hidden-state primers"):
        evaluate_policies(TransformedEnv(make_env("pendulum", 2, seed=0), InitTracker()), actor, num_policies=1)
