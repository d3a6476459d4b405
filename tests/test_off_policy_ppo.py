"""OffPolicyClipPPOLoss (SAPG Eq. 3, 4, 9) checked number by number against hand computations.

Every reference value below is recomputed with plain torch ops from the actor's ``loc``/``scale``
and the critic's output, independently of the loss's own code path.
"""
from __future__ import annotations

import math

import pytest
import torch
from tensordict import TensorDict
from torchrl.envs.utils import ExplorationType, set_exploration_type
from torchrl.objectives import ClipPPOLoss

from torchrl_sapg.modules import make_actor_critic
from torchrl_sapg.objectives import OffPolicyClipPPOLoss

OBS_DIM, ACT_DIM, M, B = 3, 2, 2, 16
EPS = 0.2


# ----------------------------------------------------------------------------- fixtures / helpers
@pytest.fixture
def ac():
    torch.manual_seed(0)
    out = make_actor_critic(OBS_DIM, ACT_DIM, num_policies=M, latent_dim=4, hidden_sizes=(16,))
    with torch.no_grad():  # distinct per-policy log-stds so a wrong row lookup shows up
        out.actor.log_std.copy_(torch.tensor([[-0.3, 0.1], [0.2, -0.5]]))
    return out


def _batch(ac, *, seed=0, off=True, target=True, n_off=6):
    """A [B] batch: random obs / ids, sampled actions, a perturbed behaviour log-prob (so the
    ratio is not 1), random advantages and value targets; optionally off-policy flags on
    ``n_off`` rows and a random ``target_log_prob``."""
    g = torch.Generator().manual_seed(seed)
    td = TensorDict(
        {"observation": torch.randn(B, OBS_DIM, generator=g), "policy_id": torch.randint(0, M, (B,), generator=g)}, [B]
    )
    with torch.no_grad(), set_exploration_type(ExplorationType.RANDOM):
        td = ac.actor(td)
    td = td.detach()
    td["action_log_prob"] = td["action_log_prob"] + 0.25 * torch.randn(B, generator=g)
    td["advantage"] = torch.randn(B, 1, generator=g)
    td["value_target"] = torch.randn(B, 1, generator=g)
    if off:
        flags = torch.zeros(B, dtype=torch.bool)
        flags[torch.randperm(B, generator=g)[:n_off]] = True
        td["off_policy"] = flags
    if target:
        td["target_log_prob"] = td["action_log_prob"] + 0.3 * torch.randn(B, generator=g)
    return td


def _gauss(ac, td):
    """loc, scale of the current actor on td (graph kept, for gradient checks)."""
    head = ac.actor.head
    loc = head.backbone(td["observation"], td["policy_id"])
    scale = head.log_std[td["policy_id"]].exp()
    return loc, scale


def _hand_logp(loc, scale, action):
    return (-0.5 * ((action - loc) / scale) ** 2 - scale.log() - 0.5 * math.log(2 * math.pi)).sum(-1)


def _hand_entropy(scale):
    return (0.5 + 0.5 * math.log(2 * math.pi) + scale.log()).sum(-1)


def _hand_loss(ac, td, *, eps=EPS, eps_high=None, lam=1.0, mu_correction=True, critic_coeff=1.0, entropy_coeff=0.0, rho_bar=None):
    """Reference: weighted clipped surrogate + critic + entropy, plain torch ops."""
    loc, scale = _gauss(ac, td)
    logp = _hand_logp(loc, scale, td["action"])
    behaviour = td["action_log_prob"]
    r = torch.exp(logp - behaviour)
    off = td.get("off_policy", torch.zeros(B, dtype=torch.bool))
    if mu_correction and "target_log_prob" in td.keys():
        mu = torch.where(off, torch.exp(td["target_log_prob"] - behaviour), torch.ones(B))
    else:
        mu = torch.ones(B)
    A = td["advantage"].squeeze(-1)
    eps_high = eps if eps_high is None else eps_high
    clipped_r = torch.minimum(torch.maximum(r, mu * (1 - eps)), mu * (1 + eps_high))
    gain = torch.minimum(r * A, clipped_r * A)
    if rho_bar is not None:  # truncated importance weight: scale off rows by min(mu, rho_bar) / mu
        true_mu = torch.exp(td["target_log_prob"] - behaviour)
        gain = torch.where(off, gain * torch.clamp(true_mu, max=rho_bar) / true_mu, gain)
    w = torch.where(off, torch.full((B,), float(lam)), torch.ones(B))
    out = {"loss_objective": -(w * gain).sum() / w.sum()}
    V = ac.critic(td.select("observation", "policy_id").clone())["state_value"].squeeze(-1)
    out["loss_critic"] = (w * critic_coeff * (V - td["value_target"].squeeze(-1)) ** 2).sum() / w.sum()
    H = _hand_entropy(scale)
    out["loss_entropy"] = -(w * entropy_coeff * H).sum() / w.sum()
    with torch.no_grad():
        is_clipped = (r < mu * (1 - eps)) | (r > mu * (1 + eps_high))
        out.update(r=r.detach(), mu=mu, off=off, is_clipped=is_clipped, logp=logp.detach())
    return out


def _params(ac):
    seen, out = set(), []
    for p in list(ac.actor.parameters()) + list(ac.critic.parameters()):
        if id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out


def _grads(loss, params):
    g = torch.autograd.grad(loss, params, allow_unused=True, retain_graph=True)
    return [torch.zeros_like(p) if x is None else x for p, x in zip(params, g)]


def _ess(r):
    return r.sum() ** 2 / (r.numel() * (r**2).sum())


# ----------------------------------------------------------------------------- 1. surrogate with mu
@pytest.mark.parametrize("mu_correction", [True, False])
def test_surrogate_matches_hand_computation(ac, mu_correction):
    td = _batch(ac)
    loss = OffPolicyClipPPOLoss(
        ac.actor, ac.critic, clip_epsilon=EPS, entropy_bonus=False, critic_coeff=1.0, loss_critic_type="l2",
        mu_correction=mu_correction,
    )
    out = loss(td)
    ref = _hand_loss(ac, td, mu_correction=mu_correction)
    # the data must exercise every branch: off rows with mu != 1 and both clipped / unclipped rows
    assert ref["off"].sum() == 6
    assert 0 < ref["is_clipped"].sum() < B
    if mu_correction:
        assert (ref["mu"][ref["off"]] - 1).abs().min() > 1e-3
    else:
        assert (ref["mu"] == 1).all()
    torch.testing.assert_close(out["loss_objective"], ref["loss_objective"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out["loss_critic"], ref["loss_critic"], rtol=1e-5, atol=1e-6)
    # gradients agree too (actor and critic, shared latents included)
    params = _params(ac)
    g_lib = _grads(out["loss_objective"] + out["loss_critic"], params)
    g_ref = _grads(ref["loss_objective"] + ref["loss_critic"], params)
    for a, b in zip(g_lib, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("rho_bar", [1.0, 0.9])
def test_mu_truncation_matches_hand_computation(ac, rho_bar):
    """mu_truncation = rho_bar scales each off-policy row by min(mu, rho_bar)/mu: its gradient at
    the behaviour-relative ratio r = mu becomes min(mu, rho_bar)·A·grad log pi (IMPALA)."""
    td = _batch(ac, seed=3)
    mu = torch.exp(td["target_log_prob"] - td["action_log_prob"])[td["off_policy"]]
    assert (mu > rho_bar).any() and (mu < rho_bar).any()  # both truncated and untouched rows
    kw = dict(clip_epsilon=EPS, entropy_bonus=False, critic_coeff=1.0, loss_critic_type="l2")
    out = OffPolicyClipPPOLoss(ac.actor, ac.critic, mu_truncation=rho_bar, **kw)(td)
    ref = _hand_loss(ac, td, rho_bar=rho_bar)
    torch.testing.assert_close(out["loss_objective"], ref["loss_objective"], rtol=1e-5, atol=1e-6)
    params = _params(ac)
    for a, b in zip(_grads(out["loss_objective"], params), _grads(ref["loss_objective"], params)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    # it differs from the untruncated loss, and leaves all-on-policy data untouched
    plain = OffPolicyClipPPOLoss(ac.actor, ac.critic, **kw)(td)["loss_objective"]
    assert not torch.allclose(out["loss_objective"], plain)
    on_only = td.exclude("off_policy")
    torch.testing.assert_close(
        OffPolicyClipPPOLoss(ac.actor, ac.critic, mu_truncation=rho_bar, **kw)(on_only)["loss_objective"],
        OffPolicyClipPPOLoss(ac.actor, ac.critic, **kw)(on_only)["loss_objective"],
    )
    with pytest.raises(ValueError, match="mu_truncation"):
        OffPolicyClipPPOLoss(ac.actor, ac.critic, mu_truncation=0.0, **kw)


def test_mu_changes_the_loss_only_through_off_policy_rows(ac):
    """mu_correction matters on off rows; on-policy rows ignore target_log_prob entirely."""
    td = _batch(ac)
    kw = dict(clip_epsilon=EPS, entropy_bonus=False, critic_coeff=1.0, loss_critic_type="l2")
    with_mu = OffPolicyClipPPOLoss(ac.actor, ac.critic, mu_correction=True, **kw)(td)["loss_objective"]
    no_mu = OffPolicyClipPPOLoss(ac.actor, ac.critic, mu_correction=False, **kw)(td)["loss_objective"]
    assert not torch.allclose(with_mu, no_mu)
    # scrambling target_log_prob on the on-policy rows changes nothing
    td2 = td.clone()
    on = ~td2["off_policy"]
    td2["target_log_prob"][on] = td2["target_log_prob"][on] + 5.0
    torch.testing.assert_close(OffPolicyClipPPOLoss(ac.actor, ac.critic, mu_correction=True, **kw)(td2)["loss_objective"], with_mu)


@pytest.mark.parametrize("lam", [0.0, 0.5, 2.0])
def test_off_policy_coeff_weights_actor_critic_and_entropy(ac, lam):
    td = _batch(ac, seed=1)
    loss = OffPolicyClipPPOLoss(
        ac.actor, ac.critic, clip_epsilon=EPS, entropy_coeff=0.03, critic_coeff=0.7, loss_critic_type="l2",
        off_policy_coeff=lam,
    )
    out = loss(td)
    ref = _hand_loss(ac, td, lam=lam, critic_coeff=0.7, entropy_coeff=0.03)
    for key in ("loss_objective", "loss_critic", "loss_entropy"):
        torch.testing.assert_close(out[key], ref[key], rtol=1e-5, atol=1e-6, msg=key)
    params = _params(ac)
    total = out["loss_objective"] + out["loss_critic"] + out["loss_entropy"]
    total_ref = ref["loss_objective"] + ref["loss_critic"] + ref["loss_entropy"]
    for a, b in zip(_grads(total, params), _grads(total_ref, params)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_lambda_zero_equals_on_policy_only_loss(ac):
    """lambda = 0: the off-policy rows are invisible (loss and gradients)."""
    td = _batch(ac, seed=2)
    kw = dict(clip_epsilon=EPS, entropy_coeff=0.02, critic_coeff=0.5, loss_critic_type="l2")
    out = OffPolicyClipPPOLoss(ac.actor, ac.critic, off_policy_coeff=0.0, **kw)(td)
    on_only = td[~td["off_policy"]]
    ref = ClipPPOLoss(ac.actor, ac.critic, **kw)(on_only.exclude("off_policy", "target_log_prob"))
    params = _params(ac)
    for key in ("loss_objective", "loss_critic", "loss_entropy"):
        torch.testing.assert_close(out[key], ref[key], rtol=1e-5, atol=1e-6, msg=key)
        for a, b in zip(_grads(out[key], params), _grads(ref[key], params)):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_lambda_zero_on_all_off_policy_minibatch_is_finite(ac):
    td = _batch(ac, seed=3, n_off=B)  # every row off-policy (possible in a shuffled minibatch)
    out = OffPolicyClipPPOLoss(
        ac.actor, ac.critic, clip_epsilon=EPS, entropy_coeff=0.01, critic_coeff=1.0, loss_critic_type="l2",
        off_policy_coeff=0.0,
    )(td)
    for key in ("loss_objective", "loss_critic", "loss_entropy"):
        assert torch.isfinite(out[key]), key
        assert out[key] == 0, key


def test_negative_lambda_rejected(ac):
    with pytest.raises(ValueError, match="off_policy_coeff"):
        OffPolicyClipPPOLoss(ac.actor, ac.critic, off_policy_coeff=-0.1)


def test_asymmetric_clip_is_centred_on_mu(ac):
    """clip_epsilon=(low, high): off-policy rows clip r to [mu(1 - low), mu(1 + high)]."""
    td = _batch(ac, seed=11)
    td["target_log_prob"] = td["action_log_prob"] + 0.6 * torch.randn(B, generator=torch.Generator().manual_seed(3))
    loss = OffPolicyClipPPOLoss(ac.actor, ac.critic, clip_epsilon=(0.05, 0.3), entropy_bonus=False)
    out = loss(td.clone())
    ref = _hand_loss(ac, td, eps=0.05, eps_high=0.3)
    torch.testing.assert_close(out["loss_objective"], ref["loss_objective"])
    assert float(out["clip_fraction"]) == pytest.approx(float(ref["is_clipped"].float().mean()))
    assert 0 < float(ref["is_clipped"].float().mean()) < 1  # the bounds bind on some rows only


# ----------------------------------------------------------------------------- 2. == ClipPPOLoss on-policy
@pytest.mark.parametrize("keys_present", [False, True])
def test_equals_torchrl_clip_ppo_when_all_on_policy(ac, keys_present):
    td = _batch(ac, seed=4, off=False, target=False)
    if keys_present:
        td["off_policy"] = torch.zeros(B, dtype=torch.bool)
        td["target_log_prob"] = td["action_log_prob"] + torch.randn(B)  # ignored on on-policy rows
    kw = dict(clip_epsilon=EPS, entropy_coeff=0.05, critic_coeff=0.5, loss_critic_type="l2")
    ours = OffPolicyClipPPOLoss(ac.actor, ac.critic, **kw)
    theirs = ClipPPOLoss(ac.actor, ac.critic, **kw)
    out = ours(td)
    ref = theirs(td.exclude("off_policy", "target_log_prob"))
    assert 0 < float(ref["clip_fraction"]) < 1  # the batch exercises the clip
    for key in ("loss_objective", "loss_critic", "loss_entropy", "entropy", "clip_fraction", "ESS", "kl_approx",
                "max_ratio", "mean_ratio"):
        torch.testing.assert_close(out[key], ref[key], rtol=1e-5, atol=1e-6, msg=key)
    params = _params(ac)
    tot = out["loss_objective"] + out["loss_critic"] + out["loss_entropy"]
    tot_ref = ref["loss_objective"] + ref["loss_critic"] + ref["loss_entropy"]
    for a, b in zip(_grads(tot, params), _grads(tot_ref, params)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    # on-policy-only statistics
    torch.testing.assert_close(out["clip_fraction_on"], ref["clip_fraction"])
    torch.testing.assert_close(out["ESS_on"], ref["ESS"])
    assert float(out["clip_fraction_off"]) == 0.0 and float(out["ESS_off"]) == 0.0
    assert float(out["off_policy_fraction"]) == 0.0
    assert float(out["mu_mean"]) == float(out["mu_min"]) == float(out["mu_max"]) == 1.0


def test_equals_torchrl_clip_ppo_smooth_l1_and_value_clipping(ac):
    """Other ClipPPOLoss options pass through unchanged when everything is on-policy."""
    td = _batch(ac, seed=5, off=False, target=False)
    with torch.no_grad():
        td["state_value"] = ac.critic(td.select("observation", "policy_id").clone())["state_value"] + 0.3 * torch.randn(B, 1)
    kw = dict(clip_epsilon=EPS, entropy_coeff=0.01, critic_coeff=2.0, loss_critic_type="smooth_l1", clip_value=0.1)
    out = OffPolicyClipPPOLoss(ac.actor, ac.critic, **kw)(td)
    ref = ClipPPOLoss(ac.actor, ac.critic, **kw)(td)
    for key in ("loss_objective", "loss_critic", "loss_entropy", "value_clip_fraction"):
        torch.testing.assert_close(out[key], ref[key], rtol=1e-5, atol=1e-6, msg=key)


# ----------------------------------------------------------------------------- 3. statistics
def test_reported_statistics_match_hand_computation(ac):
    td = _batch(ac, seed=6, n_off=7)
    out = OffPolicyClipPPOLoss(ac.actor, ac.critic, clip_epsilon=EPS, entropy_coeff=0.01, critic_coeff=1.0,
                               loss_critic_type="l2", mu_correction=True)(td)
    ref = _hand_loss(ac, td)
    r, mu, off, clipped = ref["r"], ref["mu"], ref["off"], ref["is_clipped"]
    on = ~off
    assert clipped[on].any() and clipped[off].any() and not clipped[off].all()
    close = dict(rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out["clip_fraction"], clipped.float().mean(), **close)
    torch.testing.assert_close(out["clip_fraction_on"], clipped[on].float().mean(), **close)
    torch.testing.assert_close(out["clip_fraction_off"], clipped[off].float().mean(), **close)
    torch.testing.assert_close(out["ESS"], _ess(r), **close)
    torch.testing.assert_close(out["ESS_on"], _ess(r[on]), **close)
    torch.testing.assert_close(out["ESS_off"], _ess(r[off]), **close)
    mu_off = torch.exp(td["target_log_prob"] - td["action_log_prob"])[off]
    torch.testing.assert_close(out["mu_mean"], mu_off.mean(), **close)
    torch.testing.assert_close(out["mu_min"], mu_off.min(), **close)
    torch.testing.assert_close(out["mu_max"], mu_off.max(), **close)
    torch.testing.assert_close(out["off_policy_fraction"], torch.tensor(7 / B), **close)
    torch.testing.assert_close(out["kl_approx"], (td["action_log_prob"] - ref["logp"])[on].mean(), **close)
    torch.testing.assert_close(out["max_ratio"], r.max(), **close)
    torch.testing.assert_close(out["mean_ratio"], r.mean(), **close)
    torch.testing.assert_close(out["entropy"], _hand_entropy(_gauss(ac, td)[1]).mean().detach(), **close)


def test_part_ess_does_not_overflow_with_extreme_ratios(ac):
    """ESS_on / ESS_off stay finite and exact when log r is in the hundreds (float32 exp overflows at ~88)."""
    td = _batch(ac, seed=11, n_off=7)
    g = torch.Generator().manual_seed(3)
    td["action_log_prob"] = td["action_log_prob"] - 300.0 + 5.0 * torch.randn(B, generator=g)  # log r ~ 300 +- 5
    td["target_log_prob"] = td["action_log_prob"] + 0.1
    out = OffPolicyClipPPOLoss(ac.actor, ac.critic, clip_epsilon=EPS, entropy_bonus=False, critic_coeff=1.0,
                               loss_critic_type="l2")(td)
    loc, scale = _gauss(ac, td)
    log_r = (_hand_logp(loc, scale, td["action"]) - td["action_log_prob"]).double()
    off = td["off_policy"]
    for name, part in (("ESS_on", log_r[~off]), ("ESS_off", log_r[off])):
        w = (part - part.max()).exp()  # ESS is invariant to a common scale of the weights
        torch.testing.assert_close(out[name].double(), _ess(w), rtol=1e-4, atol=1e-6, msg=name)


def test_statistics_all_off_policy(ac):
    td = _batch(ac, seed=7, n_off=B)
    out = OffPolicyClipPPOLoss(ac.actor, ac.critic, clip_epsilon=EPS, entropy_bonus=False, critic_coeff=1.0,
                               loss_critic_type="l2")(td)
    ref = _hand_loss(ac, td)
    assert float(out["off_policy_fraction"]) == 1.0
    assert float(out["ESS_on"]) == 0.0 and float(out["clip_fraction_on"]) == 0.0
    assert float(out["kl_approx"]) == 0.0  # no on-policy rows
    torch.testing.assert_close(out["ESS_off"], _ess(ref["r"]), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out["loss_objective"], ref["loss_objective"], rtol=1e-5, atol=1e-6)


DIAGNOSTICS = ("clip_fraction_on", "clip_fraction_off", "ESS_on", "ESS_off", "mu_mean", "mu_min", "mu_max",
               "off_policy_fraction")


@pytest.mark.parametrize("sizes", [(B, B, B), (B, B // 2)], ids=["equal", "unequal"])
def test_deferred_diagnostics_average_the_per_call_values(ac, sizes):
    """Inside deferred_diagnostics() forward leaves the diagnostics out (kl_approx stays) and means() averages what
    each call would have reported: one batched reduction for equal minibatches, one per call otherwise."""
    loss = OffPolicyClipPPOLoss(ac.actor, ac.critic, clip_epsilon=EPS, entropy_bonus=False, critic_coeff=1.0,
                                loss_critic_type="l2")
    batches = [_batch(ac, seed=20 + i, n_off=5 + i)[:n] for i, n in enumerate(sizes)]
    eager = [loss(td) for td in batches]
    with loss.deferred_diagnostics() as pending:
        deferred = [loss(td) for td in batches]
    means = pending.means()
    assert set(means) == set(DIAGNOSTICS)
    for name in DIAGNOSTICS:
        assert name not in deferred[0].keys()
        expected = torch.stack([out[name] for out in eager]).mean()
        torch.testing.assert_close(means[name], expected, rtol=1e-5, atol=1e-6, msg=name)
    assert not torch.equal(eager[0]["mu_mean"], eager[1]["mu_mean"])  # the average is not one call's value
    for a, b in zip(eager, deferred):
        torch.testing.assert_close(b["kl_approx"], a["kl_approx"], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(b["loss_objective"], a["loss_objective"])
    # outside the context forward reports them again, and a context without calls has nothing to report
    assert "mu_mean" in loss(batches[0]).keys()
    with loss.deferred_diagnostics() as empty:
        pass
    assert empty.means() == {}


def test_deferred_kl_approx_is_left_out_of_forward_and_averaged(ac):
    """deferred_diagnostics(kl_approx=True): forward reports no kl_approx (not even ClipPPOLoss's all-rows one) and
    means() gives the average of the on-policy values each call would have reported."""
    loss = OffPolicyClipPPOLoss(ac.actor, ac.critic, clip_epsilon=EPS, entropy_bonus=False, critic_coeff=1.0,
                                loss_critic_type="l2")
    batches = [_batch(ac, seed=30 + i, n_off=4 + 3 * i) for i in range(3)]
    eager = [loss(td) for td in batches]
    with loss.deferred_diagnostics(kl_approx=True) as pending:
        deferred = [loss(td) for td in batches]
    assert all("kl_approx" not in out.keys() for out in deferred)
    means = pending.means()
    assert set(means) == {*DIAGNOSTICS, "kl_approx"}
    expected = torch.stack([out["kl_approx"] for out in eager]).mean()
    torch.testing.assert_close(means["kl_approx"], expected, rtol=1e-5, atol=1e-6)
    assert not torch.equal(eager[0]["kl_approx"], eager[1]["kl_approx"])
    for a, b in zip(eager, deferred):
        torch.testing.assert_close(b["loss_objective"], a["loss_objective"])


# ----------------------------------------------------------------------------- multi-dim batches
def _on_policy_2d(ac):
    """A [4, 4] on-policy batch whose behaviour log-prob is the current policy's (ratio == 1)."""
    td = _batch(ac, seed=8, off=False, target=False)
    with torch.no_grad():
        td["action_log_prob"] = ac.actor.get_dist(td).log_prob(td["action"])
    td = td.reshape(4, 4)
    td["off_policy"] = torch.zeros(4, 4, dtype=torch.bool)
    td["target_log_prob"] = td["action_log_prob"].clone()
    return td


def test_2d_batch_losses_equal_clip_ppo(ac):
    td = _on_policy_2d(ac)
    kw = dict(clip_epsilon=EPS, entropy_coeff=0.05, critic_coeff=0.5, loss_critic_type="l2")
    out = OffPolicyClipPPOLoss(ac.actor, ac.critic, **kw)(td)
    ref = ClipPPOLoss(ac.actor, ac.critic, **kw)(td.exclude("off_policy", "target_log_prob"))
    for key in ("loss_objective", "loss_critic", "loss_entropy", "clip_fraction", "kl_approx"):
        torch.testing.assert_close(out[key], ref[key], rtol=1e-5, atol=1e-6, msg=key)
    # the weighted reduction is independent of the batch layout
    flat = OffPolicyClipPPOLoss(ac.actor, ac.critic, **kw)(td.reshape(-1))
    for key in ("loss_objective", "loss_critic", "loss_entropy"):
        torch.testing.assert_close(out[key], flat[key], rtol=1e-5, atol=1e-6, msg=key)


def test_2d_batch_ess_is_normalised(ac):
    td = _on_policy_2d(ac)
    kw = dict(clip_epsilon=EPS, entropy_bonus=False, critic_coeff=0.5, loss_critic_type="l2")
    out = OffPolicyClipPPOLoss(ac.actor, ac.critic, **kw)(td)
    ref = ClipPPOLoss(ac.actor, ac.critic, **kw)(td.exclude("off_policy", "target_log_prob"))
    # ratio == 1 on every row: the normalised effective sample size is 1, whatever the layout
    torch.testing.assert_close(ref["ESS"], torch.ones_like(ref["ESS"]), rtol=1e-5, atol=1e-5)
    # ESS as ClipPPOLoss reports it (one per column of a 2-d batch); ESS_on / ESS_off over all rows
    assert out["ESS"].shape == ref["ESS"].shape == (td.shape[1],)
    torch.testing.assert_close(out["ESS"], ref["ESS"])
    assert out["ESS_on"].shape == ()
    torch.testing.assert_close(out["ESS_on"], torch.ones(()), rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- ClipPPOLoss options
@pytest.mark.filterwarnings("ignore:No target network updater")
@pytest.mark.parametrize("extra", [{"delay_actor": True}, {"max_importance_ratio": 1.05}], ids=["delay_actor", "max_is_ratio"])
def test_clip_ppo_options_are_honoured_or_rejected(ac, extra):
    td = _batch(ac, seed=4, off=False, target=False)
    kw = dict(clip_epsilon=EPS, entropy_bonus=False, critic_coeff=0.5, loss_critic_type="l2", **extra)
    try:
        ours = OffPolicyClipPPOLoss(ac.actor, ac.critic, **kw)
    except ValueError:
        return  # rejecting an unsupported option is a fine fix too
    theirs = ClipPPOLoss(ac.actor, ac.critic, **kw)
    with torch.no_grad():  # move the current policy away from the (delayed) proximal copy
        for p in ac.actor.head.backbone.mlp.parameters():
            p.add_(0.1 * torch.randn_like(p))
    torch.testing.assert_close(ours(td)["loss_objective"], theirs(td)["loss_objective"], rtol=1e-5, atol=1e-6)
