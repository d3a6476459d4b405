"""Networks, data and the differential comparison used by the conformance suite.

Everything here is written for this repository; see the package docstring.
"""
from __future__ import annotations

import copy
import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Callable

import pytest
import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import CompositeDistribution, NormalParamExtractor, TensorDictModule
from torch import distributions as d
from torch import nn
from torchrl.modules import IndependentNormal, ProbabilisticActor, TanhNormal, ValueOperator
from torchrl.objectives import ClipPPOLoss

from torchrl_sapg.objectives import OffPolicyClipPPOLoss, SAPGLoss

OBS, ACT, N_AGENTS, N_DISC = 3, 2, 3, 4
#: ClipPPOLoss's own default for ``entropy_coeff`` when it is not given.
CLIP_PPO_DEFAULT_ENTROPY_COEFF = 0.01

# ----------------------------------------------------------------------------- factories


@dataclass(frozen=True)
class LossFactory:
    """One loss class under test: how to build it from ClipPPOLoss's constructor arguments.

    ``build(actor, critic, **clip_ppo_kwargs)`` must give a loss that behaves as
    ``ClipPPOLoss(actor, critic, **clip_ppo_kwargs)`` on on-policy data; ``prepare(td)`` adds the
    entries the class needs beyond ClipPPOLoss's (SAPGLoss: a ``"policy_id"`` column of zeros);
    ``unsupported(kwargs)`` names a constructor argument the class cannot express, or ``None``.
    """

    name: str
    build: Callable[..., Any]
    prepare: Callable[[TensorDictBase], TensorDictBase] = lambda td: td
    unsupported: Callable[[dict], str | None] = lambda kwargs: None

    def __repr__(self) -> str:  # pytest ids
        return self.name

    def make(self, actor, critic, **kwargs):
        reason = self.unsupported(kwargs)
        if reason is not None:
            pytest.skip(f"{self.name}: {reason}")
        return self.build(actor, critic, **kwargs)


def _build_sapg(actor, critic, **kwargs):
    """``SAPGLoss`` with one policy, no aggregation and no advantage standardisation: ClipPPOLoss.

    ClipPPOLoss's arguments are translated to SAPGLoss's constructor: ``entropy_bonus`` /
    ``entropy_coeff`` become the one-entry ``entropy_coeffs`` and ``normalize_advantage`` the
    ``"minibatch"`` advantage normalisation. ``loss_critic_type`` and ``critic_coeff`` default to
    ClipPPOLoss's defaults (SAPGLoss's own are ``"l2"`` and ``1.0``); everything else is passed as is.
    """
    kwargs = dict(kwargs)
    entropy_bonus = kwargs.pop("entropy_bonus", True)
    coeff = kwargs.pop("entropy_coeff", None)
    if coeff is None:
        coeff = CLIP_PPO_DEFAULT_ENTROPY_COEFF
    normalize = kwargs.pop("normalize_advantage", False)
    kwargs.setdefault("loss_critic_type", "smooth_l1")
    kwargs.setdefault("critic_coeff", None)
    return SAPGLoss(
        actor,
        critic,
        num_policies=1,
        aggregation="none",
        advantage_normalization="minibatch" if normalize else "none",
        entropy_coeffs=[float(coeff)] if entropy_bonus else None,
        **kwargs,
    )


def _sapg_prepare(td: TensorDictBase) -> TensorDictBase:
    td = td.clone(False)
    td.set("policy_id", torch.zeros(td.shape, dtype=torch.long, device=td.device))
    return td


def _sapg_unsupported(kwargs: dict) -> str | None:
    if isinstance(kwargs.get("entropy_coeff"), Mapping):
        return "per-head entropy_coeff mappings: SAPGLoss has per-policy entropy coefficients instead"
    if kwargs.get("entropy_bonus", True) and kwargs.get("entropy_coeff", None) == 0:
        return "entropy_bonus with a zero coefficient: SAPGLoss switches the bonus off when all coefficients are 0"
    return None


CLIP_PPO = LossFactory("ClipPPOLoss", ClipPPOLoss)
OFF_POLICY = LossFactory("OffPolicyClipPPOLoss", OffPolicyClipPPOLoss)
SAPG = LossFactory("SAPGLoss", _build_sapg, _sapg_prepare, _sapg_unsupported)
FACTORIES = (CLIP_PPO, OFF_POLICY, SAPG)

# ----------------------------------------------------------------------------- networks


def continuous_actor_critic(dist: str = "tanh_normal", *, shared: bool = False, obs_key="observation", value_key="state_value"):
    """A Gaussian ProbabilisticActor (TanhNormal or IndependentNormal) and a ValueOperator.

    ``shared=True``: actor and critic share their first layer (for ``separate_losses``).
    """
    base = nn.Linear(OBS, 8)
    actor_net = nn.Sequential(base, nn.Tanh(), nn.Linear(8, 2 * ACT), NormalParamExtractor())
    critic_net = nn.Sequential(base if shared else nn.Linear(OBS, 8), nn.Tanh(), nn.Linear(8, 1))
    dist_cls = {"tanh_normal": TanhNormal, "normal": IndependentNormal}[dist]
    actor = ProbabilisticActor(
        TensorDictModule(actor_net, in_keys=[obs_key], out_keys=["loc", "scale"]),
        in_keys=["loc", "scale"],
        distribution_class=dist_cls,
        return_log_prob=True,
    )
    critic = ValueOperator(critic_net, in_keys=[obs_key], out_keys=[value_key])
    return actor, critic


class _TwoHeads(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(OBS, 2 * ACT + N_DISC)

    def forward(self, obs):
        out = self.body(obs)
        return out[..., :ACT], nn.functional.softplus(out[..., ACT : 2 * ACT]) + 0.1, out[..., 2 * ACT :]


COMPOSITE_ACTION_KEYS = [("action", "cont"), ("action", "disc")]
COMPOSITE_LP_KEYS = [("action", "cont_log_prob"), ("action", "disc_log_prob")]


def composite_actor_critic():
    """A CompositeDistribution actor: an IndependentNormal head and a Categorical head."""
    module = TensorDictModule(
        _TwoHeads(),
        in_keys=["observation"],
        out_keys=[("params", "cont", "loc"), ("params", "cont", "scale"), ("params", "disc", "logits")],
    )
    dist = functools.partial(
        CompositeDistribution,
        distribution_map={"cont": IndependentNormal, "disc": d.Categorical},
        name_map={"cont": ("action", "cont"), "disc": ("action", "disc")},
    )
    actor = ProbabilisticActor(
        module, in_keys=["params"], out_keys=COMPOSITE_ACTION_KEYS, distribution_class=dist, return_log_prob=True
    )
    critic = ValueOperator(nn.Linear(OBS, 1), in_keys=["observation"])
    return actor, critic


MA_KEYS = dict(
    value=("agents", "state_value"),
    advantage=("agents", "advantage"),
    value_target=("agents", "value_target"),
    reward=("agents", "reward"),
    done=("agents", "done"),
    terminated=("agents", "terminated"),
)


def multiagent_actor_critic():
    """Per-agent Gaussian actor on ``("agents", "observation")`` writing ``("agents", "action")``."""
    actor = ProbabilisticActor(
        TensorDictModule(
            nn.Sequential(nn.Linear(OBS, 2 * ACT), NormalParamExtractor()),
            in_keys=[("agents", "observation")],
            out_keys=[("agents", "loc"), ("agents", "scale")],
        ),
        in_keys={"loc": ("agents", "loc"), "scale": ("agents", "scale")},
        out_keys=[("agents", "action")],
        distribution_class=IndependentNormal,
        return_log_prob=True,
    )
    critic = ValueOperator(nn.Linear(OBS, 1), in_keys=[("agents", "observation")], out_keys=[("agents", "state_value")])
    return actor, critic


# ----------------------------------------------------------------------------- data


def _rollout(actor, td: TensorDictBase, log_prob_keys, *, gen: torch.Generator, behaviour_noise: float):
    """Sample the actor on ``td``; shift the stored log-probs so the ratios spread over the clip range."""
    with torch.no_grad():
        td = actor(td).detach()
    for key in log_prob_keys:
        lp = td.get(key)
        td.set(key, lp + behaviour_noise * torch.randn(lp.shape, generator=gen))
    return td


def _add_next(td: TensorDictBase, obs_key, reward_shape, prefix=(), *, gen, done_every: int | None = None):
    shape = td.shape
    nxt = TensorDict({}, shape)
    if prefix:  # the nested (per-agent) sub-tensordict keeps its own, longer batch size
        nxt.set(prefix, TensorDict({}, td.get(prefix).batch_size))
    td.set("next", nxt)
    obs = td.get(obs_key)
    td.set(("next",) + (obs_key if isinstance(obs_key, tuple) else (obs_key,)), obs + 0.1 * torch.randn(obs.shape, generator=gen))
    done = torch.zeros(reward_shape, dtype=torch.bool)
    if done_every is not None and len(shape) >= 2:
        done[:, done_every - 1 :: done_every] = True
    td.set(("next",) + prefix + ("reward",), torch.randn(reward_shape, generator=gen))
    td.set(("next",) + prefix + ("done",), done.clone())
    td.set(("next",) + prefix + ("terminated",), done.clone())
    return td


def continuous_batch(
    actor,
    batch=(6,),
    *,
    seed: int = 0,
    advantage: bool = True,
    behaviour_noise: float = 0.3,
    done_every: int | None = None,
    log_prob_key="action_log_prob",
):
    """On-policy data for :func:`continuous_actor_critic`: obs, action, log-prob, next/..., and
    (with ``advantage``) ``advantage``, ``value_target`` and ``state_value``, all ``[*batch, 1]``."""
    gen = torch.Generator().manual_seed(seed)
    batch = torch.Size(batch)
    td = TensorDict({"observation": torch.randn(*batch, OBS, generator=gen)}, batch)
    if len(batch) == 2:
        td.names = [None, "time"]
    torch.manual_seed(seed)
    td = _rollout(actor, td, [log_prob_key], gen=gen, behaviour_noise=behaviour_noise)
    # keep TanhNormal samples strictly inside (-1, 1): finite log-probs
    td.set("action", td.get("action").clamp(-0.995, 0.995))
    td = _add_next(td, "observation", (*batch, 1), gen=gen, done_every=done_every)
    if advantage:
        td.set("advantage", torch.randn(*batch, 1, generator=gen))
        td.set("value_target", torch.randn(*batch, 1, generator=gen))
        td.set("state_value", torch.randn(*batch, 1, generator=gen))
    return td


def composite_batch(actor, batch=(6,), *, seed: int = 0, advantage: bool = True, log_prob_keys=COMPOSITE_LP_KEYS):
    gen = torch.Generator().manual_seed(seed)
    batch = torch.Size(batch)
    td = TensorDict({"observation": torch.randn(*batch, OBS, generator=gen)}, batch)
    torch.manual_seed(seed)
    td = _rollout(actor, td, log_prob_keys, gen=gen, behaviour_noise=0.3)
    td = _add_next(td, "observation", (*batch, 1), gen=gen)
    if advantage:
        td.set("advantage", torch.randn(*batch, 1, generator=gen))
        td.set("value_target", torch.randn(*batch, 1, generator=gen))
        td.set("state_value", torch.randn(*batch, 1, generator=gen))
    return td


def multiagent_batch(actor, batch=(6,), *, seed: int = 0, advantage: bool = True):
    gen = torch.Generator().manual_seed(seed)
    batch = torch.Size(batch)
    td = TensorDict(
        {"agents": TensorDict({"observation": torch.randn(*batch, N_AGENTS, OBS, generator=gen)}, (*batch, N_AGENTS))},
        batch,
    )
    torch.manual_seed(seed)
    td = _rollout(actor, td, [("agents", "action_log_prob")], gen=gen, behaviour_noise=0.3)
    td = _add_next(td, ("agents", "observation"), (*batch, N_AGENTS, 1), ("agents",), gen=gen)
    if advantage:
        for name in ("advantage", "value_target", "state_value"):
            td.set(("agents", name), torch.randn(*batch, N_AGENTS, 1, generator=gen))
    return td


# ----------------------------------------------------------------------------- comparison


def make_pair(factory: LossFactory, actor, critic, *, setup: Callable | None = None, **kwargs):
    """(ClipPPOLoss, class under test), built with the same arguments on deep copies of the same networks.

    ``setup(loss)`` runs on both (``set_keys``, ``make_value_estimator``, ``loss_mask_key``...).
    ``actor`` and ``critic`` are copied together, so parameters they share stay shared.
    """
    ref_nets = copy.deepcopy((actor, critic))
    cand_nets = copy.deepcopy((actor, critic))
    ref = ClipPPOLoss(*ref_nets, **kwargs)
    cand = factory.make(*cand_nets, **kwargs)
    if setup is not None:
        setup(ref)
        setup(cand)
    return ref, cand


def _leaves(td: TensorDictBase) -> dict:
    return {key: td.get(key) for key in td.keys(True, True)}


def _loss_keys(td: TensorDictBase) -> list:
    return [k for k in td.keys(True, True) if (k if isinstance(k, str) else k[0]).startswith("loss_")]


def assert_outputs_match(ref_out: TensorDictBase, cand_out: TensorDictBase, *, rtol=1e-5, atol=1e-6):
    """Every entry of ClipPPOLoss's output is in ours, same shape, dtype and value; same ``loss_*`` set.

    Extra diagnostics are allowed; an extra ``loss_*`` entry is not (trainers sum every ``loss_*``).
    """
    ref_leaves, cand_leaves = _leaves(ref_out), _leaves(cand_out)
    missing = [k for k in ref_leaves if k not in cand_leaves]
    assert not missing, f"entries of ClipPPOLoss's output missing from ours: {missing}"
    assert sorted(map(str, _loss_keys(cand_out))) == sorted(map(str, _loss_keys(ref_out))), (
        f"loss_* entries differ: ours {_loss_keys(cand_out)}, ClipPPOLoss {_loss_keys(ref_out)}"
    )
    for key, ref_val in ref_leaves.items():
        val = cand_leaves[key]
        assert val.shape == ref_val.shape, f"{key}: shape {tuple(val.shape)} != ClipPPOLoss's {tuple(ref_val.shape)}"
        assert val.dtype == ref_val.dtype, f"{key}: dtype {val.dtype} != ClipPPOLoss's {ref_val.dtype}"
        torch.testing.assert_close(val, ref_val, rtol=rtol, atol=atol, equal_nan=True, msg=lambda m: f"{key}: {m}")


def total_loss(out: TensorDictBase, loss_keys) -> torch.Tensor:
    return sum(out.get(k).sum() for k in loss_keys)


def assert_grads_match(ref, cand, *, rtol=1e-5, atol=1e-6):
    ref_grads = {n: p.grad for n, p in ref.named_parameters()}
    cand_grads = {n: p.grad for n, p in cand.named_parameters()}
    missing = [n for n in ref_grads if n not in cand_grads]
    assert not missing, f"parameters of ClipPPOLoss missing from ours: {missing}"
    assert any(g is not None for g in ref_grads.values()), "the reference produced no gradient at all"
    for name, ref_g in ref_grads.items():
        g = cand_grads[name]
        if ref_g is None:
            assert g is None or not g.any(), f"{name}: gradient where ClipPPOLoss has none"
            continue
        assert g is not None, f"{name}: no gradient where ClipPPOLoss has one"
        torch.testing.assert_close(g, ref_g, rtol=rtol, atol=atol, msg=lambda m: f"grad {name}: {m}")


def run(loss, td: TensorDictBase, seed: int = 0) -> TensorDictBase:
    torch.manual_seed(seed)  # Monte-Carlo entropies (TanhNormal) draw samples
    return loss(td)


def check(factory: LossFactory, ref, cand, td: TensorDictBase, *, grads: bool = True, seed: int = 0):
    """Run both losses on (copies of) ``td``; compare outputs, then gradients of the summed ``loss_*``.

    Returns ``(ref_out, cand_out)``.
    """
    ref_out = run(ref, td.clone(), seed)
    cand_out = run(cand, factory.prepare(td.clone()), seed)
    assert_outputs_match(ref_out, cand_out)
    if grads:
        keys = _loss_keys(ref_out)
        total_loss(ref_out, keys).backward()
        total_loss(cand_out, keys).backward()
        assert_grads_match(ref, cand)
    return ref_out, cand_out


def assert_same_error(ref_call: Callable, cand_call: Callable, fragment: str) -> BaseException:
    """Both calls raise; ours raises ClipPPOLoss's exception type (or a subclass); both messages hold ``fragment``."""
    with pytest.raises(Exception) as ref_info:
        ref_call()
    assert fragment in str(ref_info.value), f"the test is wrong: ClipPPOLoss says {ref_info.value!r}"
    with pytest.raises(Exception) as cand_info:
        cand_call()
    assert isinstance(cand_info.value, type(ref_info.value)), (
        f"ours raised {type(cand_info.value).__name__}: {cand_info.value}; "
        f"ClipPPOLoss raises {type(ref_info.value).__name__}: {ref_info.value}"
    )
    assert fragment in str(cand_info.value), f"message {str(cand_info.value)!r} lacks {fragment!r}"
    return cand_info.value
