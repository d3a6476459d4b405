"""Does the leader's off-policy gradient point where its own policy gradient points?

Loads a ``recipes/train.py`` checkpoint of ``algo=sapg`` and, with the leader's pre-update
actor and critic, compares policy-gradient directions (cosine similarity over every actor
parameter):

* **reference**: the leader's PPO gradient at ``theta_old`` (``-mean(A·log pi)``, GAE(train.lmbda)
  advantages, standardised) from ``--episodes`` whole episodes it plays itself. Its two halves'
  cosine is printed as the noise ceiling.
* **own rows**: the same gradient from the leader's own rows of ``--batches`` ordinary training
  batches (``env.num_envs`` envs, ``train.horizon`` steps, mid-episode).
* **off-policy rows, one per estimator**: the gradient of ``SAPGLoss``'s surrogate on the
  relabelled follower rows of the same batches (``mu·A·grad log pi`` at ``theta_old``), with
  the advantage from ``off_policy_target`` = ``td0`` (paper Eq. 6), ``vtrace`` and ``gae`` at
  the given lambdas. Every estimator sees the same rows (the same generator seed per batch).

A cosine near the own rows' says the follower data carries the leader's learning signal; a
negative one says that estimator pushes the leader the wrong way. "halves" is the cosine
between the sums over the first and the second half of the batches (1: a systematic
direction, 0: noise).

    python recipes/train.py algo=sapg env=pendulum total_frames=700000 algo.off_policy_ratio=5.0 \\
        hydra.run.dir=runs/align
    python benchmarks/sapg_gradient_alignment.py --checkpoint runs/align/checkpoints/last.pt

Prints a table and writes ``benchmarks/results/sapg_gradient_alignment_<env>.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torchrl.objectives.value import GAE

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "recipes"))
from common import build_agent, build_env, build_loss  # noqa: E402

from torchrl_sapg.collectors import PopulationCollector  # noqa: E402
from torchrl_sapg.trainers import load_checkpoint  # noqa: E402


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a, b, dim=0))


def standardise(x: torch.Tensor) -> torch.Tensor:
    return (x - x.mean()) / x.std().clamp_min(1e-8)


class LeaderGradients:
    """Flat gradients over the actor parameters of a loaded ``SAPGLoss``."""

    def __init__(self, loss):
        self.loss = loss
        self.params = [p for n, p in loss.named_parameters() if n.startswith("actor_network_params")]

    def _flat(self, objective: torch.Tensor) -> torch.Tensor:
        grads = torch.autograd.grad(objective, self.params, allow_unused=True)
        return torch.cat([(g if g is not None else torch.zeros_like(p)).flatten() for g, p in zip(grads, self.params)])

    def policy_gradient(self, rows) -> torch.Tensor:
        """``-grad mean(A·log pi(a|s))`` with standardised advantages: PPO's gradient at theta_old."""
        actor = self.loss.actor_network
        with self.loss.actor_network_params.to_module(actor):
            log_prob = actor.get_dist(rows.copy()).log_prob(rows["action"])
        advantage = standardise(rows["advantage"].reshape(log_prob.shape))
        return self._flat(-(advantage * log_prob).mean())

    def surrogate_gradient(self, rows) -> torch.Tensor:
        """The gradient of the library's own surrogate on ``rows`` (advantages as aggregated)."""
        return self._flat(self.loss(rows)["loss_objective"])


def collect(env, loss, num_policies: int, frames: int):
    actor = loss.actor_network
    with loss.actor_network_params.to_module(actor):
        collector = PopulationCollector(env, actor, num_policies=num_policies, frames_per_batch=frames)
        batch = next(iter(collector))
        collector.shutdown()
    return batch


def parse_estimator(spec: str) -> tuple[str, float]:
    """``"vtrace:0.95"`` -> ("vtrace", 0.95); ``"td0"`` -> ("td0", 1.0)."""
    name, _, lam = spec.partition(":")
    if name not in ("td0", "vtrace", "gae"):
        raise SystemExit(f"--estimators: {spec!r}: the name must be td0, vtrace or gae (e.g. vtrace:0.95).")
    return name, float(lam) if lam else 1.0


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a recipes/train.py checkpoint of algo=sapg")
    p.add_argument("--episodes", type=int, default=1024, help="reference episodes of the leader")
    p.add_argument("--episode-steps", type=int, default=200, help="steps per reference episode (Pendulum: 200)")
    p.add_argument("--batches", type=int, default=8, help="training-like batches to sum over")
    p.add_argument("--burn-in", type=int, default=4, help="batches collected first and skipped (mid-episode starts)")
    p.add_argument("--estimators", nargs="+", default=["td0", "vtrace:1.0", "vtrace:0.95", "gae:0.95", "gae:1.0"])
    p.add_argument("--seed", type=int, default=4242)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.batches < 2:
        raise SystemExit("--batches must be >= 2 (the halves' agreement needs two halves).")
    estimators = [parse_estimator(s) for s in args.estimators]

    state = load_checkpoint(args.checkpoint)
    cfg = OmegaConf.create(state["extra"]["config"])
    if cfg.algo.name not in ("sapg", "epo"):
        raise SystemExit(f"{args.checkpoint} is an algo={cfg.algo.name} run; this benchmark needs algo=sapg or epo.")
    cfg.device = "cpu"
    m, leader = cfg.algo.num_policies, cfg.algo.leader_id
    torch.manual_seed(args.seed)
    env = build_env(cfg, seed=args.seed)
    loss, _ = build_loss(cfg, build_agent(cfg, env))
    loss.load_state_dict(state["trainer"]["loss_module"])
    gae = GAE(gamma=cfg.train.gamma, lmbda=cfg.train.lmbda, value_network=loss.critic_network, average_gae=False)
    grads = LeaderGradients(loss)

    def estimate_values(batch):
        batch["next", "reward"] = batch["next", "reward"] * cfg.train.reward_scale  # as the trainer does
        with loss.critic_network_params.to_module(loss.critic_network), torch.no_grad():
            return gae(batch)

    # reference: the leader's own whole episodes (block `leader` of m blocks)
    e = args.episodes
    big = collect(build_env(cfg, num_envs=m * e, seed=args.seed + 1), loss, m, m * e * args.episode_steps)
    returns = (big["next", "reward"].sum(1).reshape(m, e).mean(1)).tolist()
    big = estimate_values(big)
    own_episodes = big[leader * e : (leader + 1) * e]
    reference = grads.policy_gradient(own_episodes.reshape(-1))
    ceiling = cosine(grads.policy_gradient(own_episodes[: e // 2].reshape(-1)), grads.policy_gradient(own_episodes[e // 2 :].reshape(-1)))

    # training-like batches
    actor = loss.actor_network
    with loss.actor_network_params.to_module(actor):
        collector = PopulationCollector(
            env, actor, num_policies=m, frames_per_batch=cfg.env.num_envs * cfg.train.horizon
        )
        iterator = iter(collector)
        batches = [next(iterator) for _ in range(args.burn_in + args.batches)][args.burn_in :]
        collector.shutdown()
    sums: dict[str, list[torch.Tensor]] = {"own rows": []}
    mu_ess = []
    for i, batch in enumerate(batches):
        batch = estimate_values(batch)
        pid = batch["policy_id"][:, 0]
        sums["own rows"].append(grads.policy_gradient(batch[pid == leader].reshape(-1)))
        for name, lam in estimators:
            loss.off_policy_target, loss.off_policy_lambda = name, lam
            loss.generator = torch.Generator().manual_seed(args.seed + i)  # the same rows for every estimator
            data = loss.aggregate(batch)
            off = data[data["off_policy"][:, 0]].reshape(-1)
            label = name if name == "td0" else f"{name} lambda={lam:g}"
            sums.setdefault(label, []).append(grads.surrogate_gradient(off))
        mu = (off["target_log_prob"] - off["action_log_prob"]).exp()
        mu_ess.append(float(mu.sum() ** 2 / (mu.numel() * mu.pow(2).sum())))

    half = len(batches) // 2
    rows = []
    for label, gs in sums.items():
        total = torch.stack(gs).sum(0)
        rows.append({
            "gradient": label,
            "cos_reference": cosine(total, reference),
            "cos_halves": cosine(torch.stack(gs[:half]).sum(0), torch.stack(gs[half:]).sum(0)),
            "norm_per_batch": float(total.norm() / len(gs)),
        })
    print(f"{args.checkpoint}: frames {state['frames']}, leader {leader}, per-policy stochastic return "
          + " ".join(f"{r:.0f}" for r in returns))
    print(f"reference: {e} leader episodes, halves' cosine (noise ceiling) {ceiling:+.3f}; "
          f"off-policy ESS of mu {sum(mu_ess) / len(mu_ess):.3f}")
    print(f"{'gradient':22s} {'cos(reference)':>15s} {'halves':>8s} {'|g|/batch':>10s}")
    for r in rows:
        print(f"{r['gradient']:22s} {r['cos_reference']:+15.3f} {r['cos_halves']:+8.3f} {r['norm_per_batch']:10.3g}")
    result = {
        "benchmark": "SAPG leader gradient alignment (benchmarks/sapg_gradient_alignment.py)",
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": platform.processor() or platform.machine(),
        "checkpoint": str(args.checkpoint),
        "frames": state["frames"],
        "config": {k: cfg.algo[k] for k in ("num_policies", "latent_dim", "off_policy_ratio", "off_policy_target", "off_policy_lambda", "mu_correction")},
        "env": cfg.env.name,
        "args": vars(args),
        "per_policy_return": returns,
        "noise_ceiling": ceiling,
        "mu_ess": sum(mu_ess) / len(mu_ess),
        "rows": rows,
    }
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"sapg_gradient_alignment_{cfg.env.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
