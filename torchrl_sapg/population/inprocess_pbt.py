"""Moved to :mod:`torchrl_sapg.population.pbt_inprocess.hook` (this alias stays for old imports)."""
from torchrl_sapg.population.pbt_inprocess.hook import InProcessPBT  # noqa: F401

__all__ = ["InProcessPBT"]
