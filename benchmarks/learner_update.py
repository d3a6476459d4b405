"""Learner update time of SAPG vs PPO on the same collected batch.

One batch is collected once (embedded Pendulum, N envs, horizon T, M policies for SAPG); then
each learner runs its full update on it, timed over repeats: value estimation (TorchRL GAE) →
(SAPG only) ``SAPGLoss.aggregate`` (with the paper's one-step targets, and with the recipe's V-trace ones and per-policy max KL) → ``epochs`` × ``minibatches`` optimiser steps through the
library's ``OnPolicyTrainer.optim_steps`` (same network, optimiser, grad clip and analytic-KL
adaptive learning rate for both). PPO is TorchRL's ``ClipPPOLoss``. The repeats go round-robin
over the three learners, so a drift in the machine's load affects them alike; the figure is the
median per learner.

    python benchmarks/learner_update.py                  # N=4098 (multiple of 6 nearest 4096), T=16, M=6
    python benchmarks/learner_update.py --num-envs 16386 --device cuda
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
import torchrl
from torchrl.objectives import ClipPPOLoss
from torchrl.objectives.value import GAE

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from env_throughput import _device_name, _sync  # noqa: E402

from torchrl_sapg.collectors import PopulationCollector  # noqa: E402
from torchrl_sapg.envs import make_env  # noqa: E402
from torchrl_sapg.modules import make_actor_critic  # noqa: E402
from torchrl_sapg.objectives import SAPGLoss  # noqa: E402
from torchrl_sapg.trainers import LearningRateSchedule, OnPolicyTrainer  # noqa: E402


def build(algo: str, ac_state, args, collector):
    ac = make_actor_critic(
        3, 1, num_policies=args.num_policies, latent_dim=args.latent_dim,
        actor_hidden_sizes=args.hidden, device=args.device,
    )
    ac.actor.load_state_dict(ac_state[0])
    ac.critic.load_state_dict(ac_state[1])
    if algo == "ppo":
        loss = ClipPPOLoss(ac.actor, ac.critic, clip_epsilon=0.2, entropy_bonus=False, critic_coeff=2.0, loss_critic_type="l2")
        gae = GAE(gamma=0.99, lmbda=0.95, value_network=ac.critic, average_gae=True)
    else:
        # "sapg": SAPGLoss's defaults (paper Eq. 6 one-step targets); "sapg-vtrace": the recipe's
        # V-trace off-policy targets (one more reverse scan over the relabelled rows per batch)
        # and its per-policy max KL for the adaptive learning rate (one scatter-add per minibatch)
        loss = SAPGLoss(ac.actor, ac.critic, num_policies=args.num_policies, critic_coeff=2.0,
                        off_policy_target="vtrace" if algo == "sapg-vtrace" else "td0",
                        generator=torch.Generator(device=args.device).manual_seed(0))
        gae = GAE(gamma=0.99, lmbda=0.95, value_network=ac.critic, average_gae=False)
    opt = torch.optim.Adam(loss.parameters(), lr=3e-4)
    trainer = OnPolicyTrainer(
        collector=collector, loss_module=loss, optimizer=opt, total_frames=1, num_epochs=args.epochs,
        num_minibatches=args.minibatches, value_estimator=gae, kl_actor=ac.actor,
        kl_reduction="max_policy" if algo == "sapg-vtrace" else "mean",  # the recipe's choice for SAPG
        lr_schedule=LearningRateSchedule(opt, mode="adaptive"), progress_bar=False, seed=0,
    )
    return trainer, loss


def update(trainer, loss, algo, batch):
    batch = trainer._estimate_values(batch.clone())
    if algo != "ppo":
        batch = loss.aggregate(batch)
    return trainer.optim_steps(batch), batch.numel()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num-envs", type=int, default=4098)
    p.add_argument("--horizon", type=int, default=16)
    p.add_argument("--num-policies", type=int, default=6)
    p.add_argument("--latent-dim", type=int, default=32)
    p.add_argument("--hidden", type=int, nargs="+", default=[256, 128, 64])
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--minibatches", type=int, default=4)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    ac = make_actor_critic(3, 1, num_policies=args.num_policies, latent_dim=args.latent_dim,
                           actor_hidden_sizes=args.hidden, device=device)
    collector = PopulationCollector(make_env("pendulum", args.num_envs, device=device, seed=0), ac.actor,
                                    num_policies=args.num_policies, frames_per_batch=args.num_envs * args.horizon)
    batch = next(iter(collector)).detach()
    state = (copy.deepcopy(ac.actor.state_dict()), copy.deepcopy(ac.critic.state_dict()))
    algos = ("ppo", "sapg", "sapg-vtrace")
    learners = {algo: build(algo, state, args, collector) for algo in algos}
    for algo, (trainer, loss) in learners.items():
        update(trainer, loss, algo, batch)  # warm-up
    times: dict[str, list[float]] = {algo: [] for algo in algos}
    rows_trained = {}
    # round-robin over the learners, so a drift in the machine's load hits all of them alike
    for _ in range(args.repeats):
        for algo, (trainer, loss) in learners.items():
            _sync(device)
            t0 = time.perf_counter()
            out, rows_trained[algo] = update(trainer, loss, algo, batch)
            float(out["loss_objective"])  # the update is done when its result is on the host
            _sync(device)
            times[algo].append(time.perf_counter() - t0)
    rows = []
    for algo in algos:
        med, n = statistics.median(times[algo]), rows_trained[algo]
        rows.append({"algo": algo, "seconds_median": med, "seconds_all": times[algo], "rows_trained": n,
                     "samples_per_s": n * args.epochs / med})
    ratio = rows[1]["seconds_median"] / rows[0]["seconds_median"]
    ratio_vtrace = rows[2]["seconds_median"] / rows[0]["seconds_median"]
    print(f"{'algo':<12} {'rows':>8} {'update s':>10} {'samples/s':>12} {'x PPO':>7}")
    for r in rows:
        print(f"{r['algo']:<12} {r['rows_trained']:>8} {r['seconds_median']:>10.3f} {r['samples_per_s']:>12,.0f}"
              f" {r['seconds_median'] / rows[0]['seconds_median']:>7.3f}")
    print(f"SAPG / PPO update time: {ratio:.3f}x TD(0), {ratio_vtrace:.3f}x V-trace (goal <= 1.3x)")
    out = {
        "benchmark": "learner update time, SAPG vs PPO on one batch (benchmarks/learner_update.py)",
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": str(device), "device_name": _device_name(device), "cpu_count": os.cpu_count(),
        "torch_num_threads": torch.get_num_threads(),
        "torch_version": torch.__version__, "torchrl_version": torchrl.__version__,
        "python_version": platform.python_version(), "config": vars(args), "results": rows,
        "sapg_over_ppo": ratio, "sapg_vtrace_over_ppo": ratio_vtrace,
    }
    path = Path(args.out or f"benchmarks/results/learner_update_{device.type}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
