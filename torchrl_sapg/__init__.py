"""torchrl-sapg: population-based on-policy RL (SAPG, EPO, DexPBT) as TorchRL parts."""
from torchrl_sapg.collectors import PopulationCollector, prepare_population_env
from torchrl_sapg.envs import PolicyIdTransform, make_env
from torchrl_sapg.modules import (
    LatentConditionedActor,
    LatentConditionedValue,
    ObservationNormalizer,
    PolicyLatents,
    make_actor_critic,
)
from torchrl_sapg.objectives import OffPolicyClipPPOLoss, SAPGLoss
from torchrl_sapg.population import (
    GeneticLatentScheduler,
    GeneticStepReport,
    InProcessPBT,
    PBTMember,
    PBTWorkspace,
    PolicyEnsemble,
)
from torchrl_sapg.trainers import LearningRateSchedule, OnPolicyTrainer

__version__ = "0.1.0"

__all__ = [
    "GeneticLatentScheduler",
    "GeneticStepReport",
    "InProcessPBT",
    "PBTMember",
    "PBTWorkspace",
    "PolicyEnsemble",
    "OffPolicyClipPPOLoss",
    "SAPGLoss",
    "LatentConditionedActor",
    "LatentConditionedValue",
    "LearningRateSchedule",
    "ObservationNormalizer",
    "OnPolicyTrainer",
    "PolicyIdTransform",
    "PolicyLatents",
    "PopulationCollector",
    "make_actor_critic",
    "make_env",
    "prepare_population_env",
]
