# -*- test-case-name: tests.test_log -*-
"""
The records that storage and replication move around: log entries and
snapshots.

An entry's C{data} is opaque to the log; the state machine decodes it
(L{replichat.commands}).  Each entry carries the epoch of the leader that
created it, which replication uses to find where two logs diverge.
"""

from attrs import frozen


@frozen
class Entry:
    """
    One log entry.

    @ivar index: position in the log, from 1.
    @ivar epoch: the leader epoch (term) in which the entry was created.
    @ivar data: the encoded command.
    """

    index: int
    epoch: int
    data: bytes


@frozen
class Snapshot:
    """
    The state machine after applying every entry up to C{index}.

    @ivar index: the last entry the snapshot covers.
    @ivar epoch: that entry's epoch.
    @ivar data: the encoded state.
    """

    index: int
    epoch: int
    data: bytes


@frozen
class CorruptSnapshot:
    """
    A snapshot file that could not be read back intact.

    @ivar index: the index its name claims, if known.
    """

    path: str
    reason: str
    index: int | None = None
