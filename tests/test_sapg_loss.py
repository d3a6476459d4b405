"""SAPGLoss: aggregation (Alg. 1, Sec. 4.2/4.3), targets (Eq. 5/6), per-policy entropy (Sec. 4.5),
bounds loss, gradients into the latents, determinism; n_step_return and sapg_entropy_coeffs.

Reference values are recomputed with plain torch ops / Python loops in this file.
"""
from __future__ import annotations

import functools
import math
import re

import pytest
import torch
from torchrl.objectives.value import GAE

from torchrl_sapg.collectors import PopulationCollector
from torchrl_sapg.envs import make_env
from torchrl_sapg.modules import make_actor_critic
from torchrl_sapg.objectives import SAPGLoss, n_step_return, sapg_entropy_coeffs
from torchrl_sapg.objectives import vtrace_lambda_target

N, T, GAMMA = 12, 8, 0.9
# keys aggregate() is allowed to rewrite on relabelled rows (loc/scale: the leader's actor
# re-evaluated on the row; everything else must be the source row's own data)
RELABELLED = {
    "policy_id", ("next", "policy_id"), "target_log_prob", "state_value", "value_target", "advantage",
    "off_policy", "loc", "scale",
}


# ----------------------------------------------------------------------------- data
@functools.lru_cache(maxsize=None)
def _collected(M: int):
    """A real [N, T] PopulationCollector batch on pendulum with GAE, with some steps flagged
    terminated / truncated so every (1 - terminated) factor and every early stop is exercised."""
    torch.manual_seed(M)
    ac = make_actor_critic(3, 1, num_policies=M, latent_dim=4, hidden_sizes=(16,))
    with torch.no_grad():
        ac.actor.log_std.copy_(torch.linspace(-0.5, 0.3, M).unsqueeze(-1))
    collector = PopulationCollector(make_env("pendulum", N, seed=0), ac.actor, num_policies=M, frames_per_batch=N * T)
    batch = next(iter(collector))
    collector.shutdown()
    rows = torch.arange(N)
    term_t, trunc_t = (rows * 3) % T, (rows * 5 + 2) % T
    term = torch.zeros(N, T, dtype=torch.bool)
    trunc = torch.zeros(N, T, dtype=torch.bool)
    term[rows, term_t] = True
    trunc[rows, trunc_t] = trunc_t != term_t
    batch["next", "terminated"] = term.unsqueeze(-1)
    batch["next", "truncated"] = trunc.unsqueeze(-1)
    batch["next", "done"] = (term | trunc).unsqueeze(-1)
    with torch.no_grad():
        batch = GAE(gamma=GAMMA, lmbda=0.95, value_network=ac.critic, average_gae=False)(batch)
    return ac, batch


def _setup(M: int = 3):
    ac, batch = _collected(M)
    return ac, batch.clone()


def _loss(ac, M, **kw):
    kw.setdefault("off_policy_target", "td0")  # the exact formulas below are the paper's Eq. 6
    kw.setdefault("advantage_normalization", "none")
    kw.setdefault("gamma", GAMMA)
    kw.setdefault("generator", torch.Generator().manual_seed(0))
    return SAPGLoss(ac.actor, ac.critic, num_policies=M, **kw)


# ----------------------------------------------------------------------------- hand references
def _V(ac, obs, ids):
    return ac.critic.module(obs, ids).squeeze(-1)


def _loc_scale(ac, obs, ids):
    return ac.actor.head.backbone(obs, ids), ac.actor.log_std[ids].exp()


def _logp(loc, scale, a):
    return (-0.5 * ((a - loc) / scale) ** 2 - scale.log() - 0.5 * math.log(2 * math.pi)).sum(-1)


def _H(scale):
    return (0.5 + 0.5 * math.log(2 * math.pi) + scale.log()).sum(-1)


def _source_rows(batch, off_rows):
    """Index of the input env-row every off-policy row was copied from (matched by observation)."""
    match = (off_rows["observation"][:, None] == batch["observation"][None]).flatten(2).all(-1)  # [K, N]
    assert (match.sum(1) == 1).all(), "every off-policy row is exactly one input env-row"
    return match.float().argmax(1)


def _nstep_loop(r, v, d, term, gamma, n):
    """Eq. 5, literally: a triple loop over (env, t, k) with early stop at done / rollout end."""
    NN, TT = r.shape
    out = torch.zeros(NN, TT, dtype=torch.float64)
    for e in range(NN):
        for t in range(TT):
            g = 0.0
            for k in range(n):
                s = t + k
                g += gamma**k * float(r[e, s])
                if bool(d[e, s]) or k == n - 1 or s == TT - 1:
                    g += gamma ** (k + 1) * float(v[e, s]) * (1.0 - float(term[e, s]))
                    break
            out[e, t] = g
    return out


def _leaves_equal(a, b, skip=()):
    for key in a.keys(True, True):
        if key in skip:
            continue
        assert torch.equal(a[key], b[key]), key


# ----------------------------------------------------------------------------- 4. n_step_return
@pytest.mark.parametrize("gamma", [0.0, 0.5, 0.9, 0.99])
@pytest.mark.parametrize("n", [1, 3, 5])
def test_n_step_return_matches_triple_loop(gamma, n):
    g = torch.Generator().manual_seed(int(gamma * 100) + n)
    NN, TT = 4, 9
    r = torch.randn(NN, TT, generator=g)
    v = torch.randn(NN, TT, generator=g)
    d = torch.rand(NN, TT, generator=g) < 0.25
    term = d & (torch.rand(NN, TT, generator=g) < 0.5)
    d[0, 2] = term[0, 2] = True  # at least one termination and one truncation mid-rollout
    d[1, 4], term[1, 4] = True, False
    assert term.any() and (d & ~term).any()
    out = n_step_return(r, v, d, term, gamma, n)
    torch.testing.assert_close(out.double(), _nstep_loop(r, v, d, term, gamma, n), rtol=1e-5, atol=1e-5)
    # [N, T, 1] in -> [N, T, 1] out, same numbers
    out3 = n_step_return(r[..., None], v[..., None], d[..., None], term[..., None], gamma, n)
    assert out3.shape == (NN, TT, 1)
    torch.testing.assert_close(out3.squeeze(-1), out)
    if n == 1:  # the one-step TD target
        torch.testing.assert_close(out, r + gamma * v * (~term).float())


def test_n_step_return_docstring_example():
    r = torch.ones(1, 4)
    z = torch.zeros(1, 4, dtype=torch.bool)
    out = n_step_return(r, torch.zeros(1, 4), z, z, gamma=0.5, n=3)
    torch.testing.assert_close(out, torch.tensor([[1.75, 1.75, 1.5, 1.0]]))


# ----------------------------------------------------------------------------- 5. entropy schedule
@pytest.mark.parametrize("M,leader", [(1, 0), (4, 0), (4, 2), (4, 3), (6, 5), (3, 1)])
def test_sapg_entropy_coeffs_schedule(M, leader):
    sigma = 0.013
    expected, rank = [], 1
    for i in range(M):
        if i == leader:
            expected.append(0.0)
        else:
            expected.append(sigma * rank)
            rank += 1
    torch.testing.assert_close(sapg_entropy_coeffs(M, sigma, leader), torch.tensor(expected))


def test_sapg_entropy_coeffs_errors_and_loss_wiring():
    with pytest.raises(ValueError, match="leader_id"):
        sapg_entropy_coeffs(3, 0.1, leader_id=3)
    with pytest.raises(ValueError, match="leader_id"):
        sapg_entropy_coeffs(3, 0.1, leader_id=-1)
    ac, _ = _setup(3)
    loss = _loss(ac, 3, entropy_sigma=0.02, leader_id=1)
    torch.testing.assert_close(loss.entropy_coeffs, torch.tensor([0.02, 0.0, 0.04]))
    loss = _loss(ac, 3, entropy_coeffs=[0.0, 0.5, 0.25])
    torch.testing.assert_close(loss.entropy_coeffs, torch.tensor([0.0, 0.5, 0.25]))
    assert not _loss(ac, 3).entropy_bonus  # all-zero coefficients: no entropy term at all


# ----------------------------------------------------------------------------- 6. aggregate
@pytest.mark.parametrize("M,leader", [(3, 0), (4, 3)])
def test_aggregate_leader_follower_exact(M, leader):
    ac, batch = _setup(M)
    before = batch.clone()
    loss = _loss(ac, M, leader_id=leader)
    out = loss.aggregate(batch)
    block = N // M
    K = round(1.0 * N / M)
    assert out.shape == (N + K, T)
    _leaves_equal(batch, before)  # the input is not modified

    # on-policy part: the input, untouched, flagged on-policy, target == behaviour
    on = out[:N]
    _leaves_equal(on, batch, skip={"off_policy", "target_log_prob"})
    assert set(on.keys(True, True)) - set(batch.keys(True, True)) == {"off_policy", "target_log_prob"}
    assert not on["off_policy"].any()
    assert torch.equal(on["target_log_prob"], batch["action_log_prob"])

    # off-policy part: whole follower env-rows relabelled to the leader
    off = out[N:]
    assert off["off_policy"].all()
    assert (off["policy_id"] == leader).all() and (off["next", "policy_id"] == leader).all()
    src = _source_rows(batch, off)
    assert len(set(src.tolist())) == K, "no duplicated rows"
    src_policy = batch["policy_id"][src, 0]
    assert (src_policy != leader).all(), "never the leader's own rows"
    assert torch.equal(src_policy, src // block)
    _leaves_equal(off, batch[src], skip=RELABELLED)

    lid = torch.full((K, T), leader)
    with torch.no_grad():
        loc, scale = _loc_scale(ac, off["observation"], lid)
        target_lp = _logp(loc, scale, off["action"])
        v = _V(ac, off["observation"], lid)
        v_next = _V(ac, off["next", "observation"], lid)
    r = off["next", "reward"].squeeze(-1)
    term = off["next", "terminated"].squeeze(-1).float()
    assert term.any()
    target = r + GAMMA * v_next * (1 - term)
    torch.testing.assert_close(off["target_log_prob"], target_lp, rtol=1e-5, atol=1e-5)
    # the behaviour log-prob stays the follower's: mu = pi_leader / pi_follower is not 1
    assert torch.equal(off["action_log_prob"], batch["action_log_prob"][src])
    assert not torch.allclose(off["target_log_prob"], off["action_log_prob"])
    torch.testing.assert_close(off["state_value"].squeeze(-1), v, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(off["value_target"].squeeze(-1), target, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(off["advantage"].squeeze(-1), target - v, rtol=1e-5, atol=1e-5)


def test_aggregate_batch_advantage_normalisation():
    ac, batch = _setup(3)
    raw = _loss(ac, 3, advantage_normalization="none").aggregate(batch)
    norm = _loss(ac, 3, advantage_normalization="batch").aggregate(batch)  # same generator seed
    _leaves_equal(raw, norm, skip={"advantage"})
    a = raw["advantage"]
    torch.testing.assert_close(norm["advantage"], (a - a.mean()) / a.std(), rtol=1e-5, atol=1e-5)
    assert norm.shape == (N + 4, T)
    assert abs(float(norm["advantage"].mean())) < 1e-5
    assert abs(float(norm["advantage"].std()) - 1) < 1e-5


@pytest.mark.parametrize("ratio,K", [(2.0, 8), (0.5, 2), (1.0, 4)])
def test_aggregate_off_policy_ratio(ratio, K):
    ac, batch = _setup(3)
    out = _loss(ac, 3, off_policy_ratio=ratio).aggregate(batch)
    assert out.shape == (N + K, T)
    src = _source_rows(batch, out[N:])
    assert len(set(src.tolist())) == K
    assert (batch["policy_id"][src, 0] != 0).all()
    if ratio == 2.0:  # M - 1 = 2: every follower row exactly once
        assert sorted(src.tolist()) == list(range(4, 12))


@pytest.mark.parametrize("M", [3, 4])
def test_aggregate_symmetric(M):
    ac, batch = _setup(M)
    out = _loss(ac, M, aggregation="symmetric").aggregate(batch)
    K = N // M
    assert out.shape == (N + M * K, T)
    _leaves_equal(out[:N], batch, skip={"off_policy", "target_log_prob"})
    for i in range(M):
        part = out[N + i * K : N + (i + 1) * K]
        assert part["off_policy"].all()
        assert (part["policy_id"] == i).all() and (part["next", "policy_id"] == i).all()
        src = _source_rows(batch, part)
        assert len(set(src.tolist())) == K
        assert (batch["policy_id"][src, 0] != i).all(), f"policy {i} got its own rows"
        _leaves_equal(part, batch[src], skip=RELABELLED)
        ids = torch.full((K, T), i)
        with torch.no_grad():
            v = _V(ac, part["observation"], ids)
            target = part["next", "reward"].squeeze(-1) + GAMMA * _V(ac, part["next", "observation"], ids) * (
                1 - part["next", "terminated"].squeeze(-1).float()
            )
            lp = _logp(*_loc_scale(ac, part["observation"], ids), part["action"])
        torch.testing.assert_close(part["target_log_prob"], lp, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(part["value_target"].squeeze(-1), target, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(part["advantage"].squeeze(-1), target - v, rtol=1e-5, atol=1e-5)


def test_aggregate_none_only_adds_flags():
    ac, batch = _setup(3)
    out = _loss(ac, 3, aggregation="none").aggregate(batch)
    assert out.shape == (N, T)
    _leaves_equal(out, batch, skip={"off_policy", "target_log_prob"})
    assert not out["off_policy"].any()
    assert torch.equal(out["target_log_prob"], batch["action_log_prob"])
    # M = 1 is allowed with aggregation="none"
    ac1 = make_actor_critic(3, 1, num_policies=1, latent_dim=0, hidden_sizes=(8,))
    b1 = batch.clone()
    b1["policy_id"].zero_()
    b1["next", "policy_id"].zero_()
    assert _loss(ac1, 1, aggregation="none").aggregate(b1).shape == (N, T)


@pytest.mark.parametrize("n", [1, 3])
def test_aggregate_nstep_critic_target(n):
    ac, batch = _setup(3)
    gae_out = _loss(ac, 3).aggregate(batch)
    out = _loss(ac, 3, critic_target="nstep", n_steps=n).aggregate(batch)
    with torch.no_grad():
        v_next = _V(ac, batch["next", "observation"], batch["next", "policy_id"])
    r = batch["next", "reward"].squeeze(-1)
    d = batch["next", "done"].squeeze(-1)
    term = batch["next", "terminated"].squeeze(-1)
    ref = _nstep_loop(r, v_next, d, term, GAMMA, n).float()
    torch.testing.assert_close(out[:N]["value_target"].squeeze(-1), ref, rtol=1e-5, atol=1e-5)
    if n == 1:
        torch.testing.assert_close(out[:N]["value_target"].squeeze(-1), r + GAMMA * v_next * (~term).float(),
                                   rtol=1e-5, atol=1e-5)
    # only the on-policy value target changes: advantages (GAE) and off-policy rows are as before
    _leaves_equal(out, gae_out, skip={"value_target"})
    assert torch.equal(out[N:]["value_target"], gae_out[N:]["value_target"])
    assert not torch.allclose(out[:N]["value_target"], gae_out[:N]["value_target"])


def test_aggregate_and_constructor_errors():
    ac, batch = _setup(3)
    loss = _loss(ac, 3)
    for key in ("policy_id", "action", "action_log_prob", "advantage", "value_target", "state_value",
                ("next", "reward")):
        with pytest.raises(KeyError, match=re.escape(repr(key))):
            loss.aggregate(batch.exclude(key))
    with pytest.raises(ValueError, match="off_policy_ratio"):
        _loss(ac, 3, off_policy_ratio=2.5)
    with pytest.raises(ValueError, match="off_policy_ratio"):
        _loss(ac, 3, off_policy_ratio=0.0)
    with pytest.raises(ValueError, match="leader_id"):
        _loss(ac, 3, leader_id=3)
    with pytest.raises(ValueError, match="leader_id"):
        _loss(ac, 3, leader_id=-1)
    for agg in ("leader_follower", "symmetric"):
        with pytest.raises(ValueError, match="num_policies"):
            _loss(ac, 1, aggregation=agg)
    with pytest.raises(ValueError, match="entropy_coeffs"):
        _loss(ac, 3, entropy_coeffs=[0.0, 0.1])
    with pytest.raises(ValueError, match="entropy_coeffs"):
        _loss(ac, 3, entropy_coeffs=[0.0, 0.1, 0.2, 0.3])
    with pytest.raises(ValueError):
        _loss(ac, 3, entropy_coeffs=[0.0, 0.1, 0.2], entropy_sigma=0.1)
    with pytest.raises(ValueError, match="aggregation"):
        _loss(ac, 3, aggregation="ring")
    with pytest.raises(ValueError):
        loss.aggregate(batch.reshape(-1))  # needs [N, T]


# ----------------------------------------------------------------------------- 7. per-policy entropy
@pytest.mark.parametrize("aggregation,lam", [("leader_follower", 1.0), ("symmetric", 0.5), ("symmetric", 2.0)])
def test_per_policy_entropy_matches_hand(aggregation, lam):
    ac, batch = _setup(3)
    coeffs = torch.tensor([0.0, 0.1, 0.3])
    loss = _loss(ac, 3, aggregation=aggregation, entropy_coeffs=coeffs, off_policy_coeff=lam,
                 advantage_normalization="batch")
    data = loss.aggregate(batch).reshape(-1)
    out = loss(data)
    pid = data["policy_id"]
    H = _H(ac.actor.log_std[pid].exp()).detach()
    c = coeffs[pid]
    w = torch.where(data["off_policy"], torch.tensor(lam), torch.tensor(1.0))
    # the loss reduces every loss_* term with the same lambda weights: -sum(w c H) / sum(w)
    torch.testing.assert_close(out["loss_entropy"].detach(), -(w * c * H).sum() / w.sum(), rtol=1e-5, atol=1e-7)
    if lam == 1.0:
        torch.testing.assert_close(out["loss_entropy"].detach(), -(c * H).mean(), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(out["entropy"], H.mean(), rtol=1e-5, atol=1e-6)
    if aggregation == "leader_follower":  # relabelled rows carry the leader's coefficient 0
        assert (c[data["off_policy"]] == 0).all()


def test_full_sapg_loss_matches_hand():
    """The whole SAPG loss on an aggregated batch: surrogate with mu, critic, entropy, lambda."""
    ac, batch = _setup(3)
    coeffs = torch.tensor([0.0, 0.05, 0.1])
    lam, eps = 0.7, 0.2
    loss = _loss(ac, 3, aggregation="symmetric", entropy_coeffs=coeffs, off_policy_coeff=lam, clip_epsilon=eps,
                 critic_coeff=2.0, advantage_normalization="batch")
    data = loss.aggregate(batch).reshape(-1)
    # perturb the behaviour log-prob a little so the ratio is not 1 on on-policy rows
    g = torch.Generator().manual_seed(1)
    data["action_log_prob"] = data["action_log_prob"] + 0.2 * torch.randn(data.numel(), generator=g)
    out = loss(data)
    pid, off = data["policy_id"], data["off_policy"]
    loc, scale = _loc_scale(ac, data["observation"], pid)
    r = torch.exp(_logp(loc, scale, data["action"]) - data["action_log_prob"])
    mu = torch.where(off, torch.exp(data["target_log_prob"] - data["action_log_prob"]), torch.ones_like(r))
    A = data["advantage"].squeeze(-1)
    gain = torch.minimum(r * A, torch.clamp(r, mu * (1 - eps), mu * (1 + eps)) * A)
    w = torch.where(off, torch.tensor(lam), torch.tensor(1.0))
    V = _V(ac, data["observation"], pid)
    ref_obj = -(w * gain).sum() / w.sum()
    ref_crit = (w * 2.0 * (V - data["value_target"].squeeze(-1)) ** 2).sum() / w.sum()
    ref_ent = -(w * coeffs[pid] * _H(scale)).sum() / w.sum()
    torch.testing.assert_close(out["loss_objective"], ref_obj, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out["loss_critic"], ref_crit, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out["loss_entropy"], ref_ent, rtol=1e-5, atol=1e-7)
    params = [ac.actor.latents.weight, ac.actor.log_std] + [p for p in ac.actor.head.backbone.mlp.parameters()]
    g_lib = torch.autograd.grad(out["loss_objective"] + out["loss_critic"] + out["loss_entropy"], params,
                                retain_graph=True)
    g_ref = torch.autograd.grad(ref_obj + ref_crit + ref_ent, params)
    for a, b in zip(g_lib, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------------------- 8. gradients
def test_off_policy_rows_only_train_the_leader():
    M, leader = 3, 1
    ac, batch = _setup(M)
    loss = _loss(ac, M, leader_id=leader, entropy_sigma=0.05, advantage_normalization="batch")
    data = loss.aggregate(batch)
    off = data[data["off_policy"][:, 0]].reshape(-1)
    assert (off["policy_id"] == leader).all()
    out = loss(off)
    total = out["loss_objective"] + out["loss_critic"] + out["loss_entropy"]
    g_lat, g_std = torch.autograd.grad(total, [ac.actor.latents.weight, ac.actor.log_std])
    followers = [i for i in range(M) if i != leader]
    assert g_lat[leader].abs().sum() > 0 and g_std[leader].abs().sum() > 0
    assert torch.equal(g_lat[followers], torch.zeros_like(g_lat[followers]))
    assert torch.equal(g_std[followers], torch.zeros_like(g_std[followers]))
    # the critic term alone also reaches only the leader's latent
    (g_crit,) = torch.autograd.grad(loss(off)["loss_critic"], [ac.actor.latents.weight])
    assert g_crit[leader].abs().sum() > 0
    assert torch.equal(g_crit[followers], torch.zeros_like(g_crit[followers]))

    # on the full aggregated batch, every follower learns from its own data
    out = loss(data.reshape(-1))
    total = out["loss_objective"] + out["loss_critic"] + out["loss_entropy"]
    g_lat, g_std = torch.autograd.grad(total, [ac.actor.latents.weight, ac.actor.log_std])
    assert (g_lat.abs().sum(-1) > 0).all() and (g_std.abs().sum(-1) > 0).all()


# ----------------------------------------------------------------------------- 9. determinism
def test_aggregate_is_deterministic_given_generator():
    ac, batch = _setup(3)
    a = _loss(ac, 3, generator=torch.Generator().manual_seed(123)).aggregate(batch)
    b = _loss(ac, 3, generator=torch.Generator().manual_seed(123)).aggregate(batch)
    _leaves_equal(a, b)
    srcs = {tuple(_source_rows(batch, _loss(ac, 3, generator=torch.Generator().manual_seed(s)).aggregate(batch)[N:]).tolist())
            for s in (123, 7, 99)}
    assert len(srcs) == 3, "different seeds sample different rows"
    # a generator is consumed: a second call of the same loss draws again
    loss = _loss(ac, 3, generator=torch.Generator().manual_seed(5))
    s1 = _source_rows(batch, loss.aggregate(batch)[N:])
    s2 = _source_rows(batch, loss.aggregate(batch)[N:])
    s3 = _source_rows(batch, _loss(ac, 3, generator=torch.Generator().manual_seed(5)).aggregate(batch)[N:])
    assert torch.equal(s1, s3) and not torch.equal(s1, s2)


# ----------------------------------------------------------------------------- 10. bounds loss
@pytest.mark.parametrize("lam", [1.0, 0.5])
def test_bounds_loss_matches_hand(lam):
    ac, batch = _setup(3)
    coef, bound = 0.3, 0.05
    loss = _loss(ac, 3, bounds_loss_coeff=coef, bounds=bound, off_policy_coeff=lam)
    data = loss.aggregate(batch).reshape(-1)
    out = loss(data)
    loc, _ = _loc_scale(ac, data["observation"], data["policy_id"])
    assert (loc > bound).any() and (loc < -bound).any() and (loc.abs() < bound).any()
    hinge = ((loc - bound).clamp_min(0) ** 2 + (-bound - loc).clamp_min(0) ** 2).sum(-1)
    w = torch.where(data["off_policy"], torch.tensor(lam), torch.tensor(1.0))
    ref = coef * (w * hinge).sum() / w.sum()
    torch.testing.assert_close(out["loss_bounds"], ref, rtol=1e-5, atol=1e-7)
    params = list(ac.actor.head.backbone.parameters())
    for a, b in zip(torch.autograd.grad(out["loss_bounds"], params), torch.autograd.grad(ref, params)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)
    assert "loss_bounds" not in _loss(ac, 3)(data).keys()


def test_aggregate_split_advantage_normalisation():
    """"split" standardises the on-policy (GAE) rows and the off-policy (TD(0)) rows separately."""
    ac, batch = _setup(3)
    raw = _loss(ac, 3, advantage_normalization="none").aggregate(batch)
    norm = _loss(ac, 3, advantage_normalization="split").aggregate(batch)  # same generator seed
    _leaves_equal(raw, norm, skip={"advantage"})
    a = raw["advantage"]
    on, off = a[:N], a[N:]
    torch.testing.assert_close(norm["advantage"][:N], (on - on.mean()) / on.std(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(norm["advantage"][N:], (off - off.mean()) / off.std(), rtol=1e-5, atol=1e-5)


def test_aggregate_split_centre_advantage_normalisation():
    """"split_centre" subtracts each group's own mean and divides by one pooled within-group std."""
    ac, batch = _setup(3)
    raw = _loss(ac, 3, advantage_normalization="none").aggregate(batch)
    norm = _loss(ac, 3, advantage_normalization="split_centre").aggregate(batch)  # same generator seed
    _leaves_equal(raw, norm, skip={"advantage"})
    a = raw["advantage"].double()
    on, off = a[:N] - a[:N].mean(), a[N:] - a[N:].mean()
    pooled = ((on.pow(2).sum() + off.pow(2).sum()) / (a.numel() - 2)).sqrt()
    torch.testing.assert_close(norm["advantage"][:N].double(), on / pooled, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(norm["advantage"][N:].double(), off / pooled, rtol=1e-5, atol=1e-5)
    # the two groups keep their relative scale (unlike "split")
    ratio = norm["advantage"][N:].std() / norm["advantage"][:N].std()
    torch.testing.assert_close(ratio, off.std().float() / on.std().float(), rtol=1e-4, atol=1e-6)


def _vtrace_loop(r, v, v_next, rho, done, term, gamma, lmbda=1.0):
    """IMPALA's V-trace target (rho_bar = c_bar = 1, c_i = lambda·min(1, rho_i)), literally, per env
    and step, float64: v_t = V(s_t) + sum_{k>=t} gamma^(k-t) (prod_{t<=i<k} c_i) rho_k delta_k,
    stopping at episode ends."""
    NN, TT = r.shape
    vs = torch.zeros(NN, TT, dtype=torch.float64)
    for e in range(NN):
        for t in range(TT):
            acc, coef = float(v[e, t]), 1.0
            for k in range(t, TT):
                delta = float(r[e, k]) + gamma * float(v_next[e, k]) * (1 - float(term[e, k])) - float(v[e, k])
                acc += coef * min(1.0, float(rho[e, k])) * delta
                if bool(done[e, k]):
                    break
                coef *= gamma * lmbda * min(1.0, float(rho[e, k]))
            vs[e, t] = acc
    return vs


@pytest.mark.parametrize("lmbda", [1.0, 0.8])
def test_aggregate_vtrace_off_policy_target(lmbda):
    """off_policy_target="vtrace": critic target = V-trace v_t (traces lambda·min(1, rho)),
    advantage = r + gamma((1 - lambda) V(s') + lambda v_{t+1}) - V(s_t) (v_{t+1} = V(s'_t) at
    episode ends and after the last step), against a per-step loop."""
    M = 3
    ac, batch = _setup(M)
    td0 = _loss(ac, M).aggregate(batch)
    out = _loss(ac, M, off_policy_target="vtrace", off_policy_lambda=lmbda).aggregate(batch)  # same rows
    _leaves_equal(td0[:N], out[:N])  # on-policy rows are untouched
    _leaves_equal(td0[N:], out[N:], skip={"advantage", "value_target"})
    off = out[N:]
    K = off.shape[0]
    lid = torch.zeros(K, T, dtype=torch.long)
    with torch.no_grad():
        v = _V(ac, off["observation"], lid).double()
        v_next = _V(ac, off["next", "observation"], lid).double()
    r = off["next", "reward"].squeeze(-1).double()
    done = off["next", "done"].squeeze(-1)
    term = off["next", "terminated"].squeeze(-1).double()
    assert done.any() and term.any() and (done & ~term.bool()).any()
    rho = (off["target_log_prob"] - off["action_log_prob"]).double().exp()
    assert (rho > 1).any() and (rho < 1).any(), "both truncated and untruncated weights are exercised"
    vs = _vtrace_loop(r, v, v_next, rho, done, term, GAMMA, lmbda)
    torch.testing.assert_close(off["value_target"].squeeze(-1).double(), vs, rtol=1e-4, atol=1e-4)
    nxt = torch.cat([vs[:, 1:], v_next[:, -1:]], 1)
    last = torch.zeros_like(done)
    last[:, -1] = True
    nxt = torch.where(done | last, v_next, nxt)
    adv = r + GAMMA * ((1 - lmbda) * v_next + lmbda * nxt) * (1 - term) - v
    torch.testing.assert_close(off["advantage"].squeeze(-1).double(), adv, rtol=1e-4, atol=1e-4)
    # with the collector's own policy (rho = 1, no truncation) inside an episode, v_t is the
    # n-step return to the episode end / rollout end: not the one-step target
    assert not torch.allclose(off["value_target"], td0[N:]["value_target"])
    with pytest.raises(ValueError, match="off_policy_target"):
        _loss(ac, M, off_policy_target="retrace")
    with pytest.raises(ValueError, match="off_policy_lambda"):
        _loss(ac, M, off_policy_target="vtrace", off_policy_lambda=1.5)


def test_vtrace_advantage_is_gae_when_policies_agree():
    """With identical latents and log-stds (rho = 1 on every relabelled row) the off-policy rows'
    V-trace(lambda) target and advantage are exactly TorchRL's GAE(lambda) on those rows."""
    M = 3
    torch.manual_seed(11)
    ac = make_actor_critic(3, 1, num_policies=M, latent_dim=4, hidden_sizes=(16,))
    with torch.no_grad():
        ac.latents.weight.copy_(ac.latents.weight[:1].expand(M, -1))
        ac.actor.log_std.fill_(-0.2)
    collector = PopulationCollector(make_env("pendulum", N, seed=1), ac.actor, num_policies=M, frames_per_batch=N * T)
    batch = next(iter(collector))
    collector.shutdown()
    gae = GAE(gamma=GAMMA, lmbda=0.8, value_network=ac.critic, average_gae=False)
    with torch.no_grad():
        batch = gae(batch)
    with pytest.warns(UserWarning, match="does not depend on 'policy_id'"):  # identical latents: said, not refused
        out = _loss(ac, M, off_policy_target="vtrace", off_policy_lambda=0.8, off_policy_ratio=2.0).aggregate(batch)
    off = out[N:]
    assert off.shape[0] == 2 * N // M
    torch.testing.assert_close(off["target_log_prob"], off["action_log_prob"], rtol=0, atol=1e-5)  # rho = 1
    with torch.no_grad():
        ref = gae(off.exclude("advantage", "value_target", "state_value", ("next", "state_value")))
    torch.testing.assert_close(off["advantage"], ref["advantage"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(off["value_target"], ref["value_target"], rtol=1e-4, atol=1e-5)


def test_gae_off_policy_target_is_torchrl_gae_under_the_leader_critic():
    """off_policy_target="gae": relabelled rows get TorchRL's GAE(lambda) target and advantage
    computed with the leader's critic along the follower's row (no trace truncation), even
    when leader and follower disagree (rho != 1), where V-trace differs."""
    M = 3
    ac, batch = _setup(M)
    lam = 0.8
    out = _loss(ac, M, off_policy_target="gae", off_policy_lambda=lam).aggregate(batch)
    vt = _loss(ac, M, off_policy_target="vtrace", off_policy_lambda=lam).aggregate(batch)  # same rows
    _leaves_equal(out[N:], vt[N:], skip={"advantage", "value_target"})
    _leaves_equal(out[:N], vt[:N])
    off = out[N:]
    rho = (off["target_log_prob"] - off["action_log_prob"]).exp()
    assert (rho > 1.05).any() and (rho < 0.95).any(), "the policies disagree on these rows"
    gae = GAE(gamma=GAMMA, lmbda=lam, value_network=ac.critic, average_gae=False)
    with torch.no_grad():
        ref = gae(off.exclude("advantage", "value_target", "state_value", ("next", "state_value")))
    torch.testing.assert_close(off["advantage"], ref["advantage"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(off["value_target"], ref["value_target"], rtol=1e-4, atol=1e-5)
    assert not torch.allclose(vt[N:]["advantage"], ref["advantage"], atol=1e-3)


def test_vtrace_lambda_target_matches_torchrl_estimators():
    """lambda = 1 is TorchRL's vtrace_advantage_estimate; with rho = 1 the target is TorchRL's
    GAE(lambda) value target, and the aggregate's advantage is GAE(lambda) itself."""
    from torchrl.objectives.value.functional import generalized_advantage_estimate, vtrace_advantage_estimate

    g = torch.Generator().manual_seed(3)
    R, TT = 5, 9
    v, v_next, r = (torch.randn(R, TT, 1, generator=g, dtype=torch.float64) for _ in range(3))
    done = torch.rand(R, TT, 1, generator=g) < 0.2
    term = done & (torch.rand(R, TT, 1, generator=g) < 0.5)
    log_rho = 0.7 * torch.randn(R, TT, 1, generator=g, dtype=torch.float64)
    ours = vtrace_lambda_target(0.9, 1.0, log_rho[..., 0], v[..., 0], v_next[..., 0], r[..., 0], done[..., 0], term[..., 0])
    # TorchRL's argument names are swapped: its rho = exp(log_pi - log_mu) is target / behaviour
    _, ref = vtrace_advantage_estimate(0.9, log_rho, torch.zeros_like(log_rho), v, v_next, r, done, term)
    torch.testing.assert_close(ours, ref[..., 0])
    zero = torch.zeros_like(log_rho[..., 0])
    ours = vtrace_lambda_target(0.9, 0.8, zero, v[..., 0], v_next[..., 0], r[..., 0], done[..., 0], term[..., 0])
    adv, target = generalized_advantage_estimate(0.9, 0.8, v, v_next, r, done, term)
    torch.testing.assert_close(ours, target[..., 0], rtol=1e-5, atol=1e-6)  # TorchRL GAE computes in float32
