"""No ``"advantage"`` in the input: the loss runs its value estimator (default GAE, or whichever
``make_value_estimator`` installed) and must give ClipPPOLoss's results."""
from __future__ import annotations

import pytest
from torchrl.objectives import ValueEstimators

from ._harness import check, continuous_actor_critic, continuous_batch, make_pair

ESTIMATORS = {
    "default": None,
    "td0": (ValueEstimators.TD0, dict(gamma=0.9)),
    "td1": (ValueEstimators.TD1, dict(gamma=0.9)),
    "td_lambda": (ValueEstimators.TDLambda, dict(gamma=0.9, lmbda=0.7)),
    "gae": (ValueEstimators.GAE, dict(gamma=0.9, lmbda=0.8)),
    "gae_average": (ValueEstimators.GAE, dict(gamma=0.95, lmbda=0.9, average_gae=True)),
    "vtrace": (ValueEstimators.VTrace, dict(gamma=0.9)),
}


def _setup(name):
    spec = ESTIMATORS[name]
    if spec is None:
        return None
    value_type, hp = spec
    return lambda loss: loss.make_value_estimator(value_type, **hp)


@pytest.mark.parametrize("estimator", list(ESTIMATORS))
@pytest.mark.parametrize("done_every", [None, 2], ids=["no_done", "done_every_2"])
def test_value_estimator_fallback(factory, estimator, done_every):
    actor, critic = continuous_actor_critic("normal")
    ref, cand = make_pair(factory, actor, critic, setup=_setup(estimator))
    td = continuous_batch(actor, (3, 5), advantage=False, done_every=done_every)
    check(factory, ref, cand, td)
    assert type(cand.value_estimator) is type(ref.value_estimator)


@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("options", [dict(normalize_advantage=True), dict(clip_value=0.1), dict(separate_losses=True)],
                         ids=["normalize_advantage", "clip_value", "separate_losses"])
def test_value_estimator_with_options(factory, reduction, options):
    """The estimator path combined with options that read what it wrote (advantage, value)."""
    actor, critic = continuous_actor_critic("tanh_normal", shared=options.get("separate_losses", False))
    ref, cand = make_pair(factory, actor, critic, reduction=reduction, **options)
    # with clip_value, the "old" value is the one the estimator writes (TorchRL's behaviour)
    check(factory, ref, cand, continuous_batch(actor, (3, 5), advantage=False))


def test_value_estimator_leaves_input_alone(factory):
    """ClipPPOLoss works on a shallow copy: the caller's tensordict gains no advantage / value target."""
    actor, critic = continuous_actor_critic("normal")
    ref, cand = make_pair(factory, actor, critic)
    td = continuous_batch(actor, (3, 5), advantage=False)
    td_ref, td_cand = td.clone(), factory.prepare(td.clone())
    keys_before = set(td_cand.keys(True, True))
    ref(td_ref), cand(td_cand)
    added_ref = set(td_ref.keys(True, True)) - set(td.keys(True, True))
    added_cand = set(td_cand.keys(True, True)) - keys_before
    assert added_cand == added_ref


def test_precomputed_advantage_is_used(factory):
    """With an ``"advantage"`` entry the estimator must not run (its settings cannot matter)."""
    actor, critic = continuous_actor_critic("normal")
    ref, cand = make_pair(factory, actor, critic, setup=_setup("td0"))
    check(factory, ref, cand, continuous_batch(actor, (3, 5), advantage=True))
