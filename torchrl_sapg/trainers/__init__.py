from torchrl_sapg.trainers.checkpoint import load_checkpoint, save_checkpoint
from torchrl_sapg.trainers.distributed import DistributedSync, init_distributed, rank_seed
from torchrl_sapg.trainers.lr_schedule import LearningRateSchedule
from torchrl_sapg.trainers.on_policy import ClippedGradientStepper, OnPolicyTrainer

__all__ = [
    "ClippedGradientStepper",
    "DistributedSync",
    "LearningRateSchedule",
    "OnPolicyTrainer",
    "init_distributed",
    "load_checkpoint",
    "rank_seed",
    "save_checkpoint",
]
