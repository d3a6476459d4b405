from torchrl_sapg.trainers.checkpoint import load_checkpoint, save_checkpoint
from torchrl_sapg.trainers.lr_schedule import LearningRateSchedule
from torchrl_sapg.trainers.on_policy import ClippedGradientStepper, OnPolicyTrainer

__all__ = ["ClippedGradientStepper", "LearningRateSchedule", "OnPolicyTrainer", "load_checkpoint", "save_checkpoint"]
