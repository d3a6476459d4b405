"""Moved to :mod:`torchrl_sapg.population.pbt_inprocess.learner` (this alias stays for old imports)."""
from torchrl_sapg.population.pbt_inprocess.learner import (  # noqa: F401
    HYPERPARAMETERS,
    PBTTrainer,
    PopulationLearner,
    StackedAdam,
)

__all__ = ["HYPERPARAMETERS", "PBTTrainer", "PopulationLearner", "StackedAdam"]
