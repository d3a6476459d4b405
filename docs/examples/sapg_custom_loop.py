"""SAPG inside a hand-written TorchRL loop: no library trainer, just the parts.

    python docs/examples/sapg_custom_loop.py            # ~20 s on a laptop CPU

Every step is plain TorchRL: a collector of [N, T] batches, TorchRL's GAE, a LossModule, Adam.
The only SAPG-specific call is ``loss.aggregate(batch)`` between value estimation and the
mini-epochs. This file is executed by tests/test_docs_examples.py.
"""
import torch
from torchrl.objectives.value import GAE

from torchrl_sapg import PopulationCollector, make_actor_critic, make_env
from torchrl_sapg.objectives import SAPGLoss


def main(iterations: int = 20, num_envs: int = 96, horizon: int = 32, seed: int = 0) -> float:
    torch.manual_seed(seed)
    M = 6  # policies: the leader (id 0) and 5 followers, 16 envs each
    env = make_env("pendulum", num_envs, seed=seed)
    ac = make_actor_critic(3, 1, num_policies=M, latent_dim=16, hidden_sizes=(64, 64))
    collector = PopulationCollector(env, ac.actor, num_policies=M, frames_per_batch=num_envs * horizon)
    loss = SAPGLoss(
        ac.actor, ac.critic, num_policies=M, leader_id=0, entropy_sigma=0.001,
        generator=torch.Generator().manual_seed(seed),
    )
    gae = GAE(gamma=0.99, lmbda=0.95, value_network=ac.critic, average_gae=False)
    optim = torch.optim.Adam(loss.parameters(), lr=3e-4)

    leader_return = float("nan")
    for i, batch in enumerate(collector):
        batch[("next", "reward")] *= 0.1            # reward scale (the episode stats are already recorded)
        with torch.no_grad():
            gae(batch)                               # advantages and value targets, every env's own critic
        data = loss.aggregate(batch).reshape(-1)     # + the followers' rows relabelled for the leader
        for _ in range(4):                           # mini-epochs
            for idx in torch.randperm(data.numel()).chunk(4):
                out = loss(data[idx])
                total = sum(v for k, v in out.items() if k.startswith("loss_"))  # every term: bounds, entropy...
                optim.zero_grad()
                total.backward()
                torch.nn.utils.clip_grad_norm_(loss.parameters(), 1.0)
                optim.step()
        ac.obs_normalizer.update(batch["observation"].reshape(-1, 3))
        stats = collector.episode_stats(reset=False)
        if int(stats["count"][0]) > 0:
            stats = collector.episode_stats()
            leader_return = float(stats["return"][0])
            print(f"iter {i:3d}  leader return {leader_return:8.1f}  followers "
                  + " ".join(f"{r:7.1f}" for r in stats["return"][1:].tolist())
                  + f"  off-policy clip {float(out['clip_fraction_off']):.3f}  ESS_off {float(out['ESS_off']):.3f}")
        if i + 1 == iterations:
            break
    collector.shutdown()
    return leader_return


if __name__ == "__main__":
    main()
