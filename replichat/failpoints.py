"""
Bugs planted on purpose, off unless a test turns them on.

The simulator's checker is only worth something if it catches a broken
protocol, so each switch here breaks one guarantee the way a plausible
mistake would, and a test (tests/test_simulate.py) turns it on and requires
the checker to report an anomaly within a bounded number of seeds.  Like
etcd's failpoints, they are named, global, and cost one set lookup where
they are checked; production code never turns one on.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

#: The leader counts an entry committed once it is durable on the leader
#: alone: an acknowledged write can die with the leader.
ACK_BEFORE_FOLLOWERS_FSYNC = "ack-before-followers-fsync"

#: A follower appends what the leader sends after its own divergent entries
#: instead of cutting them: replicas apply different entries at one index.
SKIP_SUFFIX_TRUNCATION = "skip-suffix-truncation"

#: The state machine applies a retried request again instead of answering
#: with the first result: a retry after a failover is applied twice.
FORGET_RID_DEDUPE = "forget-rid-dedupe"

#: After a full restart a server lets an election finish without hearing
#: from the last live set: a stale server leads and acknowledged writes
#: disappear.
STALE_LEADER_AFTER_RESTART = "stale-leader-after-restart"

ALL = frozenset(
    {
        ACK_BEFORE_FOLLOWERS_FSYNC,
        SKIP_SUFFIX_TRUNCATION,
        FORGET_RID_DEDUPE,
        STALE_LEADER_AFTER_RESTART,
    }
)

#: The switches turned on.  Read with L{on}.
active: set[str] = set()


def on(name: str) -> bool:
    """
    Whether the planted bug C{name} is turned on.
    """
    return name in active


@contextmanager
def planted(name: str) -> Iterator[None]:
    """
    Turn one planted bug on for the duration of a C{with} block.
    """
    if name not in ALL:
        raise ValueError("no planted bug is named %r" % (name,))
    active.add(name)
    try:
        yield
    finally:
        active.discard(name)
