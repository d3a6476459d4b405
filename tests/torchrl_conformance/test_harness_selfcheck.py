"""The comparison itself: mutants of ClipPPOLoss that differ in one respect must be caught."""
from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict
from torchrl.objectives import ClipPPOLoss

from ._harness import LossFactory, assert_same_error, check, continuous_actor_critic, continuous_batch, make_pair


def _mutant(**override):
    return LossFactory("mutant", lambda actor, critic, **kw: ClipPPOLoss(actor, critic, **{**kw, **override}))


class _ExtraLoss(ClipPPOLoss):
    def forward(self, tensordict):
        out = super().forward(tensordict)
        out.set("loss_extra", out["loss_objective"] * 0)
        return out


class _DropsEntry(ClipPPOLoss):
    def forward(self, tensordict):
        return super().forward(tensordict).exclude("ESS")


class _FlatEss(ClipPPOLoss):
    def forward(self, tensordict):
        out = super().forward(tensordict)
        out.set("ESS", out["ESS"].mean())
        return out


def _data(actor, batch=(16,)):
    td = continuous_batch(actor, batch, behaviour_noise=0.0)
    td["action_log_prob"] += torch.linspace(-0.5, 0.5, batch[-1])
    return td


@pytest.mark.parametrize(
    "mutant, shared, batch",
    [
        (_mutant(clip_epsilon=0.25), False, (16,)),  # a value differs
        (_mutant(separate_losses=True), True, (16,)),  # only the gradients differ
        (LossFactory("extra_loss", _ExtraLoss), False, (16,)),  # an extra loss_* term
        (LossFactory("drops_entry", _DropsEntry), False, (16,)),  # a missing diagnostic
        (LossFactory("flat_ess", _FlatEss), False, (2, 16)),  # a shape differs
    ],
    ids=["value", "gradient", "extra_loss", "missing_entry", "shape"],
)
def test_mutant_is_caught(mutant, shared, batch):
    actor, critic = continuous_actor_critic("normal", shared=shared)
    ref, cand = make_pair(mutant, actor, critic)
    with pytest.raises(AssertionError):
        check(mutant, ref, cand, _data(actor, batch))


def test_error_mismatch_is_caught():
    def raise_key():
        raise KeyError("missing thing")

    def raise_value():
        raise ValueError("missing thing")

    with pytest.raises(AssertionError):
        assert_same_error(raise_key, raise_value, "missing thing")
    with pytest.raises(pytest.fail.Exception):
        assert_same_error(raise_key, lambda: TensorDict(), "missing thing")  # ours does not raise
