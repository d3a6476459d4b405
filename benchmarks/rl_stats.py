"""Aggregate statistics for few-seed RL results, as defined by ``rliable`` (Agarwal et al., NeurIPS 2021).

* :func:`iqm`: interquartile mean, the mean of the middle 50% of runs (``scipy.stats.trim_mean(x, 0.25)``).
* :func:`stratified_bootstrap_ci`: percentile confidence interval of a statistic, resampling the runs of each
  task (stratum) with replacement, independently per task.
* :func:`probability_of_improvement`: ``P(X > Y)``, the Mann-Whitney U statistic over all run pairs (ties count
  one half), averaged over tasks, with its own stratified-bootstrap interval.
* :func:`expected_best_of_k`: the expected score of the run picked, by a selection criterion, out of ``k`` runs drawn
  with replacement: what "the best of k" is worth when the k runs are independent.

Scores are ``[runs, tasks]`` arrays (one column per task; a single task is ``[runs, 1]``). The bootstrap draws from
``numpy.random.default_rng(seed)``, so a table is reproducible.

    >>> import numpy as np
    >>> round(iqm(np.array([[0.0], [1.0], [2.0], [3.0], [100.0]])), 6)
    2.0
    >>> probability_of_improvement(np.array([[1.0], [2.0]]), np.array([[0.0], [2.0]]))
    0.625
"""
from __future__ import annotations

import statistics
from collections.abc import Callable

import numpy as np


def _as_2d(scores) -> np.ndarray:
    x = np.asarray(scores, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"scores must be [runs, tasks] with at least one run, got shape {x.shape}.")
    return x


def iqm(scores) -> float:
    """Interquartile mean over every score of ``[runs, tasks]``: cut ``floor(0.25 n)`` from each end, average the rest."""
    x = np.sort(_as_2d(scores).reshape(-1))
    cut = int(0.25 * x.size)
    return float(x[cut: x.size - cut].mean())


def stratified_bootstrap_ci(
    scores, statistic: Callable[[np.ndarray], float] = iqm, *, reps: int = 5000, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile interval of ``statistic`` over ``reps`` resamples of the runs, drawn within each task column."""
    x = _as_2d(scores)
    rng = np.random.default_rng(seed)
    n, tasks = x.shape
    idx = rng.integers(0, n, size=(reps, n, tasks))
    samples = np.take_along_axis(np.broadcast_to(x, (reps, n, tasks)), idx, axis=1)
    stats = np.array([statistic(s) for s in samples])
    alpha = (1.0 - confidence) / 2
    return float(np.quantile(stats, alpha)), float(np.quantile(stats, 1 - alpha))


def probability_of_improvement(x, y) -> float:
    """``P(X > Y)`` averaged over tasks: for each task, the fraction of run pairs where x beats y (ties: 1/2)."""
    x, y = _as_2d(x), _as_2d(y)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must have the same tasks (columns): {x.shape[1]} vs {y.shape[1]}.")
    diff = x[:, None, :] - y[None, :, :]  # [runs_x, runs_y, tasks]
    per_task = ((diff > 0) + 0.5 * (diff == 0)).mean(axis=(0, 1))
    return float(per_task.mean())


def probability_of_improvement_ci(x, y, *, reps: int = 5000, confidence: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Stratified-bootstrap interval of :func:`probability_of_improvement` (x and y resampled independently)."""
    x, y = _as_2d(x), _as_2d(y)
    rng = np.random.default_rng(seed)
    stats = np.empty(reps)
    for r in range(reps):
        xs = np.take_along_axis(x, rng.integers(0, x.shape[0], size=x.shape), axis=0)
        ys = np.take_along_axis(y, rng.integers(0, y.shape[0], size=y.shape), axis=0)
        stats[r] = probability_of_improvement(xs, ys)
    alpha = (1.0 - confidence) / 2
    return float(np.quantile(stats, alpha)), float(np.quantile(stats, 1 - alpha))


def summary(scores, baseline=None, *, reps: int = 5000, seed: int = 0) -> dict:
    """``{"iqm", "iqm_ci", "n", "values"}`` and, with a ``baseline``, ``"p_improve"`` and ``"p_improve_ci"``."""
    x = _as_2d(scores)
    out = {"iqm": iqm(x), "iqm_ci": list(stratified_bootstrap_ci(x, reps=reps, seed=seed)), "n": int(x.shape[0]),
           "mean": float(x.mean()), "values": x[:, 0].tolist() if x.shape[1] == 1 else x.tolist()}
    if baseline is not None:
        out["p_improve"] = probability_of_improvement(x, baseline)
        out["p_improve_ci"] = list(probability_of_improvement_ci(x, baseline, reps=min(reps, 2000), seed=seed))
    return out


def ratio_summary(ratios, *, seed: int = 0) -> dict:
    """Median, IQM and the IQM's 95% bootstrap interval of paired ratios (one per seed, or per timed round).

    >>> round(ratio_summary([1.0, 1.2, 1.1, 1.3, 1.4])["iqm_ratio"], 6)
    1.2
    """
    ratios = [float(r) for r in ratios]
    low, high = stratified_bootstrap_ci(ratios, iqm, seed=seed)
    return {"median_ratio": statistics.median(ratios), "iqm_ratio": iqm(ratios), "iqm_ratio_ci": [low, high]}


def expected_best_of_k(select_by, score, k: int) -> float:
    """Expected ``score`` of the run with the largest ``select_by`` among ``k`` runs drawn with replacement.

    Exact, not sampled: with the runs sorted by ``select_by``, the i-th of n (1-based) is the pick with probability
    ``(i / n)**k - ((i - 1) / n)**k``. Tied ``select_by`` values share their probability equally.

    Args:
        select_by: per run, the value the pick maximises (e.g. the eval return).
        score: per run, the value reported for the pick (e.g. the eval success rate).
        k: how many runs each pick looks at.

    >>> expected_best_of_k([1.0, 2.0], [0.0, 1.0], 2)  # the better run is among 2 draws with probability 3/4
    0.75
    """
    sel, val = np.asarray(select_by, dtype=np.float64), np.asarray(score, dtype=np.float64)
    if sel.shape != val.shape or sel.ndim != 1 or sel.size == 0:
        raise ValueError(f"select_by and score must be non-empty 1-d and of one length, got {sel.shape} and {val.shape}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    n = sel.size
    order = np.argsort(sel, kind="stable")
    sel, val = sel[order], val[order]
    rank = np.arange(1, n + 1)
    p = (rank / n) ** k - ((rank - 1) / n) ** k
    # a tie is picked as a block: its total probability, spread evenly over its runs
    _, first, counts = np.unique(sel, return_index=True, return_counts=True)
    block = np.add.reduceat(p, first)
    return float(np.sum(np.repeat(block / counts, counts) * val))
