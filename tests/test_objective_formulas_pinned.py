"""Loss-formula details of ``torchrl_sapg.objectives`` that the other tests left unpinned (found by mutation
testing): the lambda weights (Eq. 4 / 9) under ``reduction="sum"`` / ``"none"`` and under loss masks, the
on/off-policy diagnostics with ``mu_correction=False`` and at extreme log-ratios, the bounds loss over several
action dims, SAPGLoss's paper / reference defaults, and the recurrent bootstrap of relabelled rows.

Every reference value is recomputed here with plain torch ops on small seeded TensorDicts.
"""
from __future__ import annotations

import math

import pytest
import torch
from tensordict import TensorDict
from torchrl.envs.utils import ExplorationType, set_exploration_type

from torchrl_sapg.collectors import PopulationCollector
from torchrl_sapg.envs import make_env
from torchrl_sapg.modules import make_actor_critic
from torchrl_sapg.modules.recurrent import (add_recurrent_transforms, collection_policy, make_recurrent_actor_critic,
                                            recurrent_mode)
from torchrl_sapg.objectives import OffPolicyClipPPOLoss, SAPGLoss

from test_sapg_loss import _nstep_loop  # Eq. 5 as a literal loop

OBS_DIM, ACT_DIM, M, B = 3, 2, 2, 16
EPS = 0.2


# ----------------------------------------------------------------------------- helpers
def _ac(seed=0):
    torch.manual_seed(seed)
    ac = make_actor_critic(OBS_DIM, ACT_DIM, num_policies=M, latent_dim=4, hidden_sizes=(16,))
    with torch.no_grad():
        ac.actor.log_std.copy_(torch.tensor([[-0.3, 0.1], [0.2, -0.5]]))
    return ac


def _batch(ac, *, seed=0, n_off=6, obs_scale=1.0, mu_noise=0.3):
    """A [B] batch: random obs / ids, sampled actions, a perturbed behaviour log-prob (ratio != 1), random
    advantages / value targets, ``n_off`` rows flagged off-policy and a random ``target_log_prob`` (mu != 1)."""
    g = torch.Generator().manual_seed(seed)
    td = TensorDict({"observation": obs_scale * torch.randn(B, OBS_DIM, generator=g),
                     "policy_id": torch.randint(0, M, (B,), generator=g)}, [B])
    with torch.no_grad(), set_exploration_type(ExplorationType.RANDOM):
        td = ac.actor(td).detach()
    td["action_log_prob"] = td["action_log_prob"] + 0.25 * torch.randn(B, generator=g)
    td["advantage"] = torch.randn(B, 1, generator=g)
    td["value_target"] = torch.randn(B, 1, generator=g)
    off = torch.zeros(B, dtype=torch.bool)
    off[torch.randperm(B, generator=g)[:n_off]] = True
    td["off_policy"] = off
    td["target_log_prob"] = td["action_log_prob"] + mu_noise * torch.randn(B, generator=g)
    return td


def _rows(ac, td, *, eps=EPS, mu_correction=True):
    """Per-row reference terms: clipped surrogate gain (Eq. 3), squared critic error, entropy, r, mu."""
    ids = td["policy_id"]
    loc = ac.actor.head.backbone(td["observation"], ids)
    scale = ac.actor.log_std[ids].exp()
    logp = (-0.5 * ((td["action"] - loc) / scale) ** 2 - scale.log() - 0.5 * math.log(2 * math.pi)).sum(-1)
    r = torch.exp(logp - td["action_log_prob"])
    off = td["off_policy"]
    mu = torch.exp(td["target_log_prob"] - td["action_log_prob"])
    centre = torch.where(off, mu, torch.ones_like(mu)) if mu_correction else torch.ones_like(mu)
    A = td["advantage"].squeeze(-1)
    gain = torch.minimum(r * A, torch.minimum(torch.maximum(r, centre * (1 - eps)), centre * (1 + eps)) * A)
    V = ac.critic(td.select("observation", "policy_id").clone())["state_value"].squeeze(-1)
    sq = (V - td["value_target"].squeeze(-1)) ** 2
    H = (0.5 + 0.5 * math.log(2 * math.pi) + scale.log()).sum(-1)
    return {"gain": gain, "sq": sq, "H": H, "r": r.detach(), "mu": mu, "centre": centre, "off": off, "loc": loc}


def _weights(off, lam):
    return torch.where(off, torch.tensor(float(lam)), torch.tensor(1.0))


CLOSE = dict(rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- lambda under other reductions
@pytest.mark.parametrize("reduction", ["sum", "none"])
def test_sum_and_none_reductions_weight_off_policy_rows_by_lambda(reduction):
    """reduction="sum" is sum(w·l) and "none" is w·l per row, w = lambda on off-policy rows (Eq. 4 / 9)."""
    ac = _ac()
    td = _batch(ac, seed=1)
    lam, c_crit, c_ent = 0.4, 0.7, 0.03
    out = OffPolicyClipPPOLoss(ac.actor, ac.critic, clip_epsilon=EPS, entropy_coeff=c_ent, critic_coeff=c_crit,
                               loss_critic_type="l2", off_policy_coeff=lam, reduction=reduction)(td)
    ref = _rows(ac, td)
    w = _weights(ref["off"], lam)
    per_row = {"loss_objective": -w * ref["gain"], "loss_critic": w * c_crit * ref["sq"],
               "loss_entropy": -w * c_ent * ref["H"]}
    for key, rows in per_row.items():
        expected = rows.sum() if reduction == "sum" else rows
        torch.testing.assert_close(out[key].reshape(expected.shape), expected, **CLOSE, msg=key)


# ----------------------------------------------------------------------------- lambda under loss masks
@pytest.mark.parametrize("masks", ["collector_mask", "collector_mask_and_shifted_valid"])
def test_masked_mean_is_the_lambda_weighted_mean_over_the_kept_rows(masks):
    """With loss masks (both auto keys ANDed) the mean is sum(w·m·l) / sum(w·m): lambda weights, kept rows only."""
    ac = _ac()
    td = _batch(ac, seed=2, n_off=8)
    g = torch.Generator().manual_seed(5)
    keep = torch.rand(B, generator=g) > 0.3
    td["collector", "mask"] = keep.clone()
    if masks == "collector_mask_and_shifted_valid":
        valid = torch.rand(B, generator=g) > 0.3
        td["shifted_valid"] = valid.unsqueeze(-1)
        assert (keep & ~valid).any() and (valid & ~keep).any()  # AND and OR differ on this data
        keep = keep & valid
    off = td["off_policy"]
    assert (keep & off).any() and (keep & ~off).any() and (~keep & off).any() and (~keep & ~off).any()
    lam, c_crit, c_ent = 0.3, 0.7, 0.03
    out = OffPolicyClipPPOLoss(ac.actor, ac.critic, clip_epsilon=EPS, entropy_coeff=c_ent, critic_coeff=c_crit,
                               loss_critic_type="l2", off_policy_coeff=lam)(td)
    ref = _rows(ac, td)
    wm = _weights(off, lam) * keep.float()
    for key, rows in {"loss_objective": -ref["gain"], "loss_critic": c_crit * ref["sq"],
                      "loss_entropy": -c_ent * ref["H"]}.items():
        torch.testing.assert_close(out[key], (wm * rows).sum() / wm.sum(), **CLOSE, msg=key)


def test_masked_rows_holding_nan_do_not_leak_into_the_lambda_weighted_mean():
    """Masked-out rows may hold NaN advantages / targets: they are selected away, not multiplied by a zero weight."""
    ac = _ac()
    td = _batch(ac, seed=3, n_off=8)
    keep = torch.rand(B, generator=torch.Generator().manual_seed(7)) > 0.3
    assert (~keep & td["off_policy"]).any() and (~keep & ~td["off_policy"]).any()
    clean = td.clone()
    td["collector", "mask"] = keep
    td["advantage"] = torch.where(keep.unsqueeze(-1), td["advantage"], float("nan"))
    td["value_target"] = torch.where(keep.unsqueeze(-1), td["value_target"], float("nan"))
    lam = 0.5
    out = OffPolicyClipPPOLoss(ac.actor, ac.critic, clip_epsilon=EPS, entropy_coeff=0.0, critic_coeff=1.0,
                               loss_critic_type="l2", off_policy_coeff=lam)(td)
    ref = _rows(ac, clean)
    wm = _weights(clean["off_policy"], lam) * keep.float()
    torch.testing.assert_close(out["loss_objective"], -(wm * ref["gain"]).sum() / wm.sum(), **CLOSE)
    torch.testing.assert_close(out["loss_critic"], (wm * ref["sq"]).sum() / wm.sum(), **CLOSE)


# ----------------------------------------------------------------------------- diagnostics
def test_clip_fractions_follow_the_one_plus_minus_eps_clip_without_mu_correction():
    """mu_correction=False clips r to 1 ± eps on every row, and clip_fraction_on / _off count exactly those rows."""
    ac = _ac()
    td = _batch(ac, seed=4, n_off=8, mu_noise=0.6)
    out = OffPolicyClipPPOLoss(ac.actor, ac.critic, clip_epsilon=EPS, entropy_bonus=False, critic_coeff=1.0,
                               loss_critic_type="l2", mu_correction=False)(td)
    ref = _rows(ac, td, mu_correction=False)
    r, off = ref["r"], ref["off"]
    clipped = (r < 1 - EPS) | (r > 1 + EPS)
    around_mu = (r < ref["mu"] * (1 - EPS)) | (r > ref["mu"] * (1 + EPS))
    assert clipped[off].sum() != around_mu[off].sum()  # the data tells the two clip centres' fractions apart
    torch.testing.assert_close(out["loss_objective"], -ref["gain"].mean(), **CLOSE)
    torch.testing.assert_close(out["clip_fraction_off"], clipped[off].float().mean(), **CLOSE)
    torch.testing.assert_close(out["clip_fraction_on"], clipped[~off].float().mean(), **CLOSE)
    torch.testing.assert_close(out["clip_fraction"], clipped.float().mean(), **CLOSE)


def test_part_ess_is_exact_when_the_parts_sit_at_opposite_extreme_log_ratios():
    """ESS_on / ESS_off = (sum w)^2 / (n sum w^2) per part, from logsumexp, with log r ~ +300 on the on-policy
    rows and ~ -300 on the off-policy rows and a spread of 60 inside each part (no overflow in float32)."""
    ac = _ac()
    td = _batch(ac, seed=4, n_off=8)
    off = td["off_policy"]
    g = torch.Generator().manual_seed(9)
    spread = torch.linspace(-30.0, 30.0, B)[torch.randperm(B, generator=g)]
    log_r = torch.where(off, -300.0, 300.0) + spread
    with torch.no_grad():
        logp = ac.actor.get_dist(td.clone()).log_prob(td["action"])
    td["action_log_prob"] = logp - log_r
    td["target_log_prob"] = td["action_log_prob"] + 0.1
    out = OffPolicyClipPPOLoss(ac.actor, ac.critic, clip_epsilon=EPS, entropy_bonus=False, critic_coeff=1.0,
                               loss_critic_type="l2")(td)
    lr = (logp - td["action_log_prob"]).double()
    for name, part in (("ESS_on", lr[~off]), ("ESS_off", lr[off])):
        assert part.max() - part.min() > 45  # w^2 would overflow float32 if shifted by anything but the part's max
        expected = torch.exp(2 * part.logsumexp(0) - (2 * part).logsumexp(0)) / part.numel()
        assert torch.isfinite(out[name])
        torch.testing.assert_close(out[name].double(), expected, rtol=1e-4, atol=1e-7, msg=name)


# ----------------------------------------------------------------------------- SAPGLoss terms and defaults
def test_bounds_loss_sums_the_squared_hinge_over_action_dims():
    """loss_bounds = coeff · sum_rows w · sum_d hinge(loc_d) / sum w, the hinge summed (not averaged) over dims."""
    ac = _ac()
    td = _batch(ac, seed=5, obs_scale=4.0)
    coef, bound, lam = 0.3, 0.2, 0.5
    out = SAPGLoss(ac.actor, ac.critic, num_policies=M, bounds_loss_coeff=coef, bounds=bound, off_policy_coeff=lam)(td)
    loc = _rows(ac, td)["loc"]
    outside = (loc.abs() > bound)
    assert (outside.sum(-1) == 2).any() and (outside.sum(-1) == 1).any()  # rows with one and with both dims out
    hinge = ((loc - bound).clamp_min(0) ** 2 + (-bound - loc).clamp_min(0) ** 2).sum(-1)
    w = _weights(td["off_policy"], lam)
    torch.testing.assert_close(out["loss_bounds"], coef * (w * hinge).sum() / w.sum(), **CLOSE)


def test_sapg_default_bound_is_the_reference_codes_1_1():
    """SAPGLoss's default ``bounds`` is 1.1 (rl_games' bounds loss, REFERENCE-NOTES)."""
    ac = _ac()
    td = _batch(ac, seed=6, obs_scale=8.0)
    out = SAPGLoss(ac.actor, ac.critic, num_policies=M, bounds_loss_coeff=1.0)(td)
    loc = _rows(ac, td)["loc"]
    assert (loc.abs() > 1.1).any() and (loc.abs() < 1.0).any()
    hinge = ((loc - 1.1).clamp_min(0) ** 2 + (-1.1 - loc).clamp_min(0) ** 2).sum(-1)
    torch.testing.assert_close(out["loss_bounds"], hinge.mean(), **CLOSE)


def test_sapg_default_lambda_is_one_a_plain_mean_over_the_aggregated_rows():
    """SAPGLoss's default off_policy_coeff is the paper's lambda = 1: actor and critic terms are plain row means."""
    ac = _ac()
    td = _batch(ac, seed=7)
    out = SAPGLoss(ac.actor, ac.critic, num_policies=M)(td)
    ref = _rows(ac, td)
    torch.testing.assert_close(out["loss_objective"], -ref["gain"].mean(), **CLOSE)
    torch.testing.assert_close(out["loss_critic"], ref["sq"].mean(), **CLOSE)


def test_sapg_default_nstep_target_is_the_papers_three_step_return():
    """critic_target="nstep" without n_steps is Eq. 5's n = 3 return (bootstrapped with V_old(s'))."""
    ac = _ac()
    NN, TT, gamma = 4, 7, 0.9
    g = torch.Generator().manual_seed(8)
    ids = torch.arange(NN).div(NN // M, rounding_mode="floor").unsqueeze(1).expand(NN, TT).clone()
    done = torch.zeros(NN, TT, 1, dtype=torch.bool)
    done[0, 2] = done[1, 4] = done[2, 1] = True
    term = torch.zeros_like(done)
    term[0, 2] = True
    obs, nxt = torch.randn(NN, TT, OBS_DIM, generator=g), torch.randn(NN, TT, OBS_DIM, generator=g)
    nxt[:, :-1] = torch.where(done[:, :-1], nxt[:, :-1], obs[:, 1:])  # s'_t = s_{t+1} inside an episode
    batch = TensorDict({
        "observation": obs, "policy_id": ids,
        "action": torch.randn(NN, TT, ACT_DIM, generator=g), "action_log_prob": torch.randn(NN, TT, generator=g),
        "advantage": torch.randn(NN, TT, 1, generator=g), "value_target": torch.randn(NN, TT, 1, generator=g),
        "state_value": torch.randn(NN, TT, 1, generator=g),
        "next": {"observation": nxt, "policy_id": ids.clone(),
                 "reward": torch.randn(NN, TT, 1, generator=g), "done": done, "terminated": term},
    }, [NN, TT])
    loss = SAPGLoss(ac.actor, ac.critic, num_policies=M, aggregation="none", critic_target="nstep", gamma=gamma,
                    advantage_normalization="none")
    out = loss.aggregate(batch)
    with torch.no_grad():
        v_next = ac.critic(batch["next"].select("observation", "policy_id").clone())["state_value"].squeeze(-1)
    ref = _nstep_loop(batch["next", "reward"].squeeze(-1), v_next, done.squeeze(-1), term.squeeze(-1), gamma, 3)
    torch.testing.assert_close(out["value_target"].squeeze(-1).double(), ref, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- recurrent relabelled rows
def test_recurrent_relabelled_td0_targets_bootstrap_from_the_leader_replay_at_episode_ends_and_row_end():
    """td0 targets of relabelled rows under an LSTM critic, at every step (episode ends and the row's last step
    included): r_t + gamma·V(s'_t)·(1 - term_t), V(s'_t) the critic applied to s'_t with the hidden state after
    replaying s_0..s_t (zeroed at each episode start). Identical latents make the recorded follower states the
    leader's own, so the replay is exact."""
    Mr, N, T, gamma = 3, 6, 12, 0.99
    torch.manual_seed(0)
    ac = make_recurrent_actor_critic(3, 1, num_policies=Mr, latent_dim=4, hidden_sizes=(16,), lstm_hidden=8)
    with torch.no_grad():
        ac.latents.weight.copy_(ac.latents.weight[:1].expand(Mr, -1))
    env = add_recurrent_transforms(make_env("pendulum", N, seed=0, max_episode_steps=5), ac)
    collector = PopulationCollector(env, collection_policy(ac), num_policies=Mr, frames_per_batch=N * T)
    it = iter(collector)
    next(it)
    batch = next(it)  # rows start from a non-zero hidden state
    collector.shutdown()
    done = batch["next", "done"].squeeze(-1)
    assert batch["is_init"][:, 1:].any() and done[:, :-1].any() and not done[:, -1].any()
    batch["advantage"] = torch.zeros(N, T, 1)
    batch["value_target"] = torch.zeros(N, T, 1)
    batch["state_value"] = torch.zeros(N, T, 1)
    batch["row_tag"] = torch.arange(N).unsqueeze(1).expand(N, T).clone()
    loss = SAPGLoss(ac.actor, ac.critic, num_policies=Mr, off_policy_target="td0", gamma=gamma,
                    advantage_normalization="none", generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), recurrent_mode(True), pytest.warns(UserWarning, match="does not depend"):
        off = loss.aggregate(batch.clone())[N:]
    rows = batch[off["row_tag"][:, 0]]
    hk, ck = "recurrent_state_h_critic", "recurrent_state_c_critic"
    h, c = rows[hk][:, 0], rows[ck][:, 0]
    values, next_values = [], []
    with torch.no_grad():
        for t in range(T):
            init = rows["is_init"][:, t].reshape(-1, 1, 1)
            h, c = torch.where(init, 0.0, h), torch.where(init, 0.0, c)
            leader = torch.zeros_like(rows["policy_id"][:, t])
            step = TensorDict({"observation": rows["observation"][:, t], "policy_id": leader, hk: h, ck: c,
                               "is_init": torch.zeros_like(rows["is_init"][:, t])}, [rows.shape[0]])
            step = ac.critic(step)
            h, c = step["next", hk], step["next", ck]
            values.append(step["state_value"].squeeze(-1))
            nxt = step.clone()
            nxt.update({"observation": rows["next", "observation"][:, t], hk: h, ck: c})
            next_values.append(ac.critic(nxt)["state_value"].squeeze(-1))
    v, v_next = torch.stack(values, 1), torch.stack(next_values, 1)
    torch.testing.assert_close(off["state_value"].squeeze(-1), v, rtol=0, atol=1e-5)
    term = rows["next", "terminated"].squeeze(-1).float()
    target = rows["next", "reward"].squeeze(-1) + gamma * v_next * (1 - term)
    torch.testing.assert_close(off["value_target"].squeeze(-1), target, rtol=0, atol=1e-5)
