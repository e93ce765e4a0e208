"""All-or-nothing changes to a user's tree: staged transactions, a rollback journal, crash recovery."""

from __future__ import annotations

from pyagent.state.errors import ConflictError, LockedError, TransactionError
from pyagent.state.recovery import RecoveryResult, ensure_recovered, recover
from pyagent.state.transaction import CommitResult, StateTransaction

__all__ = [
    "CommitResult",
    "ConflictError",
    "LockedError",
    "RecoveryResult",
    "StateTransaction",
    "TransactionError",
    "ensure_recovered",
    "recover",
]
