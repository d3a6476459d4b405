from torchrl_sapg.collectors.population import PopulationCollector, prepare_population_env

__all__ = ["PopulationCollector", "prepare_population_env"]
