"""Plot the learning curves stored in a benchmarks/compare_algos.py JSON (return vs env frames).

    python benchmarks/plot_curves.py benchmarks/results/compare_halfcheetah.json

Writes a PNG beside the JSON: one line per run, one colour per algorithm. Needs matplotlib.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def main(path: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d = json.loads(Path(path).read_text())
    fig, ax = plt.subplots(figsize=(7, 4.5))
    colours = {}
    for run in d["runs"]:
        if not run["curve"]:
            continue
        frames, returns = zip(*run["curve"])
        c = colours.setdefault(run["algo"], f"C{len(colours)}")
        ax.plot(frames, returns, color=c, alpha=0.8, label=f"{run['algo']} (seed {run['seed']})")
    ax.set_xlabel("env frames")
    ax.set_ylabel("training return of the headline policy")
    ax.set_title(f"{d['env']}: {', '.join(colours)}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    out = Path(path).with_suffix(".png")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    main(sys.argv[1])
