"""An asymmetric critic (Isaac Lab's "critic" group) reads its own key with its own normaliser."""
from __future__ import annotations

import torch
from tensordict import TensorDict
from torchrl.envs import CatTensors, TransformedEnv
from torchrl.objectives import ClipPPOLoss
from torchrl.objectives.value import GAE

from torchrl_sapg.collectors import PopulationCollector
from torchrl_sapg.envs import PendulumEnv
from torchrl_sapg.modules import make_actor_critic
from torchrl_sapg.trainers import OnPolicyTrainer


def test_critic_reads_only_its_own_observation_key():
    torch.manual_seed(0)
    ac = make_actor_critic(3, 1, num_policies=2, latent_dim=4, hidden_sizes=(16,),
                           critic_observation_key="critic_observation", critic_observation_dim=5)
    td = TensorDict({"observation": torch.randn(6, 3), "critic_observation": torch.randn(6, 5),
                     "policy_id": torch.tensor([0, 0, 0, 1, 1, 1])}, [6])
    v = ac.critic(td.clone())["state_value"]
    other_obs = td.clone()
    other_obs["observation"] = torch.randn(6, 3)
    torch.testing.assert_close(ac.critic(other_obs)["state_value"], v)  # actor input: no effect
    other_critic = td.clone()
    other_critic["critic_observation"] = torch.randn(6, 5)
    assert not torch.allclose(ac.critic(other_critic)["state_value"], v)
    assert ac.critic_obs_normalizer is not None and ac.critic_obs_normalizer is not ac.obs_normalizer


def test_trainer_updates_the_critic_normaliser_from_its_key():
    torch.manual_seed(0)
    n, t = 8, 16
    env = TransformedEnv(PendulumEnv(n, seed=0), CatTensors(in_keys=["observation"], out_key="critic_observation",
                                                           del_keys=False))
    ac = make_actor_critic(3, 1, hidden_sizes=(16,), critic_observation_key="critic_observation",
                           critic_observation_dim=3)
    collector = PopulationCollector(env, ac.actor, num_policies=1, frames_per_batch=n * t)
    loss = ClipPPOLoss(ac.actor, ac.critic, entropy_bonus=False)
    trainer = OnPolicyTrainer(
        collector=collector, loss_module=loss, optimizer=torch.optim.Adam(loss.parameters(), lr=1e-3),
        total_frames=2 * n * t, num_epochs=1, num_minibatches=2,
        value_estimator=GAE(gamma=0.99, lmbda=0.95, value_network=ac.critic),
        obs_normalizers=[ac.obs_normalizer, (ac.critic_obs_normalizer, "critic_observation")],
        progress_bar=False, seed=0,
    )
    before = float(ac.critic_obs_normalizer.stats.count)
    trainer.train()
    # RunningMeanStd starts at a count of 1e-4; float32 rounding
    assert abs(float(ac.critic_obs_normalizer.stats.count) - before - 2 * n * t) < 1e-2
    assert abs(float(ac.obs_normalizer.stats.count) - before - 2 * n * t) < 1e-2
