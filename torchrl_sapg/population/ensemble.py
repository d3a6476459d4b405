"""Moved to :mod:`torchrl_sapg.population.pbt_inprocess.ensemble` and
:mod:`torchrl_sapg.population.pbt_inprocess.recurrent_ensemble` (this alias stays for old imports)."""
from torchrl_sapg.population.pbt_inprocess.ensemble import EnsembleActor, PolicyEnsemble, ensemble_gae  # noqa: F401
from torchrl_sapg.population.pbt_inprocess.recurrent_ensemble import (  # noqa: F401
    RecurrentEnsembleActor,
    RecurrentEnsembleValue,
    RecurrentPolicyEnsemble,
    ensemble_collection_policy,
)

__all__ = [
    "EnsembleActor",
    "PolicyEnsemble",
    "RecurrentEnsembleActor",
    "RecurrentEnsembleValue",
    "RecurrentPolicyEnsemble",
    "ensemble_collection_policy",
    "ensemble_gae",
]
