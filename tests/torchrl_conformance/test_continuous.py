"""Gaussian actors: every ClipPPOLoss constructor option, outputs and gradients equal to ClipPPOLoss's."""
from __future__ import annotations

import pytest
import torch

from ._harness import check, continuous_actor_critic, continuous_batch, make_pair

@pytest.mark.parametrize("functional", [True, False])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("dist", ["tanh_normal", "normal"])
def test_reduction_and_functional(factory, dist, reduction, functional):
    actor, critic = continuous_actor_critic(dist)
    ref, cand = make_pair(factory, actor, critic, reduction=reduction, functional=functional)
    td = continuous_batch(actor)
    _, out = check(factory, ref, cand, td)
    want = (6,) if reduction == "none" else ()
    for key in ("loss_objective", "loss_critic", "loss_entropy"):
        assert out[key].shape == torch.Size(want), key


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_time_batch(factory, reduction):
    """A ``[B, T]`` batch (named time dim): per-step losses keep both dims under ``reduction="none"``."""
    actor, critic = continuous_actor_critic("normal")
    ref, cand = make_pair(factory, actor, critic, reduction=reduction)
    _, out = check(factory, ref, cand, continuous_batch(actor, (3, 4)))
    if reduction == "none":
        assert out["loss_objective"].shape == (3, 4)


@pytest.mark.parametrize("loss_critic_type", ["l1", "l2", "smooth_l1"])
def test_loss_critic_type(factory, loss_critic_type):
    actor, critic = continuous_actor_critic("normal")
    ref, cand = make_pair(factory, actor, critic, loss_critic_type=loss_critic_type)
    check(factory, ref, cand, continuous_batch(actor))


@pytest.mark.parametrize("clip_value", [0.05, True, False])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_clip_value(factory, clip_value, reduction):
    """``clip_value`` float or ``True`` (= clip_epsilon): clipped critic loss and ``value_clip_fraction``."""
    actor, critic = continuous_actor_critic("normal")
    ref, cand = make_pair(factory, actor, critic, clip_value=clip_value, reduction=reduction)
    _, out = check(factory, ref, cand, continuous_batch(actor))
    assert ("value_clip_fraction" in out.keys()) == bool(clip_value)


@pytest.mark.parametrize("normalize_advantage", [True, False])
def test_normalize_advantage(factory, normalize_advantage):
    actor, critic = continuous_actor_critic("normal")
    ref, cand = make_pair(factory, actor, critic, normalize_advantage=normalize_advantage)
    td = continuous_batch(actor)
    td["advantage"] = 3.0 + 5.0 * td["advantage"]  # far from standardised: normalisation matters
    check(factory, ref, cand, td)


@pytest.mark.parametrize(
    "entropy",
    [dict(entropy_bonus=False), dict(), dict(entropy_coeff=0.05), dict(entropy_coeff=0.05, samples_mc_entropy=3)],
    ids=["off", "default_coeff", "coeff_0.05", "mc_samples_3"],
)
@pytest.mark.parametrize("dist", ["tanh_normal", "normal"])
def test_entropy(factory, entropy, dist):
    """Analytic (IndependentNormal) and Monte-Carlo (TanhNormal) entropies, on or off."""
    actor, critic = continuous_actor_critic(dist)
    ref, cand = make_pair(factory, actor, critic, **entropy)
    _, out = check(factory, ref, cand, continuous_batch(actor))
    assert ("loss_entropy" in out.keys()) == entropy.get("entropy_bonus", True)


@pytest.mark.parametrize("critic_coeff", [None, 0.0, 0.5, 2.0])
def test_critic_coeff(factory, critic_coeff):
    """``None`` means 1.0 with a critic, ``0`` drops ``loss_critic`` (ClipPPOLoss's rules)."""
    actor, critic = continuous_actor_critic("normal")
    ref, cand = make_pair(factory, actor, critic, critic_coeff=critic_coeff)
    check(factory, ref, cand, continuous_batch(actor))


def test_actor_only(factory):
    """No critic at all (``critic_network=None``): no ``loss_critic``, precomputed advantage."""
    actor, _ = continuous_actor_critic("normal")
    ref, cand = make_pair(factory, actor, None)
    _, out = check(factory, ref, cand, continuous_batch(actor))
    assert "loss_critic" not in out.keys()


@pytest.mark.parametrize("separate_losses", [True, False])
def test_separate_losses_shared_trunk(factory, separate_losses):
    """Actor and critic share a layer: ``separate_losses`` keeps the critic loss off the shared weights."""
    actor, critic = continuous_actor_critic("normal", shared=True)
    ref, cand = make_pair(factory, actor, critic, separate_losses=separate_losses)
    check(factory, ref, cand, continuous_batch(actor))


@pytest.mark.parametrize("clip_epsilon", [(0.1, 0.3), (0.2, 0.28), 0.1, 0.5])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_clip_epsilon(factory, clip_epsilon, sign):
    """Symmetric and asymmetric ``(eps_low, eps_high)`` clipping; advantages of one sign exercise one bound."""
    actor, critic = continuous_actor_critic("normal")
    ref, cand = make_pair(factory, actor, critic, clip_epsilon=clip_epsilon, clip_value=0.1)
    td = continuous_batch(actor, (16,), behaviour_noise=0.0)
    td["action_log_prob"] += torch.linspace(-1.0, 1.0, 16)  # log-ratios from -1 to 1: both bounds are hit
    td["advantage"] = sign * td["advantage"].abs()
    ref_out, _ = check(factory, ref, cand, td)
    assert 0 < ref_out["clip_fraction"] < 1, "the data must straddle the clip range for this test to mean anything"
    if isinstance(clip_epsilon, tuple):
        assert set(cand.state_dict()) >= {"clip_epsilon_low", "clip_epsilon_high"}


def test_clip_epsilon_schedule(factory):
    """Scheduling the ``clip_epsilon`` buffer in place changes the clip range the same way."""
    actor, critic = continuous_actor_critic("normal")
    ref, cand = make_pair(factory, actor, critic)
    for loss in (ref, cand):
        loss.clip_epsilon.fill_(0.05)
    td = continuous_batch(actor, (16,), behaviour_noise=0.0)
    td["action_log_prob"] += torch.linspace(-0.2, 0.2, 16)
    ref_out, _ = check(factory, ref, cand, td)
    assert 0 < ref_out["clip_fraction"] < 1


@pytest.mark.parametrize("functional", [True, False])
def test_repeated_calls_and_second_backward(factory, functional):
    """Two forward/backward passes in a row (minibatch epochs) accumulate the same gradients."""
    actor, critic = continuous_actor_critic("tanh_normal")
    ref, cand = make_pair(factory, actor, critic, functional=functional, clip_value=0.2)
    check(factory, ref, cand, continuous_batch(actor, seed=1))
    check(factory, ref, cand, continuous_batch(actor, seed=2), seed=3)


def test_eval_mode_and_no_grad(factory):
    """Under ``torch.no_grad()`` both give the same (gradient-free) outputs."""
    actor, critic = continuous_actor_critic("normal")
    ref, cand = make_pair(factory, actor, critic)
    ref.eval(), cand.eval()
    with torch.no_grad():
        check(factory, ref, cand, continuous_batch(actor), grads=False)
