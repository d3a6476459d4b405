"""Loss masks: ``("collector", "mask")`` and ``"shifted_valid"`` (``loss_mask_key="auto"``), a custom
``loss_mask_key``, and ``loss_mask_key=None``, under every reduction: values and gradients."""
from __future__ import annotations

import pytest
import torch

from ._harness import check, continuous_actor_critic, continuous_batch, make_pair

B, T = 3, 5


def _mask(seed=0):
    mask = torch.rand(B, T, generator=torch.Generator().manual_seed(seed)) > 0.4
    mask[0, 0] = True  # never all-False
    return mask


MASKS = {
    # where the mask lives, its shape, and the loss_mask_key that selects it
    "collector_mask": (("collector", "mask"), (B, T), "auto"),
    "shifted_valid": ("shifted_valid", (B, T, 1), "auto"),
    "custom_key": (("my", "valid"), (B, T), ("my", "valid")),
    "custom_key_unused": (("collector", "mask"), (B, T), ("my", "valid")),
    "masking_off": (("collector", "mask"), (B, T), None),
}


def _setup(mask_key_setting):
    def setup(loss):
        loss.loss_mask_key = mask_key_setting

    return setup


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("where", list(MASKS))
def test_mask(factory, where, reduction):
    key, shape, setting = MASKS[where]
    actor, critic = continuous_actor_critic("tanh_normal")
    ref, cand = make_pair(factory, actor, critic, reduction=reduction, clip_value=0.1, setup=_setup(setting))
    td = continuous_batch(actor, (B, T))
    td.set(key, _mask().reshape(shape))
    ref_out, _ = check(factory, ref, cand, td)
    if reduction == "none" and setting == "auto":
        masked = ~_mask()
        assert (ref_out["loss_objective"][masked] == 0).all(), "the test data must actually be masked"


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_two_masks_combine(factory, reduction):
    """Both auto keys present: they are ANDed."""
    actor, critic = continuous_actor_critic("normal")
    ref, cand = make_pair(factory, actor, critic, reduction=reduction)
    td = continuous_batch(actor, (B, T))
    td.set(("collector", "mask"), _mask(0))
    td.set("shifted_valid", _mask(1).unsqueeze(-1))
    check(factory, ref, cand, td)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_mask_hides_garbage(factory, reduction):
    """Masked-out steps hold huge advantages and log-probs: nothing of them may leak in."""
    actor, critic = continuous_actor_critic("normal")
    ref, cand = make_pair(factory, actor, critic, reduction=reduction)
    td = continuous_batch(actor, (B, T))
    mask = _mask()
    td.set(("collector", "mask"), mask)
    td["advantage"] = torch.where(mask.unsqueeze(-1), td["advantage"], torch.full_like(td["advantage"], 1e6))
    td["action_log_prob"] = torch.where(mask, td["action_log_prob"], torch.full_like(td["action_log_prob"], -50.0))
    ref_out, _ = check(factory, ref, cand, td)
    assert ref_out["loss_objective"].abs() < 1e3


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_mask_with_value_estimator(factory, reduction):
    """The collector mask together with the value-estimator fallback."""
    actor, critic = continuous_actor_critic("normal")
    ref, cand = make_pair(factory, actor, critic, reduction=reduction)
    td = continuous_batch(actor, (B, T), advantage=False)
    td.set(("collector", "mask"), _mask())
    check(factory, ref, cand, td)


def test_mask_multi_dim_normalize_advantage(factory):
    """Mask plus minibatch advantage standardisation."""
    actor, critic = continuous_actor_critic("normal")
    ref, cand = make_pair(factory, actor, critic, normalize_advantage=True)
    td = continuous_batch(actor, (B, T))
    td.set(("collector", "mask"), _mask())
    check(factory, ref, cand, td)
