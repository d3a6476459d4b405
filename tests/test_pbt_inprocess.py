"""In-process DexPBT (pbt=inprocess): numbers checked against direct per-member computations.

* ``PolicyEnsemble`` / ``EnsembleActor`` (vmap over stacked parameters) vs an ordinary
  ``make_actor_critic`` network loaded with one member's slice;
* ``StackedAdam`` vs ``torch.optim.Adam`` + ``clip_grad_norm_`` run per member;
* ``ensemble_gae`` vs TorchRL's ``GAE`` module per member block with scalar gamma / lambda;
* ``PopulationLearner.member_losses`` vs a hand-written clipped PPO loss (values and grads);
* member isolation / exact epoch masking in ``PopulationLearner.update``; ``exploit``;
* ``InProcessPBT``: groups, mutation keys, NaN, burn-in, determinism, state_dict, fitness EMA;
* ``recipes/train.py pbt=inprocess`` end to end with a resume.
"""
from __future__ import annotations

import copy
import csv
import math
import os
import pathlib
import subprocess
import sys
import warnings

import pytest
import torch
from tensordict import TensorDict
from torchrl.objectives.value import GAE

from torchrl_sapg import PopulationCollector, make_actor_critic, make_env
from torchrl_sapg.population.ensemble import EnsembleActor, PolicyEnsemble, ensemble_gae
from torchrl_sapg.population.inprocess import HYPERPARAMETERS, PopulationLearner, StackedAdam
from torchrl_sapg.population.inprocess_pbt import InProcessPBT

ROOT = pathlib.Path(__file__).resolve().parents[1]
OBS, ACT = 3, 1  # pendulum
HIDDEN = (16,)

torch.set_num_threads(1)


# ----------------------------------------------------------------------------- helpers
def _ensemble(m=3, hidden=HIDDEN, seed=0, normalize=True):
    torch.manual_seed(seed)
    ens = PolicyEnsemble(OBS, ACT, num_members=m, hidden_sizes=hidden, normalize_observations=normalize)
    with torch.no_grad():  # members with distinct log-stds and distinct normaliser statistics
        ens.actor_params["log_std"].copy_(torch.linspace(-0.5, 0.3, m).view(m, 1, 1))
    if normalize:
        shift = torch.arange(m, dtype=torch.float32).view(m, 1, 1)
        ens.update_normalizers(torch.randn(m, 50, OBS) * (1.0 + shift) + shift)
    return ens


def _plain_actor(ens, i, hidden=HIDDEN):
    """An ordinary actor (``make_actor_critic``) holding member ``i``'s weights and normaliser."""
    actor = make_actor_critic(OBS, ACT, hidden_sizes=hidden, normalize_observations=ens.has_normalizer).actor
    actor.head.load_state_dict(ens.actor_params[i].detach().flatten_keys(".").to_dict())
    return actor


def _plain_critic(ens, i, hidden=HIDDEN):
    critic = make_actor_critic(OBS, ACT, hidden_sizes=hidden, normalize_observations=ens.has_normalizer).critic
    critic.module.load_state_dict(ens.critic_params[i].detach().flatten_keys(".").to_dict())
    return critic


HP = {"lr": 1e-3, "clip_epsilon": 0.2, "entropy_coeff": 0.0, "critic_coeff": 1.0, "gamma": 0.99, "lmbda": 0.95,
      "num_epochs": 1}


def _learner(m=3, seed=0, num_minibatches=2, lr_schedule="fixed", max_lr=1e-2, **hp):
    ens = _ensemble(m, seed=seed)
    h = dict(HP)
    h.update(hp)
    return PopulationLearner(ens, h, num_minibatches=num_minibatches, max_grad_norm=1.0,
                             generator=torch.Generator().manual_seed(0), lr_schedule=lr_schedule, max_lr=max_lr)


_BATCHES: dict = {}


def _batch(m=3, envs_per_member=4, horizon=8):
    """A real ``[N, T]`` pendulum batch collected by an ``EnsembleActor`` (cached; cloned on use)."""
    key = (m, envs_per_member, horizon)
    if key not in _BATCHES:
        n = m * envs_per_member
        ens = _ensemble(m, seed=1)
        collector = PopulationCollector(make_env("pendulum", n, seed=0), EnsembleActor(ens), num_policies=m,
                                        frames_per_batch=n * horizon)
        batch = next(iter(collector))
        collector.shutdown()
        _BATCHES[key] = batch.clone()
    return _BATCHES[key].clone()


def _snapshot(learner):
    ens = learner.ensemble
    params = {k: v.detach().clone() for k, v in ens.state_dict().items()}
    opt = {id_: {k: v.clone() for k, v in s.items()} for id_, s in enumerate(learner.optimizer.state[p]
           for p in learner.optimizer._params())}
    hyper = {k: v.clone() for k, v in learner.hyper.items()}
    return params, opt, hyper


def _same_member(a, i, b, j, exact=True):
    """Member ``i`` of nested dict ``a`` equals member ``j`` of ``b`` (every leaf tensor)."""
    for k in a:
        if isinstance(a[k], dict):
            _same_member(a[k], i, b[k], j, exact)
        else:
            assert torch.equal(a[k][i], b[k][j]), (k, i, j)


# ============================================================================= 1. vmap
def test_ensemble_heads_and_values_equal_plain_networks_per_member():
    m, b = 3, 7
    ens = _ensemble(m)
    # the normaliser statistics really differ between members (so the check covers them)
    stats = ens.actor_params["backbone", "obs_normalizer", "stats"]
    assert not torch.allclose(stats["mean"][0], stats["mean"][2])
    obs = torch.randn(m, b, OBS) * 2
    with torch.no_grad():
        loc, scale = ens.heads(obs)
        values = ens.values(obs)
    assert loc.shape == (m, b, ACT) and scale.shape == (m, b, ACT) and values.shape == (m, b, 1)
    for i in range(m):
        actor, critic = _plain_actor(ens, i), _plain_critic(ens, i)
        td = TensorDict({"observation": obs[i], "policy_id": torch.zeros(b, dtype=torch.long)}, [b])
        with torch.no_grad():
            out = actor(td.clone())
            v = critic(td.clone())["state_value"]
        torch.testing.assert_close(loc[i], out["loc"], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(scale[i], out["scale"], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(values[i], v, rtol=1e-5, atol=1e-6)
        # member i on other members' rows is not member i: the stacking really is per member
        if i > 0:
            assert not torch.allclose(loc[i], loc[0])



@pytest.mark.parametrize("activation, normalize", [("tanh", False), ("relu", True)])
def test_ensemble_runs_each_linear_layer_as_one_batched_gemm(activation, normalize):
    """Without vmap: one ``baddbmm`` per linear layer (bias inside, no separate add), every other layer of the
    member's own network as it is; still each member's plain network, for other activations and without the
    normaliser too."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Ops(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.names = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.names.append(func.__name__.split(".")[0])
            return func(*args, **(kwargs or {}))

    m, b, hidden = 3, 5, (8, 6)
    torch.manual_seed(0)
    ens = PolicyEnsemble(OBS, ACT, num_members=m, hidden_sizes=hidden, activation=activation,
                         normalize_observations=normalize)
    with torch.no_grad():
        ens.actor_params["log_std"].copy_(torch.tensor([-0.5, 0.1, 0.4]).view(m, 1, 1))
    obs = torch.randn(m, b, OBS)
    with Ops() as ops:
        loc, scale = ens.heads(obs)
        values = ens.values(obs)
    assert ops.names.count("baddbmm") == 2 * (len(hidden) + 1) and "bmm" not in ops.names and "add" not in ops.names
    # more leading dims per member ([M, B, T, obs]): the same rows, the same outputs
    loc4, scale4 = ens.heads(obs.unsqueeze(2))
    torch.testing.assert_close(loc4.squeeze(2), loc)
    torch.testing.assert_close(scale4.squeeze(2), scale)
    for i in range(m):
        plain = make_actor_critic(OBS, ACT, hidden_sizes=hidden, activation=activation, normalize_observations=normalize)
        plain.actor.head.load_state_dict(ens.actor_params[i].detach().flatten_keys(".").to_dict())
        plain.critic.module.load_state_dict(ens.critic_params[i].detach().flatten_keys(".").to_dict())
        td = TensorDict({"observation": obs[i], "policy_id": torch.zeros(b, dtype=torch.long)}, [b])
        with torch.no_grad():
            out = plain.actor(td.clone())
            torch.testing.assert_close(loc[i], out["loc"], rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(scale[i], out["scale"])
            torch.testing.assert_close(values[i], plain.critic(td.clone())["state_value"], rtol=1e-5, atol=1e-6)

def test_ensemble_actor_flat_and_stacked_rows_use_each_members_block():
    m, per = 3, 4
    ens = _ensemble(m)
    actor = EnsembleActor(ens)
    obs = torch.randn(m * per, OBS)
    torch.manual_seed(5)
    with torch.no_grad():
        flat = actor(TensorDict({"observation": obs}, [m * per]))
        stacked = actor(TensorDict({"observation": obs.reshape(m, per, OBS)}, [m, per]))
    for i in range(m):
        ref = _plain_actor(ens, i)
        td = TensorDict({"observation": obs[i * per:(i + 1) * per], "policy_id": torch.zeros(per, dtype=torch.long)},
                        [per])
        with torch.no_grad():
            out = ref(td)
        blk = slice(i * per, (i + 1) * per)
        torch.testing.assert_close(flat["loc"][blk], out["loc"], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(flat["scale"][blk], out["scale"], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(stacked["loc"][i], out["loc"], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(stacked["scale"][i], out["scale"], rtol=1e-5, atol=1e-6)
        # the stored log-prob is member i's Gaussian log-density of the sampled action
        a = flat["action"][blk]
        lp = torch.distributions.Normal(out["loc"], out["scale"]).log_prob(a).sum(-1)
        torch.testing.assert_close(flat["action_log_prob"][blk], lp, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError):
        actor(TensorDict({"observation": torch.randn(m * per + 1, OBS)}, [m * per + 1]))


def test_update_normalizers_equals_each_members_own_running_stats():
    from torchrl_sapg.modules.normalization import ObservationNormalizer

    m = 3
    ens = PolicyEnsemble(OBS, ACT, num_members=m, hidden_sizes=(4,))
    norms = [ObservationNormalizer((OBS,)) for _ in range(m)]
    gen = torch.Generator().manual_seed(0)
    for k in range(3):
        x = torch.randn(m, 10 + k, OBS, generator=gen) * torch.tensor([1.0, 4.0, 0.5]).view(m, 1, 1)
        x = x + torch.tensor([0.0, 3.0, -2.0]).view(m, 1, 1)
        ens.update_normalizers(x)
        for i in range(m):
            norms[i].update(x[i])
    for stats in (ens.actor_params["backbone", "obs_normalizer", "stats"], ens.critic_params["obs_normalizer", "stats"]):
        for i in range(m):
            for name in ("mean", "var", "count"):
                torch.testing.assert_close(stats[name][i], getattr(norms[i].stats, name), rtol=1e-5, atol=1e-6)


# ============================================================================= 2. StackedAdam
def _adam_reference(m, shapes, lrs, grads, actives, max_norm):
    """Per member: ``clip_grad_norm_`` + ``torch.optim.Adam`` on its own tensors, skipping inactive steps."""
    torch.manual_seed(0)
    init = [torch.randn(m, *s) for s in shapes]
    members = []
    for i in range(m):
        ps = [torch.nn.Parameter(x[i].clone()) for x in init]
        members.append((ps, torch.optim.Adam(ps, lr=lrs[i], eps=1e-8)))
    for g, act in zip(grads, actives):
        for i, (ps, opt) in enumerate(members):
            if not act[i]:
                continue
            for p, gi in zip(ps, g):
                p.grad = gi[i].clone()
            if max_norm is not None:
                torch.nn.utils.clip_grad_norm_(ps, max_norm)
            opt.step()
    return init, members


@pytest.mark.parametrize("max_norm", [None, 0.5])
def test_stacked_adam_equals_per_member_adam_with_clipping_and_active_mask(max_norm):
    m, shapes, steps = 3, [(4, 2), (5,), (1, 1)], 6
    lrs = [1e-2, 3e-3, 1e-1]
    gen = torch.Generator().manual_seed(1)
    grads = [[torch.randn(m, *s, generator=gen) * (1 + 3 * k) for s in shapes] for k in range(steps)]
    actives = [[True, True, True], [True, False, True], [False, True, True], [True, True, False],
               [True, False, False], [True, True, True]]
    init, members = _adam_reference(m, shapes, lrs, grads, actives, max_norm)
    ps = [torch.nn.Parameter(x.clone()) for x in init]
    opt = StackedAdam(ps, num_members=m, max_grad_norm=max_norm)
    for k, (g, act) in enumerate(zip(grads, actives)):
        before = [p.detach().clone() for p in ps]
        before_state = [{n: v.clone() for n, v in opt.state[p].items()} for p in ps] if k else None
        for p, gi in zip(ps, g):
            p.grad = gi.clone()
        norms = opt.step(lr=torch.tensor(lrs), active=torch.tensor(act))
        # returned norms: each member's global pre-clip gradient norm
        hand = torch.stack([torch.cat([gi[i].flatten() for gi in g]).norm() for i in range(m)])
        torch.testing.assert_close(norms, hand)
        for i in range(m):
            if act[i]:
                continue
            for j, p in enumerate(ps):  # inactive: params and moments bitwise untouched
                assert torch.equal(p.detach()[i], before[j][i])
                if before_state is not None:
                    for n in ("exp_avg", "exp_avg_sq", "step"):
                        assert torch.equal(opt.state[p][n][i], before_state[j][n][i]), n
    for i, (ref_ps, ref_opt) in enumerate(members):
        for p, r in zip(ps, ref_ps):
            # float32 Adam with a different operation order: a few ulps apart after 6 steps
            torch.testing.assert_close(p.detach()[i], r.detach(), rtol=1e-4, atol=1e-5)
            rs = ref_opt.state[r]
            torch.testing.assert_close(opt.state[p]["exp_avg"][i], rs["exp_avg"], rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(opt.state[p]["exp_avg_sq"][i], rs["exp_avg_sq"], rtol=1e-5, atol=1e-6)
            # step counts only advance on active steps
            assert float(opt.state[p]["step"][i]) == float(rs["step"]) == sum(a[i] for a in actives)


def test_stacked_adam_clips_each_member_at_its_own_max_grad_norm():
    p = torch.nn.Parameter(torch.zeros(3, 2))
    opt = StackedAdam([p], num_members=3, max_grad_norm=1.0, betas=(0.0, 0.0))
    p.grad = torch.tensor([[3.0, 4.0], [0.3, 0.4], [3.0, 4.0]])  # norms 5, 0.5, 5
    opt.step(lr=torch.ones(3), max_grad_norm=torch.tensor([1.0, 0.1, math.inf]))  # replaces the constructor's 1.0
    # beta1 = 0: the first moment is the clipped gradient, g * min(1, clip / (|g| + 1e-6))
    hand = torch.stack([p.grad[0] * 1.0 / (5 + 1e-6), p.grad[1] * 0.1 / (0.5 + 1e-6), p.grad[2]])
    torch.testing.assert_close(opt.state[p]["exp_avg"], hand)


def test_learner_holds_kl_threshold_and_max_grad_norm_per_member():
    ens = _ensemble(3)
    learner = PopulationLearner(ens, HP, num_minibatches=2, max_grad_norm=None, kl_threshold=0.02)
    assert learner.hp_kl_threshold.tolist() == [pytest.approx(0.02)] * 3
    assert learner.hp_max_grad_norm.tolist() == [math.inf] * 3  # None: no clipping
    given = PopulationLearner(ens, {**HP, "max_grad_norm": [0.5, 1.0, 2.0], "kl_threshold": 0.01}, num_minibatches=2)
    assert given.hp_max_grad_norm.tolist() == [0.5, 1.0, 2.0] and set(given.hyper) == set(HYPERPARAMETERS)
    # the update clips each member at its own norm: a 1e-12 clip leaves Adam's step at ~lr * 1e-12 / eps, while
    # the unclipped members step exactly as in a population without any clip
    moved = {}
    for clip in ([1e-12, math.inf, math.inf], [math.inf] * 3):
        learner = PopulationLearner(_ensemble(3), {**HP, "max_grad_norm": clip}, num_minibatches=2,
                                    generator=torch.Generator().manual_seed(0))
        batch = _batch(3, 4)
        learner.estimate(batch)
        before = [p.detach().clone() for p in learner.optimizer._params()]
        learner.update(batch)
        moved[clip[0]] = [p.detach() - b for p, b in zip(learner.optimizer._params(), before)]
    for clipped, free in zip(moved[1e-12], moved[math.inf]):
        assert clipped[0].abs().max() < 1e-3 * free[0].abs().max()
        assert torch.equal(clipped[1:], free[1:])
    for bad in ({"max_grad_norm": [0.5, 0.0, 1.0]}, {"kl_threshold": -0.01}):
        with pytest.raises(ValueError, match=f"{next(iter(bad))} must be > 0 for every member"):
            PopulationLearner(ens, {**HP, **bad}, num_minibatches=2)
    # a checkpoint from before the two were per member loads, keeping the current values
    state = given.state_dict()
    del state["hp_kl_threshold"], state["hp_max_grad_norm"]
    given.hp_max_grad_norm.fill_(3.0)
    given.load_state_dict(state)
    assert given.hp_max_grad_norm.tolist() == [3.0] * 3


def test_stacked_adam_clipping_really_clips_only_large_members():
    m = 2
    p = torch.nn.Parameter(torch.zeros(m, 4))
    opt = StackedAdam([p], num_members=m, max_grad_norm=1.0, betas=(0.0, 0.0))
    # beta1 = 0: the first moment after one step is exactly the (clipped) gradient
    p.grad = torch.tensor([[3.0, 4.0, 0.0, 0.0], [0.3, 0.4, 0.0, 0.0]])
    norms = opt.step(lr=torch.tensor([1.0, 1.0]))
    torch.testing.assert_close(norms, torch.tensor([5.0, 0.5]))
    # first moment (beta1 = 0) is the clipped gradient: member 0 scaled to norm ~1, member 1 untouched
    torch.testing.assert_close(opt.state[p]["exp_avg"][0], torch.tensor([0.6, 0.8, 0.0, 0.0]), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(opt.state[p]["exp_avg"][1], torch.tensor([0.3, 0.4, 0.0, 0.0]))




def test_stacked_adam_step_runs_as_many_ops_for_3_as_for_12_parameters():
    """The arithmetic is on one ``[M, P]`` tensor: the number of (non-view) ops of a step does not grow with
    the number of parameter tensors."""
    from torch.utils._python_dispatch import TorchDispatchMode

    views = {"view", "_unsafe_view", "reshape", "_reshape_alias", "t", "transpose", "expand", "split",
             "split_with_sizes", "select", "slice", "unsqueeze", "as_strided", "alias", "detach"}

    class Ops(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.count = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.count += func.__name__.split(".")[0] not in views
            return func(*args, **(kwargs or {}))

    counts = []
    for k in (3, 12):
        ps = [torch.nn.Parameter(torch.randn(4, 2 + i % 3, 3)) for i in range(k)]
        opt = StackedAdam(ps, num_members=4, max_grad_norm=1.0)
        for _ in range(2):  # the second step runs on the built layout
            for p in ps:
                p.grad = torch.randn_like(p)
            with Ops() as ops:
                opt.step(lr=torch.full((4,), 1e-3), active=torch.tensor([True, False, True, True]))
        counts.append(ops.count)
    assert counts[0] == counts[1], counts

def test_stacked_adam_skips_a_parameter_without_gradient_as_torch_adam_does():
    """A parameter with no gradient at a step keeps its weights, moments and count (torch.optim.Adam's
    rule); once it has a gradient again its count lags the others', and each parameter's bias correction
    follows its own count."""
    m, lrs, max_norm = 2, [1e-2, 5e-2], 0.7
    gen = torch.Generator().manual_seed(3)
    init = [torch.randn(m, 3, 2, generator=gen), torch.randn(m, 4, generator=gen)]
    has_grad = [(True, True), (True, False), (True, False), (True, True), (False, True), (True, True)]
    grads = [[torch.randn(m, 3, 2, generator=gen) * 2, torch.randn(m, 4, generator=gen)] for _ in has_grad]
    members = []
    for i in range(m):
        ps = [torch.nn.Parameter(x[i].clone()) for x in init]
        members.append((ps, torch.optim.Adam(ps, lr=lrs[i], eps=1e-8)))
    ps = [torch.nn.Parameter(x.clone()) for x in init]
    opt = StackedAdam(ps, num_members=m, max_grad_norm=max_norm)
    for g, present in zip(grads, has_grad):
        for i, (ref, ref_opt) in enumerate(members):
            for p, gi, on in zip(ref, g, present):
                p.grad = gi[i].clone() if on else None
            torch.nn.utils.clip_grad_norm_([p for p in ref if p.grad is not None], max_norm)
            ref_opt.step()
        for p, gi, on in zip(ps, g, present):
            p.grad = gi.clone() if on else None
        opt.step(lr=torch.tensor(lrs))
    assert opt.state[ps[0]]["step"].tolist() == [5.0, 5.0] and opt.state[ps[1]]["step"].tolist() == [4.0, 4.0]
    for i, (ref, ref_opt) in enumerate(members):
        for p, r in zip(ps, ref):
            torch.testing.assert_close(p.detach()[i], r.detach(), rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(opt.state[p]["exp_avg_sq"][i], ref_opt.state[r]["exp_avg_sq"], rtol=1e-5, atol=1e-7)


def test_stacked_adam_resumes_exactly_from_a_saved_state_dict(tmp_path):
    """Save after 3 steps, load into a fresh optimiser (the state then holds plain tensors), go on: every
    weight and moment is bitwise what the uninterrupted optimiser has."""
    m, shapes = 3, [(4, 2), (5,)]
    gen = torch.Generator().manual_seed(4)
    init = [torch.randn(m, *s, generator=gen) for s in shapes]
    grads = [[torch.randn(m, *s, generator=gen) for s in shapes] for _ in range(6)]
    lr, active = torch.tensor([1e-2, 3e-3, 1e-1]), torch.tensor([True, False, True])

    def run(ps, opt, steps):
        for g in steps:
            for p, gi in zip(ps, g):
                p.grad = gi.clone()
            opt.step(lr=lr, active=active)

    ps = [torch.nn.Parameter(x.clone()) for x in init]
    opt = StackedAdam(ps, num_members=m, max_grad_norm=1.0)
    run(ps, opt, grads[:3])
    torch.save({"params": [p.detach() for p in ps], "opt": opt.state_dict()}, tmp_path / "ckpt.pt")
    run(ps, opt, grads[3:])
    saved = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    resumed = [torch.nn.Parameter(x.clone()) for x in saved["params"]]
    opt2 = StackedAdam(resumed, num_members=m, max_grad_norm=1.0)
    opt2.load_state_dict(saved["opt"])
    run(resumed, opt2, grads[3:])
    for p, q in zip(ps, resumed):
        assert torch.equal(p.detach(), q.detach())
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(opt.state[p][key], opt2.state[q][key]), key
    # the same optimiser rewound: a load replaces the state its buffers held
    opt.load_state_dict(saved["opt"])
    with torch.no_grad():
        for p, x in zip(ps, saved["params"]):
            p.copy_(x)
    run(ps, opt, grads[3:])
    for p, q in zip(ps, resumed):
        assert torch.equal(p.detach(), q.detach())


def test_stacked_adam_copy_members_moves_the_moments_the_next_step_uses():
    """After ``copy_members`` member 0 holds member 1's moments and count: with member 1's weights copied too
    (as ``exploit`` does) the same gradient and rate then leave both bitwise equal."""
    m = 3
    gen = torch.Generator().manual_seed(5)
    ps = [torch.nn.Parameter(torch.randn(m, 4, 2, generator=gen)), torch.nn.Parameter(torch.randn(m, 3, generator=gen))]
    opt = StackedAdam(ps, num_members=m, max_grad_norm=None)
    lr = torch.full((m,), 1e-2)
    for k in range(3):  # different histories: member 1 sat out one step
        for p in ps:
            p.grad = torch.randn(p.shape, generator=gen)
        opt.step(lr=lr, active=torch.tensor([True, k != 1, True]))
    opt.copy_members(torch.tensor([0]), torch.tensor([1]))
    for p in ps:
        assert opt.state[p]["step"].tolist() == [2.0, 2.0, 3.0]
        assert torch.equal(opt.state[p]["exp_avg"][0], opt.state[p]["exp_avg"][1])
    for p in ps:
        p.data[0] = p.data[1]
        g = torch.randn(p.shape[1:], generator=gen)
        p.grad = torch.stack([g, g, torch.randn(p.shape[1:], generator=gen)])
    opt.step(lr=lr)
    for p in ps:
        assert torch.equal(p.detach()[0], p.detach()[1])
        assert torch.equal(opt.state[p]["exp_avg_sq"][0], opt.state[p]["exp_avg_sq"][1])

# ============================================================================= 3. GAE
def test_ensemble_gae_equals_torchrl_gae_per_member_block():
    m, per, t = 3, 4, 8
    batch = _batch(m, per, t)
    # add some episode ends (one truncation, one termination per member) so done/terminated matter
    done, term = batch["next", "done"].clone(), batch["next", "terminated"].clone()
    for i in range(m):
        done[i * per, 3] = True  # truncated
        done[i * per + 1, 5] = True
        term[i * per + 1, 5] = True  # terminated
    batch["next", "done"], batch["next", "terminated"] = done, term
    ens = _ensemble(m, seed=2)
    gamma = torch.tensor([0.9, 0.99, 0.5])
    lmbda = torch.tensor([0.95, 0.7, 1.0])
    out = ensemble_gae(ens, batch.clone(), gamma, lmbda)
    for i in range(m):
        blk = batch[i * per:(i + 1) * per].clone()
        gae = GAE(gamma=float(gamma[i]), lmbda=float(lmbda[i]), value_network=_plain_critic(ens, i),
                  average_gae=False)
        ref = gae(blk)
        mine = out[i * per:(i + 1) * per]
        for key in ("state_value", "advantage", "value_target"):
            torch.testing.assert_close(mine[key], ref[key], rtol=1e-5, atol=1e-5, msg=key)
    # different gammas really give different advantages than a shared one
    shared = ensemble_gae(ens, batch.clone(), torch.full((m,), 0.99), lmbda)
    assert not torch.allclose(shared["advantage"][:per], out["advantage"][:per])


# ============================================================================= 4. member_losses
def test_member_losses_equal_hand_clipped_ppo_per_member_values_and_gradients():
    m, b = 3, 16
    learner = _learner(m, clip_epsilon=[0.05, 0.2, 0.3], entropy_coeff=[0.01, 0.0, 0.1], critic_coeff=[1.0, 2.0, 0.5])
    ens = learner.ensemble
    gen = torch.Generator().manual_seed(3)
    obs = torch.randn(m, b, OBS, generator=gen)
    action = torch.randn(m, b, ACT, generator=gen)
    with torch.no_grad():
        loc, scale = ens.heads(obs)
        cur_lp = torch.distributions.Normal(loc, scale).log_prob(action).sum(-1)
    # ratios from ~1 (unclipped) to far from 1 (clipped) on every member's rows
    old_lp = cur_lp + 0.5 * torch.randn(m, b, generator=gen) * torch.linspace(0.0, 1.0, b)
    sub = TensorDict({"observation": obs, "action": action, "action_log_prob": old_lp,
                      "advantage": torch.randn(m, b, 1, generator=gen),
                      "value_target": torch.randn(m, b, 1, generator=gen)}, [m, b])
    losses = learner.member_losses(sub)
    total = sum(v for k, v in losses.items() if k.startswith("loss_")).sum()
    learner.optimizer.zero_grad(set_to_none=True)
    total.backward()
    for i in range(m):
        eps, ent_c, crit_c = (float(learner.hyper[k][i]) for k in ("clip_epsilon", "entropy_coeff", "critic_coeff"))
        actor, critic = _plain_actor(ens, i), _plain_critic(ens, i)
        head, net = actor.head, critic.module
        lc, sc = head(obs[i], torch.zeros(b, dtype=torch.long))
        dist = torch.distributions.Normal(lc, sc)
        lp = dist.log_prob(action[i]).sum(-1)
        ratio = torch.exp(lp - old_lp[i])
        adv = sub["advantage"][i, :, 0]
        surr = torch.min(ratio * adv, torch.clamp(ratio, 1 - eps, 1 + eps) * adv)
        ent = dist.entropy().sum(-1)
        v = net(obs[i])
        hand = {
            "loss_objective": -surr.mean(),
            "loss_entropy": -ent_c * ent.mean(),
            "loss_critic": crit_c * ((v - sub["value_target"][i]) ** 2).mean(),
        }
        assert ((ratio - 1).abs() > eps).any() and ((ratio - 1).abs() <= eps).any()
        for k, val in hand.items():
            torch.testing.assert_close(losses[k][i], val.detach(), rtol=1e-5, atol=1e-6, msg=k)
        torch.testing.assert_close(losses["entropy"][i], ent.mean().detach(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(losses["clip_fraction"][i], ((ratio - 1).abs() > eps).float().mean())
        torch.testing.assert_close(losses["kl_approx"][i], (old_lp[i] - lp).mean().detach(), rtol=1e-5, atol=1e-6)
        # member i's gradient is the gradient of its own hand loss (nothing leaks across members)
        sum(hand.values()).backward()
        for prefix, module in (("actor_params.", head), ("critic_params.", net)):
            ref = dict(module.named_parameters())
            for name, p in ens.named_parameters():
                if name.startswith(prefix):
                    torch.testing.assert_close(p.grad[i], ref[name[len(prefix):]].grad, rtol=1e-4, atol=1e-6,
                                               msg=name)


def test_member_kl_gaussian_is_each_members_analytic_kl_from_the_collecting_policy():
    m, b = 3, 16
    learner = _learner(m)
    gen = torch.Generator().manual_seed(4)
    obs = torch.randn(m, b, OBS, generator=gen)
    with torch.no_grad():
        loc, scale = learner.ensemble.heads(obs)
    old_loc = loc + torch.randn(m, b, ACT, generator=gen) * torch.tensor([0.0, 0.3, 1.0]).view(m, 1, 1)
    old_scale = scale * torch.rand(m, b, ACT, generator=gen).add(0.5)
    sub = TensorDict({"observation": obs, "action": torch.randn(m, b, ACT, generator=gen),
                      "action_log_prob": torch.zeros(m, b), "advantage": torch.randn(m, b, 1, generator=gen),
                      "value_target": torch.randn(m, b, 1, generator=gen)}, [m, b])
    assert "kl_gaussian" not in learner.member_losses(sub).keys()  # without the collecting policy's Gaussian
    sub.update({"loc": old_loc, "scale": old_scale})
    kl = learner.member_losses(sub)["kl_gaussian"]
    for i in range(m):
        hand = torch.distributions.kl_divergence(torch.distributions.Normal(old_loc[i], old_scale[i]),
                                                 torch.distributions.Normal(loc[i], scale[i])).sum(-1).mean()
        torch.testing.assert_close(kl[i], hand, rtol=1e-5, atol=1e-7)
    assert kl[2] > kl[1] > 0


def _adaptive(num_epochs, **kw):
    """A one-minibatch adaptive update whose first KLs straddle the rule's thresholds: member 0 above 2x, member 1
    between, member 2 below 1/2 (the collecting loc moved by 1, 0.3, 0 from the learner's own)."""
    learner = _learner(3, num_minibatches=1, lr=1e-3, num_epochs=num_epochs, lr_schedule="adaptive", max_lr=1.2e-3,
                       **kw)
    batch = _batch(3, 4)
    learner.estimate(batch)
    obs = batch["observation"].reshape(3, -1, OBS)
    with torch.no_grad():
        loc, scale = learner.ensemble.heads(obs)
    shift = torch.tensor([1.0, 0.3, 0.0]).view(3, 1, 1)
    batch.set("loc", (loc + shift).reshape(batch["loc"].shape))
    batch.set("scale", scale.reshape(batch["scale"].shape))
    kl = (shift.pow(2) / (2 * scale.pow(2))).sum(-1).mean(1)  # equal scales: the mean term only
    return learner, batch, kl


def test_adaptive_learning_rate_applies_the_kl_rule_to_each_member():
    learner, batch, kl = _adaptive([1, 1, 1])
    learner.hp_kl_threshold.fill_(float(kl[1]))  # member 1 inside [thr / 2, 2 thr]
    assert kl[0] > 2 * kl[1] and kl[2] < kl[1] / 2
    learner.update(batch)
    torch.testing.assert_close(learner.hp_lr, torch.tensor([1e-3 / 1.5, 1e-3, 1.2e-3]))  # / 1.5, kept, x 1.5 clamped
    # a member past its num_epochs did not step and keeps its learning rate; the others go on adapting
    learner2, batch2, _ = _adaptive([1, 1, 2])
    learner2.hp_kl_threshold.copy_(learner.hp_kl_threshold)
    learner2.update(batch2)
    torch.testing.assert_close(learner2.hp_lr[:2], learner.hp_lr[:2])
    assert float(learner2.hp_lr[2]) in (pytest.approx(1.2e-3), pytest.approx(1.2e-3 / 1.5))
    # fixed (the library default): nobody's learning rate moves
    fixed = _learner(3, num_minibatches=1, lr=1e-3)
    fixed.estimate(batch)
    fixed.update(batch)
    assert fixed.hp_lr.tolist() == [pytest.approx(1e-3)] * 3


def test_adaptive_learning_rate_follows_each_members_own_kl_threshold():
    # the same KLs as above, each member against its own threshold (DexPBT Table II mutates it)
    learner, batch, kl = _adaptive([1, 1, 1])
    assert learner.hp_kl_threshold.tolist() == [pytest.approx(0.016)] * 3  # every member starts from kl_threshold
    learner.hp_kl_threshold.copy_(torch.stack([kl[0], kl[1] / 4, torch.tensor(1.0)]))
    learner.update(batch)
    # member 0 inside its band: kept; member 1 above twice its threshold: / 1.5; member 2 below half: x 1.5, clamped
    torch.testing.assert_close(learner.hp_lr, torch.tensor([1e-3, 1e-3 / 1.5, 1.2e-3]))


def test_adaptive_learning_rate_refuses_unknown_schedules_and_batches_without_the_gaussian():
    with pytest.raises(ValueError, match=r"lr_schedule='linear'.*'fixed' or 'adaptive'"):
        _learner(3, lr_schedule="linear")
    learner = _learner(3, lr_schedule="adaptive")
    batch = _batch(3, 4)
    learner.estimate(batch)
    with pytest.raises(KeyError, match=r"lr_schedule='adaptive' reads the collecting policy's \['scale'\]"):
        learner.update(batch.exclude("scale"))


# ============================================================================= 5. update isolation
def _updated(batch, **hp):
    learner = _learner(3, num_minibatches=2, **hp)
    learner.estimate(batch)
    learner.update(batch)
    return learner



def test_update_indexes_only_what_the_member_loss_reads():
    """Each minibatch is cut from the observation and the loss's in_keys only (not ``"next"``, the collector's
    entries or the episode counters), in ``[M, B]`` rows of each member's own block."""
    learner = _learner(3, num_minibatches=2)
    batch = _batch(3, 4)
    learner.estimate(batch)
    seen = []
    member_losses = learner.member_losses
    learner.member_losses = lambda sub: seen.append(sub) or member_losses(sub)
    learner.update(batch)
    assert len(seen) == 2 * int(learner.hp_num_epochs.max())
    assert set(seen[0].keys(True, True)) == {"observation", *learner.member_loss.in_keys}
    assert seen[0].batch_size == torch.Size([3, 16])  # 4 envs x 8 steps per member, halved

def test_update_member_isolation_zero_lr_and_exact_epoch_masking():
    m, per = 3, 4
    base = _batch(m, per)
    # changing member 1's rewards changes only member 1's update (bitwise for the others)
    a = _updated(base.clone(), num_epochs=2)
    changed = base.clone()
    rew = changed["next", "reward"].clone()
    rew[per:2 * per] = rew[per:2 * per] * -3.0 + 1.0
    changed["next", "reward"] = rew
    b = _updated(changed, num_epochs=2)
    sa, sb = a.ensemble.state_dict(), b.ensemble.state_dict()
    for k in sa:
        for i in (0, 2):
            assert torch.equal(sa[k][i], sb[k][i]), (k, i)
    assert any(not torch.equal(sa[k][1], sb[k][1]) for k in sa)
    init = _learner(3).ensemble.state_dict()
    assert any(not torch.equal(sa[k][0], init[k][0]) for k in sa)  # the update did move member 0

    # a member with lr = 0 keeps its parameters bitwise
    z = _updated(base.clone(), lr=[1e-3, 0.0, 1e-3], num_epochs=2)
    sz = z.ensemble.state_dict()
    for k, v in sz.items():
        assert torch.equal(v[1], init[k][1]), k
    assert any(not torch.equal(sz[k][0], init[k][0]) for k in sz)

    # per-member epochs: member 0 with 1 epoch ends exactly where it would if everyone had 1 epoch
    one = _updated(base.clone(), num_epochs=1)
    mixed = _updated(base.clone(), num_epochs=[1, 3, 2])
    s1, sm = one.ensemble.state_dict(), mixed.ensemble.state_dict()
    for k in s1:
        assert torch.equal(s1[k][0], sm[k][0]), k
    assert any(not torch.equal(s1[k][1], sm[k][1]) for k in s1)
    steps = [mixed.optimizer.state[p]["step"] for p in mixed.optimizer._params()]
    for s in steps:  # 2 minibatches per epoch
        assert s.tolist() == [2.0, 6.0, 4.0]
    # and member 2 (2 epochs) equals member 2 of a run where everyone had 2 epochs
    two = _updated(base.clone(), num_epochs=2).ensemble.state_dict()
    for k in two:
        assert torch.equal(two[k][2], sm[k][2]), k


# ============================================================================= 6. exploit
def test_exploit_copies_weights_normaliser_moments_steps_and_hyperparameters():
    m = 4
    learner = _learner(m, seed=4, num_minibatches=2, num_epochs=[1, 2, 3, 1])
    batch = _batch(m, 2)
    learner.estimate(batch)
    learner.update(batch)  # optimiser moments and per-member step counts now differ
    learner.ensemble.update_normalizers(torch.randn(m, 10, OBS) * torch.arange(1.0, m + 1).view(m, 1, 1))
    with torch.no_grad():
        for k, v in learner.hyper.items():
            v.copy_(torch.arange(1, m + 1, dtype=v.dtype) * (1 if k == "num_epochs" else 0.01))
    params0, opt0, hyper0 = _snapshot(learner)
    assert any(not torch.equal(s["step"][0], s["step"][2]) for s in opt0.values())
    learner.exploit(torch.tensor([0, 3]), torch.tensor([2, 1]))
    params1, opt1, hyper1 = _snapshot(learner)
    for d0, d1 in ((params0, params1), (opt0, opt1), (hyper0, hyper1)):
        _same_member(d1, 0, d0, 2)
        _same_member(d1, 3, d0, 1)
        _same_member(d1, 1, d0, 1)
        _same_member(d1, 2, d0, 2)
    # normaliser statistics are part of the copy (actor's and critic's)
    for key in params0:
        if "obs_normalizer" in key:
            assert torch.equal(params1[key][0], params0[key][2])
    # member 0 now acts exactly like member 2
    obs = torch.randn(1, 5, OBS).expand(m, 5, OBS)
    with torch.no_grad():
        loc, scale = learner.ensemble.heads(obs)
        v = learner.ensemble.values(obs)
    assert torch.equal(loc[0], loc[2]) and torch.equal(scale[0], scale[2]) and torch.equal(v[0], v[2])


# ============================================================================= 7. InProcessPBT
SPECS = {"lr": {"kind": "multiplicative"}, "gamma": "discount"}
OBJ10 = [5.0, 9.0, 1.0, 7.0, 3.0, 8.0, 0.0, 6.0, 2.0, 4.0]
TOP, MIDDLE, BOTTOM = [1, 3, 5], [0, 4, 7, 9], [2, 6, 8]


def _pbt(m=10, seed=0, burn_in=0, mutation_prob=1.0, specs=SPECS, learner_seed=0, **kw):
    torch.manual_seed(learner_seed)
    ens = PolicyEnsemble(OBS, ACT, num_members=m, hidden_sizes=(4,))
    ens.update_normalizers(torch.randn(m, 6, OBS) * torch.arange(1.0, m + 1).view(m, 1, 1))
    hp = {"lr": [1e-3 * (i + 1) for i in range(m)], "clip_epsilon": [0.1 + 0.01 * i for i in range(m)],
          "entropy_coeff": [0.001 * i for i in range(m)], "critic_coeff": [1.0 + i for i in range(m)],
          "gamma": [0.9 + 0.005 * i for i in range(m)], "lmbda": [0.9 + 0.004 * i for i in range(m)],
          "num_epochs": [1 + i % 4 for i in range(m)]}
    learner = PopulationLearner(ens, hp, num_minibatches=1)
    return InProcessPBT(learner, specs, interval_frames=100, burn_in_frames=burn_in, mutation_prob=mutation_prob, seed=seed,
                        **kw)


def _mutated_from(new, old, kind, lo=1.1, hi=1.5):
    if kind == "multiplicative":
        r = new / old
        return lo - 1e-6 <= r <= hi + 1e-6 or lo - 1e-6 <= 1 / r <= hi + 1e-6
    r = (1 - new) / (1 - old)
    return lo - 1e-6 <= r <= hi + 1e-6 or lo - 1e-6 <= 1 / r <= hi + 1e-6


def test_pbt_step_replaces_bottom_mutates_middle_keeps_top():
    pbt = _pbt()
    learner = pbt.learner
    params0, opt0, hyper0 = _snapshot(learner)
    report = pbt.step(frames=1000, objectives=OBJ10)
    params1, _, hyper1 = _snapshot(learner)
    assert report["ranking"] == [1, 5, 3, 7, 0, 9, 4, 8, 2, 6]
    assert report["replaced"] == BOTTOM and report["mutated"] == MIDDLE
    assert len(report["sources"]) == 3 and set(report["sources"]) <= set(TOP)
    spec_keys = {"lr": "multiplicative", "gamma": "discount"}
    for i in TOP:  # unchanged: weights, normaliser, hyperparameters
        _same_member(params1, i, params0, i)
        _same_member(hyper1, i, hyper0, i)
    for i in MIDDLE:  # own weights; spec'd keys mutated (mutation_prob = 1), the others unchanged
        _same_member(params1, i, params0, i)
        for k in HYPERPARAMETERS:
            new, old = float(hyper1[k][i]), float(hyper0[k][i])
            if k in spec_keys:
                assert _mutated_from(new, old, spec_keys[k]), (k, i, old, new)
            else:
                assert new == old, (k, i)
    for i, src in zip(report["replaced"], report["sources"]):  # the source's weights, mutated copy of its hps
        _same_member(params1, i, params0, src)
        for k in HYPERPARAMETERS:
            new, old = float(hyper1[k][i]), float(hyper0[k][src])
            if k in spec_keys:
                assert _mutated_from(new, old, spec_keys[k]), (k, i, src, old, new)
            else:
                assert new == old, (k, i, src)
    # changed members restart their fitness and burn-in clock; the top keep theirs
    assert [pbt.last_change[i] == 1000 for i in range(10)] == [i not in TOP for i in range(10)]
    assert pbt.num_steps == 1 and pbt.last_step_frames == 1000


def test_pbt_nan_objective_ranks_last_and_is_replaced():
    pbt = _pbt()
    objs = list(OBJ10)
    objs[1] = float("nan")  # the best member crashed
    report = pbt.step(frames=1000, objectives=objs)
    assert report["ranking"][-1] == 1 and report["objectives"][1] is None
    assert 1 in report["replaced"]
    assert set(report["sources"]) <= {5, 3, 7}  # the new top 3


def test_pbt_round_without_any_fitness_acts_on_nobody_and_warns_once():
    pbt = _pbt()
    _, _, hyper0 = _snapshot(pbt.learner)
    with pytest.warns(RuntimeWarning, match=r"round at 1,000 env frames ranked no member .*pbt\.start_frames"):
        report = pbt.step(frames=1000)  # nothing observed yet: every member's fitness is NaN
    assert report["replaced"] == [] and report["mutated"] == [] and report["objectives"] == [None] * 10
    _, _, hyper1 = _snapshot(pbt.learner)
    for i in range(10):
        _same_member(hyper1, i, hyper0, i)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pbt.step(frames=2000)  # said once
        pbt.step(frames=3000, objectives=OBJ10)  # a round with a fitness never warns


def test_pbt_wait_for_fitness_leaves_members_without_an_episode_alone():
    # the maze's cascade: members changed last round have ended no episode yet, so they rank last
    objs = list(OBJ10)
    objs[2] = objs[6] = float("nan")  # two of the bottom three have no fitness (an empty window)
    ranking = [1, 5, 3, 7, 0, 9, 4, 8, 2, 6]  # by objective, the two without one last
    default = _pbt().step(frames=1000, objectives=objs)
    assert default["ranking"] == ranking
    assert default["replaced"] == [2, 6, 8] and default["mutated"] == [0, 4, 7, 9]  # bottom 3: ranks 7-9
    pbt = _pbt(wait_for_fitness=True)
    params0, _, hyper0 = _snapshot(pbt.learner)
    report = pbt.step(frames=1000, objectives=objs)
    assert report["ranking"] == ranking  # the same ranking; only who acts changes
    assert report["replaced"] == [8] and set(report["sources"]) <= set(TOP)
    assert report["mutated"] == [0, 4, 7, 9]
    params1, _, hyper1 = _snapshot(pbt.learner)
    for i in (2, 6):  # untouched: weights, hyperparameters, change clock
        _same_member(params1, i, params0, i)
        _same_member(hyper1, i, hyper0, i)
        assert pbt.last_change[i] < 0
    assert pbt.last_change[8] == 1000
    with pytest.raises(ValueError, match=r"wait_for_fitness must be True or False, got 'false'"):
        _pbt(wait_for_fitness="false")


def test_pbt_burn_in_leaves_recently_changed_members_alone():
    pbt = _pbt(burn_in=1000)
    pbt.step(frames=1000, objectives=OBJ10)
    params1, _, hyper1 = _snapshot(pbt.learner)
    reverse = [-x for x in OBJ10]  # old top (never changed) is now the bottom; old middle still middle
    report = pbt.step(frames=1500, objectives=reverse)
    assert report["replaced"] == [1, 3, 5] and set(report["sources"]) <= {2, 6, 8}
    assert report["mutated"] == []  # the middle was changed at 1000 < burn-in ago
    params2, _, hyper2 = _snapshot(pbt.learner)
    for i in MIDDLE + BOTTOM:
        _same_member(params2, i, params1, i)
        _same_member(hyper2, i, hyper1, i)
    report = pbt.step(frames=2000, objectives=reverse)  # burn-in over for the middle
    assert report["mutated"] == MIDDLE
    # the members replaced at 1500 are bottom again but inside their burn-in: not acted on
    assert report["replaced"] == []


def _state(pbt):
    return _snapshot(pbt.learner)


def test_pbt_is_deterministic_under_its_seed_and_state_dict_round_trips():
    runs = []
    for _ in range(2):
        pbt = _pbt(seed=7)
        r1 = pbt.step(frames=1000, objectives=OBJ10)
        r2 = pbt.step(frames=2000, objectives=[OBJ10[(i + 3) % 10] for i in range(10)])
        runs.append((r1, r2, _state(pbt)))
    assert runs[0][0] == runs[1][0] and runs[0][1] == runs[1][1]
    for d0, d1 in zip(runs[0][2], runs[1][2]):
        for i in range(10):
            _same_member(d0, i, d1, i)
    other = _pbt(seed=8)
    other.step(frames=1000, objectives=OBJ10)
    assert not torch.equal(other.learner.hp_lr, _pbt_after(7).learner.hp_lr)

    # state_dict round trip: a fresh PBT (other seed, other weights) loaded mid-run decides identically
    a = _pbt(seed=7)
    a.step(frames=1000, objectives=OBJ10)
    saved_pbt, saved_learner = copy.deepcopy(a.state_dict()), copy.deepcopy(a.learner.state_dict())
    b = _pbt(seed=99, learner_seed=5)
    b.load_state_dict(saved_pbt)
    b.learner.load_state_dict(saved_learner)
    objs = [OBJ10[(i + 3) % 10] for i in range(10)]
    ra, rb = a.step(frames=2000, objectives=objs), b.step(frames=2000, objectives=objs)
    assert ra == rb and ra["replaced"]
    for d0, d1 in zip(_state(a), _state(b)):
        for i in range(10):
            _same_member(d0, i, d1, i)
    assert a.last_change == b.last_change and a.num_steps == b.num_steps == 2
    torch.testing.assert_close(a.fitness(), b.fitness(), equal_nan=True)


def _pbt_after(seed):
    pbt = _pbt(seed=seed)
    pbt.step(frames=1000, objectives=OBJ10)
    return pbt


def test_pbt_fitness_ema_from_observed_batches_equals_hand_computation():
    m, per, t, decay = 4, 3, 6, 0.8
    pbt = _pbt(m=m, fitness_decay=decay)
    gen = torch.Generator().manual_seed(0)
    pid = (torch.arange(m * per) // per).unsqueeze(1).expand(m * per, t)
    hand_sum, hand_cnt = torch.zeros(m, dtype=torch.float64), torch.zeros(m, dtype=torch.float64)
    for _ in range(3):
        done = torch.rand(m * per, t, 1, generator=gen) < 0.3
        done[3 * per:] = False  # member 3 never finishes an episode
        ep = torch.randn(m * per, t, 1, generator=gen) * 100
        batch = TensorDict({"policy_id": pid.clone(), "next": {"done": done, "episode_reward": ep}}, [m * per, t])
        pbt.observe(batch)
        hand_sum *= decay
        hand_cnt *= decay
        for i in range(m):
            blk = slice(i * per, (i + 1) * per)
            d = done[blk].squeeze(-1)
            hand_sum[i] += ep[blk].squeeze(-1)[d].double().sum()
            hand_cnt[i] += d.double().sum()
    fit = pbt.fitness()
    assert torch.isnan(fit[3]) and hand_cnt[:3].min() > 0
    torch.testing.assert_close(fit[:3], hand_sum[:3] / hand_cnt[:3], rtol=1e-9, atol=1e-9)
    # step() without objectives ranks on the tracked fitness; changed members restart from nothing
    report = pbt.step(frames=500)
    assert report["objectives"][3] is None and report["ranking"][-1] == 3
    expected_top = int(torch.argmax(hand_sum[:3] / hand_cnt[:3]))
    assert report["ranking"][0] == expected_top
    after = pbt.fitness()
    for i in range(m):
        if i in report["replaced"] or i in report["mutated"]:
            assert math.isnan(after[i])
        else:
            assert after[i] == fit[i]


# ============================================================================= 8. the recipe
def _csv(path):
    with open(path) as f:
        return [(int(r[0]), float(r[1])) for r in csv.reader(f) if r]


def _train(args):
    env = dict(os.environ, OMP_NUM_THREADS="1", HYDRA_FULL_ERROR="1")
    return subprocess.run([sys.executable, "recipes/train.py", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env=env)


M_RECIPE, FPB_RECIPE = 4, 32 * 50
RECIPE_ARGS = ["pbt=inprocess", "env=pendulum", "env.num_envs=32", f"algo.num_policies={M_RECIPE}", "train.horizon=50",
               "pbt.interval_frames=1600", "pbt.start_frames=0", "pbt.burn_in_frames=0",
               "model.hidden_sizes=[16]", "progress_bar=false", "threads=1"]


@pytest.fixture(scope="module")
def recipe_run(tmp_path_factory):
    """``pbt=inprocess`` for 8000 frames, then a resume to 16000 (run once for the tests below)."""
    base = tmp_path_factory.mktemp("pbt_recipe")
    run, run2 = base / "run", base / "resumed"
    first = _train([*RECIPE_ARGS, "total_frames=8000", f"hydra.run.dir={run}"])
    second = None
    if first.returncode == 0:
        second = _train([*RECIPE_ARGS, "total_frames=16000", f"resume={run / 'checkpoints' / 'last.pt'}",
                         f"hydra.run.dir={run2}"])
    return run, first, run2, second


def test_recipe_pbt_logs_steps_checkpoints_the_hook_and_resumes(recipe_run):
    run, res, run2, res2 = recipe_run
    m, fpb = M_RECIPE, FPB_RECIPE
    assert res.returncode == 0, res.stderr[-3000:]
    scalars = run / "pbt-pendulum" / "scalars"
    steps = list(range(fpb, 8001, fpb))
    for i in range(m):
        for name in HYPERPARAMETERS + ("loss_objective", "grad_norm"):
            assert [s for s, _ in _csv(scalars / "policy" / str(i) / f"{name}.csv")] == steps, (i, name)
    # interval = one batch, start 0: a PBT step after every iteration
    assert _csv(scalars / "pbt" / "num_steps.csv") == [(s, float(k + 1)) for k, s in enumerate(steps)]
    # pendulum episodes (200 steps) end at 6400 frames: from then on the bottom members are replaced
    assert sum(v for _, v in _csv(scalars / "pbt" / "num_replaced.csv")) > 0
    ckpt = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["frames"] == 8000
    hook = ckpt["trainer"]["pbt"]
    assert hook["num_steps"] == 5 and hook["last_step_frames"] == 8000
    # the logged hyperparameters are the learner's (checkpointed) ones
    lm = ckpt["trainer"]["loss_module"]
    for i in range(m):
        assert _csv(scalars / "policy" / str(i) / "lr.csv")[-1][1] == float(lm["hp_lr"][i])

    assert res2 is not None and res2.returncode == 0, res2.stderr[-3000:]
    assert "at 8000 frames" in res2.stdout
    scalars2 = run2 / "pbt-pendulum" / "scalars"
    steps2 = list(range(8000 + fpb, 16001, fpb))
    assert _csv(scalars2 / "train" / "frames.csv") == [(s, float(s)) for s in steps2]
    # the hook's state came back: its step count continues from 5
    assert _csv(scalars2 / "pbt" / "num_steps.csv") == [(s, float(6 + k)) for k, s in enumerate(steps2)]
    ckpt2 = torch.load(run2 / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt2["frames"] == 16000 and ckpt2["trainer"]["pbt"]["num_steps"] == 10
    assert ckpt2["trainer"]["pbt"]["last_step_frames"] == 16000


def test_recipe_pbt_train_lr_is_a_members_lr(recipe_run):
    run, res, _, _ = recipe_run
    assert res.returncode == 0, res.stderr[-3000:]
    scalars = run / "pbt-pendulum" / "scalars"
    member_lrs = {s: [] for s, _ in _csv(scalars / "policy" / "0" / "lr.csv")}
    for i in range(M_RECIPE):
        for s, v in _csv(scalars / "policy" / str(i) / "lr.csv"):
            member_lrs[s].append(v)
    path = scalars / "train" / "lr.csv"
    if path.exists():  # logged at all: it must be within the population's lrs
        for s, v in _csv(path):
            assert min(member_lrs[s]) - 1e-12 <= v <= max(member_lrs[s]) + 1e-12, (s, v, member_lrs[s])
