"""Population methods: EPO's genetic latent scheduler (and, alongside, DexPBT)."""
from torchrl_sapg.population.genetic import GeneticLatentScheduler, GeneticStepReport, latent_diversity

__all__ = ["GeneticLatentScheduler", "GeneticStepReport", "latent_diversity"]
