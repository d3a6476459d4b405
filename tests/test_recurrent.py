"""Recurrent (MLP + LSTM) actor-critic: resets, sequence replay, whole-row minibatches, SAPG, recipes."""
from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest
import torch
from tensordict import TensorDict
from torchrl.envs import ExplorationType, set_exploration_type
from torchrl.modules import IndependentNormal, recurrent_mode as torchrl_recurrent_mode
from torchrl.objectives import ClipPPOLoss
from torchrl.objectives.value import GAE

from torchrl_sapg import OnPolicyTrainer, PopulationCollector, make_env
from torchrl_sapg.modules.recurrent import (
    add_recurrent_transforms,
    collection_policy,
    make_recurrent_actor_critic,
    recurrent_env_transforms,
    recurrent_mode,
)
from torchrl_sapg.objectives import SAPGLoss

REPO = pathlib.Path(__file__).resolve().parents[1]
OBS, ACT, H = 3, 1, 8
EPISODE = 5  # Pendulum time limit: every [T=12] row holds episode ends at the same steps


def _agent(m=2, latent_dim=4, backend="pad", seed=0):
    torch.manual_seed(seed)
    return make_recurrent_actor_critic(
        OBS, ACT, num_policies=m, latent_dim=latent_dim, hidden_sizes=(16,), lstm_hidden=H, recurrent_backend=backend
    )


def _collect(ac, num_envs=4, horizon=12, m=2, skip=1, seed=0):
    """A collected [N, T] batch; ``skip`` batches first so rows start from a non-zero hidden state."""
    env = add_recurrent_transforms(make_env("pendulum", num_envs, seed=seed, max_episode_steps=EPISODE), ac)
    collector = PopulationCollector(env, collection_policy(ac), num_policies=m, frames_per_batch=num_envs * horizon)
    it = iter(collector)
    for _ in range(skip):
        next(it)
    batch = next(it)
    collector.shutdown()
    return batch


def _step_by_step(module, td, prefix, h0, c0, *, policy_id=None):
    """Run ``module`` (one step at a time, sequential mode) over ``td``'s ``[B, T]`` rows from ``(h0, c0)``,
    carrying its own output state; ``is_init`` resets (sequential mode zeroes the state)."""
    h_key, c_key = f"recurrent_state_h_{prefix}", f"recurrent_state_c_{prefix}"
    h, c = h0, c0
    outs = []
    for t in range(td.shape[1]):
        s = td[:, t].clone()
        if policy_id is not None:
            s.set("policy_id", torch.full_like(s.get("policy_id"), policy_id))
        s.set(h_key, h)
        s.set(c_key, c)
        s = module(s)
        outs.append(s)
        h, c = s.get(("next", h_key)), s.get(("next", c_key))
    return torch.stack(outs, 1)


# ----------------------------------------------------------------------------- resets
@pytest.mark.parametrize("backend", ["pad", "scan"])
def test_hidden_state_resets_at_is_init(backend):
    ac = _agent(backend=backend)
    B, T, r = 2, 7, 3
    is_init = torch.zeros(B, T, 1, dtype=torch.bool)
    is_init[0, r] = True
    h = torch.randn(B, T, 1, H)
    c = torch.randn(B, T, 1, H)
    h[0, r] = 0  # the primer's reset value, as collection stores it
    c[0, r] = 0
    td = TensorDict(
        {"observation": torch.randn(B, T, OBS), "policy_id": torch.tensor([[0] * T, [1] * T]), "is_init": is_init,
         "recurrent_state_h_actor": h, "recurrent_state_c_actor": c},
        [B, T],
    )
    net = ac.actor.module[0]  # embed -> LSTM -> head (loc, scale)
    with torch.no_grad():
        with recurrent_mode(True):
            seq = net(td.clone()).get("loc")
        hand = _step_by_step(net, td, "actor", h[:, 0], c[:, 0]).get("loc")
        torch.testing.assert_close(seq, hand, rtol=0, atol=1e-5)
        # after the reset: a fresh sequence starting there (zero state)
        fresh = td[0:1, r:].clone()
        with recurrent_mode(True):
            fresh_loc = net(fresh).get("loc")
        torch.testing.assert_close(seq[0:1, r:], fresh_loc, rtol=0, atol=1e-5)
        # the reset matters: without it the state would carry over
        no_reset = td.clone()
        no_reset.set("is_init", torch.zeros_like(is_init))
        with recurrent_mode(True):
            carried = net(no_reset).get("loc")
        assert (carried[0, r:] - seq[0, r:]).abs().max() > 1e-3
        torch.testing.assert_close(carried[0, :r], seq[0, :r])


def test_env_transforms_and_primers_zero_the_state_at_reset():
    ac = _agent()
    names = [type(t).__name__ for t in recurrent_env_transforms(ac)]
    assert names[0] == "InitTracker" and "TensorDictPrimer" in names
    batch = _collect(ac)
    init = batch["is_init"].squeeze(-1)
    assert init[:, 1:].any(), "the batch must hold an episode end"
    for key in ("recurrent_state_h_actor", "recurrent_state_c_actor", "recurrent_state_h_critic", "recurrent_state_c_critic"):
        state = batch[key]
        assert (state[init] == 0).all()
        assert (state[~init].abs().sum(-1) > 0).all()  # carried everywhere else
        # the state entering step t+1 is the state leaving step t (within an episode)
        nxt = batch["next", key][:, :-1]
        keep = ~init[:, 1:]
        torch.testing.assert_close(state[:, 1:][keep], nxt[keep])


# ----------------------------------------------------------------------------- sequence replay
def test_sequence_replay_matches_collection_across_episode_ends():
    ac = _agent()
    batch = _collect(ac)
    assert batch["is_init"][:, 1:].any()
    assert (batch["recurrent_state_h_actor"][:, 0].abs().sum(-1) > 0).all()  # rows start mid-episode
    with torch.no_grad(), recurrent_mode(True), set_exploration_type(ExplorationType.RANDOM):
        lp = ac.actor.get_dist(batch.clone()).log_prob(batch["action"])
    ratio = (lp - batch["action_log_prob"]).exp()
    torch.testing.assert_close(ratio, torch.ones_like(ratio), rtol=0, atol=1e-5)
    # PPO's first ratio on a training minibatch of whole rows is 1: the clipped objective is -mean(A)
    loss = ClipPPOLoss(ac.actor, ac.critic, clip_epsilon=0.2, entropy_bonus=False, normalize_advantage=False)
    gae = GAE(gamma=0.99, lmbda=0.95, value_network=ac.critic, average_gae=False, deactivate_vmap=True)
    with torch.no_grad(), recurrent_mode(True):
        data = gae(batch.clone())
        out = loss(data[:2].clone())
    torch.testing.assert_close(out["loss_objective"], -data[:2]["advantage"].mean(), rtol=1e-5, atol=1e-5)
    assert float(out["clip_fraction"]) == 0.0


def test_gae_runs_the_critic_over_sequences_and_next_states():
    ac = _agent()
    batch = _collect(ac)
    gae = GAE(gamma=0.99, lmbda=0.95, value_network=ac.critic, average_gae=False, deactivate_vmap=True)
    with torch.no_grad(), recurrent_mode(True):
        data = gae(batch.clone())
    with torch.no_grad():
        hand = _step_by_step(
            ac.critic, batch, "critic", batch["recurrent_state_h_critic"][:, 0], batch["recurrent_state_c_critic"][:, 0]
        )
        torch.testing.assert_close(data["state_value"], hand["state_value"], rtol=0, atol=1e-5)
        # V(s'_t) from the critic state after step t (also right after an episode start)
        nxt = batch["next"].clone()
        nxt.set("recurrent_state_h_critic", hand["next", "recurrent_state_h_critic"])
        nxt.set("recurrent_state_c_critic", hand["next", "recurrent_state_c_critic"])
        nxt.set("is_init", torch.zeros_like(nxt["is_init"]))
        next_value = ac.critic(nxt.reshape(-1)).get("state_value").reshape(data["next", "state_value"].shape)
    torch.testing.assert_close(data["next", "state_value"], next_value, rtol=0, atol=1e-5)


# ----------------------------------------------------------------------------- whole-row minibatches
def _trainer(ac, num_minibatches, num_epochs=2):
    loss = ClipPPOLoss(ac.actor, ac.critic, clip_epsilon=0.2, entropy_bonus=False)
    env = add_recurrent_transforms(make_env("pendulum", 4, seed=0, max_episode_steps=EPISODE), ac)
    collector = PopulationCollector(env, collection_policy(ac), num_policies=2, frames_per_batch=4 * 12)
    trainer = OnPolicyTrainer(
        collector=collector, loss_module=loss, optimizer=torch.optim.Adam(loss.parameters(), lr=1e-4),
        total_frames=48, num_epochs=num_epochs, num_minibatches=num_minibatches, sequence_minibatches=True,
        kl_actor=ac.actor, progress_bar=False, seed=0,
        value_estimator=GAE(gamma=0.99, lmbda=0.95, value_network=ac.critic, deactivate_vmap=True),
    )
    return trainer, collector


def test_sequence_minibatches_are_whole_env_rows():
    ac = _agent()
    trainer, collector = _trainer(ac, num_minibatches=2)
    batch = _collect(ac)
    N, T = batch.shape
    with recurrent_mode(True):
        batch = trainer.value_estimator(batch)
    batch.set("row_tag", torch.arange(N).unsqueeze(1).expand(N, T).clone())
    batch.set("t_tag", torch.arange(T).expand(N, T).clone())
    seen, modes = [], []
    real_step = trainer.optimization_stepper.step

    def recording_step(tr, sub):
        seen.append(sub.select("row_tag", "t_tag", "observation").clone())
        modes.append(torchrl_recurrent_mode())
        return real_step(tr, sub)

    trainer.optimization_stepper.step = recording_step
    losses = trainer.optim_steps(batch)
    assert torch.isfinite(losses["loss_objective"])
    assert len(seen) == 2 * 2 and all(modes)
    assert trainer.batch_layout == {"rows": N, "num_minibatches": 2, "minibatch_size": N // 2,
                                    "optimizer_steps_per_iteration": 4, "sequence_length": T}
    for epoch in range(2):
        rows = []
        for sub in seen[2 * epoch : 2 * epoch + 2]:
            assert sub.shape == torch.Size([N // 2, T])
            tags = sub["row_tag"]
            assert (tags == tags[:, :1]).all()  # one env-row per sequence...
            assert (sub["t_tag"] == torch.arange(T)).all()  # ...complete and in time order
            torch.testing.assert_close(sub["observation"], batch["observation"][tags[:, 0]])
            rows += tags[:, 0].tolist()
        assert sorted(rows) == list(range(N))
    collector.shutdown()


def test_uneven_sequence_split_raises():
    ac = _agent()
    trainer, collector = _trainer(ac, num_minibatches=3)
    batch = _collect(ac)
    with pytest.raises(ValueError, match=r"4 env-rows .*num_minibatches=3"):
        trainer.optim_steps(batch)
    collector.shutdown()


# ----------------------------------------------------------------------------- SAPG
def test_sapg_relabelled_rows_replay_the_leader_from_the_followers_recorded_state():
    M, N, T = 3, 6, 12
    ac = _agent(m=M)
    batch = _collect(ac, num_envs=N, horizon=T, m=M)
    assert batch["is_init"][:, 1:].any()
    loss = SAPGLoss(ac.actor, ac.critic, num_policies=M, leader_id=0, generator=torch.Generator().manual_seed(0))
    gae = GAE(gamma=0.99, lmbda=0.95, value_network=ac.critic, average_gae=False, deactivate_vmap=True)
    batch.set("row_tag", torch.arange(N).unsqueeze(1).expand(N, T).clone())
    with torch.no_grad(), recurrent_mode(True):
        data = loss.aggregate(gae(batch.clone()))
    off = data[N:]
    assert off.shape == torch.Size([N // M, T]) and off["off_policy"].all() and (off["policy_id"] == 0).all()
    src = off["row_tag"][:, 0]
    assert (batch["policy_id"][src, 0] != 0).all()  # followers' rows
    follower = batch[src]
    with torch.no_grad():
        hand = _step_by_step(
            ac.actor.module[0], follower, "actor",
            follower["recurrent_state_h_actor"][:, 0], follower["recurrent_state_c_actor"][:, 0], policy_id=0,
        )
        leader_lp = IndependentNormal(hand["loc"], hand["scale"]).log_prob(follower["action"])
        torch.testing.assert_close(off["target_log_prob"], leader_lp, rtol=0, atol=1e-5)
        # and it is not the follower's own log-prob
        assert (off["target_log_prob"] - follower["action_log_prob"]).abs().max() > 1e-3
        # the leader's critic V_old(s) replayed the same way
        v = _step_by_step(
            ac.critic, follower, "critic",
            follower["recurrent_state_h_critic"][:, 0], follower["recurrent_state_c_critic"][:, 0], policy_id=0,
        )
        torch.testing.assert_close(off["state_value"], v["state_value"], rtol=0, atol=1e-5)
    # on-policy rows: their own log-prob (ratio 1 in the first step, as for PPO)
    torch.testing.assert_close(data[:N]["target_log_prob"], batch["action_log_prob"])


# ----------------------------------------------------------------------------- recipes
def _recipe(algo: str, tmp: pathlib.Path) -> subprocess.Popen:
    env = os.environ.copy()
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in [env.get("PYTHONPATH")] if p])
    env.setdefault("OMP_NUM_THREADS", "1")
    args = [f"algo={algo}", "env=pendulum", "model.lstm_hidden=16", "model.hidden_sizes=[16]", "env.num_envs=24",
            "train.horizon=16", "total_frames=3000", "progress_bar=false", "eval_episodes=1",
            f"hydra.run.dir={tmp / algo}"]
    return subprocess.Popen([sys.executable, str(REPO / "recipes" / "train.py"), *args], cwd=tmp, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_recipe_runs_ppo_and_sapg_with_an_lstm(tmp_path):
    procs = {algo: _recipe(algo, tmp_path) for algo in ("ppo", "sapg")}
    for algo, proc in procs.items():
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, f"{algo}: exit {proc.returncode}\n{out[-2000:]}\n{err[-3000:]}"
        summary = json.loads((tmp_path / algo / "summary.json").read_text())
        assert summary["frames"] >= 3000
        assert summary["batch_layout"]["sequence_length"] == 16
        assert summary["batch_layout"]["rows"] == (24 if algo == "ppo" else 24 + 24 // 6)
        assert len(summary["eval_return"]) == (1 if algo == "ppo" else 6)
        assert all(map(lambda x: x == x, summary["eval_return"]))  # not NaN


def test_sapg_off_policy_one_step_target_bootstraps_from_the_leader_replay():
    M, N, T = 3, 6, 12
    ac = _agent(m=M)
    batch = _collect(ac, num_envs=N, horizon=T, m=M)
    loss = SAPGLoss(ac.actor, ac.critic, num_policies=M, leader_id=0, advantage_normalization="none",
                    off_policy_target="td0", generator=torch.Generator().manual_seed(0))
    gae = GAE(gamma=0.99, lmbda=0.95, value_network=ac.critic, average_gae=False, deactivate_vmap=True)
    batch.set("row_tag", torch.arange(N).unsqueeze(1).expand(N, T).clone())
    with torch.no_grad(), recurrent_mode(True):
        off = loss.aggregate(gae(batch.clone()))[N:]
    follower = batch[off["row_tag"][:, 0]]
    with torch.no_grad():
        v = _step_by_step(
            ac.critic, follower, "critic",
            follower["recurrent_state_h_critic"][:, 0], follower["recurrent_state_c_critic"][:, 0], policy_id=0,
        )["state_value"]
    # inside an episode V_old(s_{t+1}) is the leader's replayed value at t + 1
    target = follower["next", "reward"][:, :-1] + 0.99 * v[:, 1:]
    inside = ~follower["next", "done"][:, :-1]
    torch.testing.assert_close(off["value_target"][:, :-1][inside], target[inside], rtol=0, atol=1e-5)


# ----------------------------------------------------------------------------- PBT members with LSTMs
def _lstm_member(root, member_id: int, objective: float, seed: int):
    from torchrl_sapg.population import PBTMember
    from torchrl_sapg.trainers import LearningRateSchedule

    torch.manual_seed(seed)
    ac = make_recurrent_actor_critic(OBS, ACT, hidden_sizes=[16], lstm_hidden=H)
    env = add_recurrent_transforms(make_env("pendulum", 8, seed=seed, max_episode_steps=EPISODE), ac)
    collector = PopulationCollector(env, collection_policy(ac), num_policies=1, frames_per_batch=8 * 12)
    loss = ClipPPOLoss(ac.actor, ac.critic, clip_epsilon=0.2, critic_coeff=2.0)
    gae = GAE(gamma=0.99, lmbda=0.95, value_network=ac.critic, deactivate_vmap=True)
    optim = torch.optim.Adam(loss.parameters(), lr=3e-4)
    trainer = OnPolicyTrainer(
        collector=collector, loss_module=loss, optimizer=optim, total_frames=8 * 12 * 2, num_epochs=2,
        num_minibatches=2, value_estimator=gae, lr_schedule=LearningRateSchedule(optim, mode="fixed"),
        obs_normalizers=[ac.obs_normalizer], progress_bar=False, seed=seed, sequence_minibatches=True,
    )
    member = PBTMember(root, member_id, hyperparameters={"lr": {"kind": "multiplicative"}}, interval_frames=8 * 12,
                       objective=lambda tr: objective, num_members=2, seed=seed, verbose=False)
    member.register(trainer)
    return trainer, member, ac


def test_decentralised_pbt_member_with_an_lstm_adopts_a_peers_recurrent_weights(tmp_path):
    """DexPBT with recurrent members: the bottom member takes the top member's LSTM weights
    (and its normaliser) at a round and keeps training on whole sequences."""
    from torchrl_sapg.trainers import load_checkpoint

    t0, m0, _ = _lstm_member(tmp_path, 0, objective=10.0, seed=0)
    t0.train()
    t1, m1, ac1 = _lstm_member(tmp_path, 1, objective=0.0, seed=1)
    t1.train()
    r = m1.last_report
    assert (r.action, r.source) == ("replace", 0)
    peer = load_checkpoint(tmp_path / "member_000" / f"ckpt_{r.source_iteration:09d}.pt")["trainer"]["loss_module"]
    lstm = {k: v for k, v in peer.items() if ".lstm." in k}
    assert lstm, "the checkpoint holds LSTM weights"
    own = t1.loss_module.state_dict()
    for key, value in lstm.items():
        assert torch.equal(own[key], value), key
    assert t1.collected_frames == 8 * 12 * 2 and t1.batch_layout["sequence_length"] == 12
