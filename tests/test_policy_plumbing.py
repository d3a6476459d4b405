"""Policy ids, latents, the latent-conditioned actor/critic and the observation normaliser."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from tensordict import TensorDict
from torch.distributions import Normal
from torchrl.data import Categorical
from torchrl.envs import ExplorationType, TransformedEnv, set_exploration_type
from torchrl.envs.utils import check_env_specs
from torchrl.objectives import ClipPPOLoss
from torchrl.objectives.value import GAE

from torchrl_sapg import (
    LatentConditionedActor,
    LatentConditionedValue,
    ObservationNormalizer,
    PolicyIdTransform,
    PolicyLatents,
    make_actor_critic,
    make_env,
)
from torchrl_sapg.envs import PendulumEnv, block_policy_ids
from torchrl_sapg.modules import check_policy_ids


def _tagged_env(num_envs: int, num_policies: int, seed: int = 0) -> TransformedEnv:
    return TransformedEnv(PendulumEnv(num_envs, seed=seed), PolicyIdTransform(num_policies))


# ----------------------------------------------------------------------------- PolicyIdTransform
def test_block_policy_ids_layout():
    assert block_policy_ids(6, 3).tolist() == [0, 0, 1, 1, 2, 2]
    assert block_policy_ids(4, 4).tolist() == [0, 1, 2, 3]
    assert block_policy_ids(5, 1).tolist() == [0] * 5
    ids = block_policy_ids(12, 4)
    assert ids.dtype == torch.int64
    # policy i owns the contiguous block [i*N/M, (i+1)*N/M)
    for i in range(4):
        assert (ids[i * 3 : (i + 1) * 3] == i).all()


def test_policy_ids_at_reset_and_every_step():
    env = _tagged_env(6, 3)
    expected = torch.tensor([0, 0, 1, 1, 2, 2])
    td = env.reset()
    assert td["policy_id"].dtype == torch.int64
    assert td["policy_id"].shape == torch.Size([6])
    assert torch.equal(td["policy_id"], expected)
    # ids survive any in-place edit a downstream module makes on a returned tensor
    td["policy_id"].add_(7)
    td["action"] = env.action_spec.rand()
    out = env.step(td)
    assert torch.equal(out["next", "policy_id"], expected)

    rollout = env.rollout(5, break_when_any_done=False)
    assert rollout.shape == torch.Size([6, 5])
    assert torch.equal(rollout["policy_id"], expected[:, None].expand(6, 5))
    assert torch.equal(rollout["next", "policy_id"], expected[:, None].expand(6, 5))


def test_policy_id_in_observation_spec_and_specs_check():
    env = _tagged_env(8, 4)
    spec = env.observation_spec["policy_id"]
    assert isinstance(spec, Categorical)
    assert spec.space.n == 4
    assert spec.dtype == torch.int64
    assert spec.shape == torch.Size([8])
    check_env_specs(env, seed=0)


def test_next_policy_id_present_after_rollout_with_resets():
    # episodes of 3 steps over a 7-step rollout: ids are written after the partial resets too
    env = TransformedEnv(PendulumEnv(4, seed=0, max_episode_steps=3), PolicyIdTransform(2))
    r = env.rollout(7, break_when_any_done=False)
    assert r["next", "done"].any()
    assert ("next", "policy_id") in r.keys(True, True)
    assert torch.equal(r["next", "policy_id"], torch.tensor([0, 0, 1, 1])[:, None].expand(4, 7))
    assert torch.equal(r["policy_id"], r["next", "policy_id"])


def test_policy_id_uneven_split_raises_naming_both_numbers():
    with pytest.raises(ValueError) as err:
        env = _tagged_env(7, 3)
        env.reset()
    assert "num_envs=7" in str(err.value)
    assert "num_policies=3" in str(err.value)
    with pytest.raises(ValueError, match="num_envs=10.*num_policies=4"):
        block_policy_ids(10, 4)


@pytest.mark.parametrize("bad", [0, -1, 2.0])
def test_policy_id_transform_rejects_bad_num_policies(bad):
    with pytest.raises(ValueError, match="num_policies"):
        PolicyIdTransform(bad)


def test_policy_id_transform_single_policy():
    env = _tagged_env(5, 1)
    r = env.rollout(3, break_when_any_done=False)
    assert torch.equal(r["policy_id"], torch.zeros(5, 3, dtype=torch.int64))
    assert torch.equal(r["next", "policy_id"], torch.zeros(5, 3, dtype=torch.int64))
    assert env.observation_spec["policy_id"].space.n == 1


# ----------------------------------------------------------------------------- latents / ids
def test_policy_latents_lookup_is_the_table_row():
    latents = PolicyLatents(4, 3, generator=torch.Generator().manual_seed(0))
    assert latents.weight.shape == torch.Size([4, 3])
    ids = torch.tensor([3, 0, 3, 1])
    out = latents(ids)
    for n, i in enumerate(ids.tolist()):
        assert torch.equal(out[n], latents.weight[i])


def test_latent_init_std_scales_the_initial_draw():
    """make_actor_critic(latent_init_std=s) draws phi from N(0, s^2): the same draw, scaled."""
    torch.manual_seed(0)
    a = make_actor_critic(3, 1, num_policies=64, latent_dim=32).latents.weight.detach()
    torch.manual_seed(0)
    b = make_actor_critic(3, 1, num_policies=64, latent_dim=32, latent_init_std=0.1).latents.weight.detach()
    torch.testing.assert_close(b, 0.1 * a)
    assert 0.9 < float(a.std()) < 1.1


@pytest.mark.parametrize("obs_dim,latent_dim", [(3, 32), (17, 8)])
def test_input_layer_initialises_observation_and_latent_columns_separately(obs_dim, latent_dim):
    """The first layer's observation columns and bias keep an unconditioned network's
    U(±1/sqrt(obs_dim)), the latent columns get U(±1/sqrt(latent_dim)) (docs/sapg.md: a joint
    fan-in of obs_dim + latent_dim shrank the observation weights and slowed learning 4x)."""
    torch.manual_seed(0)
    ac = make_actor_critic(obs_dim, 1, num_policies=4, latent_dim=latent_dim, hidden_sizes=(512,))
    plain = make_actor_critic(obs_dim, 1, hidden_sizes=(512,))
    for net, ref in ((ac.actor.head.backbone, plain.actor.head.backbone), (ac.critic.module, plain.critic.module)):
        w, b = net.mlp[0].weight.detach(), net.mlp[0].bias.detach()
        w_obs, w_lat = w[:, :obs_dim], w[:, obs_dim:]
        bound_obs, bound_lat = 1 / math.sqrt(obs_dim), 1 / math.sqrt(latent_dim)
        joint = 1 / math.sqrt(obs_dim + latent_dim)  # what a plain nn.Linear(obs + latent) would use
        for x, bound in ((w_obs, bound_obs), (b, bound_obs), (w_lat, bound_lat)):
            assert float(x.abs().max()) <= bound
            # uniform on [-bound, bound]: std bound / sqrt(3), far from the joint fan-in's
            assert abs(float(x.std()) - bound / math.sqrt(3)) < 0.1 * bound
        assert float(w_obs.abs().max()) > 1.1 * joint
        # the observation pathway has the scale of the unconditioned network's first layer
        w_ref = ref.mlp[0].weight.detach()
        assert abs(float(w_obs.std()) - float(w_ref.std())) < 0.1 * float(w_ref.std())
    # at init the two input groups contribute pre-activations of the same scale (z ~ N(0, 1))
    x = torch.randn(4096, obs_dim)
    z = torch.randn(4096, latent_dim)
    w = ac.actor.head.backbone.mlp[0].weight.detach()
    ratio = float((z @ w[:, obs_dim:].T).std() / (x @ w[:, :obs_dim].T).std())
    assert 0.8 < ratio < 1.25
    # input_init="joint": PyTorch's default over the concatenation (the reference code's networks)
    joint_net = make_actor_critic(obs_dim, 1, num_policies=4, latent_dim=latent_dim, hidden_sizes=(512,),
                                  input_init="joint").actor.head.backbone.mlp[0].weight.detach()
    assert float(joint_net.abs().max()) <= joint
    assert abs(float(joint_net.std()) - joint / math.sqrt(3)) < 0.1 * joint
    with pytest.raises(ValueError, match="input_init"):
        make_actor_critic(obs_dim, 1, num_policies=4, latent_dim=latent_dim, input_init="xavier")


@pytest.mark.parametrize("bad_ids", [[0, 1, 3], [-1, 0], [7]])
def test_out_of_range_ids_raise_value_error_naming_the_range(bad_ids):
    latents = PolicyLatents(3, 2)
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        latents(torch.tensor(bad_ids))
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        check_policy_ids(torch.tensor(bad_ids), 3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bool])
def test_non_integer_ids_raise_type_error(dtype):
    ids = torch.tensor([0, 1, 1]).to(dtype)
    with pytest.raises(TypeError, match="integer"):
        check_policy_ids(ids, 3)
    with pytest.raises(TypeError):
        PolicyLatents(3, 2)(ids)


def test_actor_rejects_out_of_range_and_float_ids():
    actor = LatentConditionedActor(3, 1, num_policies=2, latents=PolicyLatents(2, 4), hidden_sizes=(8,))
    td = TensorDict({"observation": torch.randn(3, 3), "policy_id": torch.tensor([0, 1, 2])}, [3])
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        actor(td)
    # without latents the per-policy log-std lookup is what checks the id
    plain = LatentConditionedActor(3, 1, num_policies=2, latents=None, hidden_sizes=(8,))
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        plain(td.clone())
    td["policy_id"] = torch.tensor([0.0, 1.0, 1.0])
    with pytest.raises(TypeError):
        actor(td)


def test_latents_size_must_match_num_policies():
    with pytest.raises(ValueError, match="num_policies"):
        LatentConditionedActor(3, 1, num_policies=3, latents=PolicyLatents(2, 4))
    with pytest.raises(ValueError, match="num_policies"):
        LatentConditionedValue(3, num_policies=3, latents=PolicyLatents(2, 4))


# ----------------------------------------------------------------------------- actor / critic
def _ac(num_policies=3, latent_dim=4, obs_dim=3, act_dim=2, **kw):
    torch.manual_seed(0)
    return make_actor_critic(
        obs_dim, act_dim, num_policies=num_policies, latent_dim=latent_dim, hidden_sizes=(16, 16), **kw
    )


@pytest.mark.parametrize("j", [0, 1, 2])
def test_policy_output_depends_on_its_own_latent_only(j):
    ac = _ac(normalize_observations=False)
    obs = torch.randn(5, 3)
    td = TensorDict({"observation": obs, "policy_id": torch.full((5,), j)}, [5])

    def outputs():
        with torch.no_grad():
            loc = ac.actor(td.clone())["loc"]
            value = ac.critic(td.clone())["state_value"]
        return loc.clone(), value.clone()

    loc0, v0 = outputs()
    with torch.no_grad():
        for k in range(3):
            if k != j:
                ac.latents.weight[k].add_(3.0)
    loc1, v1 = outputs()
    assert torch.equal(loc0, loc1), "changing another policy's latent changed this policy's actor"
    assert torch.equal(v0, v1), "changing another policy's latent changed this policy's critic"
    with torch.no_grad():
        ac.latents.weight[j].add_(3.0)
    loc2, v2 = outputs()
    assert not torch.allclose(loc1, loc2), "the policy's own latent does not reach its actor"
    assert not torch.allclose(v1, v2), "the policy's own latent does not reach its critic"


def test_per_policy_log_std_and_log_prob_hand_check():
    ac = _ac(normalize_observations=False)
    with torch.no_grad():
        ac.actor.log_std.copy_(torch.tensor([[-1.0, 0.5], [0.2, -0.3], [0.0, 1.0]]))
    assert ac.actor.log_std.shape == torch.Size([3, 2])
    ids = torch.tensor([2, 0, 1, 1, 0, 2])
    td = TensorDict({"observation": torch.randn(6, 3), "policy_id": ids}, [6])
    with set_exploration_type(ExplorationType.RANDOM):  # sample, as collectors do
        out = ac.actor(td)
    assert not torch.allclose(out["action"], out["loc"])
    expected_scale = ac.actor.log_std.detach()[ids].exp()
    assert torch.allclose(out["scale"], expected_scale, rtol=0, atol=1e-7)
    # hand log-prob: independent Gaussian, summed over the action dimension
    expected = Normal(out["loc"], out["scale"]).log_prob(out["action"]).sum(-1)
    assert out["action_log_prob"].shape == torch.Size([6])
    assert torch.allclose(out["action_log_prob"], expected, atol=1e-5)
    # loc is what the backbone computes on [obs, phi[policy_id]]
    backbone = ac.actor.head.backbone
    x = torch.cat([td["observation"], ac.latents.weight[ids]], -1)
    assert torch.allclose(out["loc"], backbone.mlp(x), atol=1e-6)


def test_actor_writes_default_torchrl_keys():
    ac = _ac()
    td = TensorDict({"observation": torch.randn(4, 3), "policy_id": torch.tensor([0, 1, 2, 0])}, [4])
    out = ac.actor(td)
    assert {"loc", "scale", "action", "action_log_prob"} <= set(out.keys())
    assert out["action"].shape == torch.Size([4, 2])


def test_shared_latents_get_gradient_from_actor_and_critic_terms():
    """ClipPPOLoss over an actor and a critic that share PolicyLatents: both terms train phi."""
    ac = _ac(normalize_observations=False)
    loss = ClipPPOLoss(ac.actor, ac.critic, entropy_bonus=False)
    # the shared table appears once among the loss parameters (no silent copy per network)
    n_latent_params = sum(1 for p in loss.parameters() if p is ac.latents.weight)
    assert n_latent_params == 1
    torch.manual_seed(1)
    ids = torch.tensor([0, 0, 1, 1, 0, 1])  # policy 2 is absent from the batch
    td = TensorDict({"observation": torch.randn(6, 3), "policy_id": ids}, [6])
    with torch.no_grad(), set_exploration_type(ExplorationType.RANDOM):
        td = ac.actor(td)
    td["advantage"] = torch.randn(6, 1)
    td["value_target"] = torch.randn(6, 1)
    # make the new policy differ from the behaviour one, so the surrogate has a gradient
    with torch.no_grad():
        td["action_log_prob"] = td["action_log_prob"] - 0.05

    def grad_of(term):
        ac.latents.weight.grad = None
        loss(td.clone())[term].backward()
        return ac.latents.weight.grad.clone()

    g_actor = grad_of("loss_objective")
    g_critic = grad_of("loss_critic")
    for g in (g_actor, g_critic):
        assert g[:2].abs().sum() > 0, "a present policy's latent got no gradient"
        assert torch.equal(g[2], torch.zeros_like(g[2])), "an absent policy's latent got gradient"
    ac.latents.weight.grad = None
    out = loss(td.clone())
    (out["loss_objective"] + out["loss_critic"]).backward()
    assert torch.allclose(ac.latents.weight.grad, g_actor + g_critic, atol=1e-6)


def test_latent_conditioned_critic_works_with_default_gae():
    """Regression: TorchRL's GAE evaluates the critic under torch.vmap by default, where the
    host-side id check (int(policy_id.min())) is impossible; it must be skipped there."""
    ac = _ac(normalize_observations=False)
    env = TransformedEnv(PendulumEnv(6, seed=0), PolicyIdTransform(3))
    with torch.no_grad():
        batch = env.rollout(4, ac.actor, break_when_any_done=False)
    gae = GAE(gamma=0.99, lmbda=0.95, value_network=ac.critic)
    out = gae(batch.clone())
    assert out["advantage"].shape == torch.Size([6, 4, 1])
    no_vmap = GAE(gamma=0.99, lmbda=0.95, value_network=ac.critic, deactivate_vmap=True)(batch.clone())
    assert torch.allclose(out["advantage"], no_vmap["advantage"], atol=1e-5)


def test_latent_conditioned_critic_with_gae_without_vmap_matches_hand_one_step():
    """With lmbda=0, GAE's advantage is the TD error r + gamma V(s') (1 - terminated) - V(s)."""
    ac = _ac(normalize_observations=False)
    env = TransformedEnv(PendulumEnv(6, seed=0), PolicyIdTransform(3))
    with torch.no_grad():
        batch = env.rollout(4, ac.actor, break_when_any_done=False)
        gae = GAE(gamma=0.9, lmbda=0.0, value_network=ac.critic, deactivate_vmap=True)
        out = gae(batch.clone())
        v = ac.critic(batch.clone())["state_value"]
        v_next = ac.critic(batch["next"].clone())["state_value"]
    r = batch["next", "reward"]
    not_term = (~batch["next", "terminated"]).float()
    expected = r + 0.9 * v_next * not_term - v
    assert torch.allclose(out["advantage"], expected, atol=1e-5)


# ----------------------------------------------------------------------------- normaliser
def test_observation_normalizer_matches_numpy_after_several_updates():
    rng = np.random.default_rng(0)
    norm = ObservationNormalizer((3,), clip=None)
    chunks = [rng.normal(loc=[1.0, -2.0, 5.0], scale=[0.5, 3.0, 2.0], size=(n, 3)) for n in (7, 50, 1, 200)]
    for c in chunks:
        norm.update(torch.as_tensor(c, dtype=torch.float32))
    data = np.concatenate([c.astype(np.float32).astype(np.float64) for c in chunks])
    n = len(data)
    # RunningMeanStd starts from a pseudo-sample of weight 1e-4 with mean 0 and variance 1
    eps = 1e-4
    mean = data.sum(0) / (n + eps)
    var = (((data - mean) ** 2).sum(0) + eps * (1.0 + mean**2)) / (n + eps)
    stats = norm.stats
    assert float(stats.count) == pytest.approx(n + eps, rel=1e-6)
    np.testing.assert_allclose(stats.mean.numpy(), mean, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(stats.var.numpy(), var, rtol=1e-4, atol=1e-5)
    # and, to the prior's negligible weight, the plain numpy statistics
    np.testing.assert_allclose(stats.mean.numpy(), data.mean(0), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(stats.var.numpy(), data.var(0), rtol=1e-4, atol=1e-4)
    x = torch.as_tensor(data[:5], dtype=torch.float32)
    expected = (data[:5] - mean) / np.sqrt(var)
    np.testing.assert_allclose(norm(x).numpy(), expected, rtol=1e-4, atol=1e-4)


def test_observation_normalizer_clips_and_only_changes_on_update():
    norm = ObservationNormalizer(2, clip=2.0)
    norm.update(torch.tensor([[0.0, 10.0], [2.0, 10.0], [4.0, 10.0]]))
    before = {k: v.clone() for k, v in norm.state_dict().items()}
    y = norm(torch.tensor([[100.0, 10.0], [-100.0, 10.0], [2.0, 10.0]]))
    # column 0 has mean 2 and std sqrt(8/3) (to the 1e-4 prior): +-100 clip to +-2, 2 maps to ~0
    assert torch.equal(y[:2, 0], torch.tensor([2.0, -2.0]))
    assert abs(float(y[2, 0])) < 1e-3
    assert y.abs().max() <= 2.0
    # calling the normaliser never changes its statistics
    for k, v in norm.state_dict().items():
        assert torch.equal(v, before[k])
    unclipped = ObservationNormalizer(1, clip=None)
    unclipped.update(torch.tensor([[-1.0], [1.0]]))
    assert float(unclipped(torch.tensor([[100.0]]))) > 50.0


def test_observation_normalizer_state_travels_with_state_dict():
    a = ObservationNormalizer(3)
    a.update(torch.randn(64, 3) * 3 + 1)
    b = ObservationNormalizer(3)
    b.load_state_dict(a.state_dict())
    x = torch.randn(5, 3)
    assert torch.equal(a(x), b(x))


def test_make_actor_critic_shares_latents_and_normalizer():
    ac = make_actor_critic(3, 1, num_policies=4, latent_dim=8, hidden_sizes=(8,))
    assert ac.actor.latents is ac.latents
    assert ac.critic.module.latents is ac.latents
    assert ac.actor.obs_normalizer is ac.obs_normalizer
    assert ac.critic.module.obs_normalizer is ac.obs_normalizer
    plain = make_actor_critic(3, 1, num_policies=1, latent_dim=0, normalize_observations=False, hidden_sizes=(8,))
    assert plain.latents is None and plain.obs_normalizer is None
    env = make_env("pendulum", 2, seed=0)
    td = env.reset()
    td["policy_id"] = torch.zeros(2, dtype=torch.int64)
    assert plain.actor(td)["action"].shape == torch.Size([2, 1])


def test_folded_first_layer_is_the_concatenation():
    """The backbone's folded first layer computes mlp(concat(obs, phi[id])): values and gradients."""
    from torchrl_sapg.modules.actor_critic import LatentConditionedMLP
    from torchrl_sapg.modules.latents import PolicyLatents

    torch.manual_seed(0)
    net = LatentConditionedMLP(5, 2, latents=PolicyLatents(3, 4), hidden_sizes=(8, 8))
    obs, ids = torch.randn(4, 6, 5), torch.randint(0, 3, (4, 6))
    folded = net(obs, ids)
    reference = net.mlp(torch.cat([obs, net.latents.weight[ids]], dim=-1))
    torch.testing.assert_close(folded, reference)
    g_folded = torch.autograd.grad(folded.square().sum(), list(net.parameters()))
    g_reference = torch.autograd.grad(net.mlp(torch.cat([obs, net.latents.weight[ids]], -1)).square().sum(),
                                      list(net.parameters()))
    for a, b in zip(g_folded, g_reference):
        torch.testing.assert_close(a, b)
