"""
What survives a partition: turning the entries a server must cut into
commands the leader can commit again.

Replication here waits for every member of the live set, not a majority, so
that a cluster of n keeps serving with n-1 servers down.  The price is that
under a partition each side can take the other out of its live set, elect
its own leader and acknowledge writes (both leaders have distinct epochs:
see L{replichat.election.next_epoch}).  When the partition heals, the
leader of the newer epoch wins and the other side's servers find that their
logs diverge from its log, possibly below their commit index.

Nothing acknowledged may be lost, so a server never just cuts a divergent
suffix: it first extracts the client commands in it (L{orphans}), stores
them durably, and hands them to the leader (L{replichat.peermessages.Repropose})
until the leader has committed them.  Re-proposal is idempotent:

  - every orphan carries a request id (its client's, or one named after its
    origin), so several servers handing in the same orphan, or a client that
    already retried on the winning side, apply it once;
  - every orphan carries its C{origin}, the (epoch, index) where it was
    first written, and the state machine names the uid or message id it
    creates after that origin (L{replichat.state.origin_id}), so the ids a
    client saw on the losing side stay valid and never collide with ids
    given on the winning side.

What a merged command does differs in three plain ways (see
L{replichat.state}): an account whose name the winning side also gave away
is renamed C{name~2}; C{delete_messages} skips ids that are gone; and reads
are not re-applied (they only marked messages read: those come back unread,
delivered again rather than lost).
"""

from __future__ import annotations

from typing import Iterable

from replichat.entries import Entry

#: Operations that are not re-proposed: the replication layer's own
#: entries, and reads (see the module docstring).
NOT_REPROPOSED = frozenset({"noop", "config", "read"})

#: Errors of a merged command that name an account not there (yet): a
#: server can hand in newer commands before a later cut finds the older
#: one that created the account, so such a command is handed in again, up
#: to L{HAND_INS} times, and applied again while its request id is
#: remembered with one of these errors.
WAITING_CODES = frozenset({"not_logged_in", "no_such_user"})

#: How many times a node hands in a command that keeps waiting for its
#: account before it gives up on it (the account was deleted meanwhile).
HAND_INS = 20


def origin_of(command: dict, epoch: int, index: int) -> tuple[int, int]:
    """
    Where C{command}, found at (C{epoch}, C{index}), was first written.
    """
    origin = command.get("origin")
    return (origin[0], origin[1]) if origin is not None else (epoch, index)


def orphan(command: dict, epoch: int, index: int, committed: bool) -> dict | None:
    """
    The command to re-propose for an entry being cut, or None if it needs
    none.

    @param committed: whether the server cutting it knew it committed (so
        it may have been acknowledged).  An entry not known committed is
        handed in too (its leader may have acknowledged it just before
        dying, or before the server restarted and forgot), but only takes
        effect if no answer for its request id was given since.
    """
    if command.get("op") in NOT_REPROPOSED:
        return None
    origin = origin_of(command, epoch, index)
    merged = {**command, "origin": list(origin), "merged": True}
    if committed or command.get("committed"):
        merged["committed"] = True
    if merged.get("rid") is None:
        # No client request id: one named after the origin makes handing it
        # in from several servers, or twice, apply it once.
        merged["rid"] = "~origin:%d.%d" % origin
        merged["fp"] = "merged"
    return merged


def orphans(entries: Iterable[tuple[Entry, dict]], commit_index: int) -> list[dict]:
    """
    The commands to re-propose for the decoded entries being cut, in log
    order; those up to C{commit_index} are known committed.
    """
    found = []
    for entry, command in entries:
        merged = orphan(command, entry.epoch, entry.index, entry.index <= commit_index)
        if merged is not None:
            found.append(merged)
    return found


def key(command: dict) -> tuple[int, int]:
    """
    The identity of an orphan: its origin.
    """
    return tuple(command["origin"])
