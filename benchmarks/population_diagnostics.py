"""Why a population does (not) beat PPO: per-policy behaviour and the leader's off-policy data, from finished runs.

For every run directory (``recipes/train.py`` output with ``checkpoints/last.pt``) of a population algorithm:

* **per-policy success** — the last logged training success (stochastic actions, as collected) and the
  deterministic eval success of ``summary.json``;
* **state coverage** (maze tasks) — each policy's cell-visitation distribution over ``--episodes`` stochastic
  episodes rolled out from the checkpoint: the fraction of free cells it visits, whether it reaches the goal cell,
  and the population's diversity as the mean pairwise total-variation distance between the policies' distributions;
* **the controller** (MountainCar tasks) — per policy, the fraction of a state grid where the deterministic action
  pushes along the velocity: 1 pumps energy in (the swing that reaches the flag), 0 brakes, 0.5 neither;
* **the leader's off-policy data** (SAPG / EPO) — the training-log means of ``mu`` (leader / behaviour probability
  ratio on follower rows), its range, ``ESS_off`` (normalised effective sample size of the importance weights) and
  the off-policy clip fraction.

    python benchmarks/population_diagnostics.py /tmp/study/runs-point_maze_u/n24576-*/sapg-* --out \\
        benchmarks/results/diagnostics_point_maze_u.json
    python benchmarks/population_diagnostics.py --scaling benchmarks/results/scaling_point_maze_u.json

``--append`` keeps the runs already in ``--out`` that the call does not diagnose, so a study's later seeds join its
earlier ones (a run diagnosed again replaces its old row).

``--scaling`` needs no run directory: from a scaling JSON it compares policy 0 (the SAPG leader, the EPO master)
with the best other policy, in the deterministic evaluation and in training.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import sys
from pathlib import Path

import torch
from omegaconf import OmegaConf
from tensordict import TensorDict
from torchrl.envs import ExplorationType, set_exploration_type

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "recipes"))
from common import build_agent, build_env  # noqa: E402
from compare_algos import label_of_run_folder  # noqa: E402
from evaluate import load_policy_weights  # noqa: E402

from torchrl_sapg.collectors.population import prepare_population_env  # noqa: E402
from torchrl_sapg.envs.classic_control import MountainCarContinuousEnv  # noqa: E402
from torchrl_sapg.envs.exploration import PointMazeEnv  # noqa: E402
from torchrl_sapg.trainers import load_checkpoint  # noqa: E402

OFF_POLICY_KEYS = ("mu_mean", "mu_min", "mu_max", "ESS_off", "clip_fraction_off", "off_policy_fraction")


def _csv_values(path: Path) -> list[float]:
    if not path.is_file():
        return []
    with open(path) as f:
        return [float(r[1]) for r in csv.reader(f)]


@torch.no_grad()
def maze_visitation(cfg, agent, episodes: int, seed: int, deterministic: bool = False) -> dict:
    """Per-policy cell-visit counts ``[M, cells]`` over one episode in each of ``M * episodes`` envs, sampling
    actions as the collector does (``deterministic=False``) or taking the mean action."""
    m = int(cfg.algo.num_policies)
    env = build_env(cfg, num_envs=m * episodes, seed=seed)
    base = env.base_env if hasattr(env, "base_env") else env
    if not isinstance(base, PointMazeEnv):
        raise ValueError("state coverage is defined for the PointMaze tasks only")
    env = prepare_population_env(env, m)
    n, cells = env.batch_size[0], base.map_length * base.map_width
    counts = torch.zeros(m, cells)
    policy = torch.arange(n) // episodes
    td = env.reset()
    mode = ExplorationType.DETERMINISTIC if deterministic else ExplorationType.RANDOM
    for _ in range(base.max_episode_steps):
        with set_exploration_type(mode):
            td = agent.actor(td)
        td = env.step(td)
        x, y = base.state[:, 0], base.state[:, 1]
        col = torch.floor(x + base.map_width / 2).long()
        row = torch.floor(base.map_length / 2 - y).long()
        counts.index_put_((policy, row * base.map_width + col), torch.ones(n), accumulate=True)
        td = td.get("next").exclude("reward", "done", "terminated", "truncated")
    free = ~base.walls.reshape(-1)
    goal = base.walls.new_zeros(cells)
    gx, gy = base.goal_xy.tolist()
    goal_cell = int((base.map_length / 2 - gy) // 1) * base.map_width + int((gx + base.map_width / 2) // 1)
    goal[goal_cell] = True
    dist = counts / counts.sum(1, keepdim=True)
    tv = [(0.5 * (dist[i] - dist[j]).abs().sum()).item() for i in range(m) for j in range(i + 1, m)]
    return {
        "coverage": ((counts > 0) & free).sum(1).div(free.sum()).tolist(),
        "goal_cell_visit_share": (counts[:, goal_cell] / counts.sum(1)).tolist(),
        "union_coverage": float(((counts.sum(0) > 0) & free).sum() / free.sum()),
        "mean_pairwise_tv": statistics.fmean(tv) if tv else 0.0,
        "visits": counts.tolist(),
        "map": [[int(c) for c in row] for row in base.walls.int().tolist()],
    }


@torch.no_grad()
def velocity_sign_agreement(agent, num_policies: int, grid: int = 64) -> list[float]:
    """Per policy: the fraction of a ``grid x grid`` MountainCar state grid (position x velocity, no zero velocity)
    where the deterministic action has the velocity's sign. 1: a pump (energy in); 0: a brake; 0.5: neither."""
    car = MountainCarContinuousEnv
    pos = torch.linspace(car.min_position, car.max_position, grid)
    vel = torch.linspace(-car.max_speed, car.max_speed, 2 * (grid // 2))  # an even count: 0 is not on it
    obs = torch.cartesian_prod(pos, vel)
    ids = torch.arange(num_policies).repeat_interleave(obs.shape[0])
    td = TensorDict({"observation": obs.repeat(num_policies, 1), "policy_id": ids}, [ids.numel()])
    with set_exploration_type(ExplorationType.DETERMINISTIC):
        action = agent.actor(td)["action"][:, 0]
    agree = (action.sign() == td["observation"][:, 1].sign()).float()
    return agree.reshape(num_policies, -1).mean(1).tolist()


def pbt_rounds(scalars: Path) -> dict | None:
    """What in-process PBT's rounds did, from its per-batch log (``scalars/pbt``): the number of rounds, how many
    found a finite fitness (a finished episode) for some member, and the members replaced and mutated over all
    rounds. The log repeats the last round's counts every batch, so each round is counted at its first row.
    None without a PBT log."""
    steps = _csv_values(scalars / "pbt" / "num_steps.csv")
    if not steps:
        return None
    logs = {k: _csv_values(scalars / "pbt" / f"{k}.csv") for k in ("num_replaced", "num_mutated", "best_objective")}
    firsts = [i for i, v in enumerate(steps) if v > (steps[i - 1] if i else 0.0)]  # rows where a round has just run
    return {"rounds": int(steps[-1]),
            "rounds_with_fitness": sum(math.isfinite(logs["best_objective"][i]) for i in firsts),
            "replaced": int(sum(logs["num_replaced"][i] for i in firsts)),
            "mutated": int(sum(logs["num_mutated"][i] for i in firsts))}


def diagnose(run_dir: Path, episodes: int) -> dict:
    summary = json.loads((run_dir / "summary.json").read_text())
    state = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    cfg = OmegaConf.create(state["extra"]["config"])
    m = int(cfg.algo.num_policies)
    scalars = next(run_dir.glob(f"{cfg.algo.name}-*/scalars"), None)
    # scaling.py's folder name carries the variant label, which tells variants of one algorithm apart
    label = label_of_run_folder(run_dir.name, cfg.env.name, int(cfg.seed)) or cfg.algo.name
    out = {"run_dir": str(run_dir), "algo": cfg.algo.name, "label": label, "env": cfg.env.name, "seed": int(cfg.seed),
           "num_envs": int(cfg.env.num_envs), "num_policies": m, "frames": summary["frames"],
           "eval_success": summary.get("eval_success"), "eval_true_objective": summary.get("eval_true_objective"),
           "eval_return": summary.get("eval_return")}
    if scalars is not None:
        for key in ("success", "true_objective"):
            last = [(_csv_values(scalars / "policy" / str(i) / f"{key}.csv") or [None])[-1] for i in range(m)]
            if any(v is not None for v in last):
                out[f"train_{key}"] = last
        off = {k: _csv_values(scalars / "train" / f"{k}.csv") for k in OFF_POLICY_KEYS}
        out["off_policy"] = {k: statistics.fmean(v) for k, v in off.items() if v}
        if off.get("mu_min"):
            out["off_policy"]["mu_min_overall"] = min(off["mu_min"])
            out["off_policy"]["mu_max_overall"] = max(off["mu_max"])
        if (rounds := pbt_rounds(scalars)) is not None:
            out["pbt_rounds"] = rounds
    if cfg.env.name.startswith("point_maze") or cfg.env.name.endswith("mountain_car"):
        torch.manual_seed(int(cfg.seed))
        env = build_env(cfg, num_envs=m, seed=0)
        agent = build_agent(cfg, env)
        load_policy_weights(cfg, agent, state["trainer"])
    if cfg.env.name.endswith("mountain_car"):
        out["velocity_sign_agreement"] = velocity_sign_agreement(agent, m)
    if cfg.env.name.startswith("point_maze"):
        out["maze"] = maze_visitation(cfg, agent, episodes, seed=int(cfg.seed) + 30_000)
        det = maze_visitation(cfg, agent, episodes, seed=int(cfg.seed) + 30_000, deterministic=True)
        out["maze_deterministic"] = {k: det[k] for k in ("coverage", "goal_cell_visit_share", "union_coverage",
                                                         "mean_pairwise_tv")}
    return out


def markdown(rows: list[dict]) -> str:
    fmt = lambda v: "–" if v is None else f"{v:.2f}"  # noqa: E731
    lines = ["| run | N | policy | train success | eval success | coverage (sampled / mean action) | "
             "goal-cell share (sampled) | velocity-sign agreement |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        for i in range(r["num_policies"] if r["num_policies"] <= 8 else 0):
            maze = r.get("maze") or {}
            get = lambda key: (r.get(key) or [None] * r["num_policies"])[i]  # noqa: E731
            lines.append(f"| {r.get('label', r['algo'])} s{r['seed']} | {r['num_envs']} | {i} | {fmt(get('train_success'))} | "
                         f"{fmt(get('eval_success'))} | {fmt((maze.get('coverage') or [None] * 99)[i])} / "
                         f"{fmt(((r.get('maze_deterministic') or {}).get('coverage') or [None] * 99)[i])} | "
                         f"{fmt((maze.get('goal_cell_visit_share') or [None] * 99)[i])} | "
                         f"{fmt(get('velocity_sign_agreement'))} |")
    lines += ["", "| run | N | union coverage | mean pairwise TV | mu mean [min, max] | ESS_off | off clip fraction |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        o, maze = r.get("off_policy") or {}, r.get("maze") or {}
        mu = (f"{o['mu_mean']:.2f} [{o['mu_min_overall']:.2g}, {o['mu_max_overall']:.3g}]" if "mu_mean" in o and
              "mu_min_overall" in o else "–")
        lines.append(f"| {r.get('label', r['algo'])} s{r['seed']} | {r['num_envs']} | {fmt(maze.get('union_coverage'))} | "
                     f"{fmt(maze.get('mean_pairwise_tv'))} | {mu} | {fmt(o.get('ESS_off'))} | "
                     f"{fmt(o.get('clip_fraction_off'))} |")
    return "\n".join(lines)


def leader_vs_followers(path: Path, protocol: str = "updates") -> list[dict]:
    """From a scaling JSON: per (algo, N), the headline slot (policy 0) against the best other policy, in the
    deterministic evaluation and in the last logged training episodes (stochastic actions), means over the seeds
    of one ``protocol`` ("updates" or "frames")."""
    d = json.loads(Path(path).read_text())
    p = d["protocols"][protocol]
    wanted = (lambda r: r["total_frames"] == p["frames"]) if protocol == "frames" else (
        lambda r: r["total_frames"] == p["updates"] * r["num_envs"] * r["horizon"])
    d = {**d, "runs": [r for r in d["runs"] if wanted(r)]}
    metric = d.get("metric", "eval_success")
    curves = {"eval_success": "success_curves", "eval_true_objective": "true_objective_curves"}.get(metric)
    rows = []
    for algo in dict.fromkeys(r["algo"] for r in d["runs"]):
        for n in sorted({r["num_envs"] for r in d["runs"] if r["algo"] == algo}):
            runs = [r for r in d["runs"] if r["algo"] == algo and r["num_envs"] == n and r.get("eval_per_policy")]
            evals = [r["eval_per_policy"][metric] for r in runs if metric in r["eval_per_policy"]]
            trains = [[c[-1][1] for _, c in sorted(r.get(curves, {}).items(), key=lambda kv: int(kv[0])) if c]
                      for r in runs]
            trains = [t for t in trains if t]
            mean = lambda xs: statistics.fmean(xs) if xs else None  # noqa: E731
            rows.append({"algo": algo, "num_envs": n, "seeds": len(runs), "metric": metric,
                         "eval_policy0": mean([e[0] for e in evals]),
                         "eval_best_other": mean([max(e[1:]) for e in evals if len(e) > 1]),
                         "train_policy0": mean([t[0] for t in trains]),
                         "train_best_other": mean([max(t[1:]) for t in trains if len(t) > 1]),
                         "train_population_mean": mean([statistics.fmean(t) for t in trains])})
    return rows


def leader_markdown(rows: list[dict]) -> str:
    fmt = lambda v: "–" if v is None else f"{v:.2f}"  # noqa: E731
    out = ["| algo | N | seeds | eval: policy 0 | eval: best other policy | train: policy 0 | train: best other | "
           "train: population mean |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        out.append(f"| {r['algo']} | {r['num_envs']} | {r['seeds']} | {fmt(r['eval_policy0'])} | "
                   f"{fmt(r['eval_best_other'])} | {fmt(r['train_policy0'])} | {fmt(r['train_best_other'])} | "
                   f"{fmt(r['train_population_mean'])} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dirs", nargs="*", type=Path)
    p.add_argument("--scaling", type=Path, default=None,
                   help="a scaling JSON: print policy 0 vs the best other policy per (algo, N) and stop")
    p.add_argument("--episodes", type=int, default=32, help="stochastic episodes per policy for the coverage grid")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--append", action="store_true",
                   help="keep the runs already in --out that this call does not diagnose (more seeds, other N)")
    args = p.parse_args(argv)
    if args.scaling:
        rows = leader_vs_followers(args.scaling)
        print(leader_markdown(rows))
        return rows
    rows = [diagnose(d, args.episodes) for d in args.run_dirs if (d / "checkpoints" / "last.pt").is_file()]
    if not rows:
        raise SystemExit("no run directory with checkpoints/last.pt among the arguments")
    print(markdown(rows))
    if args.out:
        command = "python benchmarks/population_diagnostics.py " + " ".join(sys.argv[1:] if argv is None else argv)
        commands, kept = [command], []
        if args.append and args.out.is_file():
            previous = json.loads(args.out.read_text())
            commands = [*previous.get("commands", [previous.get("command")]), command]
            diagnosed = {r["run_dir"] for r in rows}
            kept = [r for r in previous["runs"] if r["run_dir"] not in diagnosed]
        tmp = args.out.with_suffix(".json.tmp")
        tmp.write_text(json.dumps({"benchmark": "population diagnostics (benchmarks/population_diagnostics.py)",
                                   "commands": commands, "runs": kept + rows}, indent=1))
        tmp.replace(args.out)
        print(f"wrote {args.out} ({len(kept)} runs kept, {len(rows)} diagnosed)")
    return rows


if __name__ == "__main__":
    main()
