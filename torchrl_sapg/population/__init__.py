"""Population methods: EPO's genetic latent scheduler and DexPBT (decentralised and in-process)."""
from torchrl_sapg.population.ensemble import (
    EnsembleActor,
    PolicyEnsemble,
    RecurrentEnsembleActor,
    RecurrentEnsembleValue,
    RecurrentPolicyEnsemble,
    ensemble_collection_policy,
    ensemble_gae,
)
from torchrl_sapg.population.genetic import GeneticLatentScheduler, GeneticStepReport, latent_diversity
from torchrl_sapg.population.inprocess import PBTTrainer, PopulationLearner, StackedAdam
from torchrl_sapg.population.inprocess_pbt import InProcessPBT
from torchrl_sapg.population.pbt import (
    HyperparameterSpec,
    PBTDecision,
    get_hyperparameter,
    get_hyperparameters,
    meta_objective,
    mutate_hyperparameters,
    parse_hyperparameter_specs,
    pbt_decision,
    set_hyperparameter,
    set_hyperparameters,
)
from torchrl_sapg.population.workspace import (
    PBTMember,
    PBTReport,
    PBTWorkspace,
    adopt_checkpoint,
    atomic_write_json,
    read_record,
)

__all__ = [
    "EnsembleActor",
    "GeneticLatentScheduler",
    "GeneticStepReport",
    "HyperparameterSpec",
    "InProcessPBT",
    "PBTDecision",
    "PBTMember",
    "PBTReport",
    "PBTTrainer",
    "PBTWorkspace",
    "PolicyEnsemble",
    "PopulationLearner",
    "RecurrentEnsembleActor",
    "RecurrentEnsembleValue",
    "RecurrentPolicyEnsemble",
    "StackedAdam",
    "adopt_checkpoint",
    "atomic_write_json",
    "ensemble_collection_policy",
    "ensemble_gae",
    "get_hyperparameter",
    "get_hyperparameters",
    "latent_diversity",
    "meta_objective",
    "mutate_hyperparameters",
    "parse_hyperparameter_specs",
    "pbt_decision",
    "read_record",
    "set_hyperparameter",
    "set_hyperparameters",
]
