"""Write docs/results.md from the JSON files in benchmarks/results/ (never type figures by hand).

    python benchmarks/report.py
"""
from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


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


def learner_update(lines: list[str]) -> None:
    for path in sorted(RESULTS.glob("learner_update_*.json")):
        d = json.loads(path.read_text())
        c = d["config"]
        lines += [f"### Learner update time, SAPG vs PPO — {d['device']} ({d['device_name']})", "",
                  f"`python benchmarks/learner_update.py{' --repeats ' + str(c['repeats']) if c.get('repeats', 5) != 5 else ''}` (`{path.name}`): one batch of N={c['num_envs']} envs × "
                  f"T={c['horizon']}, M={c['num_policies']}, network {c['hidden']}, {c['epochs']} epochs × "
                  f"{c['minibatches']} minibatches, median of {c['repeats']}.", "",
                  "| algo | rows trained | update (s) | samples/s |", "|---|---:|---:|---:|"]
        for r in d["results"]:
            lines.append(f"| {r['algo']} | {r['rows_trained']} | {r['seconds_median']:.3f} | {r['samples_per_s']:,.0f} |")
        vt = d.get("sapg_vtrace_over_ppo")
        vt_text = f", with the recipe's V-trace targets **{vt:.3f}×**" if vt is not None else ""
        lines += ["", f"SAPG / PPO update time: **{d['sapg_over_ppo']:.3f}×** with the paper's TD(0) targets{vt_text} "
                  "(goal ≤ 1.3×).", ""]


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


def throughput(lines: list[str]) -> None:
    for path in sorted(RESULTS.glob("throughput_*.json")):
        d = json.loads(path.read_text())
        command = re.sub(r" --note ('[^']*'|\S+)", "", d["command"])
        lines += [f"### Learner and end-to-end throughput vs TorchRL's ClipPPOLoss loop — {d['device']} "
                  f"({d['device_name']}, {d['torch_num_threads']} thread)", "",
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
        lines += ["", "| N | M | PPO / torchrl update | SAPG / PPO update | EPO / PPO update | SAPG / PPO end-to-end | "
                  "EPO / PPO end-to-end |", "|---:|---:|---:|---:|---:|---:|---:|"]
        for cell in d["cells"]:
            o = cell["overheads"]
            lines.append(f"| {cell['num_envs']} | {cell['num_policies']} | {o['ppo_over_torchrl_update_time']:.2f}× | "
                         f"{o['sapg_over_ppo_update_time']:.2f}× | {o['epo_over_ppo_update_time']:.2f}× | "
                         f"{o['sapg_over_ppo_e2e_time']:.2f}× | {o['epo_over_ppo_e2e_time']:.2f}× |")
        lines.append("")


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

        def cell(t):
            tail = f" ({t['solved']}/{len(t['seeds'])})" if solved is not None else ""
            return f"{t['eval_mean']:.1f} ± {t['eval_std']:.1f}{tail}"

        command = re.sub(r" --(out|runs-dir) \S+", "", d["commands"][-1])  # machine-local paths
        lines += [f"### Scaling with num_envs — {d['env']}", "", f"`{command}` (`{path.name}`). Headline "
                  "policy's deterministic eval return, mean ± std over seeds"
                  + (f" (seeds with eval ≥ {solved})" if solved is not None else "") + "; details in "
                  "[scaling.md](scaling.md).", ""]
        for protocol in ("updates", "frames"):
            if protocol in d["protocols"]:
                size = d["protocols"][protocol][protocol]
                title = f"fixed {size} updates" if protocol == "updates" else f"fixed {size:,} frames"
                lines += [f"**{title}**", "", *_scaling_grid(d, protocol, cell), ""]
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


def readme_table() -> str:
    """The README's compact results table (between the results markers), from the same JSON."""
    rows = ["| task | frames | algo | headline eval return (mean ± std, seeds) |", "|---|---:|---|---:|"]
    seen = set()
    # runs measured before the recipe switched to V-trace used TD(0) targets and lambda = 0.25
    labels = {"sapg": "sapg (leader), TD(0), lambda=0.25", "epo": "epo (master), TD(0), lambda=0.25",
              "pbt": "pbt (best member)", "sapg-paper": "sapg, TD(0), lambda=1 (paper)",
              "sapg-ref": "sapg, TD(0), lambda=1, reference clip",
              "sapg-vtrace": "sapg (leader), V-trace, lambda=1", "sapg-vtrace-l0.25": "sapg, V-trace, lambda=0.25"}
    # files measured after the switch: their own labels
    file_labels = {
        "compare_pendulum_eval256.json": {
            "sapg": "**sapg (leader), recipe default**",
            "sapg-none": "sapg population without aggregation (aggregation=none)",
        },
        "compare_pendulum_eval256_joint_init.json": {
            "sapg": "sapg (leader), V-trace, lambda=1",
            "sapg-shared-r5": "sapg (leader), shared backbone (latent_dim=0), all follower data, V-trace lambda=0.95",
        },
        "compare_pendulum_epo_gae.json": {
            "epo": "**epo (master), recipe default**",
            "sapg-gae-r5": "sapg (leader), off_policy_target=gae, lambda=0.95, all follower rows",
        },
        "compare_pendulum_kl_mean.json": {
            "sapg": "sapg (leader), adaptive-LR KL averaged over policies (kl_reduction=mean)",
            "sapg-none": "sapg, aggregation=none, kl_reduction=mean",
        },
    }
    # latent-conditioned rows of these files were measured with the joint first-layer init
    # (model.input_init=joint, the default before session 5; docs/sapg.md)
    joint_init_files = {"compare_halfcheetah.json", "compare_pendulum.json", "compare_pendulum_epo.json",
                        "compare_pendulum_vtrace.json", "compare_pendulum_eval256_joint_init.json"}
    for path in sorted(RESULTS.glob("compare_*.json")):
        d = json.loads(path.read_text())
        frames = d["runs"][0]["frames"]
        episodes = d["args"].get("eval_episodes", 16)
        names = {**labels, **file_labels.get(path.name, {})}
        for t in d["table"]:
            key = (d["env"], frames, names.get(t["algo"], t["algo"]), t["seeds"], episodes)
            if key in seen:  # the same deterministic runs (PPO's) appear in several comparison files
                continue
            seen.add(key)
            suffix = f", {episodes} eval episodes" if episodes != 16 else ""
            if path.name in joint_init_files and t["algo"] not in ("ppo", "pbt"):
                suffix += ", joint input init"
            rows.append(f"| {d['env']} | {frames:,} | {names.get(t['algo'], t['algo'])}{suffix} | "
                        f"{t['eval_mean']:.1f} ± {t['eval_std']:.1f} ({t['seeds']}) |")
    upd = _load("learner_update_cpu.json")
    if upd:
        vt = upd.get("sapg_vtrace_over_ppo")
        vt_text = f", {vt:.2f}× with V-trace targets" if vt is not None else ""
        rows += ["", f"Learner update time, SAPG / PPO on one batch: **{upd['sapg_over_ppo']:.2f}×** (CPU, TD(0){vt_text})."]
    pbt = _load("pbt_memory_cpu.json")
    if pbt:
        rows += [f"In-process PBT ({pbt['config']['members']} members) vs {pbt['config']['members']} processes: "
                 f"{pbt['memory_ratio_separate_over_inprocess']:.1f}× less memory, "
                 f"{pbt['time_ratio_separate_over_inprocess']:.1f}× less time (CPU)."]
    mem = _load("epo_memory_cpu.json")
    if mem:
        rows += [f"EPO peak memory, K = {mem['results'][0]['K']} → {mem['results'][-1]['K']}: "
                 f"**{100 * mem['memory_growth_first_to_last']:+.1f}%** (CPU)."]
    tp = _load("throughput_cpu.json")
    if tp:
        o = {(c["num_envs"], c["num_policies"]): c["overheads"] for c in tp["cells"]}
        rows += ["Update-time overhead vs PPO on one batch (CPU, " + ", ".join(
            f"N={n} M={m}: SAPG {v['sapg_over_ppo_update_time']:.2f}×, EPO {v['epo_over_ppo_update_time']:.2f}×"
            for (n, m), v in o.items()) + "); our PPO vs TorchRL's plain loop: " + ", ".join(
            f"{v['ppo_over_torchrl_update_time']:.2f}×" for v in o.values()) + " ([docs/throughput.md](docs/throughput.md))."]
    for path in sorted(RESULTS.glob("scaling_*.json")):
        d = json.loads(path.read_text())
        if "updates" not in d["protocols"]:
            continue
        rows_u = [t for t in d["table"] if t["protocol"] == "updates"]
        ns = sorted({t["num_envs"] for t in rows_u})
        solved = d.get("solved_at") is not None

        def value(t):
            return f"{t['solved']}/{len(t['seeds'])}" if solved else f"{t['eval_mean']:.0f}"

        per_algo = "; ".join(
            f"{a} " + " / ".join(next((value(t) for t in rows_u if t["algo"] == a and t["num_envs"] == n), "—") for n in ns)
            for a in dict.fromkeys(t["algo"] for t in rows_u))
        what = "seeds solved" if solved else "mean eval return"
        rows += [f"Scaling, {d['env']}, fixed {d['protocols']['updates']['updates']} updates, {what} at "
                 f"N = {' / '.join(map(str, ns))}: {per_algo}; sapg/epo with TD(0), lambda=0.25 and the joint input "
                 "init, not re-run ([docs/scaling.md](docs/scaling.md))."]
    dist = _load("distributed_fps_cpu.json")
    if dist:
        ranks = dist["rows"][-1]
        rows += [f"torchrun, {ranks['ranks']} gloo ranks vs 1 process ({dist['algo']}, {dist['env']}): "
                 f"{ranks['speedup_vs_1_process']:.2f}× frames/s, ranks bit-identical: "
                 f"{'yes' if ranks['ranks_identical'] else 'NO'} (CPU)."]
    rows += ["", "Generated by `python benchmarks/report.py`; commands and details in [docs/results.md](docs/results.md)."]
    return "\n".join(rows)


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
    env_throughput(lines)
    learner_update(lines)
    epo_memory(lines)
    pbt_memory(lines)
    throughput(lines)
    distributed_fps(lines)
    scaling(lines)
    gradient_alignment(lines)
    comparisons(lines)
    (ROOT / "docs" / "results.md").write_text("\n".join(lines))
    update_readme()
    print("\n".join(lines))


if __name__ == "__main__":
    main()
