"""Learner update time of SAPG vs our PPO on one batch: a thin wrapper over ``throughput.py``.

There is one learner benchmark, ``benchmarks/throughput.py``, and one definition of PPO: ours,
built by the recipe (``recipes/common.py``) inside ``OnPolicyTrainer``. This script only runs
that benchmark's learner-update measurement for one cell, without ``torch.compile``, memory or
end-to-end rounds (the per-phase profile stays on unless ``--no-profile`` is passed)::

    python benchmarks/throughput.py --num-envs 4096 --num-policies 6 --variants ppo sapg sapg_td0 \\
        --repeats 5 --no-compile --no-memory --e2e-iters 0 --out benchmarks/results/learner_update_<device>.json

``sapg`` is the recipe's SAPG (V-trace off-policy targets, ``max_policy`` KL for the adaptive
learning rate); ``sapg_td0`` the same with the paper's one-step targets (what this script used
to call "sapg"). The TorchRL baseline is always timed too. Extra arguments are passed on to
``throughput.py`` (later ones win), e.g.::

    python benchmarks/learner_update.py --num-envs 16384 --device cuda
    python benchmarks/learner_update.py --threads 1 --no-profile --out /tmp/lu.json

The JSON has ``throughput.py``'s format; ``docs/results.md`` reports the figures of
``throughput_<device>.json`` only, so the SAPG / PPO ratio has one source.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import throughput  # noqa: E402

DEFAULTS = ["--num-envs", "4096", "--num-policies", "6", "--variants", "ppo", "sapg", "sapg_td0", "--repeats", "5",
            "--no-compile", "--no-memory", "--e2e-iters", "0"]


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--out" not in argv:
        device = argv[argv.index("--device") + 1] if "--device" in argv else "cpu"
        argv += ["--out", str(throughput.ROOT / "benchmarks" / "results" / f"learner_update_{device.split(':')[0]}.json")]
    return throughput.main(DEFAULTS + argv)


if __name__ == "__main__":
    main()
