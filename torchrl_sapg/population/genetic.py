"""Moved to :mod:`torchrl_sapg.population.epo` (this alias module stays for old imports)."""
from torchrl_sapg.population.epo.report import (  # noqa: F401
    SKIP_REASONS,
    STEP_REASONS,
    GeneticStepReport,
    latent_diversity,
)
from torchrl_sapg.population.epo.scheduler import GeneticLatentScheduler  # noqa: F401

__all__ = ["GeneticLatentScheduler", "GeneticStepReport", "SKIP_REASONS", "STEP_REASONS", "latent_diversity"]
