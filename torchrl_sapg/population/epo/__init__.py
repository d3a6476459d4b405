"""EPO: the genetic scheduler over the population's latent genes."""
from torchrl_sapg.population.epo.report import SKIP_REASONS, STEP_REASONS, GeneticStepReport, latent_diversity
from torchrl_sapg.population.epo.scheduler import GeneticLatentScheduler

__all__ = ["GeneticLatentScheduler", "GeneticStepReport", "SKIP_REASONS", "STEP_REASONS", "latent_diversity"]
