# -*- test-case-name: tests.test_cluster -*-
"""
The Bully election's decisions, as pure functions of what a candidate knows.

A candidate asks every member of its live set for its log's rank; the
election may finish once each of them has answered or is known to be down,
and the freshest log wins, ties by the highest id.  A member the candidate
has not heard from at all since it started never counts as down (unless an
operator forces it): after a full restart, that member may be the one
holding the newest commits.
"""

from __future__ import annotations

from typing import Iterable, Mapping

from attrs import frozen


#: Epochs are C{round * EPOCH_STRIDE + leader id}, so two servers never
#: lead the same epoch, not even on two sides of a partition: an (index,
#: epoch) pair names one entry everywhere, which log matching relies on,
#: and ids named after an entry's origin (L{replichat.state.origin_id}) are
#: unique.  Server ids are therefore at most C{MAX_NODE_ID}.
EPOCH_STRIDE = 1000
MAX_NODE_ID = EPOCH_STRIDE - 1


def next_epoch(seen: int, node: int) -> int:
    """
    The epoch C{node} takes to lead after having seen epochs up to C{seen}:
    the next round, in C{node}'s own residue.
    """
    if not 1 <= node <= MAX_NODE_ID:
        raise ValueError("server ids run from 1 to %d, not %d" % (MAX_NODE_ID, node))
    return (seen // EPOCH_STRIDE + 1) * EPOCH_STRIDE + node


@frozen(order=True)
class Rank:
    """
    How fresh a server's log is: compared as (last_epoch, last_index, node).
    """

    last_epoch: int
    last_index: int
    node: int


@frozen
class PeerView:
    """
    What the failure detector knows of a peer at one moment.

    @ivar heard: it has been heard from since this server started.
    @ivar down: it is known to be down (its port refused a connection, or
        it has been silent past the failure timeout).
    """

    heard: bool
    down: bool


def outcome(
    me: int,
    my_rank: Rank,
    live: Iterable[int],
    answers: Mapping[int, Rank],
    peers: Mapping[int, PeerView],
    forced: bool = False,
    waiting: Iterable[int] = (),
) -> int | None:
    """
    Who wins the election as far as this candidate can tell.

    @param live: the live set of the candidate's newest configuration.
    @param answers: the ranks received in this election round.
    @param peers: the failure detector's view of each peer.
    @param forced: an operator asked to lead without the unheard members.
    @param waiting: peers that answered but cannot finish an election
        themselves (they wait to hear from a member, having restarted
        since): one of them wins only if no other contender is as fresh,
        so a server that restarted into a partition does not hold up a
        side where every other server can lead.
    @return: the winner's id (perhaps C{me}); L{None} while the election
        cannot finish yet, or if the candidate may not lead at all and
        nobody it heard from may either.
    """
    live = set(live)
    if me not in live:
        return None
    contenders = [my_rank]
    for member in sorted(live - {me}):
        if member in answers:
            contenders.append(answers[member])
            continue
        view = peers.get(member, PeerView(heard=False, down=False))
        if view.down and (view.heard or forced):
            continue
        if forced and not view.heard:
            continue
        return None  # still waiting for this member
    best = max(contenders)
    waiting = set(waiting)
    if best.node not in waiting:
        return best.node
    # As fresh (same last entry) and able to finish: the highest such id.
    able = [c for c in contenders if c.node not in waiting
            and (c.last_epoch, c.last_index) == (best.last_epoch, best.last_index)]
    return max(able).node if able else None
