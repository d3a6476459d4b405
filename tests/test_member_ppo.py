"""``PopulationPPOLoss`` (objectives/member_ppo.py): in-process PBT's per-member clipped PPO loss.

Checked bit for bit against a direct computation of each member's clip, entropy and critic terms
on a small random TensorDict, and checked to be what ``PopulationLearner.member_losses`` returns.
"""
from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict

from torchrl_sapg.objectives import PopulationPPOLoss
from torchrl_sapg.population import PolicyEnsemble, PopulationLearner

M, B, OBS, ACT = 3, 12, 3, 2
CLIP = torch.tensor([0.05, 0.2, 0.3])
ENT = torch.tensor([0.01, 0.0, 0.1])
CRIT = torch.tensor([1.0, 2.0, 0.5])
TERMS = ("loss_objective", "loss_entropy", "loss_critic", "entropy", "clip_fraction", "kl_approx")


def _ensemble():
    torch.manual_seed(0)
    ens = PolicyEnsemble(OBS, ACT, num_members=M, hidden_sizes=(8,))
    with torch.no_grad():
        ens.actor_params["log_std"].copy_(torch.linspace(-0.5, 0.3, M).view(M, 1, 1))
    return ens


def _batch(ens, keys=("action", "action_log_prob", "advantage", "value_target")):
    gen = torch.Generator().manual_seed(3)
    obs = torch.randn(M, B, OBS, generator=gen)
    action = torch.randn(M, B, ACT, generator=gen)
    with torch.no_grad():
        loc, scale = ens.heads(obs)
        lp = torch.distributions.Normal(loc, scale).log_prob(action).sum(-1)
    old_lp = lp + 0.5 * torch.randn(M, B, generator=gen) * torch.linspace(0.0, 1.0, B)  # clipped and unclipped rows
    values = (action, old_lp, torch.randn(M, B, 1, generator=gen), torch.randn(M, B, 1, generator=gen))
    return TensorDict({"observation": obs, **dict(zip(keys, values))}, [M, B])


def _by_hand(ens, td, clip, ent_c, crit_c):
    """Each member's terms from its own rows, one member at a time."""
    loc, scale, value = ens.policy_and_value(td)
    out = {k: [] for k in TERMS}
    for i in range(M):
        dist = torch.distributions.Normal(loc[i], scale[i])
        log_ratio = dist.log_prob(td["action"][i]).sum(-1) - td["action_log_prob"][i]
        ratio = log_ratio.exp()
        adv = td["advantage"][i, :, 0]
        eps = clip[i]
        surrogate = torch.minimum(ratio * adv, ratio.clamp(1 - eps, 1 + eps) * adv)
        entropy = dist.entropy().sum(-1)
        out["loss_objective"].append(-surrogate.mean())
        out["loss_entropy"].append(-ent_c[i] * entropy.mean())
        out["loss_critic"].append(crit_c[i] * (value[i] - td["value_target"][i]).pow(2).squeeze(-1).mean())
        out["entropy"].append(entropy.mean())
        out["clip_fraction"].append(((ratio - 1).abs() > eps).float().mean())
        out["kl_approx"].append((-log_ratio).mean())
    return {k: torch.stack(v) for k, v in out.items()}


def test_per_member_terms_equal_a_direct_computation_bit_for_bit():
    ens = _ensemble()
    td = _batch(ens)
    loss = PopulationPPOLoss(ens, clip_epsilon=CLIP, entropy_coeff=ENT, critic_coeff=CRIT)
    got = loss(td)
    assert got.batch_size == torch.Size([M]) and list(loss.out_keys) == [*TERMS, "kl_gaussian"]
    assert set(got.keys()) == set(TERMS)  # no kl_gaussian without the collecting policy's loc and scale
    hand = _by_hand(ens, td, CLIP, ENT, CRIT)
    for key in TERMS:
        assert torch.equal(got[key], hand[key].detach() if key in ("entropy", "clip_fraction", "kl_approx") else hand[key]), key
    assert ((got["clip_fraction"] > 0) & (got["clip_fraction"] < 1)).all()  # both branches of the clip are exercised


def test_set_keys_reads_renamed_entries():
    ens = _ensemble()
    renamed = _batch(ens, keys=("act", "old_log_prob", "adv", "target"))
    loss = PopulationPPOLoss(ens, clip_epsilon=CLIP, entropy_coeff=ENT, critic_coeff=CRIT)
    loss.set_keys(action="act", sample_log_prob="old_log_prob", advantage="adv", value_target="target")
    assert loss.in_keys == ["act", "old_log_prob", "adv", "target"]
    reference = PopulationPPOLoss(ens, clip_epsilon=CLIP, entropy_coeff=ENT, critic_coeff=CRIT)(_batch(ens))
    assert (loss(renamed) == reference).all()
    with pytest.raises(NotImplementedError, match="value estimator"):
        loss.make_value_estimator()


def test_learner_member_losses_are_the_loss_modules_with_its_live_coefficients():
    ens = _ensemble()
    hp = {"lr": 1e-3, "clip_epsilon": CLIP.tolist(), "entropy_coeff": ENT.tolist(), "critic_coeff": CRIT.tolist(),
          "gamma": 0.99, "lmbda": 0.95, "num_epochs": 1}
    learner = PopulationLearner(ens, hp, num_minibatches=1)
    keys_before = set(learner.state_dict())
    td = _batch(ens)
    direct = PopulationPPOLoss(ens, clip_epsilon=CLIP, entropy_coeff=ENT, critic_coeff=CRIT)(td)
    assert (learner.member_losses(td) == direct).all()
    learner.hyper["critic_coeff"][1] = 7.0  # a PBT mutation edits the [M] tensor in place
    learner.hp_clip_epsilon = torch.tensor([0.3, 0.3, 0.3])  # or replaces it
    changed = learner.member_losses(td)
    hand = _by_hand(ens, td, torch.tensor([0.3, 0.3, 0.3]), ENT, torch.tensor([1.0, 7.0, 0.5]))
    assert torch.equal(changed["loss_critic"], hand["loss_critic"])
    assert torch.equal(changed["loss_objective"], hand["loss_objective"])
    # the loss is not a submodule: the learner's state_dict (its checkpoint format) is unchanged
    assert set(learner.state_dict()) == keys_before
    assert not any(k.startswith("_member_loss") for k in keys_before)
