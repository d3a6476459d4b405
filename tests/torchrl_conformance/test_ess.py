"""``ESS`` (and the other ratio diagnostics) keep ClipPPOLoss's per-feature shape.

ClipPPOLoss reduces the effective sample size over the first batch dim only, so a ``[B, T]``
batch gives one ESS per time step and a per-agent log-weight one ESS per agent.
"""
from __future__ import annotations

import pytest
import torch
from tensordict.nn import set_composite_lp_aggregate

from ._harness import (
    MA_KEYS,
    N_AGENTS,
    check,
    composite_actor_critic,
    composite_batch,
    continuous_actor_critic,
    continuous_batch,
    make_pair,
    multiagent_actor_critic,
    multiagent_batch,
)

DIAGNOSTICS = ("ESS", "clip_fraction", "kl_approx", "max_ratio", "mean_ratio")


@pytest.mark.parametrize("batch, ess_shape", [((6,), ()), ((3, 5), (5,)), ((2, 3, 4), (3, 4))], ids=["B", "BT", "BxTxK"])
def test_ess_shape_per_feature(factory, batch, ess_shape):
    actor, critic = continuous_actor_critic("normal")
    ref, cand = make_pair(factory, actor, critic, reduction="none")
    ref_out, out = check(factory, ref, cand, continuous_batch(actor, batch))
    assert out["ESS"].shape == torch.Size(ess_shape)
    for key in DIAGNOSTICS:
        assert out[key].shape == ref_out[key].shape, key


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_ess_shape_per_agent(factory, reduction):
    """Entropy off: this test isolates the ratio diagnostics (test_multiagent covers the entropy)."""
    actor, critic = multiagent_actor_critic()
    ref, cand = make_pair(factory, actor, critic, reduction=reduction, entropy_bonus=False, setup=lambda loss: loss.set_keys(**MA_KEYS))
    _, out = check(factory, ref, cand, multiagent_batch(actor))
    assert out["ESS"].shape == (N_AGENTS,)


def test_ess_composite(factory):
    with set_composite_lp_aggregate(False):
        actor, critic = composite_actor_critic()
        ref, cand = make_pair(factory, actor, critic, entropy_bonus=False)
        _, out = check(factory, ref, cand, composite_batch(actor, (5,)))
        assert out["ESS"].shape == ()


def test_ess_one_at_equal_weights(factory):
    """Behaviour log-prob = current log-prob: every ratio is 1, ESS is 1, nothing is clipped."""
    actor, critic = continuous_actor_critic("normal")
    ref, cand = make_pair(factory, actor, critic)
    _, out = check(factory, ref, cand, continuous_batch(actor, (8,), behaviour_noise=0.0))
    torch.testing.assert_close(out["ESS"], torch.tensor(1.0))
    assert out["clip_fraction"] == 0
