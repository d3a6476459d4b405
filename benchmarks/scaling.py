"""Scaling study: final return vs num_envs (N) for PPO, SAPG, EPO and PBT, under two protocols.

* ``frames``  (``--frames F``): every N gets the same env-frame budget F, so a larger N makes fewer
  updates (iterations = F / (N * T), rounded up to whole batches).
* ``updates`` (``--updates U``): every N makes the same number of updates U, i.e.
  ``total_frames = U * N * T``, so a larger N means more data per update (the regime of the SAPG
  paper's Figure 2).

Each (algo, N, seed, protocol) is one ordinary ``recipes/train.py`` run, launched and read by
``benchmarks/compare_algos.py``'s ``run_one``. The figure of merit is the headline policy's
deterministic evaluation return at the end (PPO: its only policy; SAPG: the leader; EPO: the master;
PBT: the best member), plus the mean of the last ``--last`` logged training returns of the same
policy (PBT: the best member's). A run that both protocols need (``F == U * N * T``) runs once.

    python benchmarks/scaling.py --env mountain_car --algos ppo sapg epo=epo:algo.num_policies=6 pbt \\
        --num-envs 48 192 768 --seeds 0 1 2 3 4 --updates 100 --frames 307200 --solved-at 50
    python benchmarks/scaling.py --plot benchmarks/results/scaling_mountain_car.json   # figures only

(docs/scaling.md: the protocols, the results and what they say.) A run that ends no episode (a time
limit longer than the run) has no training return; the tables say how many seeds had one.

Resumable: the JSON (``--out``, default ``benchmarks/results/scaling_<env>.json``) is rewritten
after every run, and a run already in it (same algo label, N, seed, total_frames, overrides and
eval episodes) is skipped, so an interrupted study continues where it stopped. N must be a multiple
of each algorithm's number of policies (SAPG 6, EPO 64 unless overridden, PBT 8): multiples of 24
suit ``ppo sapg pbt "epo=epo:algo.num_policies=6"``. Writes ``<out>.png`` (final return vs N, one
panel per protocol) and ``<out>_curves.png`` (learning curves, one panel per protocol and N).
Every subprocess gets ``PYTHONPATH=<this checkout>`` so the recipe and the library come from the
same tree, and ``OMP_NUM_THREADS=--threads`` with ``threads=--threads``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import rl_stats  # noqa: E402
from compare_algos import ROOT, parse_variant, run_folder_name, run_one  # noqa: E402

CONF_DIR = ROOT / "recipes" / "conf"
PROTOCOLS = ("frames", "updates")
MAX_CURVE_POINTS = 300


def compose(algo: str, env: str, overrides: list[str]):
    """The recipe's resolved Hydra config for ``algo=<algo> env=<env> <overrides>``."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        switch = "pbt=inprocess" if algo == "pbt" else f"algo={algo}"  # in-process PBT is a pbt mode
        return hydra_compose(config_name="config", overrides=[switch, f"env={env}", *overrides])


def run_key(label: str, num_envs: int, seed: int, total_frames: int) -> str:
    return f"{label}|n{num_envs}|s{seed}|f{total_frames}"


def thin(curve: list, limit: int = MAX_CURVE_POINTS) -> list:
    """At most ``limit`` points, evenly strided, always keeping the last one."""
    if len(curve) <= limit:
        return list(curve)
    stride = math.ceil(len(curve) / limit)
    out = curve[::stride]
    return out if out[-1] == curve[-1] else [*out, curve[-1]]


METRICS = ("eval_true_objective", "eval_success", "eval_return")
METRIC_NAMES = {"eval_true_objective": "successes per episode", "eval_success": "success rate",
                "eval_return": "eval return"}


def default_metric(runs: list[dict]) -> str:
    """The task's figure of merit: its success count if it reports one, else its success rate, else the return."""
    return next((m for m in METRICS if runs and all(r.get(m) is not None for r in runs)), "eval_return")


def headline_id(run: dict) -> str:
    """The headline policy's id: PBT's best member (by eval return), else policy 0 (PPO, the SAPG leader, EPO's master)."""
    per = (run.get("eval_per_policy") or {}).get("eval_return")
    return str(max(range(len(per)), key=per.__getitem__)) if run.get("algo_name") == "pbt" and per else "0"


def saturation(cells: dict[int, dict]) -> int | None:
    """PPO's saturation N: the smallest N whose IQM no larger N exceeds by more than N's own 95% CI."""
    ns = sorted(cells)
    for i, n in enumerate(ns):
        if all(cells[m]["iqm"] <= cells[n]["iqm_ci"][1] for m in ns[i + 1:]):
            return n
    return None


def plan(args, variants) -> list[dict]:
    """Every run the requested protocols need, deduplicated; each names the protocols it serves."""
    jobs: dict[str, dict] = {}
    for label, algo, overrides in variants:
        cfg = compose(algo, args.env, [*overrides, *args.overrides])
        horizon, num_policies = int(cfg.train.horizon), int(cfg.algo.num_policies)
        for n in args.num_envs:
            if n % num_policies:
                raise SystemExit(f"{label}: num_envs={n} is not a multiple of its {num_policies} policies; "
                                 f"choose N divisible by {num_policies} or set algo.num_policies")
        for seed in args.seeds:
            for n in args.num_envs:
                for protocol in PROTOCOLS:
                    if protocol == "frames" and args.frames is None or protocol == "updates" and args.updates is None:
                        continue
                    total = args.frames if protocol == "frames" else args.updates * n * horizon
                    key = run_key(label, n, seed, total)
                    job = jobs.setdefault(key, {"key": key, "label": label, "algo": algo, "num_envs": n, "seed": seed,
                                                "total_frames": total, "horizon": horizon,
                                                "num_policies": num_policies, "protocols": [],
                                                "overrides": [*overrides, *args.overrides]})
                    job["protocols"].append(protocol)
    # seed-major order: an interrupted study has every (algo, N) for its first seeds
    return sorted(jobs.values(), key=lambda j: (j["seed"], j["num_envs"], [v[0] for v in variants].index(j["label"]),
                                                j["total_frames"]))


def members(run: dict, protocols: dict) -> list[str]:
    """The protocols a run belongs to: ``frames`` if it ran F frames, ``updates`` if it ran U * N * T."""
    out = []
    if "frames" in protocols and run["total_frames"] == protocols["frames"]["frames"]:
        out.append("frames")
    if "updates" in protocols and run["total_frames"] == protocols["updates"]["updates"] * run["num_envs"] * run["horizon"]:
        out.append("updates")
    return out


def summarise(runs: list[dict], labels: list[str], solved_at: float | None = None, metric: str = "eval_return",
              baseline: str = "ppo") -> list[dict]:
    """Per (protocol, algo, N): mean ± std of the eval return over seeds; IQM, its 95% stratified-bootstrap CI and
    P(algo > ``baseline``) of ``metric`` (rl_stats); ``solved``: seeds whose eval return >= ``solved_at``."""
    table = []
    scores = {(p, r["algo"], r["num_envs"]): [] for r in runs for p in r["protocols"]}
    for r in runs:
        for p in r["protocols"]:
            if r.get(metric) is not None:
                scores[(p, r["algo"], r["num_envs"])].append(r[metric])
    labels = [*labels, *sorted({r["algo"] for r in runs} - set(labels))]
    for protocol in PROTOCOLS:
        for label in labels:
            for n in sorted({r["num_envs"] for r in runs}):
                rs = [r for r in runs if protocol in r["protocols"] and r["algo"] == label and r["num_envs"] == n]
                if not rs:
                    continue
                ev = [r["eval_return"] for r in rs if r["eval_return"] is not None]
                tr = [r["final_train_return"] for r in rs if r["final_train_return"] is not None]
                row = {"protocol": protocol, "algo": label, "num_envs": n, "seeds": sorted(r["seed"] for r in rs),
                       "iterations": rs[0]["iterations"], "frames": rs[0]["frames"],
                       "eval_mean": statistics.fmean(ev) if ev else None,
                       "eval_std": statistics.pstdev(ev) if ev else None,
                       "eval_min": min(ev) if ev else None, "eval_max": max(ev) if ev else None,
                       "train_mean": statistics.fmean(tr) if tr else None,
                       "train_std": statistics.pstdev(tr) if tr else None, "train_seeds": len(tr),
                       "wall_seconds_mean": statistics.fmean(r["wall_seconds"] for r in rs)}
                if solved_at is not None:
                    row["solved"] = sum(v >= solved_at for v in ev)
                x, base = scores.get((protocol, label, n)), scores.get((protocol, baseline, n))
                if x:
                    stats = rl_stats.summary(x, base if base and label != baseline else None)
                    row.update({"metric": metric, **{k: stats[k] for k in stats if k != "values"}})
                table.append(row)
    return table


def fmt_iqm(t: dict, digits: int = 2) -> str:
    """``IQM [low, high]`` of a table row, or a dash."""
    if t.get("iqm") is None:
        return "–"
    lo, hi = t["iqm_ci"]
    return f"{t['iqm']:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def markdown(d: dict) -> str:
    """The tables of a scaling JSON as Markdown, one per protocol."""
    fmt = lambda m, s: "–" if m is None else f"{m:.1f} ± {s:.1f}"  # noqa: E731
    metric = d.get("metric", "eval_return")
    out = []
    for protocol in PROTOCOLS:
        rows = [r for r in d["table"] if r["protocol"] == protocol]
        if not rows:
            continue
        p = d["protocols"][protocol]
        what = f"{p['frames']:,} frames each" if protocol == "frames" else f"{p['updates']} updates each"
        solved = d.get("solved_at")
        out += [f"**{protocol}** protocol ({what}, T = {p['horizon']}):", "",
                f"| algo | N | iterations | frames | {METRIC_NAMES.get(metric, metric)}, IQM [95% CI] | P(> PPO) "
                "| eval return | last train return | seeds |" + (f" eval ≥ {solved:g} |" if solved is not None else ""),
                "|---|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if solved is not None else "")]
        for r in rows:
            pi = f"{r['p_improve']:.2f}" if r.get("p_improve") is not None else "–"
            out.append(f"| {r['algo']} | {r['num_envs']} | {r['iterations']} | {r['frames']:,} | {fmt_iqm(r)} | {pi} | "
                       f"{fmt(r['eval_mean'], r['eval_std'])} | {fmt(r['train_mean'], r['train_std'])}"
                       + (f" ({r['train_seeds']}/{len(r['seeds'])} seeds ended an episode)" if 0 < r["train_seeds"] < len(r["seeds"]) else "")
                       + " | "
                       f"{len(r['seeds'])} |" + (f" {r['solved']}/{len(r['seeds'])} |" if solved is not None else ""))
        out.append("")
    return "\n".join(out)


def training_curve(run: dict, metric: str) -> list:
    """The headline policy's logged training curve of ``metric``'s quantity (success, successes, else return)."""
    key = {"eval_success": "success_curves", "eval_true_objective": "true_objective_curves"}.get(metric)
    if key and run.get(key):
        return run[key].get(headline_id(run), [])
    return run.get("curve") or []


def band(curves: list[list], grid) -> tuple:
    """Mean and 95% bootstrap band over runs of step curves resampled onto ``grid`` (last value carried forward)."""
    import numpy as np

    ys = []
    for c in curves:
        x, y = np.array([p[0] for p in c], dtype=float), np.array([p[1] for p in c], dtype=float)
        idx = np.searchsorted(x, grid, side="right") - 1
        ys.append(np.where(idx >= 0, y[idx.clip(0)], np.nan))
    ys = np.array(ys)
    rng = np.random.default_rng(0)
    with warnings.catch_warnings():  # grid points before any run's first episode are all-NaN: left blank
        warnings.simplefilter("ignore", RuntimeWarning)
        boot = np.nanmean(ys[rng.integers(0, len(ys), (1000, len(ys)))], axis=1)
        return np.nanmean(ys, axis=0), np.nanquantile(boot, 0.025, axis=0), np.nanquantile(boot, 0.975, axis=0)


def plot(path: str | Path) -> list[Path]:
    """``<json>.png``: the metric's IQM vs N with 95% CIs and every seed as a dot, one panel per protocol;
    ``<json>_curves.png``: the headline policy's training curve, mean and 95% band over seeds, per (protocol, N)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    path = Path(path)
    d = json.loads(path.read_text())
    metric = d.get("metric", "eval_return")
    protocols = [p for p in PROTOCOLS if any(r["protocol"] == p for r in d["table"])]
    labels = list(dict.fromkeys(r["algo"] for r in d["table"]))
    colour = {label: f"C{i}" for i, label in enumerate(labels)}
    fig, axes = plt.subplots(1, len(protocols), figsize=(6 * len(protocols), 4.5), squeeze=False)
    for ax, protocol in zip(axes[0], protocols):
        p = d["protocols"][protocol]
        for i, label in enumerate(labels):
            rows = [r for r in d["table"] if r["protocol"] == protocol and r["algo"] == label and r.get("iqm") is not None]
            if not rows:
                continue
            dodge = 1.0 + 0.05 * (i - (len(labels) - 1) / 2)  # side by side, so the error bars stay apart
            ns = [r["num_envs"] * dodge for r in rows]
            iqms = [r["iqm"] for r in rows]
            err = [[r["iqm"] - r["iqm_ci"][0] for r in rows], [r["iqm_ci"][1] - r["iqm"] for r in rows]]
            ax.errorbar(ns, iqms, yerr=err, color=colour[label], marker="o", capsize=3, label=label)
            for r in d["runs"]:
                if protocol in r["protocols"] and r["algo"] == label and r.get(metric) is not None:
                    ax.scatter(r["num_envs"] * dodge, r[metric], color=colour[label], s=12, alpha=0.45)
        ax.set_xscale("log", base=2)
        all_ns = sorted({r["num_envs"] for r in d["table"]})
        ax.set_xticks(all_ns, [str(n) for n in all_ns])
        ax.minorticks_off()
        ax.set_xlabel("num_envs N")
        ax.set_ylabel(f"final {METRIC_NAMES.get(metric, metric)} (headline policy), IQM, 95% CI")
        what = f"{p['frames']:,} frames" if protocol == "frames" else f"{p['updates']} updates (frames = U·N·T)"
        ax.set_title(f"{d['env']}: fixed {what}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    out1 = path.with_suffix(".png")
    fig.savefig(out1, dpi=110)
    plt.close(fig)

    ns = sorted({r["num_envs"] for r in d["table"]})
    fig, axes = plt.subplots(len(protocols), len(ns), figsize=(4 * len(ns), 3.3 * len(protocols)), squeeze=False,
                             sharey=True)
    for i, protocol in enumerate(protocols):
        for j, n in enumerate(ns):
            ax = axes[i][j]
            any_curve = False
            for label in labels:
                runs = [r for r in d["runs"] if protocol in r["protocols"] and r["num_envs"] == n and r["algo"] == label]
                curves = [c for c in (training_curve(r, metric) for r in runs) if c]
                if not curves:
                    continue
                any_curve = True
                scale = n * runs[0]["horizon"] if protocol == "updates" else 1e6
                grid = np.linspace(0, max(c[-1][0] for c in curves), 60)
                mean, lo, hi = band(curves, grid)
                ax.plot(grid / scale, mean, color=colour[label], lw=1.2, label=f"{label} ({len(curves)})")
                ax.fill_between(grid / scale, lo, hi, color=colour[label], alpha=0.2)
            ax.set_title(f"{protocol}, N = {n}", fontsize=9)
            ax.set_xlabel("iteration" if protocol == "updates" else "env frames (millions)")
            if not any_curve:
                ax.text(0.5, 0.5, "no episode ended", transform=ax.transAxes, ha="center", fontsize=8)
            ax.grid(alpha=0.3)
            if j == 0:
                ax.set_ylabel("training " + ("return" if metric == "eval_return" else METRIC_NAMES[metric]))
            if any_curve:
                ax.legend(fontsize=7)
    fig.suptitle(f"{d['env']}: headline policy during training, mean and 95% bootstrap band over seeds")
    fig.tight_layout()
    out2 = path.with_name(path.stem + "_curves.png")
    fig.savefig(out2, dpi=100)
    plt.close(fig)
    print(f"wrote {out1} and {out2}")
    return [out1, out2]


def policy_curves(run_dir: Path, algo: str, key: str) -> dict[str, list]:
    """Every policy's logged per-episode ``key`` (e.g. success) over frames, ``{policy id: [[frames, value]]}``."""
    out = {}
    for path in sorted(run_dir.glob(f"{algo}-*/scalars/policy/*/{key}.csv")):
        rows = [line.split(",") for line in path.read_text().split()]
        out[path.parent.name] = thin([[int(float(f)), float(v)] for f, v in rows])
    return out


def git_state() -> dict:
    def git(*a):
        r = subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True)
        return r.stdout.strip() if r.returncode == 0 else None

    return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}


def analysis(runs: list[dict], labels: list[str], solved_at: float | None, metric: str | None) -> dict:
    """The JSON's derived fields: ``metric``, ``table`` (summarise) and PPO's ``saturation_n`` per protocol."""
    metric = metric or default_metric(runs)
    table = summarise(runs, labels, solved_at, metric)
    sat = {}
    for protocol in PROTOCOLS:
        cells = {t["num_envs"]: t for t in table if t["protocol"] == protocol and t["algo"] == "ppo" and t.get("iqm") is not None}
        if len(cells) > 1:
            sat[protocol] = saturation(cells)
    return {"metric": metric, "table": table, "ppo_saturation_n": sat,
            "seed_determined": seed_determined(runs, metric)}


def stamp_code(study: dict) -> dict:
    """``study`` with the study-level ``code`` copied into each run that has none (runs written before runs
    recorded their own): the commit of the call that last wrote the file, the best record there is."""
    for r in study.get("runs", []):
        r.setdefault("code", study.get("code"))
    return study


def seed_determined(runs: list[dict], metric: str, tolerance: float = 0.125) -> dict[str, float]:
    """Per algo (fixed-updates runs): the fraction of seeds that score the same at every N.

    "The same" is, for a success rate, within ``tolerance`` (0.125: 2 of 16 evaluation episodes), so a seed
    that succeeds in 14 of 16 episodes at one N and in 16 at another counts; for any other metric, the same
    value. Near 1 means the outcome was fixed by the seed (its initial weights and first updates) rather than
    by training on more envs: e.g. a skill that a seed's first updates find or miss at any N."""
    tol = tolerance if metric == "eval_success" else 1e-6
    out = {}
    for algo in dict.fromkeys(r["algo"] for r in runs):
        by_seed: dict[int, list] = {}
        for r in runs:
            if r["algo"] == algo and "updates" in r.get("protocols", []) and r.get(metric) is not None:
                by_seed.setdefault(r["seed"], []).append(r[metric])
        ns = {r["num_envs"] for r in runs if r["algo"] == algo}
        if by_seed and len(ns) > 1:
            out[algo] = sum(max(v) - min(v) <= tol for v in by_seed.values()) / len(by_seed)
    return out


def refresh(path: str | Path, metric: str | None = None) -> dict:
    """Recompute an existing JSON's derived fields from its runs, rewrite it and redraw its figures."""
    path = Path(path)
    d = json.loads(path.read_text())
    labels = list(dict.fromkeys(t["algo"] for t in d["table"]))
    d.update(analysis(d["runs"], labels, d.get("solved_at"), metric or d.get("metric")))
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(d, indent=1))
    tmp.replace(path)
    print(markdown(d))
    try:
        plot(path)
    except ImportError:
        print("matplotlib is not installed: no figures")
    return d


def main(argv: list[str] | None = None) -> dict | None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", default="pendulum")
    p.add_argument("--algos", nargs="+", default=["ppo", "sapg", "epo=epo:algo.num_policies=6", "pbt"],
                   help="NAME or LABEL=NAME:override,override (as compare_algos.py)")
    p.add_argument("--num-envs", nargs="+", type=int, default=[48, 192, 768])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--frames", type=int, default=None, help="fixed-frame protocol: env frames per run")
    p.add_argument("--updates", type=int, default=None, help="fixed-updates protocol: iterations per run")
    p.add_argument("--eval-episodes", type=int, default=16)
    p.add_argument("--solved-at", type=float, default=None,
                   help="count the seeds whose eval return reaches this (e.g. 50 on mountain_car: 0 = standing still)")
    p.add_argument("--last", type=int, default=5, help="logged training returns averaged at the end")
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("--threads", type=int, default=1, help="torch threads per run (and OMP_NUM_THREADS)")
    p.add_argument("--out", default=None)
    p.add_argument("--runs-dir", default=None, help="where the recipe runs write (default: runs/<out stem>/)")
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--plot", metavar="JSON", default=None, help="only redraw the figures of an existing JSON")
    p.add_argument("--refresh", metavar="JSON", default=None,
                   help="recompute the statistics of an existing JSON (table, saturation) and redraw its figures")
    p.add_argument("--metric", choices=METRICS, default=None,
                   help="figure of merit (default: successes per episode, else success rate, else eval return)")
    p.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run (after --)")
    args = p.parse_args(argv)
    if args.plot:
        plot(args.plot)
        return None
    if args.refresh:
        return refresh(args.refresh, args.metric)
    if args.frames is None and args.updates is None:
        p.error("give --frames F, --updates U, or both")
    variants = [parse_variant(a) for a in args.algos]
    out_path = Path(args.out or ROOT / "benchmarks" / "results" / f"scaling_{args.env}.json")
    runs_dir = Path(args.runs_dir or ROOT / "runs" / out_path.stem)
    # the recipe and the library from this checkout, whatever else is installed
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    os.environ["OMP_NUM_THREADS"] = str(args.threads)

    jobs = plan(args, variants)
    previous = json.loads(out_path.read_text()) if out_path.is_file() else {}
    done = {r["key"]: r for r in stamp_code(previous).get("runs", [])}
    code = git_state()  # each run records the code it ran, so a study resumed at a later commit names both
    # a protocol not asked for this time keeps the parameters it had, so its runs stay in the table
    protocols = dict(previous.get("protocols", {}))
    for protocol, value in (("frames", args.frames), ("updates", args.updates)):
        if value is not None:
            horizons = sorted({j["horizon"] for j in jobs})
            protocols[protocol] = {protocol: value, "horizon": horizons[0] if len(horizons) == 1 else horizons}
    solved_at = args.solved_at if args.solved_at is not None else previous.get("solved_at")
    command = "python benchmarks/scaling.py " + " ".join(
        a if all(c.isalnum() or c in "=.-_/[],:" for c in a) else f'"{a}"' for a in (argv if argv is not None else sys.argv[1:]))
    commands = [c for c in previous.get("commands", []) if c != command] + [command]  # every call that wrote here
    lock = threading.Lock()
    # runs of earlier calls that this call does not plan (other seeds, N, algos) are kept
    planned = {j["key"] for j in jobs}
    runs: dict[str, dict] = {k: r for k, r in done.items() if k not in planned}
    started = time.perf_counter()

    def same(old: dict, job: dict) -> bool:
        return old.get("overrides") == job["overrides"] and old.get("eval_episodes") == args.eval_episodes

    def write() -> dict:
        rs = sorted(runs.values(), key=lambda r: (r["algo"], r["num_envs"], r["seed"], r["total_frames"]))
        for r in rs:
            r["protocols"] = members(r, protocols)
        out = {"benchmark": "scaling with num_envs (benchmarks/scaling.py)",
               "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"), "env": args.env,
               "cpu_count": os.cpu_count(), "machine": platform.processor() or platform.machine(),
               "code": git_state(), "args": {k: v for k, v in vars(args).items() if k != "plot"},
               "commands": commands, "protocols": protocols, "solved_at": solved_at,
               **analysis(rs, [v[0] for v in variants], solved_at, args.metric),
               "total_wall_seconds": sum(r["wall_seconds"] for r in rs), "runs": rs}
        tmp = out_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(out, indent=1))
        tmp.replace(out_path)
        return out

    todo = []
    for job in jobs:
        old = done.get(job["key"])
        if old is not None and same(old, job):
            runs[job["key"]] = old
        else:
            todo.append(job)
    print(f"{len(jobs)} runs planned, {len(jobs) - len(todo)} already in {out_path}, {len(todo)} to run", flush=True)
    out_path.parent.mkdir(parents=True, exist_ok=True)

    def work(job: dict) -> None:
        extra = [f"env.num_envs={job['num_envs']}", f"threads={args.threads}", *job["overrides"]]
        r = run_one(job["label"], job["algo"], args.env, job["seed"], job["total_frames"], args.eval_episodes, extra,
                    runs_dir / f"n{job['num_envs']}-f{job['total_frames']}", args.threads)
        run_dir = runs_dir / f"n{job['num_envs']}-f{job['total_frames']}" / run_folder_name(job["label"], args.env, job["seed"])
        success = sorted(run_dir.glob(f"{job['algo']}-*/scalars/episode/success.csv"))
        tail = [v for _, v in r["curve"][-args.last:]]
        rec = {**job, "algo": job["label"], "algo_name": job["algo"], "eval_episodes": args.eval_episodes,
               "frames": r["frames"], "iterations": r["frames"] // (job["num_envs"] * job["horizon"]),
               "wall_seconds": r["wall_seconds"], "eval_return": r["eval_return"],
               "final_train_return": statistics.fmean(tail) if tail else None,
               "curve": thin(r["curve"]), "command": r["command"], "code": code}
        if success and job["algo"] != "pbt":
            vals = [float(line.split(",")[1]) for line in success[0].read_text().split()[-args.last:]]
            rec["final_train_success"] = statistics.fmean(vals) if vals else None
        for key in ("success", "true_objective"):
            if f"eval_{key}" in r:
                rec[f"eval_{key}"] = r[f"eval_{key}"]
                rec[f"{key}_curves"] = policy_curves(run_dir, job["algo"], key)
        rec["eval_per_policy"] = r.get("eval_per_policy")
        fmt = lambda v: "nan" if v is None else f"{v:9.1f}"  # noqa: E731
        with lock:
            runs[job["key"]] = rec
            write()
            print(f"{job['label']:<6} N={job['num_envs']:<5} seed {job['seed']} {'+'.join(job['protocols']):<14} "
                  f"{rec['iterations']:>5} it {rec['frames']:>10,} fr: eval {fmt(rec['eval_return'])} "
                  f"last-{args.last} train {fmt(rec['final_train_return'])} ({rec['wall_seconds']:.0f} s; "
                  f"{time.perf_counter() - started:.0f} s so far)", flush=True)

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        list(pool.map(work, todo))
    out = write()
    print(markdown(out))
    print(f"wrote {out_path} ({out['total_wall_seconds']:.0f} s of runs in it)")
    if not args.no_plot:
        try:
            plot(out_path)
        except ImportError:
            print("matplotlib is not installed: no figures")
    return out


if __name__ == "__main__":
    main()
