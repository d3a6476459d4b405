"""The keyword-argument call path: ``loss(observation=..., action=..., next_reward=...)``.

``dispatch`` builds the input tensordict from ``in_keys`` (nested keys joined with ``"_"``) and
returns a tuple ordered as ``out_keys`` (one tensor when a single key is selected). The advantage
is never an input key, so this path always runs the value estimator.
"""
from __future__ import annotations

import pytest
import torch
from tensordict.utils import _unravel_key_to_tuple
from torchrl.objectives import ValueEstimators

from ._harness import assert_grads_match, continuous_actor_critic, continuous_batch, make_pair, run


def _kwargs(loss, td):
    """Keyword arguments for every in_key of ``loss`` the data holds."""
    present = set(td.keys(True, True))
    return {"_".join(_unravel_key_to_tuple(k)): td.get(k) for k in loss.in_keys if k in present}


def _call(loss, td, seed=0):
    torch.manual_seed(seed)
    out = loss(**_kwargs(loss, td))
    keys = loss.out_keys
    if isinstance(out, torch.Tensor):
        return {keys[0]: out}
    assert len(out) == len(keys), f"{type(loss).__name__} returned {len(out)} values for out_keys {keys}"
    return dict(zip(keys, out))


CASES = {
    "default": (dict(), None),
    "entropy_off": (dict(entropy_bonus=False), None),
    "clip_value": (dict(clip_value=0.1, loss_critic_type="l2"), None),
    "td_lambda": (dict(), lambda loss: loss.make_value_estimator(ValueEstimators.TDLambda, gamma=0.9, lmbda=0.5)),
    "renamed_log_prob": (dict(), lambda loss: loss.set_keys(sample_log_prob="sampleLogProb")),
    "select_one": (dict(), lambda loss: loss.select_out_keys("loss_objective")),
    "select_two": (dict(), lambda loss: loss.select_out_keys("loss_objective", "loss_critic")),
}


@pytest.mark.parametrize("case", list(CASES))
def test_keyword_call(factory, case):
    kwargs, setup = CASES[case]
    actor, critic = continuous_actor_critic("tanh_normal")
    ref, cand = make_pair(factory, actor, critic, setup=setup, **kwargs)
    td = continuous_batch(actor, (2, 3), advantage=False)
    if case == "renamed_log_prob":
        td.rename_key_("action_log_prob", "sampleLogProb")
    ref_out = _call(ref, td)
    cand_out = _call(cand, factory.prepare(td))
    assert list(cand_out)[: len(ref_out)] == list(ref_out), "ClipPPOLoss's outputs must come first, in its order"
    for key, ref_val in ref_out.items():
        assert cand_out[key].shape == ref_val.shape, key
        torch.testing.assert_close(cand_out[key], ref_val, rtol=1e-5, atol=1e-6, equal_nan=True)
    loss_keys = [k for k in ref_out if k.startswith("loss_")]
    sum(ref_out[k].sum() for k in loss_keys).backward()
    sum(cand_out[k].sum() for k in loss_keys).backward()
    assert_grads_match(ref, cand)


def test_keyword_call_matches_tensordict_call(factory):
    """The two call paths of the class under test agree with each other."""
    actor, critic = continuous_actor_critic("normal")
    _, cand = make_pair(factory, actor, critic)
    td = factory.prepare(continuous_batch(actor, (4,), advantage=False))
    by_kw = _call(cand, td)
    by_td = run(cand, td.clone())
    for key, val in by_kw.items():
        torch.testing.assert_close(val, by_td.get(key), equal_nan=True)
