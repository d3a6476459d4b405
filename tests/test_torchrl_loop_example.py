"""examples/torchrl_loop.py (docs/torchrl-loop.md's loop) runs, trains, updates the normaliser,
and the page shows the same code as the file."""
from __future__ import annotations

import copy
import importlib.util
import inspect
import math
import pathlib
import re

import pytest
import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "torchrl_loop.py"
PAGE = ROOT / "docs" / "torchrl-loop.md"
N, M, T, ITERATIONS = 12, 3, 200, 2  # T = 200: every Pendulum episode ends at each batch's last step


def _load():
    spec = importlib.util.spec_from_file_location("torchrl_loop_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(monkeypatch, entry: str):
    """Run ``entry`` of the example, keeping its actor-critic and a copy of its initial state."""
    example = _load()
    built = {}
    real = example.make_actor_critic

    def spy(*args, **kwargs):
        ac = real(*args, **kwargs)
        built["ac"] = ac
        built["initial"] = {
            "actor": copy.deepcopy(ac.actor.state_dict()),
            "critic": copy.deepcopy(ac.critic.state_dict()),
            "normalizer": copy.deepcopy(ac.obs_normalizer.state_dict()),
        }
        return ac

    monkeypatch.setattr(example, "make_actor_critic", spy)
    history = getattr(example, entry)(iterations=ITERATIONS, num_envs=N, num_policies=M, horizon=T, seed=0)
    return history, built["ac"], built["initial"]


@pytest.mark.parametrize("entry", ["main", "main_population"])
def test_the_loop_trains_and_updates_the_normaliser(monkeypatch, entry):
    history, ac, initial = _run(monkeypatch, entry)
    assert len(history) == ITERATIONS
    for row in history:
        terms = {k: v for k, v in row.items() if k.startswith("loss_")}
        # entropy_sigma > 0: the entropy term is there and summed with the others
        assert {"loss_objective", "loss_critic", "loss_entropy"} <= terms.keys()
        assert all(math.isfinite(v) for v in terms.values()), row
        # every env finishes its 200-step episode at the batch's last step: a finite leader return
        assert -16.3 * 200 <= row["leader_return"] <= 0.0
    for name, module in (("actor", ac.actor), ("critic", ac.critic)):
        after = module.state_dict()
        changed = [k for k, v in initial[name].items() if v.is_floating_point() and not torch.equal(v, after[k])]
        assert any("stats" not in k for k in changed), f"no {name} weight changed"
    # updated once per batch with the N*T collected rows (not the aggregated N+K rows), from 1e-4
    stats = ac.obs_normalizer.stats
    assert float(initial["normalizer"]["stats.count"]) == pytest.approx(1e-4)
    assert float(stats.count) == pytest.approx(1e-4 + ITERATIONS * N * T)
    assert not torch.equal(stats.mean, initial["normalizer"]["stats.mean"])


def test_both_collectors_give_the_same_run(monkeypatch):
    """The alternative only swaps the collector: same seed, same data, same numbers."""
    plain, _, _ = _run(monkeypatch, "main")
    population, _, _ = _run(monkeypatch, "main_population")
    # same data and updates; the two collectors' reductions may differ in the last float digit
    assert len(plain) == len(population)
    for a, b in zip(plain, population):
        assert a.keys() == b.keys()
        assert all(a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-6) for k in a), (a, b)


def _blocks(text: str) -> list[tuple[str, str]]:
    """``(marker, code)`` for every ```python block preceded by an ``<!-- ... -->`` marker line."""
    pattern = re.compile(r"<!-- (.+?) -->\n```python\n(.*?)```", re.S)
    return [(m.group(1).strip(), m.group(2)) for m in pattern.finditer(text)]


def test_the_page_shows_the_example_file():
    page, source = PAGE.read_text(), EXAMPLE.read_text()
    blocks = dict(_blocks(page))
    # the complete loop: a verbatim slice of the file (imports and main)
    verbatim = blocks["verbatim: examples/torchrl_loop.py"]
    assert verbatim in source
    assert "from torchrl.collectors import Collector" in verbatim and "def main(" in verbatim
    assert verbatim.rstrip().endswith("return history")  # the whole of main
    # the PopulationCollector alternative: every code line of the block is a line of main_population
    example = _load()
    population = {line.strip() for line in inspect.getsource(example.main_population).splitlines()}
    population |= {line.strip() for line in source.splitlines() if line.startswith(("from ", "import "))}
    lines = [line.strip() for line in blocks["lines of: examples/torchrl_loop.py::main_population"].splitlines()]
    lines = [line for line in lines if line and not line.startswith("#") and line != "..."]
    assert lines, "the alternative block is empty"
    missing = [line for line in lines if line not in population]
    assert not missing, f"lines of docs/torchrl-loop.md not in main_population: {missing}"


def _python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, re.S)


def test_hand_written_loops_in_the_docs_sum_every_loss_term():
    """A loop that names its loss terms breaks when one is off (KeyError on loss_entropy) and
    silently drops the optional ones (loss_bounds): every docs loop sums all loss_* entries."""
    for page in sorted((ROOT / "docs").glob("*.md")):
        for block in _python_blocks(page.read_text()):
            if ".backward()" not in block:
                continue
            assert 'k.startswith("loss_")' in block, f"{page.name}: a loop that does not sum every loss_* term"
            assert not re.search(r"""\[["']loss_\w+["']\]|\.get\(["']loss_""", block), f"{page.name} names a loss term"


@pytest.mark.parametrize("name", ["torchrl-loop.md", "sapg.md"])
def test_hand_written_loops_update_the_normaliser(name):
    loops = [b for b in _python_blocks((ROOT / "docs" / name).read_text()) if ".backward()" in b]
    assert loops
    for block in loops:
        # after the minibatch loop (less indented than the optimiser step), on the collected batch
        step = block.index("optim.step()")
        update = block.index('obs_normalizer.update(batch["observation"])')
        assert update > step


def test_the_readme_lists_the_page():
    assert "(docs/torchrl-loop.md)" in (ROOT / "README.md").read_text()
