"""Error paths: the class under test raises ClipPPOLoss's exception type with its message fragment."""
from __future__ import annotations

import pytest
from tensordict.nn import set_composite_lp_aggregate
from torchrl.modules import PercentileValueNorm
from torchrl.objectives import ClipPPOLoss

from ._harness import (
    SAPG,
    assert_same_error,
    check,
    composite_actor_critic,
    composite_batch,
    continuous_actor_critic,
    continuous_batch,
    make_pair,
)


def _drop(key):
    return lambda td: td.exclude(key)


def _set(key, fn):
    def edit(td):
        td.set(key, fn(td.get(key)))
        return td

    return edit


FORWARD_ERRORS = {
    # name: (constructor kwargs, data edit, exception fragment)
    "missing_log_prob": (dict(), _drop("action_log_prob"), "Couldn't find the log-prob"),
    "clip_value_without_state_value": (dict(clip_value=0.1), _drop("state_value"), "clip_value is set to"),
    "clip_value_true_without_state_value": (dict(clip_value=True), _drop("state_value"), "was not found in the input"),
    "flat_advantage": (dict(), _set("advantage", lambda a: a.squeeze(-1)), "outer product"),
    "log_prob_requires_grad": (dict(), _set("action_log_prob", lambda x: x.clone().requires_grad_()), "requires grad"),
    "action_requires_grad": (dict(), _set("action", lambda x: x.clone().requires_grad_()), "requires grad"),
    "missing_value_target": (dict(), _drop("value_target"), "value_target was not found"),
    "unknown_loss_critic_type": (dict(loss_critic_type="l3"), lambda td: td, "Unknown loss"),
    "unknown_reduction": (dict(reduction="max"), lambda td: td, "Unknown reduction"),
}


@pytest.mark.parametrize("case", list(FORWARD_ERRORS))
def test_forward_error(factory, case):
    kwargs, edit, fragment = FORWARD_ERRORS[case]
    actor, critic = continuous_actor_critic("normal")
    ref, cand = make_pair(factory, actor, critic, **kwargs)
    td = continuous_batch(actor)
    assert_same_error(lambda: ref(edit(td.clone())), lambda: cand(edit(factory.prepare(td.clone()))), fragment)


def test_no_critic_no_advantage(factory):
    actor, _ = continuous_actor_critic("normal")
    ref, cand = make_pair(factory, actor, None)
    td = continuous_batch(actor).exclude("advantage")
    assert_same_error(lambda: ref(td.clone()), lambda: cand(factory.prepare(td.clone())), "Critic network is not specified")


def test_missing_head_entropy_coeff(factory):
    """A per-head ``entropy_coeff`` mapping that misses a head."""
    with set_composite_lp_aggregate(False):
        actor, critic = composite_actor_critic()
        kwargs = dict(entropy_coeff={("action", "cont_entropy"): 0.1})
        ref, cand = make_pair(factory, actor, critic, **kwargs)
        td = composite_batch(actor)
        assert_same_error(lambda: ref(td.clone()), lambda: cand(factory.prepare(td.clone())), "Missing entropy coeff")


CONSTRUCTOR_ERRORS = {
    "clip_value_true_with_tuple": (dict(clip_value=True, clip_epsilon=(0.1, 0.3)), "asymmetric clip_epsilon tuple"),
    "negative_eps": (dict(clip_epsilon=(0.1, -0.2)), "non-negative"),
    "eps_low_ge_1": (dict(clip_epsilon=(1.2, 0.2)), "must be < 1"),
    "eps_tuple_len_3": (dict(clip_epsilon=(0.1, 0.2, 0.3)), "length 2"),
    "critic_coef_removed": (dict(critic_coef=1.0), "'critic_coef' has been removed"),
    "entropy_coef_removed": (dict(entropy_coef=1.0), "'entropy_coef' has been removed"),
    "normalize_and_advantage_norm": (
        dict(normalize_advantage=True, advantage_norm="PercentileValueNorm"),
        "mutually exclusive",
    ),
    "gamma_in_constructor": (dict(gamma=0.9), "deprecated"),
    "advantage_key_in_constructor": (dict(advantage_key="adv"), "via the constructor is deprecated"),
    "entropy_coeff_bad_type": (dict(entropy_coeff="0.1"), "entropy_coeff must be"),
}


@pytest.mark.parametrize("case", list(CONSTRUCTOR_ERRORS))
def test_constructor_error(factory, case):
    kwargs, fragment = CONSTRUCTOR_ERRORS[case]
    kwargs = dict(kwargs)
    if kwargs.get("advantage_norm") == "PercentileValueNorm":
        kwargs["advantage_norm"] = PercentileValueNorm(shape=1)
    if factory is SAPG and case == "gamma_in_constructor":
        pytest.skip("SAPGLoss: `gamma` is its own argument (the n-step / TD(0) discount), not ClipPPOLoss's removed one")
    if factory is SAPG and case == "entropy_coeff_bad_type":
        pytest.skip("SAPGLoss: takes per-policy entropy_coeffs, not ClipPPOLoss's entropy_coeff")
    actor, critic = continuous_actor_critic("normal")
    assert_same_error(lambda: ClipPPOLoss(actor, critic, **kwargs), lambda: factory.make(actor, critic, **kwargs), fragment)


def test_critic_coeff_without_critic(factory):
    actor, _ = continuous_actor_critic("normal")
    assert_same_error(
        lambda: ClipPPOLoss(actor, None, critic_coeff=1.0),
        lambda: factory.make(actor, None, critic_coeff=1.0),
        "Missing positional arguments",
    )


AFTER_CONSTRUCTION = {
    "set_keys_unknown": (dict(), lambda loss: loss.set_keys(not_a_key="x"), "is not an accepted tensordict key"),
    "loss_mask_key_bad": (dict(), lambda loss: setattr(loss, "loss_mask_key", 3), "loss_mask_key must be"),
    "schedule_symmetric_on_tuple": (
        dict(clip_epsilon=(0.1, 0.3)),
        lambda loss: setattr(loss, "clip_epsilon", 0.2),
        "Cannot schedule",
    ),
    "schedule_tuple_on_symmetric": (
        dict(clip_epsilon=0.2),
        lambda loss: setattr(loss, "clip_epsilon_low", 0.1),
        "Cannot schedule",
    ),
}


@pytest.mark.parametrize("case", list(AFTER_CONSTRUCTION))
def test_misuse_error(factory, case):
    kwargs, misuse, fragment = AFTER_CONSTRUCTION[case]
    actor, critic = continuous_actor_critic("normal")
    ref, cand = make_pair(factory, actor, critic, **kwargs)
    assert_same_error(lambda: misuse(ref), lambda: misuse(cand), fragment)


def test_flat_advantage_fixed_by_unsqueeze(factory):
    """The advice of the flat-advantage error works: ``advantage.unsqueeze(-1)`` runs and matches."""
    actor, critic = continuous_actor_critic("normal")
    ref, cand = make_pair(factory, actor, critic)
    td = continuous_batch(actor)
    td["advantage"] = td["advantage"].squeeze(-1).unsqueeze(-1)
    check(factory, ref, cand, td)
