"""
The messages replichat servers send each other, as plain values.

The replication core (L{replichat.node.Node}) sends and receives only these;
it never sees a socket.  L{replichat.peercommands} maps each one onto an AMP
command for the wire, and the simulated network of L{replichat.testing}
delivers them as they are.  Every message is one-way: an answer is another
message sent back, so a lost connection simply loses what was in flight.

Every message carries C{epoch}, the sender's current epoch.  A receiver
refuses leader traffic (L{Coordinator}, L{Append}, L{SnapshotChunk}) from an
epoch older than its own and answers with its epoch, which is how a deposed
leader learns it is deposed (fencing).
"""

from __future__ import annotations

from attrs import frozen

from replichat.entries import Entry

#: Roles a server reports.  A learner is a joining server, catching up
#: before it becomes a member; a candidate is looking for a leader.
LEADER = "leader"
FOLLOWER = "follower"
CANDIDATE = "candidate"
LEARNER = "learner"


@frozen
class Heartbeat:
    """
    Sent by every server to every peer each C{timing.heartbeat_interval}:
    the failure detector's pulse, and the status the C{cluster} op shows.

    @ivar leader: the id of the leader the sender follows (itself if it
        leads), or 0 if it knows none.
    @ivar commit_index: the sender's commit index; a follower applies up to
        its leader's, as far as its own log is known to match.
    """

    epoch: int
    role: str
    leader: int
    last_index: int
    last_epoch: int
    commit_index: int


@frozen
class Election:
    """
    A candidate's call: "I have no leader; this is my log's rank".

    A server ranks candidates by (last_epoch, last_index, id); the freshest
    log wins and the higher id breaks ties.
    """

    epoch: int
    last_epoch: int
    last_index: int
    ready: bool = True


@frozen
class ElectionAnswer:
    """
    The answer to an L{Election}.

    @ivar leader: a leader the answering server still hears from (0 for
        none): a candidate that gets one follows it instead of going on,
        so a returning server never deposes a healthy leader.
    @ivar ready: whether the answering server could finish an election
        itself (it is not waiting to hear from a live member since it
        restarted); see L{replichat.election.outcome}'s C{waiting}.
    @ivar live: whether the candidate is in the live set of the answering
        server's newest configuration.  A candidate that restarted after
        being taken out of the live set does not know it; told so by a
        fresher server, it never leads on its stale log, even once that
        server is gone (DESIGN.md, section 6.2).
    """

    epoch: int
    last_epoch: int
    last_index: int
    leader: int
    live: bool = True
    ready: bool = True


@frozen
class Coordinator:
    """
    The winner's announcement: "I lead in C{epoch}".
    """

    epoch: int


@frozen
class Append:
    """
    Entries after (C{prev_index}, C{prev_epoch}) in the leader's log, and the
    leader's commit index.  With no entries it probes where the logs match.

    @ivar stable: the leader knows every entry up to here is on every
        member, so no partition can make it diverge: only those may be
        compacted away (a divergent entry must still be in the log, to be
        re-proposed).
    """

    epoch: int
    prev_index: int
    prev_epoch: int
    entries: tuple[Entry, ...]
    commit_index: int
    stable: int = 0


@frozen
class AppendReply:
    """
    A follower's answer to an L{Append}, sent once what it accepted is
    fsynced.

    @ivar ok: the entries followed on from the follower's log.
    @ivar index: if C{ok}, the last index now durable and matching the
        leader's log; if not, the index the leader should try
        C{prev_index} at next (the follower's last index, or before the
        epoch that diverges).
    """

    epoch: int
    ok: bool
    index: int


@frozen
class SnapshotChunk:
    """
    Part of the leader's snapshot at C{index}, for a follower whose next
    entry the leader has compacted away.

    @ivar offset: where C{data} starts in the snapshot's bytes.
    @ivar done: this is the last chunk.
    """

    epoch: int
    index: int
    snapshot_epoch: int
    offset: int
    data: bytes
    done: bool


@frozen
class SnapshotReply:
    """
    A follower's answer to a L{SnapshotChunk}: C{offset} is how much of the
    snapshot at C{index} it holds (all of it, installed and fsynced, when
    the chunk was the last); C{ok} false asks the leader to start again.
    """

    epoch: int
    index: int
    offset: int
    ok: bool


@frozen
class Join:
    """
    A new server asks to join as a learner (sent to any member; one that is
    not the leader answers with the leader's id).
    """

    epoch: int
    node: int
    host: str
    client_port: int
    peer_port: int


@frozen
class JoinReply:
    """
    The answer to a L{Join}: C{error} is empty when the server is (or already
    was) admitted; otherwise it says why not, and C{leader} may name the
    server to ask instead.
    """

    epoch: int
    error: str
    leader: int


@frozen
class Leaving:
    """
    A follower that is shutting down asks the leader to drop it from the live
    set now, rather than stall writes for a failure timeout.
    """

    epoch: int


@frozen
class TimeoutNow:
    """
    A leader that is stepping down (leaving, or shutting down) tells the
    follower it chose to start an election at once.
    """

    epoch: int


@frozen
class Repropose:
    """
    A server whose log diverged from the leader's (the two sides of a
    partition both committed) hands the leader the client commands it had
    to cut, to be committed again under their request ids.

    @ivar commands: a JSON array of the commands, each with its C{origin}.
    """

    epoch: int
    commands: bytes


@frozen
class ReproposeReply:
    """
    The leader committed these re-proposed commands; the sender may forget
    them, except those still waiting for their account, which it hands in
    again later (L{replichat.merge.WAITING_CODES}).

    @ivar origins: a JSON array of their C{origin}s, C{[epoch, index]}.
    @ivar waiting: the same, of those still waiting.
    """

    epoch: int
    origins: bytes
    waiting: bytes = b"[]"


MESSAGE_TYPES = (
    Heartbeat,
    Election,
    ElectionAnswer,
    Coordinator,
    Append,
    AppendReply,
    SnapshotChunk,
    SnapshotReply,
    Join,
    JoinReply,
    Leaving,
    TimeoutNow,
    Repropose,
    ReproposeReply,
)
