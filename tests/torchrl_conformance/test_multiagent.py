"""Multi-agent nested keys: ``("agents", "action")``, ``("agents", "action_log_prob")``, per-agent
advantage / value target / value, set through ``set_keys``."""
from __future__ import annotations

import pytest

from ._harness import MA_KEYS, N_AGENTS, check, make_pair, multiagent_actor_critic, multiagent_batch


def _setup(loss):
    loss.set_keys(**MA_KEYS)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("entropy_bonus", [True, False])
def test_multiagent(factory, reduction, entropy_bonus):
    actor, critic = multiagent_actor_critic()
    ref, cand = make_pair(factory, actor, critic, reduction=reduction, entropy_bonus=entropy_bonus, setup=_setup)
    assert cand.tensor_keys.sample_log_prob == ("agents", "action_log_prob")
    assert cand.tensor_keys.action == ("agents", "action")
    _, out = check(factory, ref, cand, multiagent_batch(actor))
    if reduction == "none":
        assert out["loss_objective"].shape == (6, N_AGENTS)


@pytest.mark.parametrize("exclude_dims", [(), (-2,)], ids=["pooled", "per_agent"])
def test_multiagent_normalize_advantage(factory, exclude_dims):
    """Advantage standardisation over the batch only (agent dim excluded) or over everything."""
    actor, critic = multiagent_actor_critic()
    ref, cand = make_pair(
        factory, actor, critic, normalize_advantage=True, normalize_advantage_exclude_dims=exclude_dims, setup=_setup
    )
    td = multiagent_batch(actor)
    td["agents", "advantage"] = 2.0 + 3.0 * td["agents", "advantage"]
    check(factory, ref, cand, td)


@pytest.mark.parametrize("clip_value", [0.1, True])
def test_multiagent_clip_value(factory, clip_value):
    actor, critic = multiagent_actor_critic()
    ref, cand = make_pair(factory, actor, critic, clip_value=clip_value, setup=_setup)
    check(factory, ref, cand, multiagent_batch(actor))


def test_multiagent_value_estimator(factory):
    """No per-agent advantage in the input: GAE runs on the nested reward / done keys."""
    actor, critic = multiagent_actor_critic()
    ref, cand = make_pair(factory, actor, critic, setup=_setup)
    check(factory, ref, cand, multiagent_batch(actor, advantage=False))
