"""Moved to :mod:`torchrl_sapg.population.pbt_decentralized` (this alias module stays for old imports)."""
from torchrl_sapg.population.pbt_decentralized.locks import (  # noqa: F401
    LAUNCH_ID_ENV,
    LOCK_DIR,
    MemberLock,
    WorkspaceBusyError,
    member_owner,
    owner_lock_path,
)
from torchrl_sapg.population.pbt_decentralized.member import PBTMember  # noqa: F401
from torchrl_sapg.population.pbt_decentralized.records import RECORD_FORMAT, atomic_write_json, read_record  # noqa: F401
from torchrl_sapg.population.pbt_decentralized.rounds import PBTReport  # noqa: F401
from torchrl_sapg.population.pbt_decentralized.workspace import PBTWorkspace, adopt_checkpoint  # noqa: F401

__all__ = [
    "LAUNCH_ID_ENV",
    "LOCK_DIR",
    "MemberLock",
    "PBTMember",
    "PBTReport",
    "PBTWorkspace",
    "RECORD_FORMAT",
    "WorkspaceBusyError",
    "adopt_checkpoint",
    "atomic_write_json",
    "member_owner",
    "owner_lock_path",
    "read_record",
]
