"""Our own latent-conditioned networks (``make_actor_critic``: actor and critic read ``"policy_id"``
and share a latent table): the classes still agree with ClipPPOLoss run on the same networks."""
from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict
from torchrl.envs.utils import ExplorationType, set_exploration_type
from torchrl.objectives import ClipPPOLoss

from torchrl_sapg.modules import make_actor_critic
from torchrl_sapg.objectives import SAPGLoss

from ._harness import OBS, check, make_pair

B, T, ACT = 4, 3, 2


def _networks(num_policies=1):
    ac = make_actor_critic(OBS, ACT, num_policies=num_policies, latent_dim=4, hidden_sizes=(8,))
    return ac.actor, ac.critic


def _batch(actor, num_policies=1, advantage=True, seed=0):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.arange(B).remainder(num_policies).unsqueeze(1).expand(B, T).contiguous()
    td = TensorDict({"observation": torch.randn(B, T, OBS, generator=gen), "policy_id": ids}, [B, T], names=[None, "time"])
    torch.manual_seed(seed)
    with torch.no_grad(), set_exploration_type(ExplorationType.RANDOM):
        td = actor(td).detach()
    td["action_log_prob"] = td["action_log_prob"] + 0.3 * torch.randn(B, T, generator=gen)
    td["next"] = TensorDict(
        {
            "observation": torch.randn(B, T, OBS, generator=gen),
            "policy_id": ids.clone(),
            "reward": torch.randn(B, T, 1, generator=gen),
            "done": torch.zeros(B, T, 1, dtype=torch.bool),
            "terminated": torch.zeros(B, T, 1, dtype=torch.bool),
        },
        [B, T],
    )
    if advantage:
        for key in ("advantage", "value_target", "state_value"):
            td[key] = torch.randn(B, T, 1, generator=gen)
    return td


@pytest.mark.parametrize("advantage", [True, False], ids=["advantage_given", "estimator"])
@pytest.mark.parametrize("options", [dict(), dict(clip_value=0.1, loss_critic_type="l2"), dict(entropy_bonus=False)],
                         ids=["default", "clip_value_l2", "entropy_off"])
def test_latent_conditioned_networks(factory, advantage, options):
    actor, critic = _networks()
    ref, cand = make_pair(factory, actor, critic, **options)
    check(factory, ref, cand, _batch(actor, advantage=advantage))


@pytest.mark.parametrize("coeffs", [(0.02, 0.02), (0.0, 0.05)], ids=["uniform", "per_policy"])
def test_sapg_population_entropy_is_per_row_clip_ppo(coeffs):
    """Two policies, no aggregation: SAPGLoss is ClipPPOLoss with each row's entropy weighted by its
    policy's coefficient (``loss_entropy = mean(-c[policy_id] * entropy)``)."""
    actor, critic = _networks(num_policies=2)
    td = _batch(actor, num_policies=2)
    ref = ClipPPOLoss(actor, critic, entropy_coeff=1.0, loss_critic_type="l2", reduction="none")
    sapg = SAPGLoss(actor, critic, num_policies=2, aggregation="none", advantage_normalization="none",
                    entropy_coeffs=list(coeffs), loss_critic_type="l2")
    ref_out, out = ref(td.clone()), sapg(td.clone())
    per_row = torch.tensor(coeffs)[td["policy_id"]]
    torch.testing.assert_close(out["loss_entropy"], (per_row * ref_out["loss_entropy"]).mean())
    for key in ("loss_objective", "loss_critic"):
        torch.testing.assert_close(out[key], ref_out[key].mean())
    for key in ("ESS", "clip_fraction", "kl_approx", "max_ratio", "mean_ratio", "entropy"):
        torch.testing.assert_close(out[key], ref_out[key])
