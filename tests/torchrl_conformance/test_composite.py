"""Composite action spaces: a CompositeDistribution actor with a Normal and a Categorical head."""
from __future__ import annotations

import pytest
from tensordict.nn import set_composite_lp_aggregate

from ._harness import COMPOSITE_ACTION_KEYS, COMPOSITE_LP_KEYS, check, composite_actor_critic, composite_batch, make_pair

HEAD_COEFFS = {("action", "cont_entropy"): 0.02, ("action", "disc_entropy"): 0.07}


@pytest.fixture(params=[False, True], ids=["lp_aggregate_off", "lp_aggregate_on"])
def aggregate(request):
    """``composite_lp_aggregate``: per-head log-probs (False, TorchRL's default) or one summed entry."""
    with set_composite_lp_aggregate(request.param):
        yield request.param


def _setup(aggregate):
    # with an aggregated log-prob the loss only learns one action key from the actor: name both heads
    return (lambda loss: loss.set_keys(action=COMPOSITE_ACTION_KEYS)) if aggregate else None


def _batch(actor, aggregate, **kwargs):
    return composite_batch(actor, log_prob_keys=["sample_log_prob"] if aggregate else COMPOSITE_LP_KEYS, **kwargs)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize(
    "entropy", [dict(entropy_bonus=False), dict(entropy_coeff=0.03)], ids=["entropy_off", "entropy_scalar"]
)
def test_composite(factory, aggregate, reduction, entropy):
    actor, critic = composite_actor_critic()
    ref, cand = make_pair(factory, actor, critic, reduction=reduction, setup=_setup(aggregate), **entropy)
    _, out = check(factory, ref, cand, _batch(actor, aggregate))
    if reduction == "none":
        assert out["loss_objective"].shape == (6,)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_composite_per_head_entropy_coeff(factory, reduction):
    """``entropy_coeff`` as a ``{head entropy key: coeff}`` mapping (per-head log-probs)."""
    with set_composite_lp_aggregate(False):
        actor, critic = composite_actor_critic()
        ref, cand = make_pair(factory, actor, critic, entropy_coeff=HEAD_COEFFS, reduction=reduction)
        _, out = check(factory, ref, cand, _batch(actor, False))
        assert "composite_entropy" in out.keys()


@pytest.mark.parametrize("clip_value", [0.1, True])
def test_composite_options(factory, aggregate, clip_value):
    """Composite actor with ``clip_value``, ``normalize_advantage`` and an asymmetric clip range."""
    actor, critic = composite_actor_critic()
    eps = 0.2 if clip_value is True else (0.1, 0.3)
    ref, cand = make_pair(
        factory, actor, critic, clip_value=clip_value, clip_epsilon=eps, normalize_advantage=True, setup=_setup(aggregate)
    )
    check(factory, ref, cand, _batch(actor, aggregate, batch=(12,)))


def test_composite_value_estimator(factory, aggregate):
    """No advantage in the input: the default GAE runs on a composite-action batch."""
    actor, critic = composite_actor_critic()
    ref, cand = make_pair(factory, actor, critic, setup=_setup(aggregate))
    check(factory, ref, cand, _batch(actor, aggregate, advantage=False))
