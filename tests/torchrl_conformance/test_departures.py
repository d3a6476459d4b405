"""Deliberate departures
=====================

Where our classes differ from ``ClipPPOLoss`` on purpose, and how the suite treats it:

1. ``delay_actor=True`` and ``max_importance_ratio`` (TorchRL's PPO-EWMA proximal policy and
   capped behaviour ratio) are rejected by ``OffPolicyClipPPOLoss`` and ``SAPGLoss`` with a
   ``ValueError`` naming the argument: their proximal-policy correction would compound with
   SAPG's ``mu``. Asserted below; their falsy defaults are still accepted.
2. ``SAPGLoss`` has its own constructor: per-policy ``entropy_coeffs`` / ``entropy_sigma``
   instead of ``entropy_bonus`` / ``entropy_coeff``, and ``advantage_normalization`` instead of
   ``normalize_advantage`` (the ClipPPOLoss names raise a ``TypeError`` pointing at the
   replacement). The harness translates ClipPPOLoss's arguments (``_harness._build_sapg``);
   per-head entropy mappings cannot be expressed and those cases are skipped.
3. ``SAPGLoss``'s ``gamma`` is its own discount (n-step / TD(0) targets), not ClipPPOLoss's removed
   constructor argument; that error case is skipped for it. Its defaults
   (``loss_critic_type="l2"``, ``critic_coeff=1.0``) differ from ClipPPOLoss's; the harness
   passes ClipPPOLoss's defaults explicitly.
4. ``SAPGLoss`` reads each row's ``"policy_id"`` (entropy coefficient lookup); the harness adds a
   column of zeros to its inputs.
5. Extra outputs and state: ours add diagnostics (``clip_fraction_on``, ``ESS_on``, ``mu_*``, ...)
   and buffers (``off_policy_coeff``, ``entropy_coeffs``); the suite accepts supersets but no
   extra ``loss_*`` entry.
"""
from __future__ import annotations

import pytest
from torchrl.objectives import ClipPPOLoss

from ._harness import CLIP_PPO, SAPG, check, continuous_actor_critic, continuous_batch, make_pair

REJECTED = {"delay_actor": True, "max_importance_ratio": 10.0}


@pytest.mark.parametrize("name", list(REJECTED))
def test_proximal_policy_options_rejected(factory, name):
    actor, critic = continuous_actor_critic("normal")
    kwargs = {name: REJECTED[name]}
    if factory is CLIP_PPO:  # the reference accepts and runs them
        loss = factory.make(actor, critic, **kwargs)
        loss(continuous_batch(actor))
        return
    with pytest.raises(ValueError, match=f"{name} is not supported"):
        factory.make(actor, critic, **kwargs)


@pytest.mark.parametrize("kwargs", [dict(delay_actor=False), dict(max_importance_ratio=None)], ids=["delay_actor", "mir"])
def test_proximal_policy_defaults_accepted(factory, kwargs):
    actor, critic = continuous_actor_critic("normal")
    ref, cand = make_pair(factory, actor, critic, **kwargs)
    check(factory, ref, cand, continuous_batch(actor))


@pytest.mark.parametrize(
    "kwargs", [dict(entropy_coeff=0.01), dict(entropy_bonus=False), dict(normalize_advantage=True)],
    ids=["entropy_coeff", "entropy_bonus", "normalize_advantage"],
)
def test_sapg_constructor_names(kwargs):
    """SAPGLoss refuses ClipPPOLoss's entropy / normalisation arguments and names its own."""
    from torchrl_sapg.objectives import SAPGLoss

    actor, critic = continuous_actor_critic("normal")
    ClipPPOLoss(actor, critic, **kwargs)
    with pytest.raises(TypeError, match="SAPGLoss does not take"):
        SAPGLoss(actor, critic, num_policies=1, aggregation="none", **kwargs)
    assert SAPG.make(actor, critic, **kwargs) is not None  # the harness's translation
