"""Pick a TorchRL logger by name."""
from __future__ import annotations

import importlib
import os

from torchrl.record.loggers import CSVLogger, Logger, TensorboardLogger

#: the logger backends :func:`make_logger` knows
LOGGER_BACKENDS = ("csv", "wandb", "tensorboard", "none")

#: backend -> (modules it imports, install command)
_BACKEND_NEEDS = {
    "wandb": (("wandb",), 'pip install wandb (or pip install "torchrl-sapg[wandb]")'),
    "tensorboard": (("tensorboard", "torch.utils.tensorboard"), 'pip install tensorboard (or pip install "torchrl-sapg[tensorboard]")'),
}


def check_logger_backend(backend: str, *, option: str = "logger backend") -> str:
    """Return ``backend`` lower-cased if it is known and its package imports; else raise one clear line.

    Unknown names raise a ``ValueError``; ``"wandb"`` / ``"tensorboard"`` without their package
    raise an ``ImportError`` naming the ``pip install`` command (or ``logger=csv`` instead).

    Args:
        backend: ``"csv"``, ``"wandb"``, ``"tensorboard"`` or ``"none"`` (any case).
        option: the name the message gives the setting (the recipes pass ``"logger.backend"``).

    Examples:
        >>> check_logger_backend("CSV")
        'csv'
        >>> check_logger_backend("mlflow")
        Traceback (most recent call last):
        ...
        ValueError: logger backend='mlflow' is unknown; choose csv, wandb, tensorboard or none.
    """
    name = str(backend).lower()
    if name not in LOGGER_BACKENDS:
        raise ValueError(f"{option}={backend!r} is unknown; choose csv, wandb, tensorboard or none.")
    modules, install = _BACKEND_NEEDS.get(name, ((), ""))
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as err:  # also raised when sys.modules[module] is None
            raise ImportError(
                f"{option}={name!r} needs the {modules[0]} package, which is not importable ({err}); "
                f"{install}, or log to CSV (logger=csv)."
            ) from err
    return name


def make_logger(backend: str, run_dir: str, *, exp_name: str = "run", project: str = "torchrl-sapg", offline: bool = True) -> Logger | None:
    """A TorchRL logger writing under ``run_dir``: ``"csv"``, ``"wandb"``, ``"tensorboard"`` or ``"none"``.

    ``wandb`` runs offline by default (no network needed; ``wandb sync`` uploads later). A
    missing ``wandb`` / ``tensorboard`` package raises an ``ImportError`` naming its ``pip
    install`` command (:func:`check_logger_backend`).

    Args:
        backend: the logger's name (any case).
        run_dir: the folder the logs go under.
        exp_name: the experiment name (CSV / TensorBoard sub-folder, wandb run name).
        project: the wandb project.
        offline: wandb only: log locally, ``wandb sync`` later.

    Examples:
        >>> import tempfile
        >>> logger = make_logger("csv", tempfile.mkdtemp())
        >>> logger.log_scalar("train/fps", 1.0, step=0)
    """
    backend = check_logger_backend(backend)
    if backend == "none":
        return None
    if backend == "csv":
        return CSVLogger(exp_name=exp_name, log_dir=run_dir)
    if backend == "tensorboard":
        return TensorboardLogger(exp_name=exp_name, log_dir=run_dir)
    from torchrl.record.loggers.wandb import WandbLogger  # backend == "wandb"

    os.environ.setdefault("WANDB_SILENT", "true")
    return WandbLogger(exp_name=exp_name, offline=offline, save_dir=run_dir, project=project)
