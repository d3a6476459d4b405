"""SAPG in your own TorchRL loop: TorchRL's Collector and GAE, our SAPGLoss, no library trainer.

    python examples/torchrl_loop.py                  # 5 iterations, ~5 s on a laptop CPU
    python examples/torchrl_loop.py --iterations 50 --population

The code of ``main`` is shown verbatim in docs/torchrl-loop.md, and ``main_population`` is the
page's alternative with ``PopulationCollector``; tests/test_torchrl_loop_example.py runs both
and checks that the page and this file say the same thing.
"""
from __future__ import annotations

import argparse

import torch
from torchrl.collectors import Collector
from torchrl.envs import Compose, RewardSum, TransformedEnv
from torchrl.objectives.value import GAE

from torchrl_sapg import PolicyIdTransform, PopulationCollector, SAPGLoss, make_actor_critic, make_env


def main(iterations: int = 5, num_envs: int = 48, num_policies: int = 3, horizon: int = 200, seed: int = 0):
    N, M, T = num_envs, num_policies, horizon  # policy j owns envs [j*N/M, (j+1)*N/M); policy 0 is the leader
    torch.manual_seed(seed)
    env = TransformedEnv(make_env("pendulum", N, seed=seed), Compose(PolicyIdTransform(M), RewardSum()))
    ac = make_actor_critic(3, 1, num_policies=M, latent_dim=16, hidden_sizes=(64, 64))
    collector = Collector(env, ac.actor, frames_per_batch=N * T, total_frames=iterations * N * T,
                          auto_register_policy_transforms=False)  # a feed-forward actor needs no InitTracker
    loss = SAPGLoss(ac.actor, ac.critic, num_policies=M, leader_id=0, entropy_sigma=0.001, off_policy_target="vtrace")
    gae = GAE(gamma=0.99, lmbda=0.95, value_network=ac.critic, average_gae=False)
    optim = torch.optim.Adam(loss.parameters(), lr=1e-3)

    history = []
    for i, batch in enumerate(collector):                   # [N, T]
        batch["next", "reward"] *= 0.1                      # reward scale (RewardSum has summed the raw reward)
        with torch.no_grad():
            gae(batch)                                      # "advantage", "value_target"
        data = loss.aggregate(batch).reshape(-1)            # [N + K, T]: + K follower rows for the leader
        for _ in range(4):                                  # epochs
            for idx in torch.randperm(data.numel()).chunk(4):   # minibatches
                out = loss(data[idx])
                total = sum(v for k, v in out.items() if k.startswith("loss_"))  # every loss_* term
                optim.zero_grad()
                total.backward()
                torch.nn.utils.clip_grad_norm_(loss.parameters(), max_norm=1.0)
                optim.step()
        ac.obs_normalizer.update(batch["observation"])      # after the update, the N*T collected rows
        ended = batch["next", "done"].squeeze(-1) & (batch["policy_id"] == 0)
        leader_return = batch["next", "episode_reward"].squeeze(-1)[ended].mean().item()  # NaN: none ended
        terms = {k: v.item() for k, v in out.items() if k.startswith("loss_")}  # the last minibatch's
        history.append({"leader_return": leader_return, **terms})
        print(f"iter {i}  leader return {leader_return:8.1f}  loss {total.item():8.3f}")
    collector.shutdown()
    return history


def main_population(iterations: int = 5, num_envs: int = 48, num_policies: int = 3, horizon: int = 200, seed: int = 0):
    """``main`` with :class:`PopulationCollector` (docs/torchrl-loop.md's alternative)."""
    N, M, T = num_envs, num_policies, horizon
    torch.manual_seed(seed)
    env = make_env("pendulum", N, seed=seed)                # the collector appends PolicyIdTransform(M), RewardSum
    ac = make_actor_critic(3, 1, num_policies=M, latent_dim=16, hidden_sizes=(64, 64))
    collector = PopulationCollector(env, ac.actor, num_policies=M, frames_per_batch=N * T,
                                    total_frames=iterations * N * T)
    loss = SAPGLoss(ac.actor, ac.critic, num_policies=M, leader_id=0, entropy_sigma=0.001, off_policy_target="vtrace")
    gae = GAE(gamma=0.99, lmbda=0.95, value_network=ac.critic, average_gae=False)
    optim = torch.optim.Adam(loss.parameters(), lr=1e-3)

    history = []
    for i, batch in enumerate(collector):
        batch["next", "reward"] *= 0.1
        with torch.no_grad():
            gae(batch)
        data = loss.aggregate(batch).reshape(-1)
        for _ in range(4):
            for idx in torch.randperm(data.numel()).chunk(4):
                out = loss(data[idx])
                total = sum(v for k, v in out.items() if k.startswith("loss_"))
                optim.zero_grad()
                total.backward()
                torch.nn.utils.clip_grad_norm_(loss.parameters(), max_norm=1.0)
                optim.step()
        ac.obs_normalizer.update(batch["observation"])
        leader_return = collector.episode_stats()["return"][0].item()  # [M] means since the last call
        terms = {k: v.item() for k, v in out.items() if k.startswith("loss_")}  # the last minibatch's
        history.append({"leader_return": leader_return, **terms})
        print(f"iter {i}  leader return {leader_return:8.1f}  loss {total.item():8.3f}")
    collector.shutdown()
    return history


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--num-envs", type=int, default=48)
    parser.add_argument("--num-policies", type=int, default=3)
    parser.add_argument("--horizon", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--population", action="store_true", help="use PopulationCollector (main_population)")
    args = parser.parse_args()
    run = main_population if args.population else main
    run(args.iterations, args.num_envs, args.num_policies, args.horizon, args.seed)
