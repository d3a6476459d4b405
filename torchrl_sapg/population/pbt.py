"""Moved to :mod:`torchrl_sapg.population.pbt_common` (mutation, selection) and
:mod:`torchrl_sapg.population.pbt_decentralized.hyperparameters` (live hyperparameters)."""
from torchrl_sapg.population.pbt_common import (  # noqa: F401
    HyperparameterSpec,
    PBTDecision,
    meta_objective,
    mutate_hyperparameters,
    parse_hyperparameter_specs,
    pbt_decision,
)
from torchrl_sapg.population.pbt_decentralized.hyperparameters import (  # noqa: F401
    BUILTIN_HYPERPARAMETERS,
    get_hyperparameter,
    get_hyperparameters,
    set_hyperparameter,
    set_hyperparameters,
)

__all__ = [
    "BUILTIN_HYPERPARAMETERS",
    "HyperparameterSpec",
    "PBTDecision",
    "get_hyperparameter",
    "get_hyperparameters",
    "meta_objective",
    "mutate_hyperparameters",
    "parse_hyperparameter_specs",
    "pbt_decision",
    "set_hyperparameter",
    "set_hyperparameters",
]
