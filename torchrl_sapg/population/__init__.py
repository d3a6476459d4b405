"""Population methods, one sub-package each: EPO (``epo``), in-process DexPBT (``pbt_inprocess``)
and decentralised DexPBT (``pbt_decentralized``), with the shared PBT decisions (``pbt_common``)
and the per-policy fitness window (``fitness``)."""
from torchrl_sapg.population.epo import GeneticLatentScheduler, GeneticStepReport, latent_diversity
from torchrl_sapg.population.fitness import PolicyFitnessWindow
from torchrl_sapg.population.pbt_common import (
    HyperparameterSpec,
    PBTDecision,
    meta_objective,
    mutate_hyperparameters,
    parse_hyperparameter_specs,
    pbt_decision,
)
from torchrl_sapg.population.pbt_decentralized import (
    PBTMember,
    PBTReport,
    PBTWorkspace,
    adopt_checkpoint,
    atomic_write_json,
    get_hyperparameter,
    get_hyperparameters,
    read_record,
    set_hyperparameter,
    set_hyperparameters,
)
from torchrl_sapg.population.pbt_inprocess import (
    EnsembleActor,
    InProcessPBT,
    PBTTrainer,
    PolicyEnsemble,
    PopulationLearner,
    RecurrentEnsembleActor,
    RecurrentEnsembleValue,
    RecurrentPolicyEnsemble,
    StackedAdam,
    ensemble_collection_policy,
    ensemble_gae,
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
    "PolicyFitnessWindow",
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
