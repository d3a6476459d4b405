"""Pick a TorchRL logger by name."""
from __future__ import annotations

import os

from torchrl.record.loggers import CSVLogger, Logger, TensorboardLogger


def make_logger(backend: str, run_dir: str, *, exp_name: str = "run", project: str = "torchrl-sapg", offline: bool = True) -> Logger | None:
    """A TorchRL logger writing under ``run_dir``: ``"csv"``, ``"wandb"``, ``"tensorboard"`` or ``"none"``.

    ``wandb`` runs offline by default (no network needed; ``wandb sync`` uploads later).

    Examples:
        >>> import tempfile
        >>> logger = make_logger("csv", tempfile.mkdtemp())
        >>> logger.log_scalar("train/fps", 1.0, step=0)
    """
    backend = backend.lower()
    if backend == "none":
        return None
    if backend == "csv":
        return CSVLogger(exp_name=exp_name, log_dir=run_dir)
    if backend == "tensorboard":
        return TensorboardLogger(exp_name=exp_name, log_dir=run_dir)
    if backend == "wandb":
        from torchrl.record.loggers.wandb import WandbLogger

        os.environ.setdefault("WANDB_SILENT", "true")
        return WandbLogger(exp_name=exp_name, offline=offline, save_dir=run_dir, project=project)
    raise ValueError(f"logger backend={backend!r} is unknown; choose csv, wandb, tensorboard or none.")
