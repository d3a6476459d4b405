"""Isaac Gym backend (``VecTaskWrapper``), tested against a stand-in of IsaacGymEnvs' ``VecTask``.

Isaac Gym cannot run here (no GPU; Preview 4 has no build for Python 3.11). The stand-in honours what
a ``VecTask`` from ``isaacgymenvs.make`` exposes to a wrapper:

* ``num_envs``, ``device``, ``rl_device``, ``num_obs``, ``num_states``, ``observation_space``,
  ``action_space``, ``state_space`` and no ``unwrapped`` (``VecTask`` is not a gym env);
* one persistent ``obs_dict`` (``"obs"``, and ``"states"`` when ``num_states > 0``) that both ``step``
  and ``reset`` return;
* ``step(actions) -> (obs_dict, rew_buf[N], reset_buf[N] (long), extras)`` with
  ``extras["time_outs"] = (progress >= max_episode_length - 1) & reset_buf``; the envs flagged in
  ``reset_buf`` are reset at the start of the next ``step`` (``pre_physics_step``, as AllegroHand and
  ShadowHand do), so the observation returned with the flag is the terminal one;
* ``reset()`` only returns the observations (it resets nothing).

Its spaces are Gymnasium's, as only Gymnasium is installed here; IsaacGymEnvs uses gym 0.23.
"""
from __future__ import annotations

import csv
import json
import sys
import types

from pathlib import Path

import pytest
import torch
from torchrl.envs.utils import check_env_specs

from vectask_stand_in import ACT_DIM, OBS_DIM, STATE_DIM, VecTaskStandIn

from torchrl_sapg import OnPolicyTrainer, PopulationCollector, SAPGLoss, make_actor_critic, make_env


def _env(**kwargs):
    from torchrl_sapg.envs.isaacgym import VecTaskWrapper, wrap_isaacgym_env

    return wrap_isaacgym_env(VecTaskWrapper(VecTaskStandIn(**kwargs), task="StandIn"))


def test_specs_keys_and_shapes():
    env = _env()
    check_env_specs(env)
    assert env.batch_size == (4,)
    for key in ("done", "terminated", "truncated"):
        assert env.full_done_spec[key].shape == (4, 1)
    td = env.reset()
    assert td["observation"].shape == (4, OBS_DIM) and td["critic_observation"].shape == (4, STATE_DIM)


def test_wrapping_twice_adds_the_episode_counters_once():
    """An env that already counts its episodes (e.g. wrapped before) keeps one ``RewardSum`` and one ``StepCounter``."""
    from torchrl.envs import RewardSum, StepCounter
    from torchrl_sapg.envs.isaacgym import wrap_isaacgym_env

    env = wrap_isaacgym_env(_env())
    kinds = [type(t) for t in env.transform]
    assert kinds.count(RewardSum) == 1 and kinds.count(StepCounter) == 1
    td = env.rollout(8, break_when_any_done=False)  # env i earns i + 1 per step
    assert td["next", "done"].any()
    expected = torch.arange(1.0, 5.0)[:, None, None] * td["next", "step_count"]
    torch.testing.assert_close(td["next", "episode_reward"], expected)


def test_episode_ends_split_by_time_outs_and_run_past_the_first_reset():
    """step_and_maybe_reset (what collectors call): failures are terminated, time-outs truncated, the
    observation at an end is the terminal one and stays the next root; VecTask alone resets the flagged envs."""
    n, T = 4, 12
    env = _env(num_envs=n, max_episode_length=6, fail_at=(2, 99, 3, 99))
    vec_task = env.base_env._env
    td = env.reset()
    vec_task.reset_buf.fill_(1)  # start every env afresh (the wrapper's spec check stepped the task)
    vec_task.reset_calls.clear()
    rows = []
    for _ in range(T):
        td["action"] = torch.zeros(n, ACT_DIM)
        td, root = env.step_and_maybe_reset(td)
        rows.append((td["next", "done"], td["next", "terminated"], td["next", "truncated"],
                     td["next", "observation"][:, 0], root["observation"][:, 0], td["next", "reward"],
                     td["next", "episode_reward"], td["next", "step_count"], root["step_count"]))
        td = root
    done, term, trunc, nxt, nxt_root, reward, ret, count, root_count = (
        torch.stack(x, 1).squeeze(-1) for x in zip(*rows))
    # by hand: envs 0 and 2 fail after 2 and 3 steps; envs 1 and 3 time out at step 5 (max_episode_length - 1)
    length = [2, 5, 3, 5]
    for i in range(n):
        ends = torch.tensor([(t + 1) % length[i] == 0 for t in range(T)])
        assert torch.equal(done[i], ends), i
        assert torch.equal(term[i], ends if i in (0, 2) else torch.zeros(T, dtype=torch.bool)), i
        assert torch.equal(trunc[i], ends if i in (1, 3) else torch.zeros(T, dtype=torch.bool)), i
        assert torch.equal(nxt[i], torch.tensor([float(t % length[i] + 1) for t in range(T)])), i
        # the episode statistics at an end are the episode's own, and the next root starts a new count
        assert torch.equal(count[i], torch.tensor([t % length[i] + 1 for t in range(T)])), i
        assert torch.equal(ret[i], (i + 1.0) * count[i]), i
        assert torch.equal(root_count[i], torch.where(ends, 0, count[i])), i
    assert torch.equal(nxt_root, nxt)  # the terminal observation is the next root, as in rl_games
    assert torch.equal(reward, torch.arange(1.0, n + 1)[:, None].expand(n, T))
    flagged = [torch.nonzero(done[:, t]).flatten().tolist() for t in range(T - 1) if done[:, t].any()]
    assert vec_task.reset_calls == [list(range(n))] + flagged
    assert set(vec_task.obs_dict) == {"obs", "states"}  # nothing of TorchRL's written into VecTask's dict


class _NoTimeOutsStandIn(VecTaskStandIn):
    """A task whose ``step`` leaves ``extras`` empty."""

    def step(self, actions):
        obs, reward, reset_buf, _ = super().step(actions)
        return obs, reward, reset_buf, {}


def test_a_task_without_time_outs_has_every_end_terminated():
    from torchrl_sapg.envs.isaacgym import VecTaskWrapper

    td = VecTaskWrapper(_NoTimeOutsStandIn()).rollout(10, break_when_any_done=False)
    assert td["next", "done"][1].any()  # env 1 reaches the episode-length limit
    assert torch.equal(td["next", "terminated"], td["next", "done"]) and not td["next", "truncated"].any()


def test_population_collector_and_a_sapg_update():
    """The collector runs through episode ends and GAE stops at failures only (a hand computation with lambda = 0)."""
    from torchrl.objectives.value import GAE

    m = 2
    env = _env(num_envs=4)
    torch.manual_seed(0)
    ac = make_actor_critic(OBS_DIM, ACT_DIM, num_policies=m, latent_dim=4, hidden_sizes=(16,))
    collector = PopulationCollector(env, ac.actor, num_policies=m, frames_per_batch=4 * 8)
    batch = next(iter(collector))
    assert batch.shape == (4, 8) and batch["next", "done"].any()
    assert batch["policy_id"][:, 0].tolist() == [0, 0, 1, 1]
    gamma = 0.9
    out = GAE(gamma=gamma, lmbda=0.0, value_network=ac.critic)(batch.clone())
    with torch.no_grad():
        v = ac.critic(batch.clone())["state_value"]
        v_next = ac.critic(batch["next"].clone())["state_value"]
    not_terminated = (~batch["next", "terminated"]).float()
    expected = batch["next", "reward"] + gamma * not_terminated * v_next - v
    torch.testing.assert_close(out["advantage"], expected)
    assert batch["next", "terminated"].any() and batch["next", "truncated"].any()

    loss = SAPGLoss(ac.actor, ac.critic, num_policies=m)
    trainer = OnPolicyTrainer(
        collector=collector, loss_module=loss, optimizer=torch.optim.Adam(loss.parameters(), lr=3e-4),
        total_frames=3 * 32, num_epochs=2, num_minibatches=2,
        value_estimator=GAE(gamma=0.99, lmbda=0.95, value_network=ac.critic), progress_bar=False, seed=0,
    )
    trainer.register_op("batch_process", loss.aggregate)
    trainer.train()
    assert all(torch.isfinite(p).all() for p in loss.parameters())
    collector.shutdown()


def test_collection_reads_the_host_only_in_the_task():
    """No host sync per step outside the task: TorchRL's native auto-reset path skips its partial-reset loop,
    the wrapper's done and the terminal fill read nothing off CPU; the stand-in's ``step`` reads ``reset_buf``
    (as VecTask does)."""
    from test_host_syncs import _CPU_ONLY, reads_of_a_collected_batch

    ac = make_actor_critic(OBS_DIM, ACT_DIM, num_policies=2, latent_dim=4, hidden_sizes=(8,))
    batch, reads = reads_of_a_collected_batch(_env(num_envs=4), ac.actor, num_policies=2, frames_per_batch=4 * 8)
    assert batch["next", "done"].any()
    assert set(reads.outside(_CPU_ONLY)) == {"vectask_stand_in.step"}, reads.sites


def test_frame_skip_still_stops_at_an_end():
    """With several frames per step, TorchRL's loop must still leave at an end (``do_break`` kept)."""
    from torchrl_sapg.envs.isaacgym import VecTaskWrapper

    wrapper = VecTaskWrapper(VecTaskStandIn(), frame_skip=2)
    done = torch.tensor([[False], [True], [False], [False]])
    assert bool(wrapper.read_done(done, done, done)[-1])
    assert VecTaskWrapper(VecTaskStandIn()).read_done(done, done, done)[-1] is False


def test_make_env_builds_the_task_through_isaacgymenvs(monkeypatch):
    """``make_env("isaacgym:<task>")`` calls ``isaacgymenvs.make`` as TorchRL does and wraps the VecTask."""
    made = {}

    def make(**kwargs):
        made.update(kwargs)
        return VecTaskStandIn(num_envs=kwargs["num_envs"])

    isaacgym = types.ModuleType("isaacgym")
    isaacgymenvs = types.ModuleType("isaacgymenvs")
    isaacgymenvs.make = make
    monkeypatch.setitem(sys.modules, "isaacgym", isaacgym)
    monkeypatch.setitem(sys.modules, "isaacgymenvs", isaacgymenvs)
    env = make_env("isaacgym:AllegroHand", 4, device="cpu", seed=3)
    assert made["task"] == "AllegroHand" and made["num_envs"] == 4 and made["seed"] == 3
    assert made["sim_device"] == made["rl_device"] == "cpu" and made["headless"] is True
    check_env_specs(env)
    assert env.rollout(8, break_when_any_done=False)["next", "done"].any()


@pytest.mark.parametrize("bad", [0, -1, 2.5])
def test_num_envs_must_be_a_positive_int(bad):
    from torchrl_sapg.envs.isaacgym import make_isaacgym_env

    with pytest.raises(ValueError, match="num_envs must be a positive int"):
        make_isaacgym_env("Ant", bad, device="cpu")


_FAKE_ISAACGYMENVS = """
import json

from vectask_stand_in import VecTaskStandIn


def make(seed, task, num_envs, sim_device, rl_device, headless=False, **kwargs):
    with open("isaacgymenvs_make.json", "w") as f:
        json.dump(dict(seed=seed, task=task, num_envs=num_envs, sim_device=sim_device, headless=headless), f)
    return VecTaskStandIn(num_envs=num_envs, device=sim_device)
"""


def test_the_recipe_trains_sapg_on_an_isaacgym_task(tmp_path, monkeypatch):
    """``recipes/train.py env.name=isaacgym:<task>`` end to end, with fake ``isaacgym`` / ``isaacgymenvs``
    packages (the latter's ``make`` returns the stand-in) on the subprocess's path."""
    from test_recipes import TRAIN, _ok, _run

    fakes = tmp_path / "fakes"
    for package, source in (("isaacgym", ""), ("isaacgymenvs", _FAKE_ISAACGYMENVS)):
        (fakes / package).mkdir(parents=True)
        (fakes / package / "__init__.py").write_text(source)
    monkeypatch.setenv("PYTHONPATH", f"{fakes}:{Path(__file__).parent}")
    num_envs, horizon, iterations = 8, 12, 2
    res = _ok(_run(TRAIN, [
        "algo=sapg", "algo.num_policies=2", "algo.latent_dim=4", "env=pendulum", "env.name=isaacgym:AllegroHand",
        f"env.num_envs={num_envs}", f"train.horizon={horizon}", f"total_frames={iterations * num_envs * horizon}",
        "model.hidden_sizes=[16]", "progress_bar=false", "seed=5", f"hydra.run.dir={tmp_path / 'run'}",
    ], tmp_path))
    made = json.loads((tmp_path / "isaacgymenvs_make.json").read_text())
    assert made == dict(seed=5, task="AllegroHand", num_envs=num_envs, sim_device="cpu", headless=True), res.stdout
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["env"] == "isaacgym:AllegroHand" and summary["frames"] == iterations * num_envs * horizon
    # every policy finished episodes in every batch (failures after 2 or 3 steps, time-outs after 5)
    for policy in range(2):
        (counts,) = (tmp_path / "run").glob(f"*/scalars/policy/{policy}/count.csv")
        rows = list(csv.reader(counts.open()))
        assert len(rows) == iterations and all(float(value) > 0 for _, value in rows)
