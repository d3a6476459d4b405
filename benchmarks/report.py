"""Write docs/results.md from the JSON files in benchmarks/results/ (never type figures by hand).

    python benchmarks/report.py
"""
from __future__ import annotations

import json
import re
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT / "benchmarks"))
METRIC_NAMES = {"eval_true_objective": "successes per episode", "eval_success": "success rate",
                "eval_return": "eval return"}


def _load(name: str) -> dict | None:
    path = RESULTS / name
    return json.loads(path.read_text()) if path.is_file() else None


def env_throughput(lines: list[str]) -> None:
    for path in sorted(RESULTS.glob("env_throughput_*.json")):
        d = json.loads(path.read_text())
        load = d.get("load_average_1_5_15min_before")
        lines += [f"### Embedded env throughput — {d['device']} ({d['device_name']}, {d['cpu_count']} cores)", "",
                  f"`python benchmarks/env_throughput.py --threads 1 2` (`{path.name}`, {d['timestamp']}"
                  + (f", load average before: {load[0]:.2f}" if load else "") + f", OMP env {d.get('omp_env', {})}): "
                  "`env.step_and_maybe_reset` with auto-reset, float32.", "",
                  "| task | N | torch threads | env-steps/s | ms/step |", "|---|---:|---:|---:|---:|"]
        for r in d["results"]:
            lines.append(f"| {r['task']} | {r['num_envs']} | {r.get('threads', '')} | {r['env_steps_per_s']:,.0f} | "
                         f"{r['ms_per_step']:.3f} |")
        lines.append("")


def epo_memory(lines: list[str]) -> None:
    for path in sorted(RESULTS.glob("epo_memory_*.json")):
        d = json.loads(path.read_text())
        c = d["config"]
        lines += [f"### EPO memory and learner time vs K — {d['device']}", "",
                  f"`python benchmarks/epo_memory.py` (`{path.name}`): N={c['num_envs']}, T={c['horizon']}, "
                  f"latent {c['latent_dim']}, network {c['hidden']}, one process per K, median of {c['repeats']} "
                  "updates (GAE, aggregate, mini-epochs, one genetic step).", "",
                  "| K | peak memory (MiB) | vs first | update (s) | vs first |", "|---:|---:|---:|---:|---:|"]
        for r in d["results"]:
            lines.append(f"| {r['K']} | {r['peak_memory_bytes'] / 2**20:.1f} | {r['memory_vs_first']:.3f} | "
                         f"{r['update_seconds_median']:.3f} | {r['time_vs_first']:.3f} |")
        lines += ["", f"Memory growth K={d['results'][0]['K']} → {d['results'][-1]['K']}: "
                  f"**{100 * d['memory_growth_first_to_last']:+.2f}%** (goal ≤ 5%; the EPO paper reports +12%). "
                  f"Memory is the {d['results'][0]['memory_kind']}.", ""]


def pbt_memory(lines: list[str]) -> None:
    d = _load("pbt_memory_cpu.json")
    if not d:
        return
    c, a, b = d["config"], d["in_process"], d["separate_processes"]
    lines += ["### In-process PBT vs separate processes — CPU", "",
              f"`python benchmarks/pbt_memory.py` (`pbt_memory_cpu.json`): {c['members']} members × "
              f"{c['envs_per_member']} envs, T={c['horizon']}, network {c['hidden']}, {c['iters']} timed iterations "
              "(collection + update); separate processes run concurrently with one torch thread each.", "",
              "| setup | wall (s) | collection (s) | update (s) | peak memory (MiB) |", "|---|---:|---:|---:|---:|",
              f"| in-process, 1 process ({a['torch_threads']} threads) | {a['wall_seconds']:.2f} | {a['collect_seconds']:.2f} | "
              f"{a['update_seconds']:.2f} | {a['peak_rss_bytes'] / 2**20:.1f} |",
              f"| {b['processes']} processes | {b['wall_seconds_slowest']:.2f} (slowest) | {b['collect_seconds_mean']:.2f} (mean) | "
              f"{b['update_seconds_mean']:.2f} (mean) | {b['peak_rss_bytes_sum'] / 2**20:.1f} (sum) |", "",
              f"Separate / in-process: memory **{d['memory_ratio_separate_over_inprocess']:.2f}×**, "
              f"time **{d['time_ratio_separate_over_inprocess']:.2f}×**.", ""]


def distributed_fps(lines: list[str]) -> None:
    for path in sorted(RESULTS.glob("distributed_fps_*.json")):
        d = json.loads(path.read_text())
        lines += [f"### torchrun ranks vs one process — {d['device']} ({d['cpu_count']} cores)", "",
                  f"`{d['command']}` (`{path.name}`, {d['date']}): {d['algo']} on {d['env']}, every process one "
                  "torch thread, the same global frame budget; frames/s from the recipe's `summary.json`.", "",
                  "| run | envs in total | frames/s (all ranks) | frames/s per rank | vs 1 process | final return | ranks bit-identical |",
                  "|---|---:|---:|---:|---:|---:|---|"]
        for r in d["rows"]:
            same = "—" if r["ranks_identical"] is None else ("yes" if r["ranks_identical"] else "NO")
            lines.append(f"| {r['label']} | {r['total_envs']} | {r['frames_per_second']:,.0f} | "
                         f"{r['frames_per_second_per_rank']:,.0f} | {r['speedup_vs_1_process']:.2f}× | "
                         f"{r['final_return']:.1f} | {same} |")
        lines += ["", "Commands of the three runs:", ""] + [f"- `{r['command']}`" for r in d["rows"]] + [""]


def _row_ratios(cell: dict) -> dict:
    """SAPG/EPO rows per update and time per trained row vs PPO, from a cell's eager results (results
    written before throughput.py stored them derive them here)."""
    eager = {r["variant"]: r for r in cell["results"] if not r.get("compile") and r.get("status") == "ok"}
    out = {}
    for v in ("sapg", "epo"):
        if v in eager and "ppo" in eager and "rows_per_update" in eager[v]:
            rows = eager[v]["rows_per_update"] / eager["ppo"]["rows_per_update"]
            out[f"{v}_over_ppo_rows"] = rows
            out[f"{v}_over_ppo_time_per_row"] = eager[v]["update_s"] / eager["ppo"]["update_s"] / rows
    return out


def _throughput_extras(d: dict) -> list[str]:
    """The FLOP-floor table and every cell's per-phase profile of a throughput.py JSON (if it has them)."""
    from throughput import floor_markdown, paired_markdown, profile_markdown

    out = []
    if any("sapg_over_ppo_update_time_paired" in c["overheads"] for c in d["cells"]):
        out += [*paired_markdown(d["cells"]), ""]
    floor = floor_markdown(d["cells"])
    if len(floor) > 2:
        out += ["FLOP floor: the update's matmul FLOPs per second against a same-run `torch.mm` of its largest "
                "matmul shape ([minibatch rows, in] × [in, out]); the ratio is achieved / GEMM, `floor s` the "
                "update's time at the GEMM's rate ([throughput.md](throughput.md#the-flop-floor)).", "", *floor, ""]
    for cell in d["cells"]:
        prof = profile_markdown(cell)
        if prof:
            out += [*prof, ""]
    return out


def without_note(command: str) -> str:
    """``command`` without its ``--note TEXT`` (shown separately); ``TEXT`` may hold shell-quoted quotes."""
    words = shlex.split(command)
    if "--note" in words:
        i = words.index("--note")
        del words[i:i + 2]
    return shlex.join(words)


def throughput(lines: list[str]) -> None:
    """``throughput_<device>.json`` (the learner benchmark: the one SAPG / PPO figure per device), then
    ``profile_<device>.json`` (single-cell profile runs of the same script: profile and FLOP floor only).
    Whole grids come before single-cell reruns (``throughput_cell_*.json``)."""
    runs = [(path, json.loads(path.read_text())) for path in RESULTS.glob("throughput_*.json")]
    for path, d in sorted(runs, key=lambda run: (-len(run[1]["cells"]), run[0].name)):
        command = without_note(d["command"])
        threads = f", {d['torch_num_threads']} thread" if d["device"] == "cpu" else ""
        lines += [f"### Learner and end-to-end throughput vs TorchRL's ClipPPOLoss loop — {d['device']} "
                  f"({d['device_name']}{threads})", "",
                  f"`{command}` (`{path.name}`, {d['timestamp']}); T = {d['config']['horizon']}, network "
                  f"{d['config']['hidden']}, {d['config']['minibatches']} minibatches; every ratio is against the "
                  "TorchRL baseline timed in the same cell; details in [throughput.md](throughput.md). "
                  + (f"Note: {d['note']}" if d.get("note") else ""), "",
                  "| N | M | epochs | variant | compile | update (s) | × torchrl | samples/s | × torchrl | "
                  "end-to-end frames/s | × torchrl |", "|---:|---:|---:|---|---|---:|---:|---:|---:|---:|---:|"]
        for cell in d["cells"]:
            for r in cell["results"]:
                if r.get("status") != "ok":
                    continue
                e2e = r.get("e2e_frames_per_s")
                lines.append(
                    f"| {cell['num_envs']} | {cell['num_policies']} | {cell['epochs']} | {r['variant']} | "
                    f"{'yes' if r['compile'] else 'no'} | {r['update_s']:.3f} | {r['update_time_vs_torchrl']:.2f} | "
                    f"{r['samples_per_s']:,.0f} | {r['samples_per_s_vs_torchrl']:.2f} | "
                    + (f"{e2e:,.0f} | {r['e2e_frames_per_s_vs_torchrl']:.2f} |" if e2e else "— | — |"))

        def x(o, key, fmt=".2f"):
            return f"{o[key]:{fmt}}×" if key in o else "—"

        lines += ["", "| N | M | PPO / torchrl update | SAPG / PPO update | EPO / PPO update | SAPG / PPO rows | "
                  "SAPG / PPO per row | SAPG / PPO end-to-end | EPO / PPO end-to-end |",
                  "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for cell in d["cells"]:
            o = {**_row_ratios(cell), **cell["overheads"]}
            lines.append(f"| {cell['num_envs']} | {cell['num_policies']} | {x(o, 'ppo_over_torchrl_update_time')} | "
                         f"{x(o, 'sapg_over_ppo_update_time')} | {x(o, 'epo_over_ppo_update_time')} | "
                         f"{x(o, 'sapg_over_ppo_rows', '.3f')} | {x(o, 'sapg_over_ppo_time_per_row')} | "
                         f"{x(o, 'sapg_over_ppo_e2e_time')} | {x(o, 'epo_over_ppo_e2e_time')} |")
        lines.append("")
        lines += _throughput_extras(d)
        check = RESULTS / path.name.replace("throughput_", "device_check_")
        if check.is_file():
            c = json.loads(check.read_text())
            t = c.get("tests") or {}
            lines += [f"Device check (`bash benchmarks/device_check.sh`, `{check.name}`, {c['timestamp']}): "
                      f"{c['total_seconds']:.0f} s in all; `pytest -m gpu`: {t.get('tests', 0)} tests, "
                      f"{t.get('failures', 0) + t.get('errors', 0)} failed, {t.get('skipped', 0)} skipped; steps "
                      + ", ".join(f"{s['step']} {s['seconds']:.0f} s (exit {s['exit_status']})" for s in c["steps"])
                      + ".", ""]
    for path in sorted(RESULTS.glob("profile_*.json")):
        d = json.loads(path.read_text())
        command = without_note(d["command"])
        threads = f", {d['torch_num_threads']} thread" if d["device"] == "cpu" else ""
        commit = d.get("git_commit")
        at = (f"commit `{commit[:7]}`" + (" plus uncommitted changes" if d.get("git_uncommitted_changes") else "")
              if commit else "commit not recorded")
        lines += [f"### Learner per-phase profile and FLOP floor, one cell — {d['device']} ({d['device_name']}{threads}), "
                  f"`{path.name}`", "",
                  f"`{command}` (`{path.name}`, {d['timestamp']}, {at}): the profile of `benchmarks/throughput.py` on one "
                  "cell; the update-time ratios to report are the throughput table's above"
                  + (f". Note: {d['note']}" if d.get("note") else "") + ".", "", *_throughput_extras(d)]


def wall_ratio(lines: list[str]) -> None:
    """``<env>_wall_ratio.json`` (benchmarks/recipe_wall_ratio.py): the recipe's wall time, SAPG (or EPO) vs PPO."""
    for path in sorted(RESULTS.glob("*_wall_ratio.json")):
        d = json.loads(path.read_text())
        lines += [f"### {d['benchmark']}", "", f"`{d['command']}` (`{path.name}`, {d.get('date', '')}, commit "
                  f"`{d.get('commit', '?')}`, {d['machine']}): {d['protocol']}"
                  + (f". Note: {d['note']}" if d.get("note") else "") + ".", "", d["table_markdown"], ""]


def recipe_phases(lines: list[str]) -> None:
    """``<env>_phases.json`` (benchmarks/recipe_phases.py): the recipe's iteration by phase, SAPG vs PPO and the floor."""
    for path in sorted(RESULTS.glob("*_phases.json")):
        d = json.loads(path.read_text())
        extra = f" ({' '.join(d['overrides'])})" if d.get("overrides") else ""
        lines += [f"### {d['benchmark']}{extra}", "", f"`{d['command']}` (`{path.name}`, {d.get('date', '')}, commit "
                  f"`{d.get('commit', '?')}`, {d.get('cpu_model', '?')}): {d['protocol']}.", "", d["table_markdown"], ""]


def _scaling_grid(d: dict, protocol: str, cell) -> list[str]:
    rows = [t for t in d["table"] if t["protocol"] == protocol]
    ns = sorted({t["num_envs"] for t in rows})
    algos = list(dict.fromkeys(t["algo"] for t in rows))
    by = {(t["algo"], t["num_envs"]): t for t in rows}
    out = ["| algo | " + " | ".join(f"N={n}" for n in ns) + " |", "|---|" + "---:|" * len(ns)]
    for a in algos:
        out.append(f"| {a} | " + " | ".join(cell(by[(a, n)]) if (a, n) in by else "—" for n in ns) + " |")
    return out


def scaling(lines: list[str]) -> None:
    for path in sorted(RESULTS.glob("scaling_*.json")):
        d = json.loads(path.read_text())
        solved = d.get("solved_at")

        metric = d.get("metric", "eval_return")

        def cell(t):
            tail = f" ({t['solved']}/{len(t['seeds'])})" if solved is not None else ""
            if t.get("iqm") is not None:
                return _iqm(t, 2 if metric != "eval_return" else 1) + tail
            return f"{t['eval_mean']:.1f} ± {t['eval_std']:.1f}{tail}"

        what = (f"{METRIC_NAMES.get(metric, metric)}, IQM [95% CI]" if any(t.get("iqm") is not None for t in d["table"])
                else "eval return, mean ± std")
        lines += [f"### Scaling with num_envs — {d['env']}", "", f"`{path.name}`. Headline "
                  f"policy's deterministic evaluation: {what} over seeds"
                  + (f" (seeds with eval return ≥ {solved})" if solved is not None else "") + "; details in "
                  "[scaling.md](scaling.md).", ""]
        for protocol in ("updates", "frames"):
            if protocol in d["protocols"]:
                size = d["protocols"][protocol][protocol]
                title = f"fixed {size} updates" if protocol == "updates" else f"fixed {size:,} frames"
                # the last call that ran this protocol (a study may be extended with one protocol only)
                ran = [c for c in d["commands"] if f"--{protocol} " in c] or d["commands"][-1:]
                command = re.sub(r" --(out|runs-dir) \S+", "", ran[-1])  # machine-local paths
                lines += [f"**{title}**: `{command}`", "", *_scaling_grid(d, protocol, cell), ""]
        png = path.with_suffix(".png")
        if png.is_file():
            lines += [f"![{d['env']} scaling](../benchmarks/results/{png.name})", ""]


def comparisons(lines: list[str]) -> None:
    for path in sorted(RESULTS.glob("compare_*.json")) + sorted(RESULTS.glob("sweep_*.json")):
        d = json.loads(path.read_text())
        a = d["args"]
        frames = d["runs"][0]["frames"]
        extra = " -- " + " ".join(a["overrides"]) if a.get("overrides") else ""
        lines += [f"### {d['env']}: algorithms at {frames:,} frames, seeds {a['seeds']}", "",
                  f"`python benchmarks/compare_algos.py --env {d['env']} --jobs {a.get('jobs', 1)} --algos "
                  + " ".join(f'"{x}"' if "=" in x else x for x in a["algos"])
                  + (f" --frames {a['frames']}" if a.get("frames") else "")
                  + (f" --seeds {' '.join(map(str, a['seeds']))}" if a.get("seeds") not in (None, [0, 1, 2]) else "")
                  + (f" --eval-episodes {a['eval_episodes']}" if a.get("eval_episodes", 16) != 16 else "")
                  + f"{extra}` (`{path.name}`). "
                  f"Eval: the headline policy (SAPG: the leader), {a['eval_episodes']} deterministic episodes; "
                  f"train: mean of the last {a['last']} logged returns."
                  + (f" Note: {d['note']}" if d.get("note") else ""), "",
                  "| algo | eval return, mean ± std | [min, max] | last train return, mean ± std |",
                  "|---|---:|---:|---:|"]
        for t in d["table"]:
            lines.append(f"| {t['algo']} | {t['eval_mean']:.1f} ± {t['eval_std']:.1f} | [{t['eval_min']:.1f}, "
                         f"{t['eval_max']:.1f}] | {t['train_mean']:.1f} ± {t['train_std']:.1f} |")
        lines.append("")
        png = path.with_suffix(".png")
        if png.is_file():
            lines += [f"Learning curves (`python benchmarks/plot_curves.py benchmarks/results/{path.name}`):", "",
                      f"![{d['env']} learning curves](../benchmarks/results/{png.name})", ""]


def gradient_alignment(lines: list[str]) -> None:
    for path in sorted(RESULTS.glob("sapg_gradient_alignment_*.json")):
        d = json.loads(path.read_text())
        a = d["args"]
        lines += [f"### SAPG leader gradient alignment — {d['env']}, checkpoint at {d['frames']:,} frames", "",
                  f"`python benchmarks/sapg_gradient_alignment.py --checkpoint <run>/checkpoints/last.pt` (`{path.name}`; "
                  f"config {d['config']}): cosine between the leader's PPO gradient from {a['episodes']} of its own "
                  f"episodes (noise ceiling {d['noise_ceiling']:+.3f}) and each gradient below, summed over {a['batches']} "
                  f"training batches; off-policy ESS of mu {d['mu_ess']:.2f}.", "",
                  "| gradient | cos(reference) | halves agree | norm per batch |", "|---|---:|---:|---:|"]
        for r in d["rows"]:
            lines.append(f"| {r['gradient']} | {r['cos_reference']:+.3f} | {r['cos_halves']:+.3f} | {r['norm_per_batch']:.3g} |")
        lines.append("")


HARD_TASKS = ("point_maze_u", "point_maze_medium", "point_maze_large", "reach_grasp_carry", "sparse_mountain_car")
ALGOS = ("ppo", "sapg", "epo", "pbt")


def _hard_scaling() -> list[dict]:
    """The scaling JSONs of the hard-exploration tasks, in HARD_TASKS order."""
    found = {}
    for path in RESULTS.glob("scaling_*.json"):
        d = json.loads(path.read_text())
        if d["env"] in HARD_TASKS and "updates" in d["protocols"]:
            found[d["env"]] = d
    return [found[t] for t in HARD_TASKS if t in found]


def _cell(d: dict, algo: str, n: int) -> dict | None:
    return next((t for t in d["table"] if t["protocol"] == "updates" and t["algo"] == algo and t["num_envs"] == n), None)


def _iqm(t: dict | None, digits: int = 2) -> str:
    if t is None or t.get("iqm") is None:
        return "—"
    lo, hi = t["iqm_ci"]
    return f"{t['iqm']:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


# Longer fixed-updates studies, shown in the README under the main grid (only the columns of ALGOS), each with its
# study of PPO on a PBT member's share of the environments (N / 8), for the selection table.
LONG_RUNS = {"ablation_point_maze_u_latent_scale_200_updates.json": "ablation_point_maze_u_ppo_member_envs_200_updates.json"}


def _long_runs() -> list[dict]:
    return [d for name in LONG_RUNS if (d := _load(name)) is not None]


def long_run_table() -> list[str]:
    """The LONG_RUNS studies: one row per N (each method's IQM [95% CI]), then each method's P(> PPO) per N."""
    studies = _long_runs()
    if not studies:
        return []
    rows = ["| task (metric) | N | updates | seeds | PPO | SAPG | EPO | PBT |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    notes = []
    for d in studies:
        metric = METRIC_NAMES.get(d.get("metric"), d.get("metric"))
        updates = d["protocols"]["updates"]["updates"]
        for n in sorted({t["num_envs"] for t in d["table"] if t["protocol"] == "updates"}):
            cells = [_cell(d, a, n) for a in ALGOS]
            seeds = "/".join(str(k) for k in sorted({len(c["seeds"]) for c in cells if c}))
            rows.append(f"| {d['env']} ({metric}) | {n:,} | {updates} | {seeds} | " + " | ".join(_iqm(c) for c in cells) + " |")
            p = [f"{a.upper()} {c['p_improve']:.2f} [{c['p_improve_ci'][0]:.2f}, {c['p_improve_ci'][1]:.2f}]"
                 for a, c in zip(ALGOS, cells) if c is not None and c.get("p_improve") is not None]
            if p:
                notes.append(f"{d['env']}, N = {n:,}, {updates} updates: " + ", ".join(p))
    return rows + (["", "P(method > PPO) [95% CI]: " + "; ".join(notes) + "."] if notes else [])


def hard_scaling_table(min_n: int = 4096) -> list[str]:
    """Task × N (N >= ``min_n``) rows: each method's IQM [95% CI] of the task's metric, fixed-updates protocol."""
    rows = ["| task (metric) | N | updates | seeds | PPO | SAPG | EPO | PBT |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    studies = _hard_scaling()
    for d in studies:
        metric = METRIC_NAMES.get(d.get("metric"), d.get("metric"))
        for n in sorted({t["num_envs"] for t in d["table"] if t["num_envs"] >= min_n}):
            cells = [_cell(d, a, n) for a in ALGOS]
            seeds = max((len(c["seeds"]) for c in cells if c), default=0)
            rows.append(f"| {d['env']} ({metric}) | {n:,} | {d['protocols']['updates']['updates']} | {seeds} | "
                        + " | ".join(_iqm(c) for c in cells) + " |")
    uniform = {d["env"]: v for d in studies if (v := _uniform_score(d)) is not None}
    flagged = [d["env"] for d in studies if d["env"] not in uniform and _seed_determined(d)]
    if uniform:
        rows += ["", "On " + ", ".join(f"{env} nearly every run scores {v:.2f}" for env, v in uniform.items())
                 + " (at least 80% of each method's seeds, at every N): this protocol does not tell the methods apart "
                 "there (docs/scaling.md)."]
    if flagged:
        rows += ["", "Caution: on " + ", ".join(flagged) + " most seeds score the same at every N for every method "
                 "(a success rate within 2 of 16 evaluation episodes): the outcome is set by the seed (its initial "
                 "weights and first updates), not by N (docs/scaling.md)."]
    return rows


def _uniform_score(d: dict) -> float | None:
    """The one value that the seeds scoring the same at every N all score, where they are at least 80% of every
    method's seeds (a floor or a ceiling, e.g. 0 successes everywhere); else None.

    Such a task is not seed-determined: neither the seed nor the method nor N changed the outcome."""
    if not _seed_determined(d):
        return None
    metric, by_seed = d["metric"], {}
    for r in d["runs"]:
        if "updates" in r.get("protocols", []) and r.get(metric) is not None:
            by_seed.setdefault((r["algo"], r["seed"]), set()).add(round(r[metric], 6))
    constant = {next(iter(v)) for v in by_seed.values() if len(v) == 1}
    if len(constant) != 1:
        return None
    (value,) = constant
    for algo in {a for a, _ in by_seed}:
        seeds = [v for (a, _), v in by_seed.items() if a == algo]
        if sum(v == {value} for v in seeds) < 0.8 * len(seeds):
            return None
    return value


def _seed_determined(d: dict, threshold: float = 0.8) -> bool:
    """Whether, for every algo, at least ``threshold`` of the seeds score the same at every N
    (scaling.seed_determined: a success rate within 2 of 16 evaluation episodes)."""
    frac = d.get("seed_determined") or {}
    return bool(frac) and all(v >= threshold for v in frac.values())


def saturation_table() -> list[str]:
    """Per hard task: PPO's saturation N and, at the largest N, each method's IQM [CI] and P(method > PPO) [CI]."""
    rows = ["| task (metric) | PPO saturation N | largest N | PPO | SAPG | EPO | PBT |", "|---|---:|---:|---:|---:|---:|---:|"]
    for d in _hard_scaling():
        n = max(t["num_envs"] for t in d["table"])
        sat = (d.get("ppo_saturation_n") or {}).get("updates")
        parts = []
        for a in ALGOS:
            c = _cell(d, a, n)
            text = _iqm(c)
            if c is not None and c.get("p_improve") is not None:
                lo, hi = c["p_improve_ci"]
                text += f"; P(>PPO) {c['p_improve']:.2f} [{lo:.2f}, {hi:.2f}]"
            parts.append(text)
        rows.append(f"| {d['env']} ({METRIC_NAMES.get(d.get('metric'), d.get('metric'))}) | "
                    f"{sat if sat is not None else 'none in range'} | {n:,} | " + " | ".join(parts) + " |")
    return rows


def hard_scaling_plot() -> Path | None:
    """``benchmarks/results/scaling_hard_tasks.png``: one panel per hard task, IQM vs N with CIs and seed dots."""
    studies = _hard_scaling()
    if not studies:
        return None
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(studies), figsize=(4.6 * len(studies), 3.8), squeeze=False)
    for ax, d in zip(axes[0], studies):
        metric = d.get("metric", "eval_return")
        for i, a in enumerate(ALGOS):
            cells = sorted((t for t in d["table"] if t["protocol"] == "updates" and t["algo"] == a
                            and t.get("iqm") is not None), key=lambda t: t["num_envs"])
            if not cells:
                continue
            dodge = 1.0 + 0.06 * (i - 1.5)
            ax.errorbar([t["num_envs"] * dodge for t in cells], [t["iqm"] for t in cells],
                        yerr=[[t["iqm"] - t["iqm_ci"][0] for t in cells], [t["iqm_ci"][1] - t["iqm"] for t in cells]],
                        color=f"C{i}", marker="o", capsize=3, label=a)
            for r in d["runs"]:
                if r["algo"] == a and "updates" in r["protocols"] and r.get(metric) is not None:
                    ax.scatter(r["num_envs"] * dodge, r[metric], color=f"C{i}", s=10, alpha=0.4)
        ns = sorted({t["num_envs"] for t in d["table"]})
        ax.set_xscale("log", base=2)
        ax.set_xticks(ns, [f"{n:,}" for n in ns])
        ax.minorticks_off()
        ax.set_xlabel("num_envs N")
        ax.set_ylabel(METRIC_NAMES.get(metric, metric) + ", IQM and 95% CI")
        ax.set_title(f"{d['env']}, {d['protocols']['updates']['updates']} updates", fontsize=10)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    out = RESULTS / "scaling_hard_tasks.png"
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def headlines() -> list[str]:
    """One-line figures of the other benchmarks (docs/results.md, not the README)."""
    rows = []
    pbt = _load("pbt_memory_cpu.json")
    if pbt:
        rows += [f"- In-process PBT ({pbt['config']['members']} members) vs {pbt['config']['members']} processes: "
                 f"{pbt['memory_ratio_separate_over_inprocess']:.1f}× less memory, "
                 f"{pbt['time_ratio_separate_over_inprocess']:.1f}× less time (CPU)."]
    mem = _load("epo_memory_cpu.json")
    if mem:
        rows += [f"- EPO peak memory, K = {mem['results'][0]['K']} → {mem['results'][-1]['K']}: "
                 f"**{100 * mem['memory_growth_first_to_last']:+.1f}%** (CPU)."]
    cpu_grids = [json.loads(p.read_text()) for p in RESULTS.glob("throughput_cpu*.json")]
    tp = max(cpu_grids, key=lambda d: d["timestamp"]) if cpu_grids else None  # the latest learner's grid
    if tp:
        o = {(c["num_envs"], c["num_policies"]): c["overheads"] for c in tp["cells"]}
        rows += [f"- Update-time overhead vs PPO on one batch (CPU, {tp['device_name']}, {tp['timestamp'][:10]}, " + ", ".join(
            f"N={n} M={m}: SAPG {v['sapg_over_ppo_update_time']:.2f}×, EPO {v['epo_over_ppo_update_time']:.2f}×"
            for (n, m), v in o.items()) + "); our PPO vs TorchRL's plain loop: " + ", ".join(
            f"{v['ppo_over_torchrl_update_time']:.2f}×" for v in o.values()) + " ([throughput.md](throughput.md))."]
    for path in sorted(RESULTS.glob("*_phases.json")):  # benchmarks/recipe_phases.py: the recipe's iteration
        d = json.loads(path.read_text())
        other = next(k for k in d["seeds"][0]["median_seconds"] if k not in ("ppo", "ppo_on_sapg_rows"))
        r = d["summary"]["ratio"]
        extra = f" ({' '.join(d['overrides'])})" if d.get("overrides") else ""
        rows += [f"- Recipe iteration, {other.upper()} / PPO on {path.name.split('_')[0]}{extra}: IQM {r['iqm_ratio']:.3f} "
                 f"[{r['iqm_ratio_ci'][0]:.3f}, {r['iqm_ratio_ci'][1]:.3f}] over {len(d['seeds'])} seeds "
                 f"({d.get('cpu_model', 'CPU')}, 1 thread, `{path.name}`)."]
    dist = _load("distributed_fps_cpu.json")
    if dist:
        ranks = dist["rows"][-1]
        rows += [f"- torchrun, {ranks['ranks']} gloo ranks vs 1 process ({dist['algo']}, {dist['env']}): "
                 f"{ranks['speedup_vs_1_process']:.2f}× frames/s, ranks bit-identical: "
                 f"{'yes' if ranks['ranks_identical'] else 'NO'} (CPU)."]
    return rows


def readme_table() -> str:
    """The README's results (between the results markers): the hard-task scaling table and its plot."""
    rows = hard_scaling_table()
    studies = _hard_scaling()
    longer = long_run_table()
    if longer:
        rows += ["", "Longer runs, the same evaluation:", "", *longer]
    if studies:
        shown = [*studies, *_long_runs()]
        n_seeds = sorted({len(t["seeds"]) for d in shown for t in d["table"] if t["algo"] in ALGOS})
        codes = [r.get("code") or d.get("code") or {} for d in shown for r in d["runs"]  # per run: resumed studies
                 if "updates" in r.get("protocols", []) and r["algo"] in ALGOS]  # the tables' protocol and methods
        commits = sorted({c.get("commit", "?")[:7] + ("+dirty" if c.get("dirty") else "") for c in codes})
        rows = [f"Hard-exploration tasks (docs/embedded-tasks.md), recipe defaults (runs at commit {', '.join(commits)}), "
                "fixed number of updates per run: "
                "the headline policy's final deterministic evaluation (PPO: its policy; SAPG: the leader; EPO: the "
                "master; PBT: of its 8 members, the one with the best return in this same evaluation), "
                "interquartile mean [95% stratified-bootstrap CI] over "
                f"{'/'.join(map(str, n_seeds))} seeds, CPU.", "", *rows]
    if (RESULTS / "scaling_hard_tasks.png").is_file():
        rows += ["", "![final score vs num_envs on the hard tasks](benchmarks/results/scaling_hard_tasks.png)"]
    rows += ["", "Generated by `python benchmarks/report.py`; the saturation analysis, P(improvement), per-seed "
             "results and the reading are in [docs/scaling.md](docs/scaling.md), every other figure and its command "
             "in [docs/results.md](docs/results.md)."]
    return "\n".join(rows)


def _diagnostics_groups(field: str):
    """``((task, algo or variant label, N), runs)`` per group of each diagnostics JSON's runs that have ``field``."""
    for path in sorted(RESULTS.glob("diagnostics_*.json")):
        runs = [r for r in json.loads(path.read_text())["runs"] if r.get(field)]
        key_of = lambda r: (r["env"], r.get("label", r["algo"]), r["num_envs"])  # noqa: E731  (variants apart)
        # the methods by N in ALGOS order, then the variants, whatever order the runs were diagnosed in
        order = lambda k: (k[0], k[1] not in ALGOS, k[2], ALGOS.index(k[1]) if k[1] in ALGOS else 0, k[1])  # noqa: E731
        for key in sorted(set(map(key_of, runs)), key=order):
            yield key, [r for r in runs if key_of(r) == key]


PBT_ROUNDS_HEADER = "PBT rounds: with a fitness / all; members replaced, mutated (per-run means)"


def _pbt_rounds_cell(rs: list[dict]) -> str:
    """Per-run means of population_diagnostics.pbt_rounds over the runs that have it, with their count where some
    do not (diagnosed before the field existed); "–" where none has it."""
    import statistics

    pbt = [r["pbt_rounds"] for r in rs if r.get("pbt_rounds")]
    if not pbt:
        return "–"
    avg = lambda k: statistics.fmean(p[k] for p in pbt)  # noqa: E731
    return (f"{avg('rounds_with_fitness'):.1f} / {avg('rounds'):.1f}; {avg('replaced'):.1f}, {avg('mutated'):.1f}"
            + (f" ({len(pbt)} runs)" if len(pbt) < len(rs) else ""))


def diagnostics_table() -> list[str]:
    """Per (task, algo or variant label, N) of each diagnostics JSON: end-of-training coverage and diversity, seed means."""
    import statistics

    rows = ["| task | algo | N | seeds | coverage per policy (sampled) | union coverage | mean pairwise TV | "
            f"best goal-cell share | leader's ESS_off | mu range (mean of per-run min / max) | {PBT_ROUNDS_HEADER} |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for key, rs in _diagnostics_groups("maze"):
        mean = lambda f: statistics.fmean(f(r) for r in rs)  # noqa: E731
        # runs with off-policy rows only: PPO's loss logs ESS_off = 0 and mu = 1 for its none
        off = [r["off_policy"] for r in rs if r.get("off_policy", {}).get("ESS_off") is not None
               and r["off_policy"].get("off_policy_fraction", 1.0) > 0]
        ess = f"{statistics.fmean(o['ESS_off'] for o in off):.2f}" if off else "–"
        mu = (f"{statistics.fmean(o['mu_min_overall'] for o in off):.2f} / "
              f"{statistics.fmean(o['mu_max_overall'] for o in off):.1f}" if off else "–")
        rows.append(f"| {key[0]} | {key[1]} | {key[2]:,} | {len(rs)} | "
                    f"{mean(lambda r: statistics.fmean(r['maze']['coverage'])):.2f} | "
                    f"{mean(lambda r: r['maze']['union_coverage']):.2f} | {mean(lambda r: r['maze']['mean_pairwise_tv']):.2f} | "
                    f"{mean(lambda r: max(r['maze']['goal_cell_visit_share'])):.3f} | {ess} | {mu} | {_pbt_rounds_cell(rs)} |")
    return rows


def controller_table() -> list[str]:
    """Per (task, variant, N) of each diagnostics JSON with MountainCar runs: what the final deterministic policies
    do with the velocity (population_diagnostics.velocity_sign_agreement), the leader's and the rest's."""
    import statistics

    side = lambda v: (v > 0.6) - (v < 0.4)  # noqa: E731  (1 pumps, -1 brakes, 0 neither)
    rows = ["| task | variant | N | seeds | leader's eval success | leader's velocity-sign agreement | leader pumps "
            "(> 0.6) / brakes (< 0.4) | other policies' agreement, mean [min, max] | runs with every policy on the "
            f"leader's side | {PBT_ROUNDS_HEADER} |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for key, rs in _diagnostics_groups("velocity_sign_agreement"):
        lead = [r["velocity_sign_agreement"][0] for r in rs]
        rest = [v for r in rs for v in r["velocity_sign_agreement"][1:]]
        others = f"{statistics.fmean(rest):.2f} [{min(rest):.2f}, {max(rest):.2f}]" if rest else "–"
        one_side = (f"{sum(len({side(v) for v in r['velocity_sign_agreement']}) == 1 for r in rs)} of {len(rs)}"
                    if rest else "–")
        success = statistics.fmean((r.get("eval_success") or [0.0])[0] for r in rs)  # per policy: the leader's
        rows.append(f"| {key[0]} | {key[1]} | {key[2]:,} | {len(rs)} | {success:.2f} | {statistics.fmean(lead):.2f} | "
                    f"{sum(v > 0.6 for v in lead)} / {sum(v < 0.4 for v in lead)} | {others} | {one_side} | "
                    f"{_pbt_rounds_cell(rs)} |")
    return rows


def selection_table(k: int = 8) -> list[str]:
    """Per hard task and N: PBT's headline (its best member by eval return) against what picking the best of ``k``
    independent PPO runs by the same criterion gives (rl_stats.expected_best_of_k), with the per-member means.

    The PPO runs come at two sizes: N environments each (the study's PPO), and N / ``k``, a PBT member's share, from
    ``ablation_<task>_ppo_member_envs.json`` where it exists ("–" where it does not), in two variants: the recipe's
    KL-adaptive learning rate (label ``ppo``) and a fixed one, as a PBT member keeps between rounds
    (``ppo-fixed-lr``). Picking among ``k`` runs of N / ``k`` is PBT without its rounds, at PBT's compute. The
    LONG_RUNS studies follow the main ones, each with its own N / ``k`` study.
    """
    import statistics

    import rl_stats

    variants = ("ppo", "ppo-fixed-lr")
    rows = [f"| task (metric) | N | updates | seeds | PPO run | PPO run on N/{k} envs (recipe lr / fixed lr) | PBT member, all | "
            f"PBT member 0 | PBT headline (best of its {k} by eval return) | best of {k} PPO runs on N/{k} envs, "
            f"expected (recipe lr / fixed lr) | best of {k} PPO runs by eval return (expected) |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    studies = [(d, f"ablation_{d['env']}_ppo_member_envs.json") for d in _hard_scaling()]
    studies += [(d, member_envs) for name, member_envs in LONG_RUNS.items() if (d := _load(name)) is not None]
    for d, member_envs in studies:
        metric = d["metric"]
        runs = [r for r in d["runs"] if "updates" in r.get("protocols", []) and r.get(metric) is not None]
        small = (_load(member_envs) or {"runs": []})["runs"]
        small = [r for r in small if r.get(metric) is not None and "updates" in r.get("protocols", [])]
        for n in sorted({r["num_envs"] for r in runs}):
            ppo = [r for r in runs if r["algo"] == "ppo" and r["num_envs"] == n]
            pbt = [r for r in runs if r["algo"] == "pbt" and r["num_envs"] == n and metric in (r.get("eval_per_policy") or {})]
            if not ppo or not pbt:
                continue
            members = [r["eval_per_policy"][metric] for r in pbt]
            means, picks = [], []
            for label in variants:
                rs = [r for r in small if r["algo"] == label and r["num_envs"] * k == n]
                means.append(f"{statistics.fmean(r[metric] for r in rs):.3f} ({len(rs)})" if rs else "–")
                picks.append(f"{rl_stats.expected_best_of_k([r['eval_return'] for r in rs], [r[metric] for r in rs], k):.3f}"
                             if rs else "–")
            rows.append(f"| {d['env']} ({METRIC_NAMES.get(metric, metric)}) | {n:,} | "
                        f"{d['protocols']['updates']['updates']} | {len(pbt)} | "
                        f"{statistics.fmean(r[metric] for r in ppo):.3f} | {' / '.join(means)} | "
                        f"{statistics.fmean(v for m in members for v in m):.3f} | {statistics.fmean(m[0] for m in members):.3f} | "
                        f"{statistics.fmean(r[metric] for r in pbt):.3f} | {' / '.join(picks)} | "
                        f"{rl_stats.expected_best_of_k([r['eval_return'] for r in ppo], [r[metric] for r in ppo], k):.3f} |")
    return rows


def leader_table() -> list[str]:
    """Policy 0 (leader / master) against the best other policy, from each hard task's scaling JSON."""
    import population_diagnostics

    out = []
    for d in _hard_scaling():
        rows = [r for r in population_diagnostics.leader_vs_followers(RESULTS / f"scaling_{d['env']}.json")
                if r["algo"] in ("sapg", "epo", "pbt")]
        out += [f"**{d['env']}** ({METRIC_NAMES.get(d.get('metric'), d.get('metric'))}):", "",
                population_diagnostics.leader_markdown(rows), ""]
    return out


def ablation_table(task: str) -> list[str]:
    """The SAPG ablations in ``ablation_<task>.json`` (written by scaling.py): IQM [CI], P(> PPO), returns.

    ``task`` is the file stem after ``ablation_``: a task name, or one with a study suffix
    (``point_maze_u_sapg_defaults``); its tables land between ``<!-- ablation-<task>:start/end -->``.
    """
    path = RESULTS / f"ablation_{task}.json"
    out = []
    if path.is_file():
        d = json.loads(path.read_text())
        command = re.sub(r" --(out|runs-dir) \S+", "", d["commands"][-1])
        out += [f"`{command}` (`{path.name}`):", "",
                f"| variant | N | seeds | {METRIC_NAMES.get(d.get('metric'), d.get('metric'))}, IQM [95% CI] | "
                "P(> PPO) [95% CI] | eval return | last train return |", "|---|---:|---:|---:|---:|---:|---:|"]
        for t in d["table"]:
            p = (f"{t['p_improve']:.2f} [{t['p_improve_ci'][0]:.2f}, {t['p_improve_ci'][1]:.2f}]"
                 if t.get("p_improve") is not None else "–")
            train = f"{t['train_mean']:.1f} ± {t['train_std']:.1f}" if t.get("train_mean") is not None else "–"
            out.append(f"| {t['algo']} | {t['num_envs']:,} | {len(t['seeds'])} | {_iqm(t)} | {p} | "
                       f"{t['eval_mean']:.1f} ± {t['eval_std']:.1f} | {train} |")
        out.append("")
    return out


def _splice(doc: Path, name: str, lines: list[str]) -> bool:
    """Replace what lies between ``doc``'s ``<!-- name:start/end -->`` markers; False where they are missing."""
    text = doc.read_text()
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    if start not in text or end not in text:
        return False
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    doc.write_text(f"{head}{start}\n" + "\n".join(lines) + f"\n{end}{tail}")
    return True


def update_scaling_doc() -> None:
    """Splice the generated tables into docs/scaling.md between their markers."""
    doc = ROOT / "docs" / "scaling.md"
    _splice(doc, "saturation", saturation_table())
    _splice(doc, "leader", leader_table())
    _splice(doc, "diagnostics", diagnostics_table())
    _splice(doc, "controllers", controller_table())
    _splice(doc, "selection", selection_table())
    for path in sorted(RESULTS.glob("ablation_*.json")):  # one marker block per task: <!-- ablation-<task>:start -->
        task = path.stem.removeprefix("ablation_")
        if not _splice(doc, f"ablation-{task}", ablation_table(task)):
            print(f"report.py: {path.name} is not shown: {doc.name} has no <!-- ablation-{task}:start --> "
                  f"... <!-- ablation-{task}:end --> block; add one where its table belongs")


def update_readme() -> None:
    readme = ROOT / "README.md"
    text = readme.read_text()
    start, end = "<!-- results:start -->", "<!-- results:end -->"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        _, tail = rest.split(end, 1)
        readme.write_text(f"{head}{start}\n{readme_table()}\n{end}{tail}")


def main() -> None:
    lines = ["# Measured results", "",
             "Generated by `python benchmarks/report.py` from `benchmarks/results/*.json`; do not edit by hand.",
             "Each section names the command that produced its JSON.", ""]
    hard_scaling_plot()
    if _hard_scaling():
        lines += ["## Hard-exploration tasks: final score vs num_envs", "", *hard_scaling_table(min_n=0), "",
                  *saturation_table(), ""]
    other = headlines()
    if other:
        lines += ["## Headlines of the other benchmarks", "", *other, ""]
    env_throughput(lines)
    epo_memory(lines)
    pbt_memory(lines)
    throughput(lines)
    wall_ratio(lines)
    recipe_phases(lines)
    distributed_fps(lines)
    scaling(lines)
    gradient_alignment(lines)
    comparisons(lines)
    (ROOT / "docs" / "results.md").write_text("\n".join(lines))
    update_readme()
    update_scaling_doc()
    print("\n".join(lines))


if __name__ == "__main__":
    main()
