"""Value targets of ``[N, T]`` rollouts that TorchRL's estimators do not provide: SAPG's n-step return (Eq. 5)
and V-trace(lambda) over relabelled rows, pure functions of tensors like ``torchrl.objectives.value.functional``;
the budget TorchRL's single-call GAE needs to stay exact (``shifted_budget``, ``estimate_values``); and
``V(s)`` with ``V(s')`` of rollouts from one critic call (``bootstrap_steps``, ``values_and_next``).
"""
from __future__ import annotations

from typing import Callable

import torch
from tensordict import TensorDictBase
from tensordict.utils import NestedKey

__all__ = ["bootstrap_steps", "estimate_values", "n_step_return", "shifted_budget", "values_and_next",
           "vtrace_lambda_target"]


def n_step_return(
    reward: torch.Tensor,
    next_value: torch.Tensor,
    done: torch.Tensor,
    terminated: torch.Tensor,
    gamma: float,
    n: int,
) -> torch.Tensor:
    """n-step value targets over ``[N, T]`` rollouts (SAPG Eq. 5, n = 3 in the paper).

    ``G_t = sum_{k<n'} gamma^k r_{t+k} + gamma^{n'} V(s'_{t+n'-1}) (1 - terminated_{t+n'-1})`` where
    ``n' <= n`` stops early at an episode end (done) or at the rollout's last step, and ``V(s')``
    is the value of the recorded next state (so truncated episodes still bootstrap).
    All inputs are ``[N, T]`` (or ``[N, T, 1]``); no Python loop over envs or time steps.

    Examples:
        >>> r = torch.ones(1, 4); v = torch.zeros(1, 4); d = torch.zeros(1, 4, dtype=torch.bool)
        >>> n_step_return(r, v, d, d, gamma=0.5, n=3)
        tensor([[1.7500, 1.7500, 1.5000, 1.0000]])
    """
    shape = reward.shape
    r = reward.reshape(shape[0], shape[1]).to(next_value.dtype)
    v = next_value.reshape(r.shape)
    d = done.reshape(r.shape).to(r.dtype)
    term = terminated.reshape(r.shape).to(r.dtype)
    T = r.shape[1]
    t = torch.arange(T, device=r.device)
    out = torch.zeros_like(r)
    alive = torch.ones_like(r)
    disc = 1.0
    for k in range(n):
        idx = (t + k).clamp_max(T - 1)
        valid = (t + k < T).to(r.dtype)
        last = ((t + k == T - 1) | torch.tensor(k == n - 1, device=r.device)).to(r.dtype)
        r_k, d_k, term_k, v_k = r[:, idx], d[:, idx], term[:, idx], v[:, idx]
        live = alive * valid
        out = out + live * disc * r_k
        stop = live * torch.clamp(d_k + last, max=1.0)
        out = out + stop * disc * gamma * v_k * (1.0 - term_k)
        alive = live * (1.0 - d_k) * (1.0 - last)
        disc *= gamma
    return out.reshape(shape)


def shifted_budget(batch: TensorDictBase, done_key: NestedKey = ("next", "done"),
                   terminated_key: NestedKey = ("next", "terminated")) -> int:
    """The smallest ``shifted_budget`` with which TorchRL's ``GAE(shifted=True)`` keeps every step of
    ``batch`` (no ``"shifted_valid"`` step set to ``False``): one slot for a row's last next state,
    plus one per truncation (``done & ~terminated``) before the last step of the row.

    The single-call path evaluates ``V`` once on ``T + shifted_budget`` states per row instead of
    twice on ``T``; with this budget its values are those of the two-call path. One host sync.
    The time dim is the one named ``"time"``, else the last (TorchRL's convention).

    Args:
        batch: rollouts, e.g. ``[N, T]``, with the two entries below.
        done_key: the episode ends (without it, the budget is 1).
        terminated_key: the ends that do not bootstrap (missing: every end terminates).

    Examples:
        >>> from tensordict import TensorDict
        >>> done = torch.tensor([[False, True, False, True], [True, False, True, False]]).unsqueeze(-1)
        >>> terminated = torch.tensor([[False, False, False, True], [False] * 4]).unsqueeze(-1)
        >>> shifted_budget(TensorDict({"next": {"done": done, "terminated": terminated}}, [2, 4]))
        3
    """
    done = batch.get(done_key, None)
    if done is None or batch.ndim == 0:
        return 1
    terminated = batch.get(terminated_key, done)
    if done.shape != terminated.shape:  # e.g. [N, T, 1] against [N, T] would broadcast to [N, T, T]
        raise ValueError(f"shifted_budget: {done_key} {tuple(done.shape)} and {terminated_key} "
                         f"{tuple(terminated.shape)} differ in shape; give both the same shape (e.g. [N, T, 1]).")
    truncated = done.to(torch.bool) & ~terminated.to(torch.bool)
    truncated = truncated.reshape(*batch.batch_size, -1).any(-1)  # an entry's own trailing dims (e.g. [..., 1])
    time_dim = batch.names.index("time") if "time" in batch.names else batch.ndim - 1
    truncated = truncated.movedim(time_dim, -1).reshape(-1, batch.shape[time_dim])  # [rows, T]
    return 1 + int(truncated[:, :-1].sum(1).max()) if truncated.numel() else 1


def estimate_values(estimator: Callable[[TensorDictBase], TensorDictBase | None],
                    batch: TensorDictBase) -> TensorDictBase:
    """``estimator(batch)``; a TorchRL estimator with ``shifted=True`` first gets the batch's exact
    :func:`shifted_budget`, so its single critic call keeps every step (no ``"shifted_valid"`` left).

    Args:
        estimator: a value estimator (TorchRL's ``GAE``...) that writes advantages into ``batch``.
        batch: ``[N, T]`` rollouts with the estimator's ``("next", done)`` and ``("next", terminated)``.

    Examples:
        >>> from tensordict import TensorDict
        >>> from tensordict.nn import TensorDictModule
        >>> from torchrl.objectives.value import GAE
        >>> critic = TensorDictModule(torch.nn.Linear(3, 1), ["observation"], ["state_value"])
        >>> done = torch.zeros(2, 5, 1, dtype=torch.bool); done[:, 1] = True
        >>> batch = TensorDict({"observation": torch.randn(2, 5, 3), "next": {"observation": torch.randn(2, 5, 3),
        ...     "reward": torch.randn(2, 5, 1), "done": done, "terminated": torch.zeros_like(done)}}, [2, 5])
        >>> gae = GAE(gamma=0.99, lmbda=0.95, value_network=critic, shifted=True)
        >>> out = estimate_values(gae, batch)
        >>> gae.shifted_budget, "shifted_valid" in out.keys()
        (2, False)
    """
    if getattr(estimator, "shifted", False) and hasattr(estimator, "shifted_budget"):
        keys = estimator.tensor_keys
        estimator.shifted_budget = shifted_budget(batch, ("next", keys.done), ("next", keys.terminated))
    out = estimator(batch)
    out = batch if out is None else out
    out.pop("shifted_valid", None)  # all True with that budget
    return out


def bootstrap_steps(done: torch.Tensor) -> torch.Tensor:
    """Per row of ``[R, T]`` rollouts, the steps whose recorded next state ``s'_t`` a value target reads
    (every episode end and the last step; elsewhere ``s'_t = s_{t+1}``), in time order, padded with the
    last step to the largest count over rows. One host sync (that count).

    Args:
        done: bool ``[R, T]`` (or ``[R, T, 1]``) episode ends.

    Examples:
        >>> bootstrap_steps(torch.tensor([[False, True, False, False], [False] * 4]))
        tensor([[1, 3],
                [3, 3]])
    """
    return _steps_of(_ends_and_last(done))


def _ends_and_last(done: torch.Tensor) -> torch.Tensor:
    """Bool ``[R, T]``: the episode ends of ``done`` (``[R, T]`` or ``[R, T, 1]``) and every row's last step."""
    if done.dim() < 2 or done.numel() != done.shape[0] * done.shape[1]:
        raise ValueError(f"done must hold one flag per step, shaped [R, T] or [R, T, 1]; got {tuple(done.shape)}. "
                         "Pass the rollouts' ('next', 'done') entry of an [R, T] batch.")
    ends = done.reshape(done.shape[0], done.shape[1]).to(torch.bool).clone()
    ends[:, -1] = True
    return ends


def _steps_of(ends: torch.Tensor) -> torch.Tensor:
    last = ends.shape[1] - 1
    steps = torch.where(ends, torch.arange(last + 1, device=ends.device), last).sort(dim=1).values
    return steps[:, : int(ends.sum(1).max())]  # the host sync


def values_and_next(value_fn: Callable, current, following, done: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``V(s_t)`` and ``V(s'_t)`` of ``[R, T]`` rollouts from one call of ``value_fn`` on ``T + B`` states per row
    (``B`` the :func:`bootstrap_steps`) instead of two calls on ``T``: inside an episode ``V(s'_t) = V(s_{t+1})``.
    The values are those of ``value_fn`` on ``current`` and on ``following``, every step included. For feed-forward
    critics only: a recurrent one would read the appended next states as a continuation of the row.

    Args:
        value_fn: ``[R, T', ...]`` inputs (tensor or TensorDict) to ``[R, T', ...]`` values.
        current: the states ``s_t``, ``[R, T, ...]``.
        following: the recorded next states ``s'_t``, like ``current``.
        done: bool ``[R, T]`` (or ``[R, T, 1]``) episode ends.

    Examples:
        >>> obs, nxt = torch.randn(2, 5, 3), torch.randn(2, 5, 3)
        >>> done = torch.zeros(2, 5, dtype=torch.bool); done[0, 1] = True
        >>> nxt[:, :-1] = torch.where(done[:, :-1, None], nxt[:, :-1], obs[:, 1:])  # s' = s_{t+1} inside episodes
        >>> critic = torch.nn.Linear(3, 1)
        >>> v, nv = values_and_next(critic, obs, nxt, done)
        >>> torch.allclose(v, critic(obs)), torch.allclose(nv, critic(nxt))
        (True, True)
    """
    ends = _ends_and_last(done)
    steps = _steps_of(ends)  # [R, B], bootstrap_steps(done)
    rows, t = ends.shape
    both = value_fn(torch.cat([current, following[torch.arange(rows, device=steps.device).unsqueeze(1), steps]], dim=1))
    value, boot = both[:, :t], both[:, t:]
    slot = (ends.cumsum(1) - 1).clamp_min(0)  # an end's position in its row's steps (the padding is never read)
    slot = slot.reshape(*slot.shape, *(1,) * (value.dim() - 2)).expand(rows, t, *value.shape[2:])
    shifted = torch.cat([value[:, 1:], value[:, -1:]], dim=1)
    return value, torch.where(ends.reshape(*ends.shape, *(1,) * (value.dim() - 2)), boot.gather(1, slot), shifted)


def vtrace_lambda_target(
    gamma: float,
    lmbda: float,
    log_rho: torch.Tensor,
    value: torch.Tensor,
    next_value: torch.Tensor,
    reward: torch.Tensor,
    done: torch.Tensor,
    terminated: torch.Tensor,
) -> torch.Tensor:
    """V-trace targets over ``[N, T]`` rows with lambda-scaled traces (IMPALA, Espeholt et al.
    2018, Sec. 4.1 and its remark on ``c_i = lambda·min(c_bar, rho_i)``), ``rho_bar = c_bar = 1``:

    ``v_t = V(s_t) + sum_{k>=t} gamma^(k-t) (prod_{t<=i<k} c_i) min(1, rho_k) delta_k`` with
    ``delta_k = r_k + gamma·V(s'_k)·(1 - terminated_k) - V(s_k)``, the sum stopping at episode
    ends (``done``) and at the rollout's last step. ``lmbda = 1`` is TorchRL's
    ``vtrace_advantage_estimate`` (which has no lambda); on-policy (``rho = 1``) ``v_t - V(s_t)`` is
    GAE(lambda). One reverse scan over ``T`` in batched ops; ``log_rho = log pi_target - log pi_behaviour``.

    Examples:
        >>> z = torch.zeros(1, 3); d = torch.zeros(1, 3, dtype=torch.bool)
        >>> vtrace_lambda_target(0.5, 1.0, z, z, z, torch.ones(1, 3), d, d)
        tensor([[1.7500, 1.5000, 1.0000]])
        >>> vtrace_lambda_target(0.5, 0.0, z, z, z, torch.ones(1, 3), d, d)  # lambda = 0: one-step
        tensor([[1., 1., 1.]])
    """
    rho = log_rho.exp()
    not_done = (~done.to(torch.bool)).to(value.dtype)
    not_term = (~terminated.to(torch.bool)).to(value.dtype)
    delta = rho.clamp_max(1.0) * (reward + gamma * not_term * next_value - value)
    decay = gamma * lmbda * rho.clamp_max(1.0) * not_done
    acc = torch.zeros_like(value[:, 0])
    out = torch.empty_like(value)
    for t in range(value.shape[1] - 1, -1, -1):
        acc = delta[:, t] + decay[:, t] * acc
        out[:, t] = acc
    return value + out
