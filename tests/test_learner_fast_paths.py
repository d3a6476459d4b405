"""The learner's fast paths compute exactly what the plain formulation computes (issue 18).

* the first layer, folded (one GEMM of [obs, onehot(id)] up to 16 policies or without latents, gather beyond),
  against ``Linear(concat(obs, phi[id]))``, values and gradients, for 1-, 2- and 3-d inputs;
* in-place hidden activations against the same network with out-of-place ones;
* minibatches without the ``"next"`` / ``"collector"`` entries: same loss values, and every
  entry kept where a hook or another loss could read it;
* the off-policy diagnostics reduced once per update (deferred) average to what per-minibatch reduction logs;
* value estimation in one critic call on ``T + budget`` states per row (TorchRL's ``GAE(shifted=True)`` with
  the trainer's per-batch budget) against two calls on ``T``, on real rollouts with truncations and terminations;
* ``V(s)`` and ``V(s')`` in one call (``values_and_next``: SAPG's relabelled rows, the in-process PBT ensemble)
  against two calls, on rollouts with real resets.
"""
from __future__ import annotations

import contextlib
import copy

import pytest
import torch
from tensordict import TensorDict
from torch import nn
from torchrl.objectives import ClipPPOLoss
from torchrl.objectives.value import GAE

from torchrl_sapg import PopulationCollector, make_env
from torchrl_sapg.modules import LatentConditionedMLP, PolicyLatents, make_actor_critic
from torchrl_sapg.modules import actor_critic as actor_critic_module
from torchrl_sapg.objectives import OffPolicyClipPPOLoss, SAPGLoss, bootstrap_steps, shifted_budget, values_and_next
from torchrl_sapg.population.ensemble import PolicyEnsemble
from torchrl_sapg.trainers import LearningRateSchedule, OnPolicyTrainer


def _concatenated_reference(net: LatentConditionedMLP, obs: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """The unfolded network: ``Linear(concat(obs, phi[id]))``, then the rest with out-of-place activations."""
    h = obs if net.latents is None else torch.cat([obs, net.latents.weight[ids]], dim=-1)
    for layer in net.mlp:
        h = layer.__class__()(h) if isinstance(layer, nn.ELU) else layer(h)
    return h


@pytest.mark.parametrize("num_policies", [3, 16, 17, 64])
@pytest.mark.parametrize("lead", [(), (7,), (4, 5)])
def test_folded_first_layer_matches_the_concatenation(num_policies, lead):
    torch.manual_seed(0)
    net = LatentConditionedMLP(5, 2, latents=PolicyLatents(num_policies, 4), hidden_sizes=(16, 8))
    obs = torch.randn(*lead, 5)
    ids = torch.randint(0, num_policies, lead)
    out = net(obs, ids)
    ref = _concatenated_reference(net, obs, ids)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    grads = torch.autograd.grad(out.square().sum(), list(net.parameters()))
    ref_grads = torch.autograd.grad(ref.square().sum(), list(net.parameters()))
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("num_policies", [3, 64])
@pytest.mark.parametrize("lead", [(7,), (4, 5)])
def test_first_layer_without_autograd_gathers_the_same_rows(num_policies, lead):
    """Under no_grad (collection, value estimation) the folded layer gathers rows at every M: same outputs."""
    torch.manual_seed(1)
    net = LatentConditionedMLP(5, 2, latents=PolicyLatents(num_policies, 4), hidden_sizes=(16, 8))
    obs, ids = torch.randn(*lead, 5), torch.randint(0, num_policies, lead)
    with torch.no_grad():
        out = net(obs, ids)
    ref = _concatenated_reference(net, obs, ids).detach()
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)


def test_gaussian_head_log_std_rows_and_gradient():
    """scale = exp(log_std[policy_id]) per row, and its gradient sums each policy's rows (index_select's)."""
    torch.manual_seed(2)
    ac = make_actor_critic(3, 2, num_policies=4, latent_dim=2)
    head = ac.actor.head
    with torch.no_grad():
        head.log_std.copy_(torch.randn(4, 2))
    ids = torch.tensor([[0, 3, 3], [1, 1, 2]])
    _, scale = head(torch.randn(2, 3, 3), ids)
    torch.testing.assert_close(scale, head.log_std.detach()[ids].exp())
    weights = torch.randn(2, 3, 2)
    (grad,) = torch.autograd.grad((scale * weights).sum(), [head.log_std])
    expected = torch.zeros(4, 2).index_put_((ids.reshape(-1),), (scale * weights).detach().reshape(-1, 2), accumulate=True)
    torch.testing.assert_close(grad, expected)


@pytest.mark.parametrize("lead", [(), (9,), (2, 3)])
def test_first_layer_without_latents_folds_its_bias_exactly(lead):
    torch.manual_seed(0)
    net = LatentConditionedMLP(4, 2, hidden_sizes=(8,))
    obs = torch.randn(*lead, 4)
    out, ref = net(obs), _concatenated_reference(net, obs, None)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    grads = torch.autograd.grad(out.square().sum(), list(net.parameters()))
    for g, r in zip(grads, torch.autograd.grad(ref.square().sum(), list(net.parameters()))):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_one_hot_input_is_exact_and_leaves_its_shared_rows_untouched(dtype):
    """[x, onehot(id)] from the cached [0, I] rows equals the concatenation bit for bit, call after call."""
    for seed in range(3):  # a later call would see an earlier call's x if the cached rows were written into
        g = torch.Generator().manual_seed(seed)
        x, ids = torch.randn(50, 3, generator=g, dtype=dtype), torch.randint(0, 5, (50,), generator=g)
        expected = torch.cat([x, nn.functional.one_hot(ids, 5).to(dtype)], dim=-1)
        assert torch.equal(actor_critic_module._with_one_hot(x, ids, 5), expected)


def test_both_lookups_are_exercised_by_the_threshold():
    """The parametrisation above straddles the switch between the one-hot matmul and the gather."""
    assert 3 <= actor_critic_module._ONE_HOT_MAX_POLICIES < 17


def test_broadcast_policy_id_still_works():
    torch.manual_seed(0)
    net = LatentConditionedMLP(3, 2, latents=PolicyLatents(4, 2), hidden_sizes=(8,))
    obs = torch.randn(6, 3)
    out = net(obs, torch.tensor(2))
    torch.testing.assert_close(out, _concatenated_reference(net, obs, torch.full((6,), 2)), rtol=1e-5, atol=1e-6)


def test_hidden_activations_run_in_place_with_the_same_gradients():
    torch.manual_seed(0)
    ac = make_actor_critic(3, 1)
    mlp = ac.actor.head.backbone.mlp
    assert all(m.inplace for m in mlp if isinstance(m, nn.ELU))
    plain = nn.Sequential(*[nn.ELU() if isinstance(m, nn.ELU) else m for m in mlp])
    x = torch.randn(32, 3)
    out, ref = mlp(x), plain(x)
    torch.testing.assert_close(out, ref)
    g = torch.autograd.grad(out.square().sum(), list(mlp.parameters()))
    r = torch.autograd.grad(ref.square().sum(), list(plain.parameters()))
    for a, b in zip(g, r):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


# ------------------------------------------------------------------ minibatch entries
def _trainer(loss, batch_size=64, value_estimator=None):
    opt = torch.optim.Adam(loss.parameters(), lr=1e-3)
    return OnPolicyTrainer(collector=[], loss_module=loss, optimizer=opt, total_frames=batch_size,
                           num_epochs=1, num_minibatches=2, progress_bar=False, seed=0, value_estimator=value_estimator)


def _batch(ac, n=64):
    torch.manual_seed(1)
    td = TensorDict({"observation": torch.randn(n, 3), "policy_id": torch.zeros(n, dtype=torch.long)}, [n])
    td = ac.actor(td).detach()
    td.update({"advantage": torch.randn(n, 1), "value_target": torch.randn(n, 1),
               ("next", "observation"): torch.randn(n, 3), ("collector", "traj_ids"): torch.arange(n)})
    return td


def test_minibatches_leave_out_next_and_collector_entries_for_our_losses():
    ac = make_actor_critic(3, 1)
    trainer = _trainer(OffPolicyClipPPOLoss(ac.actor, ac.critic))
    rows = trainer._training_rows(_batch(ac))
    assert "next" not in rows.keys() and "collector" not in rows.keys()
    assert {"observation", "advantage", "value_target", "action", "action_log_prob", "loc", "scale"} <= set(rows.keys())


def test_every_entry_is_kept_for_a_hook_or_another_loss():
    ac = make_actor_critic(3, 1)
    batch = _batch(ac)
    trainer = _trainer(OffPolicyClipPPOLoss(ac.actor, ac.critic))
    trainer.register_op("process_optim_batch", lambda sub: sub)
    assert "next" in trainer._training_rows(batch).keys()
    other = _trainer(ClipPPOLoss(ac.actor, ac.critic))
    assert "next" in other._training_rows(batch).keys()


def test_leaving_entries_out_changes_no_loss_value():
    ac = make_actor_critic(3, 1)
    loss = OffPolicyClipPPOLoss(ac.actor, ac.critic)
    batch = _batch(ac)
    full, trimmed = loss(batch.clone()), loss(_trainer(loss)._training_rows(batch.clone()))
    for key in full.keys():
        torch.testing.assert_close(full[key], trimmed[key])


def test_trainer_defers_the_diagnostics_to_the_same_averages():
    """OnPolicyTrainer reduces the off-policy diagnostics once per update; its averages equal the per-minibatch ones."""
    torch.manual_seed(2)
    ac = make_actor_critic(3, 1)
    batch = _batch(ac)
    batch.update({"off_policy": torch.arange(64) % 3 == 0,
                  "target_log_prob": batch["action_log_prob"] + 0.3 * torch.randn(64)})
    batch["action_log_prob"] = batch["action_log_prob"] + 0.2 * torch.randn(64)  # ratios away from 1
    loss = OffPolicyClipPPOLoss(ac.actor, ac.critic)
    deferred, per_call = _trainer(loss), _trainer(copy.deepcopy(loss))
    per_call.loss_module.deferred_diagnostics = lambda **_: contextlib.nullcontext()  # reduced in every forward
    a, b = deferred.optim_steps(batch.clone()), per_call.optim_steps(batch.clone())
    assert set(a.keys()) == set(b.keys())
    for key in ("clip_fraction_on", "clip_fraction_off", "ESS_on", "ESS_off", "mu_mean", "mu_min", "mu_max",
                "off_policy_fraction", "kl_approx", "loss_objective", "loss_critic"):
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=key)
    assert 0 < float(a["off_policy_fraction"]) < 1 and float(a["mu_max"]) > float(a["mu_min"])


def _off_policy_batch(ac):
    batch = _batch(ac)
    batch.update({"off_policy": torch.arange(64) % 3 == 0,
                  "target_log_prob": batch["action_log_prob"] + 0.3 * torch.randn(64)})
    batch["action_log_prob"] = batch["action_log_prob"] + 0.2 * torch.randn(64)
    return batch


@pytest.mark.parametrize("kl_from", ["kl_approx", "analytic"])
def test_trainer_defers_kl_approx_only_when_the_step_does_not_read_it(kl_from):
    """An adaptive learning rate on kl_approx reads it after every minibatch, so the trainer keeps it per call (a
    deferred one would be missing: KeyError); on the analytic KL kl_approx is deferred, to the per-call average."""
    torch.manual_seed(3)
    ac = make_actor_critic(3, 1)
    batch = _off_policy_batch(ac)
    trainers = []
    for net in (ac, copy.deepcopy(ac)):  # the same start, each trained by its own trainer
        loss = OffPolicyClipPPOLoss(net.actor, net.critic)
        opt = torch.optim.Adam(loss.parameters(), lr=1e-3)
        trainers.append(OnPolicyTrainer(
            collector=[], loss_module=loss, optimizer=opt, total_frames=64, num_epochs=2, num_minibatches=2,
            progress_bar=False, seed=0, lr_schedule=LearningRateSchedule(opt, mode="adaptive"),
            kl_actor=net.actor if kl_from == "analytic" else None))
    deferred, per_call = trainers
    expected = {"kl"} if kl_from == "analytic" else {"kl_approx"}
    assert deferred.optimization_stepper.minibatch_reads == expected
    per_call.loss_module.deferred_diagnostics = lambda **_: contextlib.nullcontext()
    a, b = deferred.optim_steps(batch.clone()), per_call.optim_steps(batch.clone())
    torch.testing.assert_close(a["kl_approx"], b["kl_approx"], rtol=1e-5, atol=1e-6)
    assert float(a["kl_approx"]) != 0.0
    fixed = _trainer(OffPolicyClipPPOLoss(ac.actor, ac.critic))
    assert fixed.optimization_stepper.minibatch_reads == frozenset()  # a fixed rate reads no KL


@pytest.mark.parametrize("num_policies", [4, 20])
def test_first_layer_compiles_without_a_break_to_the_same_values(num_policies):
    """Under torch.compile the gather path adds out of place (inductor fuses it); both lookups trace whole."""
    torch.manual_seed(0)
    net = LatentConditionedMLP(3, 2, latents=PolicyLatents(num_policies, 4), hidden_sizes=(8,))
    obs, ids = torch.randn(10, 3), torch.randint(0, num_policies, (10,))
    compiled = torch.compile(net, backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(obs, ids), net(obs, ids))


# ------------------------------------------------------------------ value estimation in one critic call
def _ends(done, terminated, names=None):
    return TensorDict({"next": {"done": done, "terminated": terminated}}, done.shape[:2], names=names)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_shifted_budget_is_one_plus_the_most_truncations_before_the_last_step(seed):
    g = torch.Generator().manual_seed(seed)
    done = torch.rand(6, 9, 1, generator=g) < 0.4
    terminated = done & (torch.rand(6, 9, 1, generator=g) < 0.5)
    per_row = [sum(bool(done[i, t]) and not bool(terminated[i, t]) for t in range(8)) for i in range(6)]
    assert shifted_budget(_ends(done, terminated)) == 1 + max(per_row)
    # time first, named: the same rows
    time_first = _ends(done.transpose(0, 1), terminated.transpose(0, 1), names=["time", None])
    assert shifted_budget(time_first) == 1 + max(per_row)
    assert shifted_budget(_ends(torch.zeros(6, 9, dtype=torch.bool), torch.zeros(6, 9, dtype=torch.bool))) == 1
    assert shifted_budget(TensorDict({}, [6, 9])) == 1


def test_shifted_budget_rejects_done_and_terminated_of_different_shapes():
    done = torch.zeros(6, 9, 1, dtype=torch.bool)
    with pytest.raises(ValueError, match="differ in shape"):
        shifted_budget(TensorDict({"next": {"done": done, "terminated": done.squeeze(-1)}}, [6, 9]))


def _rollouts(num_batches=3, num_envs=8, horizon=12, max_episode_steps=4):
    """Real ``[N, T]`` CartPole batches of a 2-policy latent actor, episodes ending every 4 steps (several
    ends per row), half of them marked as terminations."""
    torch.manual_seed(3)
    env = make_env("cartpole", num_envs, seed=3, max_episode_steps=max_episode_steps)
    ac = make_actor_critic(4, 1, num_policies=2, latent_dim=4, hidden_sizes=(16,))
    collector = PopulationCollector(env, ac.actor, num_policies=2, frames_per_batch=num_envs * horizon)
    batches, g = [], torch.Generator().manual_seed(3)
    for batch in collector:
        # half the episode ends become terminations (CartPole rarely falls inside 4 steps): both kinds per row
        done = batch["next", "done"]
        batch["next", "terminated"] = done & (torch.rand(done.shape, generator=g) < 0.5)
        batch["next", "truncated"] = done & ~batch["next", "terminated"]
        batches.append(batch)
        if len(batches) == num_batches:
            break
    collector.shutdown()
    return ac, batches


def test_trainer_value_estimation_in_one_call_equals_two_calls():
    ac, batches = _rollouts()
    one_call = GAE(gamma=0.99, lmbda=0.95, value_network=ac.critic, shifted=True, deactivate_vmap=True)
    two_calls = GAE(gamma=0.99, lmbda=0.95, value_network=ac.critic, shifted=False, deactivate_vmap=True)
    trainer = _trainer(OffPolicyClipPPOLoss(ac.actor, ac.critic), value_estimator=one_call)
    for batch in batches:
        terminated = batch["next", "terminated"]
        assert terminated.any() and shifted_budget(batch) >= 2  # truncations inside a row
        out = trainer._estimate_values(batch.clone())
        ref = two_calls(batch.clone())
        assert one_call.shifted_budget == shifted_budget(batch)
        assert "shifted_valid" not in out.keys()
        for key in ("advantage", "value_target", "state_value"):
            torch.testing.assert_close(out[key], ref[key], rtol=1e-5, atol=1e-6)
        # V(s') after a termination enters no target (times 1 - terminated): the single call does not compute it
        kept = ~terminated
        next_value, ref_next_value = out["next", "state_value"][kept], ref["next", "state_value"][kept]
        torch.testing.assert_close(next_value, ref_next_value, rtol=1e-5, atol=1e-6)


def test_a_smaller_budget_would_drop_steps():
    """The check above can fail: with one slot too few, TorchRL's single call drops steps (and changes advantages)."""
    ac, batches = _rollouts(num_batches=1)
    batch = batches[0]
    budget = shifted_budget(batch)
    short = GAE(gamma=0.99, lmbda=0.95, value_network=ac.critic, shifted=True, shifted_budget=budget - 1)(batch.clone())
    assert not short["shifted_valid"].all()
    ref = GAE(gamma=0.99, lmbda=0.95, value_network=ac.critic)(batch.clone())
    assert not torch.allclose(short["advantage"], ref["advantage"])


@pytest.mark.parametrize("lstm_hidden, shifted", [(0, True), (8, False)])
def test_recipe_gae_is_one_call_for_a_feed_forward_critic(monkeypatch, lstm_hidden, shifted):
    """The recipes ask TorchRL's GAE for the single call except with a recurrent critic (replayed sequences)."""
    import pathlib

    from hydra import compose, initialize_config_dir

    recipes = pathlib.Path(__file__).resolve().parents[1] / "recipes"
    monkeypatch.syspath_prepend(str(recipes))
    from common import build_agent, build_env, build_loss

    with initialize_config_dir(config_dir=str(recipes / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["env=pendulum", "env.num_envs=4", "model.hidden_sizes=[8]",
                                           f"model.lstm_hidden={lstm_hidden}"])
    _, gae = build_loss(cfg, build_agent(cfg, build_env(cfg, seed=0)))
    assert gae.shifted is shifted



@pytest.mark.parametrize("trailing", [False, True])
def test_bootstrap_steps_are_each_rows_ends_and_last_step_padded_with_it(trailing):
    g = torch.Generator().manual_seed(4)
    done = torch.rand(7, 10, generator=g) < 0.25
    done[0] = False  # a row with no end: only its last step
    steps = bootstrap_steps(done.unsqueeze(-1) if trailing else done)
    wanted = [[t for t in range(9) if done[r, t]] + [9] for r in range(7)]
    assert steps.shape == (7, max(map(len, wanted)))
    for r, row in enumerate(wanted):
        assert steps[r].tolist() == row + [9] * (steps.shape[1] - len(row))


@pytest.mark.parametrize("shape", [(7,), (7, 10, 2)])
def test_bootstrap_steps_refuse_done_without_one_flag_per_step(shape):
    with pytest.raises(ValueError, match=r"done must hold one flag per step, shaped \[R, T\] or \[R, T, 1\]"):
        bootstrap_steps(torch.zeros(shape, dtype=torch.bool))
    with pytest.raises(ValueError, match="done must hold one flag per step"):
        values_and_next(nn.Linear(3, 1), torch.randn(7, 10, 3), torch.randn(7, 10, 3), torch.zeros(shape, dtype=torch.bool))


def test_values_and_next_equal_two_calls_at_every_step_on_real_resets():
    """CartPole rollouts with real resets: at an episode end s'_t is the terminal state, not s_{t+1}."""
    ac, batches = _rollouts()
    for batch in batches:
        obs, nxt, done = batch["observation"], batch["next", "observation"], batch["next", "done"]
        ends = done.squeeze(-1)[:, :-1]
        assert ends.any() and not torch.allclose(nxt[:, :-1][ends], obs[:, 1:][ends])  # a plain shift would be wrong
        net = nn.Linear(4, 3)
        value, next_value = values_and_next(net, obs, nxt, done)
        torch.testing.assert_close(value, net(obs), rtol=0, atol=1e-6)
        torch.testing.assert_close(next_value, net(nxt), rtol=0, atol=1e-6)
        # a TensorDict critic reading the policy id, as SAPG's aggregate calls it
        critic = ac.critic.module
        keys = ["observation", "policy_id"]
        value, next_value = values_and_next(lambda td: critic(td["observation"], td["policy_id"]),
                                            batch.select(*keys), batch["next"].select(*keys), done)
        torch.testing.assert_close(value, critic(obs, batch["policy_id"]), rtol=0, atol=1e-6)
        torch.testing.assert_close(next_value, critic(nxt, batch["next", "policy_id"]), rtol=0, atol=1e-6)


def test_sapg_relabelled_targets_bootstrap_from_the_recorded_next_state_on_real_resets():
    ac, batches = _rollouts(num_batches=1)
    batch = GAE(gamma=0.9, lmbda=0.95, value_network=ac.critic, average_gae=False)(batches[0])
    loss = SAPGLoss(ac.actor, ac.critic, num_policies=2, gamma=0.9, off_policy_target="td0",
                    advantage_normalization="none", generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        off = loss.aggregate(batch)[batch.shape[0]:]
        leader = off["policy_id"]
        value = ac.critic.module(off["observation"], leader).squeeze(-1)
        next_value = ac.critic.module(off["next", "observation"], leader).squeeze(-1)
    reward, terminated = off["next", "reward"].squeeze(-1), off["next", "terminated"].squeeze(-1)
    truncated = off["next", "done"].squeeze(-1) & ~terminated
    assert truncated[:, :-1].any() and terminated.any()
    target = reward + 0.9 * next_value * (~terminated).float()
    torch.testing.assert_close(off["state_value"].squeeze(-1), value, rtol=0, atol=1e-6)
    torch.testing.assert_close(off["value_target"].squeeze(-1), target, rtol=0, atol=1e-5)


def test_pbt_ensemble_rollout_values_equal_two_calls_on_real_resets():
    _, batches = _rollouts(num_batches=1)
    batch = batches[0]
    ens = PolicyEnsemble(4, 1, num_members=2, hidden_sizes=(8,))
    value, next_value = ens.rollout_values(batch)
    with torch.no_grad():
        ref = ens.values(batch["observation"].reshape(2, -1, 4)), ens.values(batch["next", "observation"].reshape(2, -1, 4))
    torch.testing.assert_close(value, ref[0].reshape(value.shape), rtol=0, atol=1e-6)
    torch.testing.assert_close(next_value, ref[1].reshape(value.shape), rtol=0, atol=1e-6)
