"""Key management: default ``tensor_keys``, ``set_keys`` round trips (also forwarded to the value
estimator), ``in_keys`` / ``out_keys`` supersets of ClipPPOLoss's, ``select_out_keys`` and
``state_dict`` compatibility."""
from __future__ import annotations

from dataclasses import asdict, fields

import pytest
from tensordict.nn import set_composite_lp_aggregate
from torchrl.objectives import ClipPPOLoss, ValueEstimators

from ._harness import (
    COMPOSITE_ACTION_KEYS,
    MA_KEYS,
    check,
    composite_actor_critic,
    continuous_actor_critic,
    continuous_batch,
    make_pair,
    multiagent_actor_critic,
)

RENAMED = dict(
    advantage="adv",
    value_target=("targets", "value"),
    value="v_old",
    sample_log_prob="lp",
    action=("act", "continuous"),
    reward="r",
    done="d",
    terminated="term",
)
#: the value key is tied to the critic's out_keys (the estimator checks it), so it stays put here
ROUND_TRIP = {k: v for k, v in RENAMED.items() if k != "value"}
CLIP_PPO_KEY_NAMES = [f.name for f in fields(ClipPPOLoss._AcceptedKeys)]
ESTIMATOR_KEY_NAMES = ("advantage", "value_target", "value", "reward", "done", "terminated", "sample_log_prob")


def _networks(kind):
    if kind == "continuous":
        return continuous_actor_critic("normal"), None
    if kind == "composite":
        return composite_actor_critic(), None
    if kind == "composite_aggregated":
        return composite_actor_critic(), lambda loss: loss.set_keys(action=COMPOSITE_ACTION_KEYS)
    return multiagent_actor_critic(), lambda loss: loss.set_keys(**MA_KEYS)


@pytest.mark.parametrize("kind", ["continuous", "composite", "composite_aggregated", "multiagent"])
def test_default_tensor_keys(factory, kind):
    """The keys a loss infers from its actor (action / log-prob keys) and ClipPPOLoss's defaults."""
    with set_composite_lp_aggregate(kind == "composite_aggregated"):
        (actor, critic), setup = _networks(kind)
        ref, cand = make_pair(factory, actor, critic, setup=setup)
        ours = asdict(cand.tensor_keys)
        for name, value in asdict(ref.tensor_keys).items():
            assert ours[name] == value, name


@pytest.mark.parametrize("estimator_first", [False, True], ids=["set_keys_first", "estimator_first"])
def test_set_keys_round_trip(factory, estimator_first):
    actor, critic = continuous_actor_critic("normal")
    ref, cand = make_pair(factory, actor, critic)
    for loss in (ref, cand):
        if estimator_first:
            loss.make_value_estimator(ValueEstimators.TDLambda, gamma=0.9, lmbda=0.9)
        loss.set_keys(**ROUND_TRIP)
        if not estimator_first:
            loss.make_value_estimator(ValueEstimators.TDLambda, gamma=0.9, lmbda=0.9)
    for name in CLIP_PPO_KEY_NAMES:
        assert getattr(cand.tensor_keys, name) == getattr(ref.tensor_keys, name) == ROUND_TRIP.get(name, "state_value")
    for name in ESTIMATOR_KEY_NAMES:
        assert getattr(cand.value_estimator.tensor_keys, name) == getattr(ref.value_estimator.tensor_keys, name), name
    assert set(cand.in_keys) >= set(ref.in_keys)
    for loss in (ref, cand):
        loss.set_keys(**{name: None for name in ROUND_TRIP})
    assert {n: getattr(cand.tensor_keys, n) for n in CLIP_PPO_KEY_NAMES} == {
        n: getattr(ref.tensor_keys, n) for n in CLIP_PPO_KEY_NAMES
    }
    assert set(cand.in_keys) >= set(ref.in_keys)


def _rename(td):
    td = td.clone()
    for old, new in [
        ("advantage", RENAMED["advantage"]),
        ("value_target", RENAMED["value_target"]),
        ("state_value", RENAMED["value"]),
        ("action_log_prob", RENAMED["sample_log_prob"]),
        ("action", RENAMED["action"]),
        (("next", "reward"), ("next", RENAMED["reward"])),
        (("next", "done"), ("next", RENAMED["done"])),
        (("next", "terminated"), ("next", RENAMED["terminated"])),
    ]:
        if old in td.keys(True, True):
            td.set(new, td.get(old))
            td = td.exclude(old)
    return td


@pytest.mark.parametrize("advantage", [True, False], ids=["advantage_given", "estimator"])
def test_renamed_keys_forward(factory, advantage):
    """Data under renamed keys, including a nested action key: same outputs and gradients."""
    actor, critic = continuous_actor_critic("normal", value_key=RENAMED["value"])
    ref, cand = make_pair(factory, actor, critic, clip_value=0.1, setup=lambda loss: loss.set_keys(**RENAMED))
    td = _rename(continuous_batch(actor, (3, 4), advantage=advantage))
    check(factory, ref, cand, td)


IO_CONFIGS = {
    "default": dict(),
    "entropy_off": dict(entropy_bonus=False),
    "no_critic_loss": dict(critic_coeff=0.0),
    "clip_value": dict(clip_value=0.1),
    "clip_value_true": dict(clip_value=True),
    "asymmetric": dict(clip_epsilon=(0.1, 0.3)),
}


@pytest.mark.parametrize("config", list(IO_CONFIGS))
def test_in_and_out_keys(factory, config):
    """``in_keys`` ⊇ ClipPPOLoss's; ClipPPOLoss's ``out_keys`` come first and in order (the
    keyword-call path returns a tuple in that order)."""
    actor, critic = continuous_actor_critic("normal")
    ref, cand = make_pair(factory, actor, critic, **IO_CONFIGS[config])
    assert set(cand.in_keys) >= set(ref.in_keys), set(ref.in_keys) - set(cand.in_keys)
    assert list(cand.out_keys[: len(ref.out_keys)]) == list(ref.out_keys)


def test_in_and_out_keys_actor_only(factory):
    actor, _ = continuous_actor_critic("normal")
    ref, cand = make_pair(factory, actor, None)
    assert set(cand.in_keys) >= set(ref.in_keys)
    assert list(cand.out_keys[: len(ref.out_keys)]) == list(ref.out_keys)


@pytest.mark.parametrize("kind", ["composite", "multiagent"])
def test_in_keys_structured(factory, kind):
    (actor, critic), setup = _networks(kind)
    ref, cand = make_pair(factory, actor, critic, setup=setup)
    assert set(cand.in_keys) >= set(ref.in_keys), set(ref.in_keys) - set(cand.in_keys)


def test_select_out_keys(factory):
    """``select_out_keys`` filters the tensordict output the same way."""
    actor, critic = continuous_actor_critic("normal")
    select = ("loss_objective", "ESS", "clip_fraction")
    ref, cand = make_pair(factory, actor, critic, setup=lambda loss: loss.select_out_keys(*select))
    ref_out, out = check(factory, ref, cand, continuous_batch(actor))
    assert set(out.keys()) == set(ref_out.keys()) == set(select)


@pytest.mark.parametrize("config", ["default", "asymmetric", "clip_value"])
def test_state_dict_superset(factory, config):
    """ClipPPOLoss's state_dict (parameters, coefficient buffers) loads into ours: nothing unexpected."""
    actor, critic = continuous_actor_critic("normal")
    ref, cand = make_pair(factory, actor, critic, **IO_CONFIGS[config])
    ref_sd, cand_sd = ref.state_dict(), cand.state_dict()
    missing = set(ref_sd) - set(cand_sd)
    assert not missing, missing
    result = cand.load_state_dict(ref_sd, strict=False)
    assert not result.unexpected_keys
    # our extra buffers are the only ones not in ClipPPOLoss's state; off_policy_coeff is filled in on load
    # (a PPO checkpoint written by ClipPPOLoss resumes into OffPolicyClipPPOLoss)
    assert set(result.missing_keys) <= set(cand_sd) - set(ref_sd)
    assert "off_policy_coeff" not in result.missing_keys


def test_class_level_contract(factory):
    """Value-estimator defaults and schedulable buffers are ClipPPOLoss's (or a superset)."""
    actor, critic = continuous_actor_critic("normal")
    ref, cand = make_pair(factory, actor, critic)
    assert cand.default_value_estimator == ref.default_value_estimator
    assert set(cand.SUPPORTED_VALUE_ESTIMATORS) >= set(ref.SUPPORTED_VALUE_ESTIMATORS)
    assert set(cand._schedulable_buffers) >= set(ref._schedulable_buffers)
    assert type(cand.value_estimator) is type(ref.value_estimator)
    assert cand.loss_mask_key == ref.loss_mask_key == "auto"
