"""EPO: peak memory and learner time vs the number of agents K, at a fixed number of envs.

Each K runs in a fresh subprocess (so peak-memory figures do not leak between runs): it builds
the recipe's EPO learner (latent-conditioned actor-critic, SAPGLoss, GeneticLatentScheduler),
collects one [N, T] batch on the embedded Pendulum, then times ``--repeats`` full learner updates
(GAE → aggregate → mini-epochs) plus one forced genetic step, and reports the process's peak
resident memory (CPU) or peak allocated CUDA memory.

    python benchmarks/epo_memory.py                       # K = 8 16 32 64, N = 4096, CPU
    python benchmarks/epo_memory.py --device cuda --num-envs 24576
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def one(k: int, args) -> dict:
    import torch
    from torchrl.objectives.value import GAE

    from torchrl_sapg.collectors import PopulationCollector
    from torchrl_sapg.envs import make_env
    from torchrl_sapg.modules import make_actor_critic
    from torchrl_sapg.objectives import SAPGLoss
    from torchrl_sapg.population import GeneticLatentScheduler
    from torchrl_sapg.trainers import OnPolicyTrainer

    device = torch.device(args.device)
    torch.manual_seed(0)
    ac = make_actor_critic(3, 1, num_policies=k, latent_dim=args.latent_dim, hidden_sizes=args.hidden, device=device)
    collector = PopulationCollector(make_env("pendulum", args.num_envs, device=device, seed=0), ac.actor,
                                    num_policies=k, frames_per_batch=args.num_envs * args.horizon)
    loss = SAPGLoss(ac.actor, ac.critic, num_policies=k, generator=torch.Generator(device=device).manual_seed(0))
    opt = torch.optim.Adam(loss.parameters(), lr=3e-4)
    trainer = OnPolicyTrainer(collector=collector, loss_module=loss, optimizer=opt, total_frames=1,
                              num_epochs=args.epochs, num_minibatches=args.minibatches,
                              value_estimator=GAE(gamma=0.99, lmbda=0.95, value_network=ac.critic, average_gae=False),
                              kl_actor=ac.actor, progress_bar=False, seed=0)
    epo = GeneticLatentScheduler(latents=ac.latents, optimizer=opt, log_std=ac.actor.log_std, seed=0)
    batch = next(iter(collector)).detach()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for i in range(args.repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        data = loss.aggregate(trainer._estimate_values(batch.clone()))
        out = trainer.optim_steps(data)
        epo.evolve(torch.randn(k, generator=torch.Generator().manual_seed(i)).to(device))
        float(out["loss_objective"])
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i:  # the first is a warm-up
            times.append(time.perf_counter() - t0)
    peak = (torch.cuda.max_memory_allocated(device) if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {"K": k, "peak_memory_bytes": peak, "update_seconds_median": statistics.median(times),
            "rows_trained": data.numel(), "memory_kind": "cuda max_memory_allocated" if device.type == "cuda" else "process peak RSS"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--agents", type=int, nargs="+", default=[8, 16, 32, 64])
    p.add_argument("--num-envs", type=int, default=4096)
    p.add_argument("--horizon", type=int, default=16)
    p.add_argument("--latent-dim", type=int, default=32)
    p.add_argument("--hidden", type=int, nargs="+", default=[256, 128, 64])
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--minibatches", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=None)
    p.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker is not None:
        print(json.dumps(one(args.worker, args)))
        return
    rows = []
    for k in args.agents:
        cmd = [sys.executable, __file__, "--worker", str(k), *sys.argv[1:]]
        res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if res.returncode:
            raise RuntimeError(res.stderr[-3000:])
        rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
        r = rows[-1]
        print(f"K={k:3d}  peak {r['peak_memory_bytes'] / 2**20:8.1f} MiB  update {r['update_seconds_median']:.3f} s", flush=True)
    base = rows[0]
    for r in rows:
        r["memory_vs_first"] = r["peak_memory_bytes"] / base["peak_memory_bytes"]
        r["time_vs_first"] = r["update_seconds_median"] / base["update_seconds_median"]
    growth = rows[-1]["memory_vs_first"] - 1
    print(f"memory growth K={rows[0]['K']} -> {rows[-1]['K']}: {100 * growth:+.2f}% (goal <= 5%; paper: +12%)")
    import torch

    out = {"benchmark": "EPO peak memory and learner time vs K (benchmarks/epo_memory.py)",
           "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"), "device": args.device,
           "cpu_count": os.cpu_count(), "torch_version": torch.__version__, "python_version": platform.python_version(),
           "config": {k: v for k, v in vars(args).items() if k != "worker"}, "results": rows,
           "memory_growth_first_to_last": growth}
    path = Path(args.out or ROOT / "benchmarks" / "results" / f"epo_memory_{args.device.split(':')[0]}.json")
    path.write_text(json.dumps(out, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
