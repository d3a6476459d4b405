"""Isaac Lab backend, tested against stand-ins of Isaac Lab's env I/O contract.

Isaac Lab cannot run here (no GPU, no asset server). The stand-ins below are tiny batched torch
envs that honour what the real ``DirectRLEnv`` / ``ManagerBasedRLEnv`` expose to a wrapper:

* ``num_envs``, ``device``, ``episode_length_buf``, ``max_episode_length``, ``extras`` (with
  ``extras["log"]`` written at resets), ``single_observation_space`` (a ``Dict`` of groups),
  ``observation_space``, ``single_action_space`` / ``action_space`` as Isaac Lab sets them:
  a Direct env batches only the ``"policy"`` group into ``observation_space`` (the ``"critic"``
  group lives in ``single_observation_space`` and ``state_space``), a manager-based env
  batches the whole group ``Dict``;
* ``step(action) -> (obs_dict, reward[N], terminated[N], truncated[N], extras)`` with every
  tensor on the sim device; finished envs are reset *inside* ``step`` (``_reset_idx``), so
  the observation returned for them is the post-reset one;
* ``reset(seed=None, options=None)`` (manager-based: also ``env_ids=``), and the internals
  TorchRL's wrapper calls for a partial reset of a Direct env (``_reset_idx``,
  ``scene.write_data_to_sim``, ``sim.forward``, ``_get_observations``).

They are installed as ``isaaclab.envs`` in ``sys.modules`` so TorchRL's ``IsaacLabWrapper`` takes
exactly the code path it takes with the real package (its class checks import from there).
"""
from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
import types

import gymnasium as gym
import numpy as np
import pytest
import torch
from torchrl.envs.utils import check_env_specs

OBS_DIM, STATE_DIM, ACT_DIM = 5, 7, 2


# --------------------------------------------------------------------------- stand-ins
class _Stub:
    def write_data_to_sim(self):
        pass

    def forward(self):
        pass


class _StandInBase(gym.Env):
    """Shared dynamics. Env i gets reward 0.1 * (i + 1) per step, terminates after
    ``term_at[i]`` steps and is truncated at ``max_episode_length`` (whichever comes first)."""

    metadata = {"render_modes": [None, "rgb_array"]}
    is_vector_env = True

    def __init__(self, num_envs=8, device="cpu", max_episode_length=5, term_at=None, with_critic=True):
        self.num_envs = num_envs
        self.device = device
        self.max_episode_length = max_episode_length
        self.term_at = torch.as_tensor(
            term_at if term_at is not None else [3 + (i % 4) for i in range(num_envs)], device=device
        )
        self.with_critic = with_critic
        self.render_mode = None
        self.episode_length_buf = torch.zeros(num_envs, dtype=torch.long, device=device)
        self.x = torch.zeros(num_envs, OBS_DIM, device=device)
        self.actions = torch.zeros(num_envs, ACT_DIM, device=device)
        self.extras: dict = {}
        self.common_step_counter = 0
        self.scene = _Stub()
        self.sim = _Stub()
        self.reset_calls = []  # env_ids of every _reset_idx call (for the tests)
        self._configure_gym_env_spaces()

    # Isaac Lab's unbounded Box spaces
    def _box(self, n):
        return gym.spaces.Box(low=-np.inf, high=np.inf, shape=(n,))

    def _group_dict(self):
        groups = {"policy": self._box(OBS_DIM)}
        if self.with_critic:
            groups["critic"] = self._box(STATE_DIM)
        return gym.spaces.Dict(groups)

    def _reset_idx(self, env_ids):
        env_ids = torch.as_tensor(env_ids, device=self.device).reshape(-1)
        self.reset_calls.append(env_ids.tolist())
        self.extras["log"] = {"Episode_Length/mean": self.episode_length_buf[env_ids].float().mean()}
        self.episode_length_buf[env_ids] = 0
        self.x[env_ids] = 0.0

    def _get_observations(self):
        t = self.episode_length_buf.unsqueeze(-1).float()
        obs = {"policy": torch.cat([t / 10.0, self.x[:, 1:]], -1)}
        if self.with_critic:
            ids = torch.arange(self.num_envs, device=self.device).unsqueeze(-1).float()
            obs["critic"] = torch.cat([obs["policy"], ids, t], -1)
        return obs

    def _get_dones(self):
        time_out = self.episode_length_buf >= self.max_episode_length - 1
        terminated = self.episode_length_buf >= self.term_at
        return terminated, time_out & ~terminated

    def _get_rewards(self):
        return 0.1 * (torch.arange(self.num_envs, device=self.device).float() + 1.0)

    def step(self, action):
        action = torch.as_tensor(action, device=self.device)
        self.actions = action.clone()
        self.x[:, :ACT_DIM] += 0.01 * action  # "physics"
        self.episode_length_buf += 1
        self.common_step_counter += 1
        self.reset_terminated, self.reset_time_outs = self._get_dones()
        self.reset_buf = self.reset_terminated | self.reset_time_outs
        self.reward_buf = self._get_rewards()
        reset_env_ids = self.reset_buf.nonzero(as_tuple=False).squeeze(-1)
        if len(reset_env_ids) > 0:
            self._reset_idx(reset_env_ids)
        self.obs_buf = self._get_observations()
        return self.obs_buf, self.reward_buf, self.reset_terminated, self.reset_time_outs, self.extras

    @staticmethod
    def seed(seed=-1):
        torch.manual_seed(seed if seed >= 0 else 0)
        return seed

    def close(self):
        pass


class DirectRLEnv(_StandInBase):
    def _configure_gym_env_spaces(self):
        self.single_observation_space = self._group_dict()
        self.single_action_space = self._box(ACT_DIM)
        # as in Isaac Lab: only the policy group is batched into observation_space
        self.observation_space = gym.vector.utils.batch_space(self.single_observation_space["policy"], self.num_envs)
        self.action_space = gym.vector.utils.batch_space(self.single_action_space, self.num_envs)
        if self.with_critic:
            self.state_space = gym.vector.utils.batch_space(self.single_observation_space["critic"], self.num_envs)

    def reset(self, seed=None, options=None):
        if seed is not None:
            self.seed(seed)
        self._reset_idx(torch.arange(self.num_envs, device=self.device))
        self.obs_buf = self._get_observations()
        return self.obs_buf, self.extras


class ManagerBasedEnv(_StandInBase):
    def _configure_gym_env_spaces(self):
        self.single_observation_space = self._group_dict()
        self.single_action_space = self._box(ACT_DIM)
        # manager-based: the whole group dict is batched
        self.observation_space = gym.vector.utils.batch_space(self.single_observation_space, self.num_envs)
        self.action_space = gym.vector.utils.batch_space(self.single_action_space, self.num_envs)

    def reset(self, seed=None, env_ids=None, options=None):
        if seed is not None:
            self.seed(seed)
        if env_ids is None:
            env_ids = torch.arange(self.num_envs, device=self.device)
        self._reset_idx(env_ids)
        self.obs_buf = self._get_observations()
        return self.obs_buf, self.extras


class ManagerBasedRLEnv(ManagerBasedEnv):
    pass


class DirectMARLEnv(gym.Env):
    pass


@pytest.fixture
def fake_isaaclab(monkeypatch):
    """Install the stand-ins as ``isaaclab.envs`` and tell TorchRL Isaac Lab is present."""
    pkg = types.ModuleType("isaaclab")
    pkg.__spec__ = importlib.machinery.ModuleSpec("isaaclab", None, is_package=True)
    pkg.__path__ = []
    envs = types.ModuleType("isaaclab.envs")
    envs.__spec__ = importlib.machinery.ModuleSpec("isaaclab.envs", None)
    for cls in (DirectRLEnv, ManagerBasedEnv, ManagerBasedRLEnv, DirectMARLEnv):
        setattr(envs, cls.__name__, cls)
    pkg.envs = envs
    monkeypatch.setitem(sys.modules, "isaaclab", pkg)
    monkeypatch.setitem(sys.modules, "isaaclab.envs", envs)
    import torchrl.envs.libs.gym as trl_gym
    import torchrl.envs.libs.isaac_lab as trl_isaac

    monkeypatch.setattr(trl_gym, "_has_isaaclab", True)
    monkeypatch.setattr(trl_isaac, "_has_isaaclab", True)
    return envs


STANDINS = {"direct": DirectRLEnv, "manager": ManagerBasedRLEnv}


def _wrapped(kind, **kwargs):
    from torchrl_sapg.envs.isaaclab import wrap_isaaclab_env

    wrap_kw = {k: kwargs.pop(k) for k in ("terminal_obs",) if k in kwargs}
    return wrap_isaaclab_env(STANDINS[kind](**kwargs), device="cpu", **wrap_kw)


# --------------------------------------------------------------------------- specs and keys
@pytest.mark.parametrize("kind", ["direct", "manager"])
def test_specs_and_group_mapping(fake_isaaclab, kind):
    env = _wrapped(kind, num_envs=8)
    check_env_specs(env)
    assert env.batch_size == torch.Size([8])
    td = env.reset()
    assert td["observation"].shape == (8, OBS_DIM)
    assert td["critic_observation"].shape == (8, STATE_DIM)
    assert "policy" not in td.keys() and "critic" not in td.keys()
    assert env.action_spec.shape == (8, ACT_DIM)
    td = env.rand_step(td)
    assert td["next", "observation"].shape == (8, OBS_DIM)
    assert td["next", "critic_observation"].shape == (8, STATE_DIM)


@pytest.mark.parametrize("kind", ["direct", "manager"])
def test_policy_only_task(fake_isaaclab, kind):
    env = _wrapped(kind, num_envs=4, with_critic=False)
    check_env_specs(env)
    td = env.reset()
    assert set(k for k in td.keys() if "observation" in k) == {"observation"}


# --------------------------------------------------------------------------- auto-reset
@pytest.mark.parametrize("kind", ["direct", "manager"])
@pytest.mark.parametrize("terminal_obs", ["previous", "nan"])
def test_in_step_autoreset_rollout(fake_isaaclab, kind, terminal_obs):
    """step_and_maybe_reset (what collectors call) sees done at the right step, the reset
    observation next, no extra reset of the Isaac env, and a finite terminal obs by default."""
    n, T = 4, 12
    env = _wrapped(kind, num_envs=n, max_episode_length=5, term_at=[2, 3, 9, 9], terminal_obs=terminal_obs)
    base = env.base_env._env.unwrapped
    td = env.reset()
    base.reset_calls.clear()
    dones, terms, truncs, nexts, roots = [], [], [], [], []
    for _ in range(T):
        td["action"] = torch.zeros(n, ACT_DIM)
        td, td_ = env.step_and_maybe_reset(td)
        dones.append(td["next", "done"].squeeze(-1).clone())
        terms.append(td["next", "terminated"].squeeze(-1).clone())
        truncs.append(td["next", "truncated"].squeeze(-1).clone())
        nexts.append(td["next", "observation"].clone())
        roots.append(td_["observation"].clone())
        td = td_
    done = torch.stack(dones, 1)
    # env 0 ends every 2 steps (terminated), env 1 every 3 (terminated), envs 2-3 every 4 (time-out)
    for i, period in enumerate([2, 3, 4, 4]):
        expected = torch.tensor([(t + 1) % period == 0 for t in range(T)])
        assert torch.equal(done[i], expected), (i, done[i])
    assert torch.stack(terms, 1)[:2].eq(done[:2]).all() and not torch.stack(terms, 1)[2:].any()
    assert torch.stack(truncs, 1)[2:].eq(done[2:]).all() and not torch.stack(truncs, 1)[:2].any()
    # Isaac Lab resets inside step; the wrapper must not reset anything else
    expected_calls = [torch.nonzero(done[:, t]).squeeze(-1).tolist() for t in range(T) if done[:, t].any()]
    assert base.reset_calls == expected_calls
    root = torch.stack(roots, 1)
    nxt = torch.stack(nexts, 1)
    # after a done, the next root obs is the post-reset one (step counter feature 0)
    assert torch.all(root[..., 0][done] == 0)
    if terminal_obs == "previous":
        assert torch.isfinite(nxt).all()
        # not done: next obs carries the step count; done: the pre-step observation
        assert torch.allclose(nxt[..., 0][~done], root[..., 0][~done])
        prev = torch.cat([torch.zeros(n, 1), root[:, :-1, 0]], 1)
        assert torch.allclose(nxt[..., 0][done], prev[done])
    else:
        assert torch.isnan(nxt[done]).all() and torch.isfinite(nxt[~done]).all()


def test_terminal_fill_never_reads_done_on_the_host_off_cpu():
    """Off CPU the fill runs its masked writes without ``done.any()`` (a host sync per step):
    tensors on the ``meta`` device cannot be read on the host, so any such read raises here."""
    from tensordict import TensorDict

    from torchrl_sapg.envs.isaaclab import TerminalObservationFill

    fill = TerminalObservationFill(env_obs_keys=["observation"])
    n = 4
    for device in ("cpu", "meta"):
        nxt = TensorDict(
            observation=torch.zeros(n, OBS_DIM),
            step_count=torch.ones(n, 1),
            done=torch.zeros(n, 1, dtype=torch.bool),
            batch_size=[n],
        ).to(device)
        fill._step(None, nxt)
        root = TensorDict({"observation": torch.ones(n, OBS_DIM), "next": nxt}, batch_size=[n]).to(device)
        out, _ = fill._post_step_mdp_hooks(root, root.empty())
        assert out["next", "observation"].device.type == device


# --------------------------------------------------------------------------- collector
@pytest.mark.parametrize("kind", ["direct", "manager"])
def test_population_collector_episode_stats(fake_isaaclab, kind):
    from torchrl_sapg import PopulationCollector, make_actor_critic

    n, m, T = 8, 2, 12
    term_at = [2, 3, 9, 9, 2, 9, 3, 9]  # max_episode_length 5 -> lengths 2,3,4,4 | 2,4,3,4
    env = _wrapped(kind, num_envs=n, max_episode_length=5, term_at=term_at)
    torch.manual_seed(0)
    actor = make_actor_critic(OBS_DIM, ACT_DIM, num_policies=m, latent_dim=4, hidden_sizes=(8,)).actor
    collector = PopulationCollector(env, actor, num_policies=m, frames_per_batch=n * T)
    batch = next(iter(collector))
    assert batch.shape == (n, T)
    assert batch["policy_id"][:, 0].tolist() == [0] * 4 + [1] * 4
    assert torch.isfinite(batch["next", "observation"]).all()
    assert torch.isfinite(batch["next", "critic_observation"]).all()
    # entries TorchRL's native auto-reset blanks at done rows are restored (policy id, return)
    assert torch.equal(batch["next", "policy_id"], batch["policy_id"])
    assert torch.isfinite(batch["next", "episode_reward"]).all()
    lengths = [min(t, 4) for t in term_at]
    done = batch["next", "done"].squeeze(-1)
    for i, length in enumerate(lengths):
        assert done[i].tolist() == [(t + 1) % length == 0 for t in range(T)], i
    # hand computation: env i finishes T // L_i episodes, each with return L_i * 0.1 * (i + 1)
    stats = collector.episode_stats()
    for p in range(m):
        rets, lens = [], []
        for i in range(p * 4, (p + 1) * 4):
            k = T // lengths[i]
            rets += [lengths[i] * 0.1 * (i + 1)] * k
            lens += [lengths[i]] * k
        assert stats["count"][p].item() == len(rets)
        assert stats["return"][p].item() == pytest.approx(sum(rets) / len(rets), rel=1e-5)
        assert stats["length"][p].item() == pytest.approx(sum(lens) / len(lens))
    # episode counters restart at the auto-resets: step_count at done equals the length
    sc = batch["next", "step_count"].squeeze(-1)
    for i, length in enumerate(lengths):
        assert set(sc[i][done[i]].tolist()) == {length}
    collector.shutdown()


@pytest.mark.parametrize("kind", ["direct", "manager"])
def test_collection_reads_the_host_only_in_the_simulator(fake_isaaclab, kind):
    """Isaac Lab's path is TorchRL's native auto-reset: no host sync per step outside the simulator (here the
    stand-in's ``step``, which picks the envs to reset as Isaac Lab does) and the checks that read on CPU only."""
    from test_host_syncs import _CPU_ONLY, HostReads

    from torchrl_sapg import PopulationCollector, make_actor_critic

    env = _wrapped(kind, num_envs=8, max_episode_length=5, term_at=[2, 3, 9, 9, 2, 9, 3, 9])
    actor = make_actor_critic(OBS_DIM, ACT_DIM, num_policies=2, latent_dim=4, hidden_sizes=(8,)).actor
    batches = iter(PopulationCollector(env, actor, num_policies=2, frames_per_batch=8 * 12))
    next(batches)
    with HostReads() as reads:
        batch = next(batches)
    assert batch["next", "done"].any()  # the batch has auto-resets
    assert set(reads.outside(_CPU_ONLY)) == {"test_isaaclab_env.step"}, reads.sites


# --------------------------------------------------------------------------- task ids
def _register(monkeypatch, ids, env_cls=DirectRLEnv):
    registry = dict(gym.registry)
    for i in ids:
        registry[i] = gym.envs.registration.EnvSpec(id=i, entry_point=env_cls, kwargs={"env_cfg_entry_point": None})
    monkeypatch.setattr(gym.envs.registration, "registry", registry)
    monkeypatch.setattr(gym, "registry", registry)


@pytest.mark.parametrize(
    "installed,query,expected",
    [
        # Isaac Lab 3.0 ids installed: 2.x spellings and aliases resolve to them
        ("3", "Isaac-Repose-Cube-Allegro-Direct-v0", "Isaac-Reorient-Cube-Allegro-Direct"),
        ("3", "Isaac-Repose-Cube-Shadow-Direct-v0", "Isaac-Reorient-Cube-Shadow-Direct"),
        ("3", "Isaac-Dexsuite-Kuka-Allegro-Reorient-v0", "Isaac-Reorient-KukaAllegro"),
        ("3", "kuka_allegro_lift", "Isaac-Lift-KukaAllegro"),
        ("3", "Isaac-Velocity-Flat-Anymal-D-v0", "Isaac-Velocity-Flat-AnymalD"),
        ("3", "Isaac-Reorient-Cube-Allegro-Direct", "Isaac-Reorient-Cube-Allegro-Direct"),
        # Isaac Lab 2.x ids installed: 3.0 spellings and aliases resolve to them
        ("2", "Isaac-Reorient-Cube-Allegro-Direct", "Isaac-Repose-Cube-Allegro-Direct-v0"),
        ("2", "shadow", "Isaac-Repose-Cube-Shadow-Direct-v0"),
        ("2", "Isaac-Lift-KukaAllegro", "Isaac-Dexsuite-Kuka-Allegro-Lift-v0"),
        ("2", "Isaac-Velocity-Rough-AnymalD", "Isaac-Velocity-Rough-Anymal-D-v0"),
        ("2", "anymal-flat", "Isaac-Velocity-Flat-Anymal-D-v0"),
    ],
)
def test_alias_resolution(monkeypatch, installed, query, expected):
    from torchrl_sapg.envs.isaaclab import ISAACLAB_TASK_ALIASES, resolve_isaaclab_task

    gen = 0 if installed == "3" else 1
    _register(monkeypatch, [ids[gen] for ids in ISAACLAB_TASK_ALIASES.values()])
    assert resolve_isaaclab_task(query) == expected


def test_alias_errors(monkeypatch):
    from torchrl_sapg.envs.isaaclab import resolve_isaaclab_task

    _register(monkeypatch, ["Isaac-Velocity-Flat-AnymalD"])
    with pytest.raises(ValueError, match="Isaac-Reorient-Cube-Allegro-Direct.*Isaac-Repose-Cube-Allegro-Direct-v0"):
        resolve_isaaclab_task("allegro")
    with pytest.raises(ValueError, match="unknown Isaac Lab task.*Isaac-Velocity-Flat-AnymalD"):
        resolve_isaaclab_task("Isaac-Nope-v0")


# --------------------------------------------------------------------------- factory path
def test_make_env_prefix_end_to_end(fake_isaaclab, monkeypatch):
    """make_env("isaaclab:<2.x id>") with 3.0 ids registered: launch (kit-less), import
    isaaclab_tasks, cfg with num_envs/device/seed, gym.make, wrap."""
    import torchrl_sapg.envs.isaaclab as il
    from torchrl_sapg.envs import make_env

    made = {}

    class Cfg:
        def __init__(self):
            self.scene = types.SimpleNamespace(num_envs=1)
            self.sim = types.SimpleNamespace(device="cuda:0")
            self.seed = None

    def entry(cfg=None, **kw):
        made["cfg"] = cfg
        return DirectRLEnv(num_envs=cfg.scene.num_envs, device=cfg.sim.device)

    tasks = types.ModuleType("isaaclab_tasks")
    tasks.__spec__ = importlib.machinery.ModuleSpec("isaaclab_tasks", None)
    monkeypatch.setitem(sys.modules, "isaaclab_tasks", tasks)  # no .utils: registry cfg entry point
    registry = dict(gym.registry)
    registry["Isaac-Reorient-Cube-Allegro-Direct"] = gym.envs.registration.EnvSpec(
        id="Isaac-Reorient-Cube-Allegro-Direct", entry_point=entry, kwargs={"env_cfg_entry_point": Cfg},
        disable_env_checker=True, order_enforce=False,
    )
    monkeypatch.setattr(gym.envs.registration, "registry", registry)
    monkeypatch.setattr(gym, "registry", registry)
    monkeypatch.setattr(il, "_APP", {})  # isaaclab.app missing -> kit-less, no app
    env = make_env("isaaclab:Isaac-Repose-Cube-Allegro-Direct-v0", 6, device="cpu", seed=3)
    assert made["cfg"].scene.num_envs == 6 and made["cfg"].sim.device == "cpu" and made["cfg"].seed == 3
    assert il._APP == {"app": None}
    assert env.batch_size == (6,) and env.reset()["critic_observation"].shape == (6, STATE_DIM)
    check_env_specs(env)


def test_launch_is_idempotent(fake_isaaclab, monkeypatch):
    import torchrl_sapg.envs.isaaclab as il

    calls = []

    class AppLauncher:
        def __init__(self, **kw):
            calls.append(kw)
            self.app = object()

    app_mod = types.ModuleType("isaaclab.app")
    app_mod.AppLauncher = AppLauncher
    monkeypatch.setitem(sys.modules, "isaaclab.app", app_mod)
    monkeypatch.setattr(il, "_APP", {})
    a = il.launch_isaaclab_app(headless=True, device="cuda:0")
    b = il.launch_isaaclab_app(headless=False)
    assert a is b and calls == [{"headless": True, "device": "cuda:0"}]


def test_missing_isaaclab_error(monkeypatch):
    import torchrl_sapg.envs.isaaclab as il
    from torchrl_sapg.envs import make_env

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name.startswith("isaaclab") else real(name, *a))
    monkeypatch.setattr(il, "_APP", {})
    for call in (lambda: make_env("isaaclab:allegro", 4), lambda: il.launch_isaaclab_app()):
        with pytest.raises(ImportError, match=r'pip install "torchrl-sapg\[isaaclab\]".*Python 3\.12.*2\.3\.2\.post1'):
            call()


# --------------------------------------------------------------------------- live (opt-in)
@pytest.mark.isaaclab
@pytest.mark.skipif(
    importlib.util.find_spec("isaaclab") is None or not torch.cuda.is_available(),
    reason="needs Isaac Lab and a CUDA GPU (and its assets)",
)
def test_live_isaaclab_task():  # pragma: no cover - not run on CPU machines
    from torchrl_sapg import PopulationCollector, make_actor_critic
    from torchrl_sapg.envs import make_env

    env = make_env("isaaclab:allegro", 64, device="cuda:0", seed=0)
    check_env_specs(env)
    obs_dim = env.observation_spec["observation"].shape[-1]
    actor = make_actor_critic(obs_dim, env.action_spec.shape[-1], num_policies=2, latent_dim=4, device="cuda:0").actor
    collector = PopulationCollector(env, actor, num_policies=2, frames_per_batch=64 * 16)
    batch = next(iter(collector))
    assert batch.shape == (64, 16) and torch.isfinite(batch["next", "observation"]).all()
    collector.shutdown()


def test_torchrun_rank_gets_its_gpu_and_a_distributed_app(fake_isaaclab, monkeypatch):
    """Under torchrun (WORLD_SIZE > 1) rank r's app is launched on cuda:<LOCAL_RANK> with
    distributed=True, Isaac Lab's own multi-GPU convention."""
    import torchrl_sapg.envs.isaaclab as il

    seen = {}

    class Stop(Exception):
        pass

    def launch(headless=True, device=None, **kw):
        seen.update(device=device, **kw)
        raise Stop

    monkeypatch.setattr(il, "launch_isaaclab_app", launch)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(Stop):
        il.make_isaaclab_env("allegro", 8, device="cuda")
    assert seen == {"device": "cuda:1", "distributed": True}
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("LOCAL_RANK", "0")
    seen.clear()
    with pytest.raises(Stop):
        il.make_isaaclab_env("allegro", 8, device="cuda")
    assert seen == {"device": "cuda:0"}
