"""Bad config, device and environment options fail early with one clear line (issue 16).

Each test asserts the exception type and that the message names the option (or key) and the
fix. Recipe configs are composed with Hydra's compose API and checked with
``recipes/checks.py::check_config`` directly; one subprocess runs ``recipes/train.py`` end to
end. Missing optional packages are simulated with ``sys.modules[name] = None``.
"""
from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import pathlib
import subprocess
import sys
import types

import pytest
import torch
from hydra import compose, initialize_config_dir
from tensordict import TensorDict
from torchrl.data import Categorical, Composite, Unbounded
from torchrl.envs import EnvBase, TransformedEnv

from torchrl_sapg.collectors import PopulationCollector
from torchrl_sapg.envs import PendulumEnv, PolicyIdTransform, make_env
from torchrl_sapg.envs.factory import check_device
from torchrl_sapg.envs.policy_id import check_policy_id_spec
from torchrl_sapg.modules import LatentConditionedActor, PolicyLatents
from torchrl_sapg.trainers.logging import make_logger

REPO = pathlib.Path(__file__).resolve().parents[1]
CONF = REPO / "recipes" / "conf"
ENV_CONFIGS = sorted(p.stem for p in (CONF / "env").glob("*.yaml"))
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message for a machine without CUDA")


def _load_recipe_module(name: str):
    """Import ``recipes/<name>.py`` (it puts recipes/ on sys.path for its siblings)."""
    path, modules = list(sys.path), set(sys.modules)
    spec = importlib.util.spec_from_file_location(f"_recipe_{name}", REPO / "recipes" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(REPO / "recipes"))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path[:] = path
        for sibling in ("common", "checks"):
            if sibling not in modules:
                sys.modules.pop(sibling, None)
    return module


check_config = _load_recipe_module("checks").check_config


def cfg_of(*overrides: str):
    """The recipe config ``python recipes/train.py <overrides>`` would run with."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def config_error(exc_type, *overrides: str) -> str:
    """``check_config``'s message for ``overrides``, asserting the exception type and that it is one line."""
    cfg = cfg_of(*overrides)
    with pytest.raises(exc_type) as err:
        check_config(cfg)
    msg = str(err.value)
    assert "\n" not in msg, msg
    return msg


# ----------------------------------------------------------------------------- valid configs pass
@pytest.mark.parametrize("switch", ["algo=ppo", "algo=sapg", "algo=epo", "pbt=inprocess"])
def test_default_configs_pass(switch):
    check_config(cfg_of(switch))


@pytest.mark.parametrize("env", ENV_CONFIGS)
def test_every_env_config_passes_on_cpu(env):
    # device=cpu: the simulator configs ask for cuda, checked separately below
    check_config(cfg_of("algo=ppo", f"env={env}", "device=cpu"))


def test_env_config_not_divisible_by_sapg_default_is_caught_up_front():
    """A real catch: 4096 envs (Isaac Lab ANYmal's config) do not split into SAPG's default 6 policies."""
    msg = config_error(ValueError, "algo=sapg", "env=point_maze_u", "env.num_envs=4096")
    assert "env.num_envs=4096" in msg and "algo.num_policies=6" in msg and "multiple of algo.num_policies" in msg


# ----------------------------------------------------------------------------- device
@no_cuda
def test_device_cuda_without_cuda():
    msg = config_error(RuntimeError, "device=cuda")
    assert "device='cuda'" in msg and "torch.cuda.is_available() is False" in msg and "device=cpu" in msg


def test_device_cuda_index_out_of_range():
    msg = config_error(RuntimeError, "device=cuda:99")
    assert "device='cuda:99'" in msg
    assert ("device=cpu" in msg) if not torch.cuda.is_available() else ("CUDA_VISIBLE_DEVICES" in msg)


def test_device_unknown_string():
    msg = config_error(ValueError, "device=gpu")
    assert "device='gpu'" in msg and "not a torch device string" in msg and "cuda:<index>" in msg


def test_device_type_recipes_do_not_run_on():
    msg = config_error(ValueError, "device=meta")
    assert "device='meta'" in msg and "use cpu, cuda" in msg


@no_cuda
def test_make_env_cuda_without_cuda_names_device():
    with pytest.raises(RuntimeError) as err:
        make_env("pendulum", 4, device="cuda")
    msg = str(err.value)
    assert "device='cuda'" in msg and "device=cpu" in msg and "not compiled" not in msg


def test_check_device_returns_the_device():
    assert check_device("cpu") == torch.device("cpu")


@no_cuda
def test_evaluate_checks_device_before_loading_the_checkpoint(tmp_path):
    main = _load_recipe_module("evaluate").main
    with pytest.raises(RuntimeError, match=r"device='cuda'.*device=cpu"):
        main([f"checkpoint={tmp_path / 'absent.pt'}", "device=cuda"])
    with pytest.raises(ValueError, match=r"episodes=0 must be an int >= 1"):
        main([f"checkpoint={tmp_path / 'absent.pt'}", "episodes=0"])


# ----------------------------------------------------------------------------- train.*
@pytest.mark.parametrize(
    "override, expected",
    [
        ("train.horizon=0", ["train.horizon=0", "int >= 1", "e.g. train.horizon=32"]),
        ("train.num_epochs=0", ["train.num_epochs=0", "int >= 1", "e.g. train.num_epochs=5"]),
        ("train.gamma=1.5", ["train.gamma=1.5", "(0, 1]", "e.g. train.gamma=0.99"]),
        ("train.gamma=0", ["train.gamma=0", "(0, 1]"]),
        ("train.lmbda=-0.1", ["train.lmbda=-0.1", "[0, 1]", "e.g. train.lmbda=0.95"]),
        ("train.lr=0", ["train.lr=0", "> 0", "e.g. train.lr=3e-4"]),
        ("train.lr=abc", ["train.lr='abc'", "not a finite number"]),
        ("train.clip_epsilon=-0.2", ["train.clip_epsilon=-0.2", "> 0", "e.g. train.clip_epsilon=0.2"]),
        ("train.lr_schedule=cosine", ["train.lr_schedule='cosine'", "choose adaptive, linear or fixed"]),
        ("train.minibatch_size=64", ["train.num_minibatches=4", "train.minibatch_size=64", "exactly one"]),
        ("train.num_minibatches=0", ["train.num_minibatches=0", "int >= 1"]),
    ],
)
def test_bad_train_option(override, expected):
    msg = config_error(ValueError, override)
    for part in expected:
        assert part in msg, (part, msg)


# ----------------------------------------------------------------------------- env layout and budget
def test_inprocess_pbt_refuses_a_linear_learning_rate():
    msg = config_error(ValueError, "pbt=inprocess", "train.lr_schedule=linear")
    assert "train.lr_schedule=linear" in msg and "set train.lr_schedule=adaptive or fixed" in msg
    check_config(cfg_of("pbt=inprocess", "train.lr_schedule=fixed"))  # and takes the other two
    check_config(cfg_of("algo=ppo", "train.lr_schedule=linear"))  # linear stays PPO's, SAPG's and EPO's


def test_num_envs_zero():
    msg = config_error(ValueError, "env.num_envs=0")
    assert "env.num_envs=0" in msg and "int >= 1" in msg


def test_num_envs_not_divisible_by_num_policies():
    msg = config_error(ValueError, "algo=sapg", "env.num_envs=10")
    assert "env.num_envs=10 is not divisible by algo.num_policies=6" in msg and "e.g. env.num_envs=12" in msg


def test_total_frames_below_one_batch():
    msg = config_error(ValueError, "total_frames=100")
    assert "total_frames=100" in msg and "384 * 32 = 12288 frames" in msg
    assert "Raise total_frames" in msg and "lower env.num_envs / train.horizon" in msg


@pytest.mark.parametrize(
    "override, expected",
    [
        ("eval_episodes=-1", "eval_episodes=-1 must be an int >= 0"),
        ("checkpoint_interval=-5", "checkpoint_interval=-5 must be >= 0"),
        ("keep_checkpoints=-1", "keep_checkpoints=-1 must be an int >= 0"),
        ("algo.name=a2c", "algo.name='a2c' is unknown"),
        ("keep_freed_memory=maybe", "keep_freed_memory='maybe' must be true or false"),
        ("train.fused_adam=maybe", "train.fused_adam='maybe' must be true or false"),
    ],
)
def test_bad_run_option(override, expected):
    assert expected in config_error(ValueError, override)


# ----------------------------------------------------------------------------- logger
def test_unknown_logger_backend():
    msg = config_error(ValueError, "logger.backend=mlflow")
    assert "logger.backend='mlflow'" in msg and "choose csv, wandb, tensorboard or none" in msg


def test_logger_wandb_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)
    msg = config_error(ImportError, "logger=wandb")
    assert "logger.backend='wandb'" in msg and "pip install wandb" in msg and "logger=csv" in msg


def test_logger_tensorboard_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    msg = config_error(ImportError, "logger=tensorboard")
    assert "logger.backend='tensorboard'" in msg and "pip install tensorboard" in msg


def test_make_logger_wandb_missing(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(ImportError, match=r"pip install wandb.*torchrl-sapg\[wandb\]"):
        make_logger("wandb", str(tmp_path))


def test_make_logger_unknown_backend(tmp_path):
    with pytest.raises(ValueError, match="choose csv, wandb, tensorboard or none"):
        make_logger("mlflow", str(tmp_path))


# ----------------------------------------------------------------------------- simulator backends
@pytest.mark.parametrize(
    "name, modules, extra",
    [
        ("envpool:HalfCheetah-v4", ["envpool"], "envpool"),
        ("isaaclab:allegro", ["isaaclab"], "isaaclab"),
        ("playground:CheetahRun", ["mujoco_playground", "jax"], "playground"),
    ],
)
def test_backend_missing_names_the_extra(monkeypatch, name, modules, extra):
    for module in modules:
        monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(ImportError) as err:
        make_env(name, 4)
    assert f'pip install "torchrl-sapg[{extra}]"' in str(err.value)


def test_isaacgym_missing_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "isaacgym", None)
    with pytest.raises(ImportError) as err:
        make_env("isaacgym:AllegroHand", 4)
    msg = str(err.value)
    assert "no extra" in msg and "pip install -e isaacgym/python" in msg


def test_isaaclab_without_its_task_package(monkeypatch):
    import torchrl_sapg.envs.isaaclab as il

    fake = types.ModuleType("isaaclab")
    fake.__spec__ = importlib.machinery.ModuleSpec("isaaclab", None)
    monkeypatch.setitem(sys.modules, "isaaclab", fake)
    monkeypatch.setitem(sys.modules, "isaaclab_tasks", None)
    monkeypatch.setattr(il, "launch_isaaclab_app", lambda **kw: None)
    with pytest.raises(ImportError) as err:
        make_env("isaaclab:allegro", 4)
    msg = str(err.value)
    assert "isaaclab_tasks" in msg and 'pip install "torchrl-sapg[isaaclab]"' in msg


def test_unknown_env_name_lists_backend_prefixes():
    with pytest.raises(ValueError) as err:
        make_env("halfcheetah", 4)
    msg = str(err.value)
    assert "name='halfcheetah'" in msg and "pendulum" in msg and 'envpool:<task> (pip install "torchrl-sapg[envpool]")' in msg


# ----------------------------------------------------------------------------- policy ids of custom envs
class TaggedEnv(EnvBase):
    """A custom env that writes its own ``"policy_id"`` with the given spec (zeros)."""

    def __init__(self, num_envs: int, policy_id_spec):
        super().__init__(batch_size=torch.Size([num_envs]))
        n = num_envs
        self.observation_spec = Composite(observation=Unbounded((n, 3)), policy_id=policy_id_spec, shape=(n,))
        self.action_spec = Unbounded((n, 1))
        self.reward_spec = Unbounded((n, 1))

    def _out(self) -> TensorDict:
        out = self.observation_spec.zero()
        out.update(self.full_done_spec.zero())
        return out

    def _reset(self, tensordict=None, **kwargs):
        return self._out()

    def _step(self, tensordict):
        out = self._out()
        out.set("reward", self.reward_spec.zero())
        return out

    def _set_seed(self, seed):
        return seed


def _actor(m: int = 2):
    return LatentConditionedActor(3, 1, num_policies=m, latents=PolicyLatents(m, 4))


def test_custom_env_policy_id_with_trailing_dim_fails_at_construction():
    env = TaggedEnv(8, Categorical(2, shape=(8, 1), dtype=torch.int64))
    with pytest.raises(ValueError) as err:
        PopulationCollector(env, _actor(), num_policies=2, frames_per_batch=16)
    msg = str(err.value)
    assert "'policy_id'" in msg and "shape (8, 1)" in msg and "expected shape (8,)" in msg and "torch.int64" in msg
    assert "env.append_transform(PolicyIdTransform(2))" in msg


def test_custom_env_float_policy_id_fails_at_construction():
    env = TaggedEnv(8, Unbounded((8,), dtype=torch.float32))
    with pytest.raises(ValueError) as err:
        PopulationCollector(env, _actor(), num_policies=2, frames_per_batch=16)
    msg = str(err.value)
    assert "'policy_id'" in msg and "dtype torch.float32" in msg and "PolicyIdTransform(2)" in msg


def test_the_suggested_fix_works():
    env = TaggedEnv(8, Categorical(2, shape=(8, 1), dtype=torch.int64)).append_transform(PolicyIdTransform(2))
    collector = PopulationCollector(env, _actor(), num_policies=2, frames_per_batch=16)
    batch = next(iter(collector))
    assert batch["policy_id"].shape == (8, 2) and batch["policy_id"][:, 0].tolist() == [0] * 4 + [1] * 4
    collector.shutdown()


def test_spec_without_policy_id_names_key_shape_and_fix():
    with pytest.raises(ValueError) as err:
        check_policy_id_spec(PendulumEnv(num_envs=4, seed=0).observation_spec, 2)
    msg = str(err.value)
    assert "no 'policy_id' entry" in msg and "shape (4,)" in msg and "torch.int64" in msg
    assert "env.append_transform(PolicyIdTransform(2))" in msg


def test_policy_id_transform_on_env_tagged_for_another_population():
    env = TransformedEnv(TaggedEnv(8, Categorical(4, shape=(8,), dtype=torch.int64)), PolicyIdTransform(2))
    with pytest.raises(ValueError) as err:
        env.observation_spec
    msg = str(err.value)
    assert "'policy_id' for 4 policies" in msg and "PolicyIdTransform(num_policies=2)" in msg


def test_collector_zero_frames_per_batch():
    """train.horizon=0 reached the collector as frames_per_batch=0 ("list_of_tensordicts cannot be empty")."""
    with pytest.raises(ValueError, match=r"frames_per_batch must be a positive int \(num_envs \* horizon\), got 0"):
        PopulationCollector(PendulumEnv(num_envs=4, seed=0), _actor(), num_policies=2, frames_per_batch=0)


# ----------------------------------------------------------------------------- end to end
@no_cuda
def test_train_device_cuda_end_to_end(tmp_path):
    """``recipes/train.py device=cuda`` on a machine without CUDA: one line naming the option, raised by
    ``check_config`` before the run writes anything (make_env's own device check would also name the
    option, but only after the run folder's config.yaml is written)."""
    args = [sys.executable, str(REPO / "recipes" / "train.py"), "device=cuda", "algo=ppo", "env=pendulum",
            "env.num_envs=4", "train.horizon=4", "total_frames=16", "logger=none", "progress_bar=false",
            f"hydra.run.dir={tmp_path / 'run'}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if "device='cuda' needs CUDA" in line]
    assert lines and "device=cpu" in lines[0], proc.stderr[-3000:]
    assert "not compiled with CUDA" not in proc.stderr
    assert not (tmp_path / "run" / "config.yaml").exists(), "check_config(cfg) must run first in train.py's main"


# ----------------------------------------------------------------------------- the pbt switch and renamed keys
def test_pbt_inprocess_selects_the_member_layout_and_carries_the_hook_keys():
    cfg = cfg_of("pbt=inprocess")
    assert cfg.pbt.mode == "inprocess" and cfg.algo.name == "pbt"
    assert (cfg.algo.num_policies, cfg.algo.latent_dim) == (8, 0)
    assert cfg.pbt.mutation_prob == 0.2 and cfg.pbt.fitness_key == "return" and "lr" in cfg.pbt.hyperparameters
    assert cfg_of().pbt.mode == "off" and cfg_of("pbt=decentralized").pbt.mode == "decentralized"


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["algo=pbt"], ["algo=pbt is no longer a switch", "pbt=inprocess"]),
        (["algo=pbt", "pbt=decentralized"], ["algo=pbt", "pbt=inprocess", "algo=ppo|sapg|epo"]),
        (["pbt=inprocess", "algo=sapg"], ["pbt=inprocess", "drop algo=sapg"]),
    ],
)
def test_one_pbt_switch(overrides, expected):
    msg = config_error(ValueError, *overrides)
    for part in expected:
        assert part in msg, (part, msg)


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["+algo.beta_mut=0.3"], "algo.beta_mut was renamed: use pbt.mutation_prob=0.3 with pbt=inprocess"),
        (["pbt=inprocess", "+pbt.beta_mut=0.3"], "pbt.beta_mut was renamed: use pbt.mutation_prob=0.3"),
        (["pbt=decentralized", "+pbt.objective=success"], "pbt.objective was renamed: use pbt.fitness_key=success"),
        (["pbt=decentralized", "+pbt.objective_policy=mean"], "use pbt.fitness_policy=mean"),
        (["+pbt.enabled=true"], "pbt.enabled was renamed: use pbt=decentralized"),
        (["+model.mlp_sizes=[8]"], "model.mlp_sizes was renamed: use model.hidden_sizes=[8]"),
    ],
)
def test_renamed_key_in_the_config_names_the_new_key(overrides, expected):
    assert expected in config_error(ValueError, *overrides)


def test_renamed_key_on_the_command_line_names_the_new_key(tmp_path):
    """Without ``+``, Hydra itself refuses an unknown key before check_config runs; train.py checks the
    arguments first and says what the key is called now, in one line."""
    check_overrides = _load_recipe_module("checks").check_overrides
    with pytest.raises(ValueError, match=r"^algo.interval_frames was renamed: use pbt.interval_frames=5 with pbt=inprocess"):
        check_overrides(["algo=pbt", "algo.interval_frames=5"])
    with pytest.raises(ValueError, match=r"use pbt.hyperparameters.gamma=null"):
        check_overrides(["algo.hyperparameters.gamma=null"])
    check_overrides(["pbt=inprocess", "pbt.mutation_prob=0.3", "model.hidden_sizes=[8]"])  # the new names pass
    proc = subprocess.run([sys.executable, str(REPO / "recipes" / "train.py"), "pbt=decentralized", "pbt.objective=success",
                           f"hydra.run.dir={tmp_path / 'run'}"], capture_output=True, text=True, timeout=120, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1] == (
        "recipes/train.py: pbt.objective was renamed: use pbt.fitness_key=success (docs/pbt.md).")
    assert not (tmp_path / "run").exists()
