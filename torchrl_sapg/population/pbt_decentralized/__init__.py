"""Decentralised DexPBT: a shared workspace directory and one trainer hook per member run."""
from torchrl_sapg.population.pbt_decentralized.hyperparameters import (
    BUILTIN_HYPERPARAMETERS,
    get_hyperparameter,
    get_hyperparameters,
    set_hyperparameter,
    set_hyperparameters,
)
from torchrl_sapg.population.pbt_decentralized.locks import (
    LAUNCH_ID_ENV,
    MemberLock,
    WorkspaceBusyError,
    member_owner,
    owner_lock_path,
)
from torchrl_sapg.population.pbt_decentralized.member import PBTMember
from torchrl_sapg.population.pbt_decentralized.records import RECORD_FORMAT, atomic_write_json, read_record
from torchrl_sapg.population.pbt_decentralized.rounds import PBTReport
from torchrl_sapg.population.pbt_decentralized.workspace import PBTWorkspace, adopt_checkpoint

__all__ = [
    "BUILTIN_HYPERPARAMETERS",
    "LAUNCH_ID_ENV",
    "MemberLock",
    "PBTMember",
    "PBTReport",
    "PBTWorkspace",
    "RECORD_FORMAT",
    "WorkspaceBusyError",
    "adopt_checkpoint",
    "atomic_write_json",
    "get_hyperparameter",
    "get_hyperparameters",
    "member_owner",
    "owner_lock_path",
    "read_record",
    "set_hyperparameter",
    "set_hyperparameters",
]
