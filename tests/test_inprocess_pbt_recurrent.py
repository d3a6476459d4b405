"""In-process DexPBT with recurrent (MLP -> LSTM) members (pbt=inprocess model.lstm_hidden=H).

Numbers are checked against the single recurrent network of ``make_recurrent_actor_critic``
(TorchRL's ``LSTMModule``) loaded with one member's weights:

* (a) every member's loc / scale / value over sequences with resets inside, the one-step
  collection path, and the per-member GAE (TorchRL's ``GAE`` on the single critic);
* (b) hidden states reset where ``is_init`` is set (collected batch and module calls);
* (c) one ``PopulationLearner.update`` gives member i the gradient of its own clipped PPO loss
  on its own env-rows, computed independently; replay reproduces the collection log-probs;
* (d) ``exploit`` copies the LSTM weights (and their Adam moments);
* (e) ``recipes/train.py pbt=inprocess model.lstm_hidden=...`` with PBT steps, eval and a resume.
"""
from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest
import torch
from tensordict import TensorDict
from torchrl.envs import Compose, TransformedEnv
from torchrl.modules import set_recurrent_mode
from torchrl.objectives.value import GAE

from torchrl_sapg import PopulationCollector, make_env
from torchrl_sapg.modules.recurrent import make_recurrent_actor_critic
from torchrl_sapg.population.ensemble import (
    RecurrentEnsembleActor,
    RecurrentEnsembleValue,
    RecurrentPolicyEnsemble,
    ensemble_collection_policy,
    ensemble_gae,
)
from torchrl_sapg.population.inprocess import PopulationLearner

ROOT = pathlib.Path(__file__).resolve().parents[1]
OBS, ACT, H, MLP = 3, 1, 8, (16,)
EPISODE = 5  # short Pendulum episodes: every [T=12] row holds episode ends
STATE_KEYS = {part: (f"recurrent_state_h_{part}", f"recurrent_state_c_{part}") for part in ("actor", "critic")}

torch.set_num_threads(1)


# ----------------------------------------------------------------------------- helpers
def _ensemble(m=3, seed=0):
    torch.manual_seed(seed)
    ens = RecurrentPolicyEnsemble(OBS, ACT, num_members=m, hidden_sizes=MLP, lstm_hidden=H)
    with torch.no_grad():  # distinct log-stds and normaliser statistics per member
        ens.actor_params["head", "log_std"].copy_(torch.linspace(-0.5, 0.3, m).view(m, 1, 1))
    shift = torch.arange(m, dtype=torch.float32).view(m, 1, 1)
    ens.update_normalizers(torch.randn(m, 50, OBS) * (1.0 + shift) + shift)
    return ens


def _single(ens, i):
    """``make_recurrent_actor_critic`` (TorchRL ``LSTMModule`` s) holding member ``i``'s weights."""
    ac = make_recurrent_actor_critic(OBS, ACT, hidden_sizes=MLP, lstm_hidden=H)
    a, c = ens.actor_params[i].detach(), ens.critic_params[i].detach()

    def load(module, params):
        module.load_state_dict(params.flatten_keys(".").to_dict())  # strict: the same parameter names

    load(ac.actor.module[0][0].module, a["embed"])
    load(ac.actor.lstm.lstm, a["lstm"])
    load(ac.actor.head, a["head"])
    load(ac.critic[0].module, c["embed"])  # the critic's copy of the (shared) normaliser: equal stats
    load(ac.critic.lstm.lstm, c["lstm"])
    load(ac.critic[2].module, c["head"])
    return ac


def _sequences(n, t, seed=0):
    """``[n, t]`` inputs with episode starts inside rows (state zero there, as the primer stores it)."""
    gen = torch.Generator().manual_seed(seed)
    is_init = torch.zeros(n, t, 1, dtype=torch.bool)
    is_init[::2, t // 2] = True  # a reset in the middle of every other row
    is_init[1::3, 0] = True  # and some rows starting an episode
    td = TensorDict({"observation": torch.randn(n, t, OBS, generator=gen) * 2, "is_init": is_init,
                     "policy_id": torch.zeros(n, t, dtype=torch.long)}, [n, t])
    for key in (*STATE_KEYS["actor"], *STATE_KEYS["critic"]):
        state = torch.randn(n, t, 1, H, generator=gen)
        td.set(key, state.masked_fill(is_init.unsqueeze(-1), 0.0))
    return td


def _step_by_step(module, td, part, h0, c0):
    """A single net one step at a time (TorchRL's sequential mode) over ``[B, T]`` rows, carrying its state."""
    h_key, c_key = STATE_KEYS[part]
    h, c, outs = h0, c0, []
    for t in range(td.shape[1]):
        s = td[:, t].clone()
        s.set(h_key, h)
        s.set(c_key, c)
        s = module(s)
        outs.append(s)
        h, c = s.get(("next", h_key)), s.get(("next", c_key))
    return torch.stack(outs, 1)


_BATCHES: dict = {}


def _collect(m=3, per=4, horizon=12):
    """A real ``[N, T]`` batch collected by the recurrent ensemble (second batch: rows start mid-episode)."""
    key = (m, per, horizon)
    if key not in _BATCHES:
        ens = _ensemble(m, seed=1)
        env = TransformedEnv(make_env("pendulum", m * per, seed=0, max_episode_steps=EPISODE), Compose(*ens.env_transforms()))
        policy = ensemble_collection_policy(RecurrentEnsembleActor(ens), RecurrentEnsembleValue(ens))
        collector = PopulationCollector(env, policy, num_policies=m, frames_per_batch=m * per * horizon)
        it = iter(collector)
        next(it)
        batch = next(it)
        collector.shutdown()
        _BATCHES[key] = (ens, batch.clone())
    ens, batch = _BATCHES[key]
    return ens, batch.clone()


HP = {"lr": 1e-3, "clip_epsilon": [0.05, 0.2, 0.3], "entropy_coeff": [0.01, 0.0, 0.1], "critic_coeff": [1.0, 2.0, 0.5],
      "gamma": [0.9, 0.99, 0.95], "lmbda": [0.95, 0.7, 1.0], "num_epochs": 1}


def _member_ids(batch, m):
    return batch["policy_id"][:, 0].view(m, -1)[:, 0].tolist()


# ============================================================================= (a) members == single networks
def test_member_sequences_equal_a_single_recurrent_network_per_member():
    m, b, t = 3, 4, 9
    ens = _ensemble(m)
    td = _sequences(m * b, t)
    with torch.no_grad():
        out = RecurrentEnsembleActor(ens).module[0](td.clone())  # [N, T] rows: whole sequences
        val = RecurrentEnsembleValue(ens)(td.clone())
    for i in range(m):
        ac, blk = _single(ens, i), td[i * b:(i + 1) * b]
        with torch.no_grad():
            with set_recurrent_mode(True):  # TorchRL's LSTMModule over [B, T], stored state at each reset
                ref = ac.actor.module[0](blk.clone())
                ref_v = ac.critic(blk.clone())
            a0 = [blk[k][:, 0] for k in STATE_KEYS["actor"]]
            hand = _step_by_step(ac.actor.module[0], blk, "actor", *a0)
        mine = out[i * b:(i + 1) * b]
        torch.testing.assert_close(mine["loc"], ref["loc"], rtol=0, atol=1e-5)
        torch.testing.assert_close(mine["scale"], ref["scale"], rtol=0, atol=1e-5)
        torch.testing.assert_close(val["state_value"][i * b:(i + 1) * b], ref_v["state_value"], rtol=0, atol=1e-5)
        for key in STATE_KEYS["actor"]:  # the state after every step (TorchRL pads it in recurrent mode)
            torch.testing.assert_close(mine["next", key], hand["next", key], rtol=0, atol=1e-5)
        if i:  # the members really differ
            assert (out["loc"][:b] - mine["loc"]).abs().max() > 1e-3


def test_one_step_collection_path_equals_the_single_networks_sequential_mode():
    m, b = 3, 4
    ens = _ensemble(m)
    td = _sequences(m * b, 2)[:, 1]  # [N] rows: half of them at an episode start with a zero state
    td["is_init"][::2] = True
    policy = ensemble_collection_policy(RecurrentEnsembleActor(ens), RecurrentEnsembleValue(ens))
    torch.manual_seed(0)
    with torch.no_grad():
        out = policy(td.clone())
    for i in range(m):
        ac, blk = _single(ens, i), td[i * b:(i + 1) * b].clone()
        with torch.no_grad():
            ref = ac.actor.module[0](blk.clone())
            ref_v = ac.critic(blk.clone())
        mine = out[i * b:(i + 1) * b]
        torch.testing.assert_close(mine["loc"], ref["loc"], rtol=0, atol=1e-5)
        torch.testing.assert_close(mine["scale"], ref["scale"], rtol=0, atol=1e-5)
        for part, r in (("actor", ref), ("critic", ref_v)):
            for key in STATE_KEYS[part]:
                torch.testing.assert_close(mine["next", key], r["next", key], rtol=0, atol=1e-5)
        lp = torch.distributions.Normal(ref["loc"], ref["scale"]).log_prob(mine["action"]).sum(-1)
        torch.testing.assert_close(mine["action_log_prob"], lp, rtol=0, atol=1e-5)


def test_ensemble_gae_equals_torchrl_gae_on_each_members_single_critic():
    ens, batch = _collect()
    m, per = 3, 4
    assert batch["is_init"][:, 1:].any() and batch["next", "done"].any()
    gamma, lmbda = torch.tensor(HP["gamma"]), torch.tensor(HP["lmbda"])
    out = ensemble_gae(ens, batch.clone(), gamma, lmbda)
    for i in range(m):
        blk = batch[i * per:(i + 1) * per].clone()
        gae = GAE(gamma=float(gamma[i]), lmbda=float(lmbda[i]), value_network=_single(ens, i).critic,
                  average_gae=False, deactivate_vmap=True)
        with torch.no_grad(), set_recurrent_mode(True):
            ref = gae(blk)
        for key in ("state_value", "advantage", "value_target"):
            torch.testing.assert_close(out[i * per:(i + 1) * per][key], ref[key], rtol=0, atol=1e-5, msg=key)


# ============================================================================= (b) resets
def test_hidden_state_resets_where_is_init():
    m, b, t, r = 3, 2, 8, 4
    ens = _ensemble(m)
    td = _sequences(m * b, t)
    td["is_init"].zero_()
    td["is_init"][:, r] = True
    for key in (*STATE_KEYS["actor"], *STATE_KEYS["critic"]):
        td[key][:, r] = 0.0
    net = RecurrentEnsembleActor(ens).module[0]
    with torch.no_grad():
        seq = net(td.clone())["loc"]
        fresh = net(td[:, r:].clone())["loc"]  # a new sequence starting at the reset, from zeros
        torch.testing.assert_close(seq[:, r:], fresh, rtol=0, atol=1e-6)
        no_reset = td.clone()
        no_reset["is_init"].zero_()
        carried = net(no_reset)["loc"]
    torch.testing.assert_close(carried[:, :r], seq[:, :r])
    assert (carried[:, r:] - seq[:, r:]).abs().max() > 1e-3  # without the reset the state carries over
    # one step: at is_init the incoming state is ignored (zeroed), elsewhere it is used
    step = td[:, 1].clone()
    step["is_init"][:] = True
    zero = step.clone()
    for key in STATE_KEYS["actor"]:
        zero[key] = torch.zeros_like(zero[key])
    with torch.no_grad():
        torch.testing.assert_close(net(step.clone())["loc"], net(zero.clone())["loc"], rtol=0, atol=0)
        step["is_init"][:] = False
        assert (net(step.clone())["loc"] - net(zero.clone())["loc"]).abs().max() > 1e-3


def test_collected_states_are_zero_at_episode_starts_and_carried_elsewhere():
    _, batch = _collect()
    init = batch["is_init"].squeeze(-1)
    assert init[:, 1:].any()
    for key in (*STATE_KEYS["actor"], *STATE_KEYS["critic"]):
        state = batch[key]
        assert state.shape == (*batch.shape, 1, H)
        assert (state[init] == 0).all()
        assert (state[~init].abs().sum(-1) > 0).all()
        keep = ~init[:, 1:]  # the state entering step t + 1 is the state leaving step t
        torch.testing.assert_close(state[:, 1:][keep], batch["next", key][:, :-1][keep])


# ============================================================================= (c) the update
def test_replay_reproduces_the_collection_log_probs():
    ens, batch = _collect()
    learner = PopulationLearner(ens, HP, num_minibatches=1)
    learner.estimate(batch)
    with torch.no_grad():
        losses = learner.member_losses(batch.reshape(3, 4, -1))
    torch.testing.assert_close(losses["kl_approx"], torch.zeros(3), rtol=0, atol=1e-6)
    assert (losses["clip_fraction"] == 0).all()


def _flat_grads(ac):
    """The single net's gradients under the stacked ensemble's names."""
    parts = {
        "actor": {"embed": ac.actor.module[0][0].module, "lstm": ac.actor.lstm.lstm, "head": ac.actor.head},
        "critic": {"embed": ac.critic[0].module, "lstm": ac.critic.lstm.lstm, "head": ac.critic[2].module},
    }
    return {(part, name, *pname.split(".")): p.grad for part, mods in parts.items() for name, mod in mods.items()
            for pname, p in mod.named_parameters()}


def test_update_gives_each_member_the_gradient_of_its_own_loss_on_its_own_rows():
    m, per = 3, 4
    ens, batch = _collect(m, per)
    learner = PopulationLearner(ens, HP, num_minibatches=1, max_grad_norm=1.0, generator=torch.Generator().manual_seed(0))
    learner.estimate(batch)
    with torch.no_grad():  # move away from the behaviour policy: ratios != 1, some clipped
        gen = torch.Generator().manual_seed(2)
        for p in ens.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
    before = {k: v.detach().clone() for k, v in ens.state_dict().items()}
    refs = [_single(ens, i) for i in range(m)]  # the perturbed weights
    out = learner.update(batch.clone())  # one epoch, one minibatch per member: all its env-rows
    assert (out["clip_fraction"] > 0).all()
    stacked = {}
    for part, params in (("actor", ens.actor_params), ("critic", ens.critic_params)):
        for key, p in params.items(True, True):
            if isinstance(p, torch.nn.Parameter):
                stacked[(part, *key)] = p.grad
    for i in range(m):
        data = batch[i * per:(i + 1) * per].clone()
        data["policy_id"] = torch.zeros_like(data["policy_id"])  # the single net is policy 0
        adv = data["advantage"]
        adv = (adv - adv.mean()) / adv.std()  # member i's own advantage standardisation
        eps, ent_c, crit_c = (float(learner.hyper[k][i]) for k in ("clip_epsilon", "entropy_coeff", "critic_coeff"))
        ac = refs[i]
        with set_recurrent_mode(True):  # TorchRL's LSTMModule over member i's env-rows
            dist = ac.actor.get_dist(data.clone())
            value = ac.critic(data.clone())["state_value"]
        ratio = (dist.log_prob(data["action"]) - data["action_log_prob"]).exp()
        a = adv.squeeze(-1)
        gain = torch.minimum(ratio * a, ratio.clamp(1 - eps, 1 + eps) * a)
        loss = -gain.mean() - ent_c * dist.entropy().mean() + crit_c * (value - data["value_target"]).pow(2).mean()
        loss.backward()
        ref = _flat_grads(ac)
        assert set(ref) == set(stacked)
        for key, g in ref.items():
            torch.testing.assert_close(stacked[key][i], g, rtol=1e-4, atol=1e-5, msg=str(key))
    assert any((ens.state_dict()[k] != v).any() for k, v in before.items())  # and the step moved the members


def test_update_cuts_minibatches_from_what_the_replay_and_the_loss_read():
    """Whole env-rows of each member's block, with only the observation, ``"is_init"``, the recorded
    states and the loss's in_keys (not ``"next"`` or the collector's entries)."""
    m, per = 3, 4
    ens, batch = _collect(m, per)
    learner = PopulationLearner(ens, HP, num_minibatches=2, generator=torch.Generator().manual_seed(0))
    learner.estimate(batch)
    seen = []
    member_losses = learner.member_losses
    learner.member_losses = lambda sub: seen.append(sub) or member_losses(sub)
    learner.update(batch)
    states = {k for part in ("actor", "critic") for k in STATE_KEYS[part]}
    assert set(seen[0].keys(True, True)) == {"observation", "is_init", *states, *learner.member_loss.in_keys}
    assert seen[0].batch_size == torch.Size([m, per // 2, batch.shape[1]])
    ids = seen[0]["observation"]  # each member's rows come from its own env block
    blocks = batch["observation"].reshape(m, per, *batch.shape[1:], -1)
    for i in range(m):
        assert all(any(torch.equal(row, b) for b in blocks[i]) for row in ids[i])


def test_update_rejects_env_rows_that_do_not_split():
    ens, batch = _collect()
    learner = PopulationLearner(ens, HP, num_minibatches=3)
    learner.estimate(batch)
    with pytest.raises(ValueError, match=r"4 env-rows .*num_minibatches=3"):
        learner.update(batch)


# ============================================================================= (d) exploit
def test_exploit_copies_lstm_weights_and_their_adam_moments():
    m, per = 3, 4
    ens, batch = _collect(m, per)
    learner = PopulationLearner(ens, dict(HP, num_epochs=[1, 2, 1]), num_minibatches=2)
    learner.estimate(batch)
    learner.update(batch)
    opt = learner.optimizer
    lstm = [(part, p) for part, params in (("actor", ens.actor_params), ("critic", ens.critic_params))
            for p in params["lstm"].values()]
    assert len(lstm) == 8
    before = [(p.detach().clone(), {k: v.clone() for k, v in opt.state[p].items()}) for _, p in lstm]
    assert all(not torch.equal(p[0], p[2]) for p, _ in before)
    learner.exploit(torch.tensor([0]), torch.tensor([2]))
    for (_, p), (old, state) in zip(lstm, before):
        assert torch.equal(p[0], old[2]) and torch.equal(p[1:], old[1:])
        for k in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(opt.state[p][k][0], state[k][2])
    td = _sequences(m * per, 6)
    td["observation"] = td["observation"][:per].repeat(m, 1, 1)  # the same inputs for every member
    for key in (*STATE_KEYS["actor"], *STATE_KEYS["critic"]):
        td[key] = td[key][:per].repeat(m, 1, 1, 1)
    td["is_init"] = td["is_init"][:per].repeat(m, 1, 1)
    with torch.no_grad():
        loc = RecurrentEnsembleActor(ens).module[0](td.clone())["loc"]
        v = RecurrentEnsembleValue(ens)(td.clone())["state_value"]
    assert torch.equal(loc[:per], loc[2 * per:]) and torch.equal(v[:per], v[2 * per:])
    assert not torch.equal(loc[:per], loc[per:2 * per])


# ============================================================================= (e) the recipe
def _train(args):
    env = dict(os.environ, OMP_NUM_THREADS="1", HYDRA_FULL_ERROR="1")
    return subprocess.run([sys.executable, "recipes/train.py", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env=env)


def test_recipe_pbt_with_lstm_members_steps_evaluates_and_resumes(tmp_path):
    m, fpb = 4, 16 * 20
    args = ["pbt=inprocess", "env=pendulum", "model.lstm_hidden=8", "model.hidden_sizes=[16]", "env.num_envs=16",
            f"algo.num_policies={m}", "train.horizon=20", "train.num_minibatches=2", "+env.kwargs.max_episode_steps=30",
            f"pbt.interval_frames={fpb}", "pbt.start_frames=0", "pbt.burn_in_frames=0", "progress_bar=false",
            "threads=1", "logger=none"]
    run, run2 = tmp_path / "run", tmp_path / "resumed"
    res = _train([*args, f"total_frames={3 * fpb}", "eval_episodes=1", f"hydra.run.dir={run}"])
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["frames"] == 3 * fpb and len(summary["eval_return"]) == m
    assert all(x == x for x in summary["eval_return"])  # not NaN
    assert summary["batch_layout"]["sequence_length"] == 20 and summary["batch_layout"]["rows_per_member"] == 4
    ckpt = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    hook = ckpt["trainer"]["pbt"]
    assert hook["num_steps"] == 3 and hook["last_report"]["replaced"]  # episodes ended: bottom members replaced
    weights = ckpt["trainer"]["loss_module"]
    lstm = [k for k in weights if "lstm" in k]
    assert len(lstm) == 8 and all(weights[k].shape[0] == m for k in lstm)

    res2 = _train([*args, f"total_frames={4 * fpb}", f"resume={run / 'checkpoints' / 'last.pt'}",
                   f"hydra.run.dir={run2}"])
    assert res2.returncode == 0, res2.stderr[-3000:]
    assert f"at {3 * fpb} frames" in res2.stdout
    ckpt2 = torch.load(run2 / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt2["frames"] == 4 * fpb and ckpt2["trainer"]["pbt"]["num_steps"] == 4
    # the resumed run trained on from the checkpoint's members (weights moved, same layout)
    weights2 = ckpt2["trainer"]["loss_module"]
    assert set(weights2) == set(weights)
    assert any(not torch.equal(weights[k], weights2[k]) for k in lstm)
