"""Shared DexPBT decisions: hyperparameter specs, mutation (Alg. 2), selection (Alg. 1), Eq. 5.

Pure functions of their arguments (plus an explicit ``random.Random``), used by in-process
PBT (:mod:`torchrl_sapg.population.pbt_inprocess`) and decentralised PBT
(:mod:`torchrl_sapg.population.pbt_decentralized`). Paper-to-code map: ``docs/pbt.md``.
"""
from __future__ import annotations

import dataclasses
import importlib
import math
import random
from typing import Any, Callable, Iterable, Literal, Mapping, Sequence

import torch

__all__ = [
    "HyperparameterSpec",
    "KINDS",
    "PBTDecision",
    "as_random",
    "meta_objective",
    "mutate_hyperparameters",
    "parse_hyperparameter_specs",
    "pbt_decision",
    "resolve_callable",
]

Kind = Literal["multiplicative", "discount", "integer"]
KINDS = ("multiplicative", "discount", "integer")

# ---------------------------------------------------------------------------------- specs
def resolve_callable(obj: str | Callable | None, what: str) -> Callable | None:
    """``"package.module:attribute"`` (or ``"package.module.attribute"``) → the object."""
    if obj is None or callable(obj):
        return obj
    if not isinstance(obj, str):
        raise TypeError(f"{what} must be a callable or an import path 'pkg.module:function', got {obj!r}.")
    module_name, sep, attr = obj.partition(":")
    if not sep:
        module_name, _, attr = obj.rpartition(".")
    if not module_name or not attr:
        raise ValueError(f"{what}={obj!r} is not an import path; write 'pkg.module:function'.")
    try:
        target = importlib.import_module(module_name)
        for part in attr.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as err:
        raise ImportError(f"cannot import {what}={obj!r}: {err}") from err
    if not callable(target):
        raise TypeError(f"{what}={obj!r} resolved to a non-callable {type(target).__name__}.")
    return target


@dataclasses.dataclass(frozen=True)
class HyperparameterSpec:
    """How one hyperparameter mutates (Alg. 2) and where it lives on a running trainer.

    Attributes:
        name: the key in the hyperparameter dict. Built-in names (:data:`BUILTIN_HYPERPARAMETERS`)
            and ``"env.<attr path>"`` need no getter/setter; any other name (e.g. a reward
            coefficient of your env, DexPBT's ``alpha_reach``) needs ``setter``.
        kind: ``"multiplicative"`` — multiplied or divided (50/50) by ``mu ~ U(mu_min, mu_max)``;
            ``"discount"`` — the same rule applied to ``1 - x`` (gamma, lambda: "parameters with
            limited scope"); ``"integer"`` — ``x ± 1`` (50/50), e.g. mini-epochs.
        min, max: clamp after mutation (``None``: unbounded; a discount always stays in [0, 1]).
            The reference code clamps clip epsilon to [0.01, 0.3] and mini-epochs to [1, 8].
        prob: this key's mutation probability (``None``: the global ``beta_mut``).
        mu_min, mu_max: this key's perturbation range (``None``: the global one). The reference
            code uses (1.1, 1.2) for discounts.
        setter: ``setter(trainer, value)`` or an import path ``"pkg.module:function"``.
        getter: ``getter(trainer) -> value`` or an import path; without one, a non-built-in
            hyperparameter starts from ``init``.
        init: initial value of a hyperparameter that has no getter.
    """

    name: str
    kind: Kind = "multiplicative"
    min: float | None = None
    max: float | None = None
    prob: float | None = None
    mu_min: float | None = None
    mu_max: float | None = None
    setter: Any = None
    getter: Any = None
    init: float | None = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"hyperparameter {self.name!r}: kind={self.kind!r} is unknown; choose one of {KINDS}.")
        if self.min is not None and self.max is not None and float(self.min) > float(self.max):
            raise ValueError(f"hyperparameter {self.name!r}: min={self.min} > max={self.max}.")
        if self.prob is not None and not 0.0 <= float(self.prob) <= 1.0:
            raise ValueError(f"hyperparameter {self.name!r}: prob={self.prob} is not in [0, 1].")
        lo, hi = self.mu_min, self.mu_max
        if (lo is None) != (hi is None):
            raise ValueError(f"hyperparameter {self.name!r}: give both mu_min and mu_max, or neither.")
        if lo is not None and not 1.0 <= float(lo) <= float(hi):
            raise ValueError(f"hyperparameter {self.name!r}: need 1 <= mu_min <= mu_max, got ({lo}, {hi}).")

    def clamp(self, value: float) -> float:
        if self.min is not None:
            value = max(value, float(self.min))
        if self.max is not None:
            value = min(value, float(self.max))
        return value

    def cast(self, value: Any) -> float | int:
        return int(round(float(value))) if self.kind == "integer" else float(value)


def parse_hyperparameter_specs(specs: Any) -> list[HyperparameterSpec]:
    """Specs from data: a list of dicts (each with ``name``) or a mapping ``name -> dict``.

    A mapping value may also be a bare kind string (``{"gamma": "discount"}``) or ``None``
    (the key is switched off, e.g. ``pbt.hyperparameters.lr=null`` on the command line). A
    mapping none of whose keys is a spec field is a namespace: ``{"env": {"cfg": {"alpha": {...}}}}``
    declares ``"env.cfg.alpha"`` (what Hydra makes of ``+pbt.hyperparameters.env.cfg.alpha={...}``).
    Hydra / OmegaConf containers work as they are.

    Examples:
        >>> specs = parse_hyperparameter_specs({"gamma": "discount", "num_epochs": {"kind": "integer", "min": 1, "max": 8}})
        >>> [(s.name, s.kind, s.max) for s in specs]
        [('gamma', 'discount', None), ('num_epochs', 'integer', 8)]
        >>> parse_hyperparameter_specs({"env": {"cfg": {"alpha_reach": {"kind": "multiplicative"}}}})[0].name
        'env.cfg.alpha_reach'
    """
    if specs is None:
        return []
    out: list[HyperparameterSpec] = []
    fields = {f.name for f in dataclasses.fields(HyperparameterSpec)}

    def flatten(mapping: Mapping, prefix: str) -> list:
        items = []
        for name, value in mapping.items():
            name = f"{prefix}{name}"
            if value is None:
                continue
            if isinstance(value, HyperparameterSpec):
                items.append(value)
            elif isinstance(value, str):
                items.append({"name": name, "kind": value})
            elif isinstance(value, Mapping):
                d = {str(k): v for k, v in value.items()}
                if d and not set(d) & fields:  # a namespace: env: {cfg: {alpha: {...}}} -> "env.cfg.alpha"
                    items.extend(flatten(d, f"{name}."))
                    continue
                d.setdefault("name", name)
                items.append(d)
            else:
                raise TypeError(f"hyperparameter {name!r}: expected a dict or a kind string, got {value!r}.")
        return items

    items = flatten(specs, "") if isinstance(specs, Mapping) else list(specs)
    names = set()
    for item in items:
        if isinstance(item, HyperparameterSpec):
            spec = item
        elif isinstance(item, Mapping):
            d = {str(k): v for k, v in item.items()}
            if "name" not in d:
                raise ValueError(f"hyperparameter spec {d!r} has no 'name'.")
            unknown = set(d) - {f.name for f in dataclasses.fields(HyperparameterSpec)}
            if unknown:
                raise ValueError(f"hyperparameter {d['name']!r}: unknown fields {sorted(unknown)}.")
            spec = HyperparameterSpec(**d)
        else:
            raise TypeError(f"a hyperparameter spec must be a dict or HyperparameterSpec, got {item!r}.")
        if spec.name in names:
            raise ValueError(f"hyperparameter {spec.name!r} is declared twice.")
        names.add(spec.name)
        out.append(spec)
    return out


# ---------------------------------------------------------------------------------- mutation
def as_random(generator: random.Random | int | None) -> random.Random:
    if isinstance(generator, random.Random):
        return generator
    if generator is None:
        raise ValueError("pass generator=random.Random(seed) (or an int seed): mutations must be reproducible.")
    return random.Random(int(generator))


def mutate_hyperparameters(
    params: Mapping[str, float | int],
    specs: Iterable[HyperparameterSpec] | Any,
    *,
    prob: float = 0.2,
    generator: random.Random | int,
    mu_min: float = 1.1,
    mu_max: float = 1.5,
) -> dict[str, float | int]:
    """Alg. 2 (MUTATE): a mutated copy of ``params``; keys without a spec are copied unchanged.

    For each spec, in order, with the draws from ``generator`` in this order:

    * ``z_mut = U(0, 1)``; nothing happens unless ``z_mut < prob`` (beta_mut; paper 0.2,
      reference code 0.15; a spec's own ``prob`` overrides it);
    * ``"multiplicative"``: ``mu = U(mu_min, mu_max)``, ``z_dir = U(0, 1)``;
      ``x * mu`` if ``z_dir < 0.5`` else ``x / mu``;
    * ``"discount"``: the same on ``1 - x``: ``x' = 1 - (1 - x)·mu^{±1}`` (so gamma = 0.99 moves
      to 1 - 0.01·mu^{±1}, never past 1);
    * ``"integer"``: ``z_dir = U(0, 1)``; ``x + 1`` if ``z_dir < 0.5`` else ``x - 1``;
    * then the result is clamped to ``[spec.min, spec.max]``.

    A multiplicative value of exactly 0 stays 0 (use a small positive start to let PBT turn
    a term on).

    Args:
        params: current values (``{name: value}``); every spec'd name must be present.
        specs: :class:`HyperparameterSpec` s or data for :func:`parse_hyperparameter_specs`.
        prob: beta_mut.
        generator: a ``random.Random`` (or an int seed for a fresh one).
        mu_min, mu_max: the perturbation range (Table III: 1.1, 1.5).

    Examples:
        >>> import random
        >>> specs = [HyperparameterSpec("lr"), HyperparameterSpec("gamma", "discount"),
        ...          HyperparameterSpec("num_epochs", "integer", min=1, max=8)]
        >>> new = mutate_hyperparameters({"lr": 1e-3, "gamma": 0.99, "num_epochs": 8, "seed": 3}, specs,
        ...                              prob=1.0, generator=random.Random(0))
        >>> new["seed"], new["num_epochs"] in (7, 8)   # 8 + 1 is clamped to 8
        (3, True)
        >>> 1e-3 / 1.5 <= new["lr"] <= 1e-3 * 1.5 and 0.985 <= new["gamma"] <= 0.9934
        True
    """
    if not isinstance(specs, (list, tuple)) or (specs and not isinstance(specs[0], HyperparameterSpec)):
        specs = parse_hyperparameter_specs(specs)
    if not 0.0 <= float(prob) <= 1.0:
        raise ValueError(f"prob must be in [0, 1], got {prob}.")
    if not 1.0 <= float(mu_min) <= float(mu_max):
        raise ValueError(f"need 1 <= mu_min <= mu_max, got ({mu_min}, {mu_max}).")
    g = as_random(generator)
    out = dict(params)
    for spec in specs:
        if spec.name not in params:
            raise KeyError(
                f"hyperparameter {spec.name!r} has a mutation spec but no value in {sorted(params)}; "
                "pass every spec'd hyperparameter."
            )
        x = params[spec.name]
        p = float(prob if spec.prob is None else spec.prob)
        if not g.random() < p:
            continue
        if spec.kind == "integer":
            x = int(round(float(x)))
            new: float = x + 1 if g.random() < 0.5 else x - 1
            out[spec.name] = int(round(spec.clamp(new)))
            continue
        lo = float(mu_min if spec.mu_min is None else spec.mu_min)
        hi = float(mu_max if spec.mu_max is None else spec.mu_max)
        mu = g.uniform(lo, hi)
        up = g.random() < 0.5
        if spec.kind == "multiplicative":
            new = float(x) * mu if up else float(x) / mu
        else:  # discount: mutate the distance to 1
            inv = 1.0 - float(x)
            inv = inv * mu if up else inv / mu
            new = min(max(1.0 - inv, 0.0), 1.0)
        out[spec.name] = spec.clamp(new)
    return out


# ---------------------------------------------------------------------------------- objective
def meta_objective(eps, eps0, eps_star, n_succ):
    """DexPBT's Eq. 5: the tolerance-curriculum meta-objective.

    ``(eps0 - eps) / (eps0 - eps_star) + 0.01 · n_succ`` while ``eps > eps_star`` (dominated by
    the curriculum progress in [0, 1]), else ``1 + n_succ``. Works on floats or tensors
    (elementwise).

    Args:
        eps: the member's current success tolerance.
        eps0: the initial tolerance (paper: 7.5 cm).
        eps_star: the final tolerance (paper: 1 cm).
        n_succ: consecutive successes (per episode, averaged).

    Examples:
        >>> meta_objective(0.075, 0.075, 0.01, 3.0)   # at the start: only the success term
        0.03
        >>> round(meta_objective(0.0425, 0.075, 0.01, 0.0), 6)   # halfway through the curriculum
        0.5
        >>> meta_objective(0.01, 0.075, 0.01, 12.0)   # tolerance reached: 1 + N_succ
        13.0
    """
    if any(torch.is_tensor(v) for v in (eps, eps0, eps_star, n_succ)):
        eps, n_succ = torch.as_tensor(eps), torch.as_tensor(n_succ)
        eps0, eps_star = torch.as_tensor(eps0), torch.as_tensor(eps_star)
        if bool(torch.any(eps0 <= eps_star)):
            raise ValueError("meta_objective needs eps0 > eps_star.")
        progress = (eps0 - eps) / (eps0 - eps_star) + 0.01 * n_succ
        return torch.where(eps > eps_star, progress, 1.0 + n_succ)
    if not float(eps0) > float(eps_star):
        raise ValueError(f"meta_objective needs eps0 > eps_star, got eps0={eps0}, eps_star={eps_star}.")
    if float(eps) > float(eps_star):
        return (float(eps0) - float(eps)) / (float(eps0) - float(eps_star)) + 0.01 * float(n_succ)
    return 1.0 + float(n_succ)


# ---------------------------------------------------------------------------------- selection
@dataclasses.dataclass
class PBTDecision:
    """What :func:`pbt_decision` decided for one member.

    Attributes:
        action: ``"continue"`` (keep weights and hyperparameters), ``"mutate"`` (keep weights,
            mutate own hyperparameters) or ``"replace"`` (load ``source``'s weights, take a
            mutated copy of ``hyperparameters_from``'s hyperparameters).
        group: ``"top"``, ``"middle"`` or ``"bottom"``.
        reason: why: ``"top"``, ``"middle"``, ``"bottom"`` (the paper's rule), ``"gap"`` (the
            reference rule replaced), ``"small_gap"`` (reference: too close to the candidate,
            own hyperparameters mutated), ``"no_better_top"`` (no top member with a strictly
            better objective), ``"not_enough_members"`` (fewer known objectives than
            ``min_known``).
        source: the member whose weights are loaded (``"replace"`` only).
        hyperparameters_from: whose hyperparameters are mutated (own id for ``"mutate"``).
        rank: 0-based rank of the member (ties share the better rank; missing objectives
            share the last one).
        ranking: member ids, best first (ties by id).
        num_members, num_top, num_bottom, num_known: population size, group sizes, number of
            members with a known objective.
        objective: the member's own objective; ``source_objective``: the source's.
        gap, sigma, threshold: the reference rule's quantities (NaN when unused).
    """

    action: Literal["continue", "mutate", "replace"]
    group: Literal["top", "middle", "bottom"]
    reason: str
    source: int | None
    hyperparameters_from: int | None
    rank: int
    ranking: list[int]
    num_members: int
    num_top: int
    num_bottom: int
    num_known: int
    objective: float | None
    source_objective: float | None = None
    gap: float = float("nan")
    sigma: float = float("nan")
    threshold: float = float("nan")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _clean(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _population_std(values: Sequence[float]) -> float:
    if len(values) == 0:
        return float("nan")
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))


def pbt_decision(
    own_id: int,
    objectives: Mapping[int, float | None],
    *,
    selection: Literal["paper", "reference"] = "paper",
    top_fraction: float = 0.3,
    bottom_fraction: float | None = None,
    mutate_middle: bool | None = None,
    gap_rule: bool | None = None,
    gap_sigma: float = 0.5,
    gap_abs: float = 0.05,
    sigma_drop_worst: float = 0.2,
    min_known: int | None = None,
    coin_hyperparameters: bool | None = None,
    generator: random.Random | int | None = None,
) -> PBTDecision:
    """Alg. 1, lines 5-12, for one member: rank the population and choose its action.

    Ranking, the paper's 30/40/30 rule and the reference code's gap rule: ``docs/pbt.md``.

    Args:
        own_id: this member's id (a key of ``objectives``).
        objectives: every member's objective, higher is better; ``None``/NaN/inf rank last.
        selection: ``"paper"`` (Table III) or ``"reference"`` (isaacgymenvs/rl_games).
        top_fraction: share of members in the top group (``ceil(top_fraction * P)``).
        bottom_fraction: share in the bottom group (paper 0.3, reference 0.125; ``None``: the mode's).
        mutate_middle: the middle group mutates its own hyperparameters (paper: yes).
        gap_rule: a bottom member replaces only past the gap threshold (reference: yes).
        gap_sigma: gap threshold, in population standard deviations.
        gap_abs: gap threshold, relative to ``|objective|`` of the candidate.
        sigma_drop_worst: share of worst objectives left out of the standard deviation.
        min_known: no action below this many known objectives (reference: ``max(2, P // 2) + 1``).
        coin_hyperparameters: after a replacement, a coin picks whose hyperparameters mutate.
        generator: draws the top candidate (``randrange``), then the coin, in that order.

    Examples:
        >>> import random
        >>> objs = {0: 9.0, 1: 1.0, 2: 5.0, 3: None, 4: 7.0, 5: 6.0, 6: 2.0, 7: 8.0, 8: 3.0, 9: 4.0}
        >>> d = pbt_decision(1, objs, generator=random.Random(0))   # ranks 10 members: 3 / 4 / 3
        >>> d.group, d.action, d.source in (0, 7, 4)
        ('bottom', 'replace', True)
        >>> pbt_decision(2, objs, generator=random.Random(0)).action, pbt_decision(0, objs, generator=0).action
        ('mutate', 'continue')
    """
    if selection not in ("paper", "reference"):
        raise ValueError(f"selection={selection!r}: choose 'paper' or 'reference'.")
    paper = selection == "paper"
    bottom_fraction, mutate_middle, gap_rule, coin_hyperparameters = _mode_defaults(
        paper, bottom_fraction, mutate_middle, gap_rule, coin_hyperparameters)
    for name, value in (("top_fraction", top_fraction), ("bottom_fraction", bottom_fraction)):
        if not 0.0 <= float(value) <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {value}.")
    if own_id not in objectives:
        raise KeyError(f"own_id={own_id} is not in the objectives {sorted(objectives)}; include your own objective.")
    g = as_random(generator) if generator is not None else random.Random()
    objs = {int(m): _clean(v) for m, v in objectives.items()}
    P = len(objs)
    known = {m: v for m, v in objs.items() if v is not None}
    if min_known is None:
        min_known = 0 if paper else max(2, P // 2) + 1
    num_top = min(P, math.ceil(float(top_fraction) * P - 1e-9))
    num_bottom = min(P - num_top, math.ceil(float(bottom_fraction) * P - 1e-9))
    ranks = {m: (P - 1 if v is None else sum(1 for u in known.values() if u > v)) for m, v in objs.items()}
    ranking = sorted(objs, key=lambda m: (ranks[m], m))
    own_rank = ranks[own_id]
    group = "top" if own_rank < num_top else ("bottom" if own_rank >= P - num_bottom else "middle")
    base = dict(group=group, rank=own_rank, ranking=ranking, num_members=P, num_top=num_top,
                num_bottom=num_bottom, num_known=len(known), objective=objs[own_id])

    if len(known) < min_known:
        return PBTDecision(action="continue", reason="not_enough_members", source=None, hyperparameters_from=None, **base)
    if group == "top":
        return PBTDecision(action="continue", reason="top", source=None, hyperparameters_from=None, **base)
    if group == "middle":
        if mutate_middle:
            return PBTDecision(action="mutate", reason="middle", source=None, hyperparameters_from=own_id, **base)
        return PBTDecision(action="continue", reason="middle", source=None, hyperparameters_from=None, **base)
    return _bottom_decision(own_id, objs, ranks, ranking, base, g, gap_rule=gap_rule, gap_sigma=gap_sigma,
                            gap_abs=gap_abs, sigma_drop_worst=sigma_drop_worst,
                            coin_hyperparameters=coin_hyperparameters)


def _mode_defaults(paper: bool, bottom_fraction, mutate_middle, gap_rule, coin_hyperparameters) -> tuple:
    """The selected mode's value for every option left at ``None``."""
    return (
        (0.3 if paper else 0.125) if bottom_fraction is None else bottom_fraction,
        paper if mutate_middle is None else mutate_middle,
        (not paper) if gap_rule is None else gap_rule,
        (not paper) if coin_hyperparameters is None else coin_hyperparameters,
    )


def _bottom_decision(own_id, objs, ranks, ranking, base, g, *, gap_rule, gap_sigma, gap_abs, sigma_drop_worst,
                     coin_hyperparameters) -> PBTDecision:
    """A bottom member: replace with a random better top member (past the gap rule, if on)."""
    num_top, own_obj = base["num_top"], base["objective"]
    candidates = [m for m in ranking if ranks[m] < num_top and m != own_id and objs[m] is not None
                  and (own_obj is None or objs[m] > own_obj)]
    if not candidates:
        return PBTDecision(action="continue", reason="no_better_top", source=None, hyperparameters_from=None, **base)
    source = candidates[g.randrange(len(candidates))]
    src_obj = objs[source]
    if not gap_rule:
        return PBTDecision(action="replace", reason="bottom", source=source, hyperparameters_from=source,
                           source_objective=src_obj, **base)
    values = sorted(v for v in objs.values() if v is not None)
    drop = int(math.floor(float(sigma_drop_worst) * len(values)))
    sigma = _population_std(values[drop:] if len(values) > drop else values)
    gap = math.inf if own_obj is None else src_obj - own_obj
    threshold = max(float(gap_sigma) * sigma, float(gap_abs) * abs(src_obj))
    if gap > float(gap_sigma) * sigma and gap > float(gap_abs) * abs(src_obj):
        hp_from = source
        if coin_hyperparameters and g.random() >= 0.5:
            hp_from = own_id
        return PBTDecision(action="replace", reason="gap", source=source, hyperparameters_from=hp_from,
                           source_objective=src_obj, gap=gap, sigma=sigma, threshold=threshold, **base)
    return PBTDecision(action="mutate", reason="small_gap", source=None, hyperparameters_from=own_id,
                       source_objective=src_obj, gap=gap, sigma=sigma, threshold=threshold, **base)
