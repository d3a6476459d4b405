"""The runnable examples of docs/ are executed here, so they cannot rot."""
from __future__ import annotations

import importlib.util
import math
import pathlib

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "docs" / "examples"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sapg_custom_loop_runs_and_reports_a_leader_return():
    example = _load("sapg_custom_loop")
    # horizon 100 and 2 iterations: every env finishes its 200-step Pendulum episode once
    leader_return = example.main(iterations=2, num_envs=24, horizon=100)
    assert math.isfinite(leader_return)
    assert -2000.0 < leader_return <= 0.0  # Pendulum returns are costs in [-16.3 * 200, 0]
