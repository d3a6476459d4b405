"""SAPGLoss misuse is never silent: each case raises (or warns) with a message naming the fix.

Also: ``policy_id`` is a real ``set_keys`` key, flowing from PolicyIdTransform / PopulationCollector /
make_actor_critic to aggregate, the entropy rows and the errors.
"""
from __future__ import annotations

import pytest
import torch
from tensordict.nn import NormalParamExtractor, TensorDictModule
from torchrl.modules import ProbabilisticActor, TanhNormal, ValueOperator
from torchrl.objectives.value import GAE

from torchrl_sapg.collectors import PopulationCollector
from torchrl_sapg.envs import make_env
from torchrl_sapg.modules import make_actor_critic
from torchrl_sapg.objectives import SAPGLoss

N, T, M = 12, 8, 3


def _collect(ac, policy_id_key="policy_id", seed=0):
    collector = PopulationCollector(make_env("pendulum", N, seed=seed), ac.actor, num_policies=M, frames_per_batch=N * T,
                                    policy_id_key=policy_id_key)
    batch = next(iter(collector))
    collector.shutdown()
    with torch.no_grad():
        return GAE(gamma=0.9, lmbda=0.9, value_network=ac.critic)(batch)


@pytest.fixture(scope="module")
def collected():
    torch.manual_seed(0)
    ac = make_actor_critic(3, 1, num_policies=M, latent_dim=4, hidden_sizes=(16,))
    return ac, _collect(ac)


def _loss(actor, critic, **kw):
    return SAPGLoss(actor, critic, num_policies=M, advantage_normalization="none",
                    generator=torch.Generator().manual_seed(0), **kw)


def test_plain_actor_without_policy_id_is_refused(collected):
    ac, batch = collected
    net = torch.nn.Sequential(torch.nn.Linear(3, 2), NormalParamExtractor())
    plain = ProbabilisticActor(TensorDictModule(net, ["observation"], ["loc", "scale"]), in_keys=["loc", "scale"],
                               distribution_class=TanhNormal, return_log_prob=True)
    critic = ValueOperator(torch.nn.Linear(3, 1), in_keys=["observation"])
    with pytest.raises(ValueError, match=r"does not read 'policy_id'.*make_actor_critic\(num_policies=3"):
        _loss(plain, critic).aggregate(batch.clone())


def test_time_major_batch_is_refused(collected):
    ac, batch = collected
    with pytest.raises(ValueError, match=r"time-major \(\[T, N\]\)\? Pass batch.transpose\(0, 1\)"):
        _loss(ac.actor, ac.critic).aggregate(batch.clone().transpose(0, 1).contiguous())


@pytest.mark.parametrize("missing", [("next", "terminated"), ("next", "done"), ("next", "observation"), "state_value"])
def test_a_batch_missing_a_key_aggregate_needs_names_it_and_the_fix(collected, missing):
    ac, batch = collected
    with pytest.raises(KeyError, match=r"missing from the batch.*PopulationCollector.*value estimator") as err:
        _loss(ac.actor, ac.critic).aggregate(batch.clone().exclude(missing))
    assert repr(missing) in str(err.value)


@pytest.mark.parametrize("name, hint", [("entropy_coeff", "entropy_coeffs=.*entropy_sigma"),
                                        ("entropy_bonus", "entropy_coeffs / entropy_sigma"),
                                        ("normalize_advantage", "advantage_normalization='minibatch'")])
def test_clip_ppo_only_arguments_name_the_sapg_equivalent(collected, name, hint):
    ac, _ = collected
    with pytest.raises(TypeError, match=rf"SAPGLoss does not take ClipPPOLoss's {name}=; use {hint}"):
        SAPGLoss(ac.actor, ac.critic, num_policies=M, **{name: 0.01})


def test_an_actor_that_ignores_the_id_is_warned_about(collected):
    ac, batch = collected
    torch.manual_seed(1)
    same = make_actor_critic(3, 1, num_policies=M, latent_dim=4, hidden_sizes=(16,))
    with torch.no_grad():
        same.latents.weight.copy_(same.latents.weight[:1].expand(M, -1))
        same.actor.log_std.fill_(0.0)
    with pytest.warns(UserWarning, match="does not depend on 'policy_id'.*mu is exactly 1"):
        _loss(same.actor, same.critic).aggregate(batch.clone())


def test_policy_id_key_flows_from_transform_collector_and_actor_to_the_loss():
    """The same data under the key "pid" gives the same aggregated batch and losses as under "policy_id"."""
    outs = {}
    for key in ("policy_id", "pid"):
        torch.manual_seed(0)
        ac = make_actor_critic(3, 1, num_policies=M, latent_dim=4, hidden_sizes=(16,), policy_id_key=key)
        batch = _collect(ac, policy_id_key=key, seed=3)
        assert key in batch.keys() and ("next", key) in batch.keys(True)
        loss = _loss(ac.actor, ac.critic, entropy_coeffs=[0.0, 0.1, 0.2])
        loss.set_keys(policy_id=key)
        assert loss.tensor_keys.policy_id == key
        data = loss.aggregate(batch)
        assert int(data["off_policy"].sum()) == T * N // M  # the leader received a follower block
        outs[key] = (data.get(key), loss(data.reshape(-1)))
    ids, out = outs["policy_id"]
    ids_pid, out_pid = outs["pid"]
    assert torch.equal(ids, ids_pid)
    for name in ("loss_objective", "loss_critic", "loss_entropy"):
        torch.testing.assert_close(out[name], out_pid[name])


def test_unknown_key_in_set_keys_is_rejected(collected):
    ac, _ = collected
    with pytest.raises(ValueError):
        _loss(ac.actor, ac.critic).set_keys(policy_idx="pid")
