"""In-process DexPBT: M members with stacked parameters in one process (ensemble, learner, hook)."""
from torchrl_sapg.population.pbt_inprocess.ensemble import EnsembleActor, PolicyEnsemble, StackedMembers, ensemble_gae
from torchrl_sapg.population.pbt_inprocess.hook import InProcessPBT
from torchrl_sapg.population.pbt_inprocess.learner import HYPERPARAMETERS, PBTTrainer, PopulationLearner, StackedAdam
from torchrl_sapg.population.pbt_inprocess.recurrent_ensemble import (
    RecurrentEnsembleActor,
    RecurrentEnsembleValue,
    RecurrentPolicyEnsemble,
    ensemble_collection_policy,
)
from torchrl_sapg.population.pbt_inprocess.stacked_ops import stacked_linear, stacked_lstm

__all__ = [
    "HYPERPARAMETERS",
    "EnsembleActor",
    "InProcessPBT",
    "PBTTrainer",
    "PolicyEnsemble",
    "PopulationLearner",
    "RecurrentEnsembleActor",
    "RecurrentEnsembleValue",
    "RecurrentPolicyEnsemble",
    "StackedAdam",
    "StackedMembers",
    "ensemble_collection_policy",
    "ensemble_gae",
    "stacked_linear",
    "stacked_lstm",
]
