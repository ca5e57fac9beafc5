# -*- test-case-name: tests.test_node,tests.test_cluster -*-
"""
A replichat server's core: recovery, election, replication and commit.

The node owns the log, the state machine and the snapshot store.  It is
driven only by method calls (L{propose} from the client handler, L{receive}
and the C{peer_*} calls from the peer network, L{tick} from a LoopingCall)
and an injected clock, and it talks to peers only through C{network.send}
with the values of L{replichat.peermessages}; so a whole cluster runs in one
process on a C{task.Clock} (L{replichat.testing.SimCluster}).

The model (docs/replication.rst tells it at length):

  - One leader per epoch.  An epoch is taken by a candidate that won a Bully
    election (freshest log wins, ties by highest id) and is fsynced in the
    meta file, with its leader, before use; a server follows at most one
    leader per epoch, and refuses leader traffic from older epochs.
  - The leader appends each batch of requests (all that arrived in one
    reactor turn: group commit), sends it to every follower at once, then
    fsyncs it itself while they do (pipelined: several batches in flight).
    An entry commits when it is durable on the leader and on every member of
    the live set; only then is it applied and answered.
  - The live set is in the log (L{replichat.membership}): the leader takes a
    silent follower out, and puts a caught-up one back, with C{config}
    entries.  Only a member of the newest live set may lead.
  - A new leader first commits a marker entry in its epoch, which also
    commits whatever its predecessor left; until then it serves nothing.
  - Under a partition both sides may commit.  When it heals, a server whose
    log diverges from the leader's hands the client commands it must cut
    to the leader, which commits them again (L{replichat.merge}); only
    entries known to be on every member are ever compacted away, so the
    divergent ones are still in the log to be handed in.
"""

from __future__ import annotations

import gc
import time
from typing import Callable

from attrs import define, field
from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from replichat import election, errors, failpoints, merge
from replichat.entries import CorruptSnapshot, Entry, Snapshot
from replichat.errors import ChatError
from replichat.jsonwire import COMPACT, DECODER
from replichat.membership import ClusterConfig, Member
from replichat.peermessages import (
    CANDIDATE,
    FOLLOWER,
    LEADER,
    LEARNER,
    Append,
    AppendReply,
    Coordinator,
    Election,
    ElectionAnswer,
    Heartbeat,
    Join,
    JoinReply,
    Leaving,
    Repropose,
    ReproposeReply,
    SnapshotChunk,
    SnapshotReply,
    TimeoutNow,
)
from replichat.snapshot import DIVERGED_SUFFIX
from replichat.state import ChatState, Outcome

#: How much entry data one read of the log returns while replaying.
REPLAY_CHUNK_BYTES = 8 * 2**20

#: Seconds to wait before trying again after a snapshot failed.
SNAPSHOT_RETRY_DELAY = 60.0

#: Entry data per Append read back from the log for a follower that lags,
#: and how many such Appends may be in flight to it.  (New batches go to an
#: up-to-date follower as they are made, however many are in flight.)
APPEND_BYTES = 1 * 2**20
CATCH_UP_INFLIGHT = 8

#: Bytes of snapshot per SnapshotChunk.
SNAPSHOT_CHUNK_BYTES = 1 * 2**20

#: Marks a config entry in encoded data, to find them without decoding all.
_CONFIG_MARK = b'"op":"config"'


class RecoveryError(Exception):
    """
    The data directory cannot be recovered without losing acknowledged data,
    or belongs to another node; the server must not start.
    """


def encode_command(command: dict) -> bytes:
    """
    The log entry data for a command.
    """
    return COMPACT.encode(command).encode("utf-8")


def decode_command(data: bytes) -> dict:
    """
    The command of a log entry.
    """
    return DECODER.decode(data.decode("utf-8"))


class InlineSnapshotWriter:
    """
    Writes snapshots synchronously in this process: simple and deterministic,
    for tests and the simulator.  The server forks instead
    (L{replichat.server.ForkingSnapshotWriter}) so a large state does not
    stall the reactor while it is encoded.
    """

    def __init__(self, store) -> None:
        self.store = store

    def write(self, state: ChatState, index: int, epoch: int) -> Deferred:
        self.store.save(Snapshot(index, epoch, state.to_snapshot()))
        return succeed(None)


class NoNetwork:
    """
    The network of a server without peers: sends nothing.
    """

    def send(self, peer: int, message: object) -> None:
        pass


@define
class Timing:
    heartbeat_interval: float = 0.1
    failure_timeout: float = 0.5


@define
class PeerState:
    """
    The failure detector's and the status table's view of one peer.
    """

    heard: bool = False  # heard from since this server started
    last_heard: float = 0.0
    refused: bool = False  # its port refused a connection since
    connected: bool = False
    status: Heartbeat | None = None


@define
class Progress:
    """
    The leader's replication state for one follower (as Raft's).

    @ivar next: the next index to send.
    @ivar match: the highest index known durable on it and matching.
    @ivar probing: where the logs match is not known; one probe at a time.
    @ivar inflight: the last index of each Append sent and not answered.
    """

    next: int
    match: int = 0
    probing: bool = True
    probe_sent_at: float | None = None
    inflight: list = field(factory=list)
    last_reply: float = 0.0
    snapshot: tuple | None = None  # (index, epoch, data) being sent


class Node:
    """
    One replichat server's core.

    @ivar state: the state machine, applied up to C{commit_index}.
    @ivar epoch: the highest epoch this node has taken part in.
    @ivar role: L{LEADER}, L{FOLLOWER}, L{CANDIDATE} or L{LEARNER}.
    @ivar leader_id: the leader this node follows (itself if it leads), or
        0 if it knows none.
    """

    log = Logger()

    def __init__(
        self,
        node_id: int,
        disk_log,
        snapshots,
        meta,
        clock: IReactorTime,
        snapshot_every: int = 100_000,
        snapshot_every_bytes: int = 256 * 2**20,
        snapshot_writer=None,
        on_fatal: Callable[[str], None] | None = None,
        network=None,
        initial_cluster: ClusterConfig | None = None,
        timing: Timing | None = None,
        joining: Member | None = None,
    ) -> None:
        self.node_id = node_id
        self.disk_log = disk_log
        self.snapshots = snapshots
        self.meta = meta
        self.clock = clock
        self.snapshot_every = snapshot_every
        self.snapshot_every_bytes = snapshot_every_bytes
        self.snapshot_writer = snapshot_writer or InlineSnapshotWriter(snapshots)
        self._on_fatal = on_fatal
        self.network = network or NoNetwork()
        self.timing = timing or Timing()
        self._initial_cluster = initial_cluster or ClusterConfig(
            members={node_id: Member("127.0.0.1", 0, 0)}, live=frozenset({node_id})
        )
        self._joining = joining
        self.state = ChatState()
        self.epoch = 0
        self.role = CANDIDATE
        self.leader_id = 0
        self.commit_index = 0
        self.failed: str | None = None
        self.stopped = False
        self.forced = False
        # Configurations in the log above the commit index, oldest first;
        # the committed one is in the state.
        self._configs: list[tuple[int, ClusterConfig]] = []
        self._committed_cluster: tuple = (None, None)
        self._peers: dict[int, PeerState] = {}
        self._progress: dict[int, Progress] = {}
        self._answers: dict[int, election.Rank] = {}
        self._election_started = 0.0
        self._leader_heard = 0.0
        self._matched = 0  # as a follower: my log matches the leader's to here
        self._following = (0, 0)  # (leader, epoch) that _matched is about
        # What peers said that a candidate must not lead against (_may_lead).
        self._commit_seen: dict[int, int] = {}
        self._waiting_peers: set[int] = set()  # see election.outcome
        self._fresher_excluders: dict[int, election.Rank] = {}
        self._leader_commit = 0  # as a follower: the leader's commit index
        self._voted = (0, 0)  # (epoch, leader) as durable in the meta file
        self._last_tick: float | None = None
        self._marker_index: int | None = None
        self._batch: list[tuple[dict, bytes, Deferred | None]] = []
        self._flush_call = None
        self._sync_call = None
        # A follower's accepted Appends awaiting its fsync, as (leader,
        # epoch, index): the reply goes to that leader in that epoch only.
        self._pending_replies: list[tuple[int, int, int]] = []
        self._waiting: dict[int, tuple[dict, Deferred | None, int]] = {}
        self._config_waiters: list[tuple[int, Deferred]] = []
        self._snapshot_in: tuple | None = None  # (index, epoch, chunks, size)
        self._push_observers: list[Callable[[int, dict], None]] = []
        self._snapshot_index = 0
        self._bytes_since_snapshot = 0
        self._snapshotting = False
        self._snapshot_retry_at = 0.0
        # Entries up to here are on every member: no partition can make
        # them diverge, so only they may be compacted away.
        self._stable = 0
        # Client commands cut from a divergent log, durable in the meta
        # file until a leader has committed them again (replichat.merge).
        self._orphans: list[dict] = []
        self._orphans_sent_at: float | None = None
        self._orphans_in_flight: dict[tuple, Deferred] = {}
        self._meta_document: dict = {}

    # -- start-up ------------------------------------------------------------

    def start(self) -> None:
        """
        Recover from disk and look for a leader; a node that is the only
        member of its live set leads at once.

        @raise RecoveryError: if the data cannot be recovered intact.
        """
        self.recover()
        document = self._meta_document = self.meta.load()
        owner = document.get("node", self.node_id)
        if owner != self.node_id:
            raise RecoveryError(
                "this data directory belongs to node %s, not node %s"
                % (owner, self.node_id)
            )
        self.epoch = max(document.get("epoch", 0), self.disk_log.last_epoch)
        self._orphans = list(document.get("orphans", []))
        if self._orphans:
            self.log.info(
                "{count} commands from a healed partition wait to be re-proposed",
                count=len(self._orphans),
            )
        self._voted = (document.get("epoch", 0), document.get("leader", 0))
        if self._joining is not None:
            if self.state.cluster is not None or self._configs:
                self._joining = None  # it joined before this restart
            else:
                # Not a member until the leader's configuration says so; the
                # file's other nodes are only addresses to ask.
                self._initial_cluster = ClusterConfig(
                    members={
                        i: m for i, m in self._initial_cluster.members.items() if i != self.node_id
                    },
                    live=frozenset(),
                )
        self._last_tick = self.clock.seconds()
        for peer in self.cluster.members:
            if peer != self.node_id:
                self._peers[peer] = PeerState()
        self._membership_changed()
        if self.role == CANDIDATE:
            self._start_election()

    def recover(self) -> None:
        """
        Rebuild the state from the newest intact snapshot plus the log.

        Entries after the snapshot are replayed only as far as they are
        known committed: the commit index is not on disk, so a replicated
        node replays nothing more until a leader (perhaps itself, through
        its marker entry) commits them; a node alone in its live set knows
        its whole log committed.
        """
        started = time.monotonic()
        # Recovery allocates millions of long-lived objects; the cyclic
        # collector would rescan them all repeatedly for nothing.
        gc.disable()
        try:
            self.state = self._load_snapshot()
            self._snapshot_index = self.state.applied_index
            self.commit_index = self.state.applied_index
            self._configs = self._scan_configs(self.commit_index + 1)
            replayed = 0
            if self.cluster.live == {self.node_id}:
                replayed = self._apply_through(self.disk_log.last_index)
        finally:
            gc.enable()
        gc.freeze()
        self.log.info(
            "recovered {entries} log entries after snapshot {snapshot} "
            "in {seconds:.3f}s; last index {last}",
            entries=replayed,
            snapshot=self._snapshot_index,
            seconds=time.monotonic() - started,
            last=self.disk_log.last_index,
        )

    def _load_snapshot(self) -> ChatState:
        disk_log = self.disk_log
        for snapshot in self.snapshots.load_all():
            if isinstance(snapshot, CorruptSnapshot):
                self.log.warn(
                    "setting aside corrupt snapshot {path}: {reason}",
                    path=snapshot.path,
                    reason=snapshot.reason,
                )
                # Out of the count of kept snapshots, so compaction never
                # relies on it as the fallback.
                if snapshot.index is not None:
                    self.snapshots.quarantine(snapshot.index)
                continue
            if snapshot.index < disk_log.base_index:
                # Entries between it and the log's start are gone.
                self.log.warn(
                    "skipping snapshot {index}: the log starts at {first}",
                    index=snapshot.index,
                    first=disk_log.first_index,
                )
                continue
            try:
                state = ChatState.from_snapshot(snapshot.data)
            except Exception as error:
                # Intact on disk (its checksum matched) but unreadable here:
                # a newer format, or a bug.  Never guess; stop.
                raise RecoveryError(
                    "snapshot %d cannot be read by this version: %s" % (snapshot.index, error)
                )
            if state.applied_index != snapshot.index:
                raise RecoveryError(
                    "snapshot %d holds the state at %d" % (snapshot.index, state.applied_index)
                )
            if snapshot.index > disk_log.last_index:
                disk_log.reset(snapshot.index, snapshot.epoch)
            return state
        if disk_log.base_index > 0:
            raise RecoveryError(
                "the log starts after entry %d but no intact snapshot covers "
                "the entries before it; refusing to start without them"
                % (disk_log.base_index,)
            )
        return ChatState()

    def _scan_configs(self, start: int) -> list[tuple[int, ClusterConfig]]:
        configs = []
        last = self.disk_log.last_index
        while start <= last:
            entries = self.disk_log.read(start, max_bytes=REPLAY_CHUNK_BYTES)
            for entry in entries:
                if _CONFIG_MARK in entry.data:
                    command = decode_command(entry.data)
                    configs.append((entry.index, ClusterConfig.from_json(command["cluster"])))
            start = entries[-1].index + 1
        return configs

    # -- membership ------------------------------------------------------------

    @property
    def cluster(self) -> ClusterConfig:
        """
        The newest configuration in the log, committed or not.
        """
        if self._configs:
            return self._configs[-1][1]
        committed = self.state.cluster
        if committed is None:
            return self._initial_cluster
        # Parsed once per committed configuration, not on every reply.
        if self._committed_cluster[0] is not committed:
            self._committed_cluster = (committed, ClusterConfig.from_json(committed))
        return self._committed_cluster[1]

    def _set_role(self) -> None:
        cluster = self.cluster
        if self.node_id in cluster.members:
            self._joining = None
        if self.role == LEADER:
            return  # a leader that removed itself steps down once that commits
        if self.node_id not in cluster.members or self.node_id in cluster.learners:
            self.role = LEARNER
        elif self.leader_id:
            self.role = FOLLOWER
        else:
            self.role = CANDIDATE

    def _note_appended(self, entries) -> None:
        for entry in entries:
            if _CONFIG_MARK in entry.data:
                command = decode_command(entry.data)
                self._configs.append((entry.index, ClusterConfig.from_json(command["cluster"])))
                self._membership_changed()

    def _membership_changed(self) -> None:
        cluster = self.cluster
        for peer in cluster.members:
            if peer == self.node_id:
                continue
            self._peer(peer)
            if self.role == LEADER and peer not in self._progress:
                progress = Progress(next=self.disk_log.last_index + 1)
                self._progress[peer] = progress
                self._replicate(peer)
        for peer in list(self._peers):
            if peer not in cluster.members and peer != self.leader_id:
                del self._peers[peer]
                self._progress.pop(peer, None)
        if hasattr(self.network, "set_peers"):
            self.network.set_peers(
                {
                    i: (m.host, m.peer_port)
                    for i, m in cluster.members.items()
                    if i != self.node_id
                }
            )
        self._set_role()

    # -- the failure detector ----------------------------------------------------

    def _peer(self, peer: int) -> PeerState:
        state = self._peers.get(peer)
        if state is None:
            state = self._peers[peer] = PeerState()
        return state

    def _heard_from(self, peer: int) -> None:
        state = self._peer(peer)
        state.heard = True
        state.refused = False
        state.last_heard = self.clock.seconds()
        if peer == self.leader_id:
            self._leader_heard = state.last_heard

    def _is_down(self, peer: int) -> bool:
        state = self._peers.get(peer)
        if state is None:
            return True
        if state.refused:
            return True
        return self.clock.seconds() - state.last_heard > self.timing.failure_timeout

    def peer_connected(self, peer: int) -> None:
        """
        A connection to C{peer} is up (and authenticated).
        """
        state = self._peer(peer)
        state.connected = True
        state.refused = False
        self.network.send(peer, self._heartbeat())
        progress = self._progress.get(peer)
        if progress is not None:
            self._reprobe(progress)
            self._replicate(peer)
        if self._joining is not None:
            self._send_join(peer)
        elif self.role == CANDIDATE:
            rank = self._rank()
            self.network.send(
                peer, Election(self.epoch, rank.last_epoch, rank.last_index, self._ready())
            )

    def peer_lost(self, peer: int) -> None:
        """
        The connection to C{peer} is gone, with whatever was in flight.
        """
        self._peer(peer).connected = False
        progress = self._progress.get(peer)
        if progress is not None:
            self._reprobe(progress)

    def peer_refused(self, peer: int) -> None:
        """
        C{peer}'s port refused a connection: its process is gone.
        """
        state = self._peer(peer)
        state.refused = True
        state.connected = False
        if peer == self.leader_id and self.role in (FOLLOWER, LEARNER):
            self.log.info("leader {leader} is gone", leader=peer)
            self._lose_leader()
        elif self.role == CANDIDATE:
            self._check_election()
        elif self.role == LEADER:
            self._check_live_set()

    def tick(self) -> None:
        """
        Called every C{heartbeat_interval}: heartbeats, failure detection,
        live-set changes, retries.  Never raises.
        """
        try:
            self._tick()
        except Exception:
            self.log.failure("tick failed")

    def _tick(self) -> None:
        if self.failed is not None or self.stopped:
            return
        now = self.clock.seconds()
        if self._last_tick is not None and now - self._last_tick > self.timing.failure_timeout:
            # This process was stalled (SIGSTOP, swap, a long pause): the
            # silence it measured is its own.  Give every peer, and the
            # leader, a fresh failure timeout before judging them.
            self.log.warn(
                "no tick for {gap:.2f}s; restarting failure timeouts",
                gap=now - self._last_tick,
            )
            for state in self._peers.values():
                state.last_heard = max(state.last_heard, now)
            self._leader_heard = now
            self._election_started = now
        self._last_tick = now
        heartbeat = self._heartbeat()
        for peer in self._peers:
            self.network.send(peer, heartbeat)
        self._hand_in_orphans(now)
        if self.role == LEADER:
            self._check_live_set()
            for peer, progress in self._progress.items():
                if progress.inflight or progress.probing:
                    if now - progress.last_reply > 2 * self.timing.heartbeat_interval:
                        self._reprobe(progress)
                self._replicate(peer)
        elif self._joining is not None and not self.leader_id:
            for peer, state in self._peers.items():
                if state.connected:
                    self._send_join(peer)
        elif self.role in (FOLLOWER, LEARNER) and self.leader_id:
            if now - self._leader_heard > self.timing.failure_timeout:
                self.log.info("leader {leader} is silent", leader=self.leader_id)
                self._lose_leader()
        elif self.role == CANDIDATE:
            if now - self._election_started > self.timing.failure_timeout:
                self._start_election()
            else:
                self._check_election()

    def _heartbeat(self) -> Heartbeat:
        return Heartbeat(
            epoch=self.epoch,
            role=self.role,
            leader=self.leader_id,
            last_index=self.disk_log.last_index,
            last_epoch=self.disk_log.last_epoch,
            commit_index=self.commit_index,
        )

    # -- receiving -------------------------------------------------------------

    def receive(self, peer: int, message: object) -> None:
        """
        Handle a message from C{peer}.
        """
        if self.failed is not None or self.stopped:
            return
        self._heard_from(peer)
        handler = getattr(self, "_on_" + type(message).__name__)
        handler(peer, message)

    def _on_Heartbeat(self, peer: int, message: Heartbeat) -> None:
        self._peer(peer).status = message
        self._commit_seen[peer] = max(self._commit_seen.get(peer, 0), message.commit_index)
        if message.epoch > self.epoch and message.role == LEADER:
            if self.role == LEADER:
                self._step_down("node %d leads in the newer epoch %d" % (peer, message.epoch))
        if peer == self.leader_id and self.role != LEADER:
            if message.role != LEADER:
                self.log.info("node {leader} no longer leads", leader=peer)
                self._lose_leader()
            elif message.epoch == self.epoch:
                self._advance_follower_commit(message.commit_index)

    # -- elections ---------------------------------------------------------------

    def _rank(self) -> election.Rank:
        return election.Rank(self.disk_log.last_epoch, self.disk_log.last_index, self.node_id)

    def _lose_leader(self) -> None:
        self.leader_id = 0
        self.role = CANDIDATE
        self._set_role()
        if self.role == CANDIDATE:
            self._start_election()

    def _healthy_leader(self) -> int:
        if self.role == LEADER:
            return self.node_id
        if self.leader_id and not self._is_down(self.leader_id):
            return self.leader_id
        return 0

    def _start_election(self) -> None:
        self.role = CANDIDATE
        self.leader_id = 0
        self._answers = {}
        self._election_started = self.clock.seconds()
        rank = self._rank()
        call = Election(self.epoch, rank.last_epoch, rank.last_index, self._ready())
        for peer in self.cluster.members:
            if peer != self.node_id:
                self.network.send(peer, call)
        self._check_election()

    def _on_Election(self, peer: int, message: Election) -> None:
        self._note_epoch(message.epoch)
        rank = self._rank()
        leader = self._healthy_leader()
        self.network.send(
            peer,
            ElectionAnswer(
                self.epoch,
                rank.last_epoch,
                rank.last_index,
                leader,
                peer in self.cluster.live,
                self._ready(),
            ),
        )
        if self.role == LEADER:
            # It lost us; make sure it hears from us again.
            progress = self._progress.get(peer)
            if progress is not None:
                self._reprobe(progress)
                self._replicate(peer)
            return
        if leader:
            return
        # The candidate has no leader either; its call counts as its rank.
        self._answers[peer] = election.Rank(message.last_epoch, message.last_index, peer)
        self._note_ready(peer, message.ready)
        if self.role == CANDIDATE:
            self._check_election()
        elif self.role == FOLLOWER:
            self._lose_leader()

    def _on_ElectionAnswer(self, peer: int, message: ElectionAnswer) -> None:
        self._note_epoch(message.epoch)
        if not message.live:
            rank = election.Rank(message.last_epoch, message.last_index, peer)
            self._fresher_excluders[peer] = max(rank, self._fresher_excluders.get(peer, rank))
        if self.role != CANDIDATE:
            return
        if message.leader and message.leader != self.node_id:
            if not self._is_down(message.leader) or message.leader == peer:
                # A healthy leader exists: follow it, and give it a failure
                # timeout to reach us, rather than deposing it.
                self.leader_id = message.leader
                self._leader_heard = self.clock.seconds()
                self.role = FOLLOWER
                self._set_role()
                return
            return  # it has not noticed its leader is gone yet; it will call
        self._answers[peer] = election.Rank(message.last_epoch, message.last_index, peer)
        self._note_ready(peer, message.ready)
        self._check_election()

    def _ready(self) -> bool:
        """
        Whether this node could finish an election: it is not waiting to
        hear, since it started, from a member of its live set.
        """
        return self.forced or all(
            self._peer(p).heard for p in self.cluster.live if p != self.node_id
        )

    def _note_ready(self, peer: int, ready: bool) -> None:
        if ready:
            self._waiting_peers.discard(peer)
        else:
            self._waiting_peers.add(peer)

    def _check_election(self) -> None:
        if self.role != CANDIDATE:
            return
        peers = {
            peer: election.PeerView(heard=state.heard, down=self._is_down(peer))
            for peer, state in self._peers.items()
        }
        # The planted bug lets a server lead without waiting for the
        # members it has not heard from since it started.
        forced = self.forced or failpoints.on(failpoints.STALE_LEADER_AFTER_RESTART)
        winner = election.outcome(
            self.node_id,
            self._rank(),
            self.cluster.live,
            self._answers,
            peers,
            forced,
            self._waiting_peers,
        )
        if winner == self.node_id and (forced or self._may_lead()):
            self._become_leader()

    def _may_lead(self) -> bool:
        """
        Whether no peer that is down now told this node its log lacks
        committed entries: by a commit index past its log, or, fresher,
        by saying it is out of the live set.  It would lead stale, and a
        member merely being down cannot excuse that (force-lead is the way
        past a member gone for good).  A peer that is up takes part in the
        election, which the freshest wins: after a healed partition, where
        both sides committed, the merge then keeps everything.
        """
        rank = self._rank()
        for peer, commit in self._commit_seen.items():
            if commit > rank.last_index and self._is_down(peer):
                return False
        for peer, fresher in self._fresher_excluders.items():
            if fresher > rank and self._is_down(peer):
                return False
        return True

    def force_lead(self) -> None:
        """
        The operator's override: finish elections without the live-set
        members this node has not heard from since it started (one of them
        may have held newer commits: those are lost).
        """
        if self.node_id not in self.cluster.live:
            raise ChatError(
                errors.BAD_REQUEST,
                "node %d is not in its live set %s and may not lead"
                % (self.node_id, sorted(self.cluster.live)),
            )
        self.log.warn("forced to lead without the members not heard from")
        self.forced = True
        if self.role in (CANDIDATE,):
            self._check_election()

    def _note_epoch(self, epoch: int) -> None:
        # A newer epoch seen anywhere means a leader of ours is stale.
        if epoch > self.epoch and self.role == LEADER:
            self._step_down("saw the newer epoch %d" % (epoch,))

    def _save_epoch(self, epoch: int, leader: int) -> None:
        # The epoch and its leader are durable before anything is done in
        # them, so a restarted server never follows two leaders in one epoch
        # nor reuses an epoch for different entries.
        self._save_meta(epoch=epoch, leader=leader)
        self.epoch = epoch
        self._voted = (epoch, leader)

    def _become_leader(self) -> None:
        seen = [self.epoch] + [s.status.epoch for s in self._peers.values() if s.status]
        epoch = election.next_epoch(max(seen), self.node_id)
        try:
            self._save_epoch(epoch, self.node_id)
        except OSError as error:
            self._fail("saving the epoch failed: %s" % (error,))
            return
        self.role = LEADER
        self.leader_id = self.node_id
        self.forced = False
        self.log.info(
            "node {node} leads in epoch {epoch} (last index {last})",
            node=self.node_id,
            epoch=epoch,
            last=self.disk_log.last_index,
        )
        last = self.disk_log.last_index
        self._progress = {
            peer: Progress(next=last + 1, last_reply=self.clock.seconds())
            for peer in self.cluster.members
            if peer != self.node_id
        }
        coordinator = Coordinator(epoch)
        for peer in self._peers:
            self.network.send(peer, coordinator)
        # The marker commits the new epoch, and with it everything the log
        # holds from before, ahead of any request in this epoch.
        self._marker_index = last + 1
        self._propose({"op": "noop"}, None)
        if self.state.cluster is None and not any(i > self.commit_index for i, _ in self._configs):
            # A new cluster: write down its configuration file's membership.
            self._propose(self.cluster.to_command(), None)
        self._check_live_set()
        self.flush()

    def _step_down(self, reason: str) -> None:
        if self.role != LEADER:
            return
        self.log.warn("node {node} steps down: {reason}", node=self.node_id, reason=reason)
        self.role = CANDIDATE
        self.leader_id = 0
        self._progress = {}
        self._marker_index = None
        batch, self._batch = self._batch, []
        waiting, self._waiting = self._waiting, {}
        lost = ChatError(
            errors.UNAVAILABLE,
            "this server lost the leadership before the request committed; "
            "retry with the same rid",
        )
        for _, _, d in batch:
            if d is not None:
                d.errback(lost)
        for _, d, _ in waiting.values():
            if d is not None:
                d.errback(lost)
        for _, d in self._config_waiters:
            d.errback(lost)
        self._config_waiters = []
        self._set_role()
        self._election_started = self.clock.seconds()
        self._answers = {}

    def _on_Coordinator(self, peer: int, message: Coordinator) -> None:
        self._accept_leader(peer, message.epoch)

    def _accept_leader(self, peer: int, epoch: int) -> bool:
        """
        Follow C{peer} as the leader of C{epoch}, if it may lead it.
        """
        if epoch < self.epoch:
            return False
        if epoch == self.epoch and self._voted[1] not in (0, peer):
            return False  # another server leads this epoch
        if self.role == LEADER:
            if epoch == self.epoch:
                return False
            self._step_down("node %d leads in epoch %d" % (peer, epoch))
        if self._voted != (epoch, peer):
            try:
                self._save_epoch(epoch, peer)
            except OSError as error:
                self._fail("saving the epoch failed: %s" % (error,))
                return False
        if self._following != (peer, epoch):
            # What matched one leader's log says nothing of another's, nor
            # of the same server's in a later epoch.
            self.log.info("following node {leader} in epoch {epoch}", leader=peer, epoch=epoch)
            self._following = (peer, epoch)
            self._matched = 0
            self._orphans_sent_at = None  # hand them to the new leader soon
        self.leader_id = peer
        self._leader_heard = self.clock.seconds()
        self.forced = False
        self.role = FOLLOWER
        self._set_role()
        return True

    def _on_TimeoutNow(self, peer: int, message: TimeoutNow) -> None:
        if peer == self.leader_id and message.epoch == self.epoch:
            # The leader is leaving; count it as gone and elect at once.
            self._peer(peer).refused = True
            self._lose_leader()

    # -- the commit path (leader) ------------------------------------------------

    @property
    def serving(self) -> bool:
        """
        This node leads and its marker entry has committed: its state holds
        every committed entry, so it may answer requests.
        """
        return (
            self.role == LEADER
            and self._marker_index is not None
            and self.commit_index >= self._marker_index
        )

    def propose(self, command: dict) -> Deferred:
        """
        Commit a command and apply it.

        @return: a Deferred firing with the L{Outcome} once the command's
            entry is durable on this node and on every live follower, and
            applied; failing with C{unavailable} if this node loses the
            leadership first (the outcome is then unknown: retry with the
            same rid).  It never fires if the node fails.
        @raise ChatError: C{unavailable} if this node cannot commit now.
        """
        if self.failed is not None or self.role != LEADER or self.stopped:
            raise ChatError(errors.UNAVAILABLE, "this server cannot commit now; retry")
        d: Deferred = Deferred()
        self._propose(command, d)
        return d

    def _propose(self, command: dict, d: Deferred | None) -> None:
        # Encoded now, so a command that cannot be encoded fails alone
        # instead of taking its whole batch down with it.
        data = encode_command(command)
        self._batch.append((command, data, d))
        if self._flush_call is None:
            # Everything proposed in this reactor turn shares one fsync.
            self._flush_call = self.clock.callLater(0, self.flush)

    def flush(self) -> None:
        """
        Append the current batch, send it to every follower, and fsync it
        here while they do.
        """
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush_call = None
        batch, self._batch = self._batch, []
        if not batch or self.failed is not None or self.role != LEADER:
            return
        first = self.disk_log.last_index + 1
        entries = []
        for offset, (command, data, d) in enumerate(batch):
            index = first + offset
            entries.append(Entry(index, self.epoch, data))
            self._waiting[index] = (command, d, len(data))
        try:
            self.disk_log.append(entries)
        except OSError as error:
            self._fail("writing the log failed: %s" % (error,))
            return
        self._note_appended(entries)
        for peer, progress in self._progress.items():
            if not progress.probing and progress.next == first and self._connected(peer):
                self._send_entries(peer, progress, entries)
            else:
                self._replicate(peer)
        if self.cluster.live - {self.node_id}:
            self._schedule_sync()
        else:
            self._sync()  # alone: nothing to overlap with

    def _schedule_sync(self) -> None:
        # In the next reactor turn: the Appends just written go out to the
        # sockets first, so followers fsync while this node does.
        if self._sync_call is None:
            self._sync_call = self.clock.callLater(0, self._sync)

    def _sync(self) -> None:
        self._sync_call = None
        if self.failed is not None:
            return
        try:
            self.disk_log.sync()
        except OSError as error:
            # A failed fsync cannot be retried safely: the kernel may have
            # dropped the dirty pages.  Stop without acknowledging anything.
            self._fail("writing the log failed: %s" % (error,))
            return
        if self.role == LEADER:
            self._advance_commit()
        else:
            replies, self._pending_replies = self._pending_replies, []
            # An fsync slower than a change of leader must not confirm to
            # the new leader what was accepted from the old one: its entries
            # may differ at those indexes.
            current = [i for leader, epoch, i in replies if (leader, epoch) == (self.leader_id, self.epoch)]
            if current and self.leader_id:
                self.network.send(self.leader_id, AppendReply(self.epoch, True, max(current)))
            self._advance_follower_commit(self._leader_commit)

    def _connected(self, peer: int) -> bool:
        state = self._peers.get(peer)
        return state is not None and state.connected

    def _send_entries(self, peer: int, progress: Progress, entries) -> None:
        prev = entries[0].index - 1
        self.network.send(
            peer,
            Append(
                self.epoch,
                prev,
                self.disk_log.epoch_at(prev),
                tuple(entries),
                self.commit_index,
                self._stable,
            ),
        )
        progress.inflight.append(entries[-1].index)
        progress.next = entries[-1].index + 1

    def _reprobe(self, progress: Progress) -> None:
        progress.probing = True
        progress.probe_sent_at = None
        progress.inflight.clear()
        progress.snapshot = None
        progress.next = max(progress.match + 1, min(progress.next, self.disk_log.last_index + 1))

    def _replicate(self, peer: int) -> None:
        """
        Send C{peer} what it lacks, as far as the pipeline allows.
        """
        progress = self._progress.get(peer)
        if progress is None or self.role != LEADER or not self._connected(peer):
            return
        if progress.snapshot is not None:
            return
        if progress.next <= self.disk_log.base_index:
            self._start_snapshot(peer, progress)
            return
        if progress.probing:
            if progress.probe_sent_at is not None:
                return
            prev = progress.next - 1
            progress.probe_sent_at = self.clock.seconds()
            self.network.send(
                peer,
                Append(
                    self.epoch, prev, self.disk_log.epoch_at(prev), (), self.commit_index, self._stable
                ),
            )
            return
        last = self.disk_log.last_index
        while progress.next <= last and len(progress.inflight) < CATCH_UP_INFLIGHT:
            entries = self.disk_log.read(progress.next, max_bytes=APPEND_BYTES)
            self._send_entries(peer, progress, entries)

    def _on_AppendReply(self, peer: int, message: AppendReply) -> None:
        if message.epoch > self.epoch:
            self._step_down("node %d is in the newer epoch %d" % (peer, message.epoch))
            return
        progress = self._progress.get(peer)
        if self.role != LEADER or message.epoch < self.epoch or progress is None:
            return
        progress.last_reply = self.clock.seconds()
        if message.index < 0:
            self._step_down("node %d follows another leader in epoch %d" % (peer, self.epoch))
            return
        if message.ok:
            progress.match = max(progress.match, message.index)
            progress.inflight = [i for i in progress.inflight if i > message.index]
            if progress.probing:
                progress.probing = False
                progress.probe_sent_at = None
                progress.next = message.index + 1
            self._advance_commit()
            if peer not in self.cluster.live:
                self._check_live_set()  # it may have caught up: put it back
        else:
            progress.probing = True
            progress.probe_sent_at = None
            progress.inflight.clear()
            progress.next = max(1, min(message.index, self.disk_log.last_index) + 1)
        self._replicate(peer)

    def _advance_commit(self) -> None:
        if self.role != LEADER:
            return
        cluster = self.cluster
        synced = self.disk_log.synced_index
        index = stable = synced
        for peer in cluster.members:
            if peer != self.node_id:
                progress = self._progress.get(peer)
                match = progress.match if progress else 0
                stable = min(stable, match)
                if peer in cluster.live and not failpoints.on(
                    failpoints.ACK_BEFORE_FOLLOWERS_FSYNC
                ):
                    index = min(index, match)
        self._stable = max(self._stable, min(stable, self.commit_index))
        if index <= self.commit_index:
            return
        # Only an entry of this epoch commits by being everywhere (Raft's
        # rule): it commits everything before it with it.
        if self.disk_log.epoch_at(index) != self.epoch:
            return
        self._apply_through(index)
        self._maybe_snapshot()

    # -- the commit path (follower) ------------------------------------------------

    def _on_Append(self, peer: int, message: Append) -> None:
        if not self._accept_leader(peer, message.epoch):
            index = -1 if message.epoch == self.epoch else 0
            self.network.send(peer, AppendReply(self.epoch, False, index))
            return
        log = self.disk_log
        prev = message.prev_index
        entries = message.entries
        if prev > log.last_index:
            self.network.send(peer, AppendReply(self.epoch, False, log.last_index))
            return
        if prev < log.base_index:
            # Compacted here, hence committed, hence the same as the
            # leader's: skip what the snapshot covers.
            entries = tuple(e for e in entries if e.index > log.base_index)
            prev = log.base_index
        elif log.epoch_at(prev) != message.prev_epoch:
            self.network.send(peer, AppendReply(self.epoch, False, self._backtrack(prev)))
            return
        new = []
        for entry in entries:
            if new or entry.index > log.last_index:
                new.append(entry)
            elif log.epoch_at(entry.index) != entry.epoch:
                if failpoints.on(failpoints.SKIP_SUFFIX_TRUNCATION):
                    continue  # the planted bug: keep our divergent entry
                if not self._truncate_after(entry.index - 1):
                    return
                if log.last_index < entry.index - 1:
                    # Rolled back to nothing: the leader must start over.
                    self.network.send(peer, AppendReply(self.epoch, False, log.last_index))
                    return
                new.append(entry)
        try:
            if new:
                log.append(new)
        except OSError as error:
            self._fail("writing the log failed: %s" % (error,))
            return
        self._note_appended(new)
        self._matched = entries[-1].index if entries else max(self._matched, prev)
        self._leader_commit = max(self._leader_commit, message.commit_index)
        self._stable = max(self._stable, min(message.stable, self._matched))
        self._pending_replies.append((peer, self.epoch, self._matched))
        self._schedule_sync()

    def _backtrack(self, prev: int) -> int:
        # The epoch at prev differs: every entry of that epoch here is
        # suspect, so ask the leader to try before it.  That may go below
        # this node's commit index (a healed partition), never below what
        # it compacted, which is on every member.
        log = self.disk_log
        epoch = log.epoch_at(prev)
        index = prev
        while index > log.base_index and log.epoch_at(index) == epoch:
            index -= 1
        return index

    def _truncate_after(self, index: int) -> bool:
        """
        Cut the log after C{index}, where it diverges from the leader's,
        handing the client commands cut to the leader (L{replichat.merge}).
        """
        log = self.disk_log
        # Every client command is handed in, marked with whether this node
        # knew it committed: the commit index is not on disk, so after a
        # restart a committed, acknowledged entry looks uncommitted.
        found = merge.orphans(self._decoded(index + 1, log.last_index), self.commit_index)
        below = index < self.commit_index
        (self.log.warn if below else self.log.info)(
            "the leader's log diverges after {index} (commit index {commit}); "
            "cutting {cut} entries, {orphans} commands to re-propose",
            index=index,
            commit=self.commit_index,
            cut=log.last_index - index,
            orphans=len(found),
        )
        try:
            if found:
                self._save_orphans(self._orphans + found)  # durable before they go
            log.truncate_after(index)
        except OSError as error:
            self._fail("truncating the log failed: %s" % (error,))
            return False
        if below:
            return self._roll_back(index)
        dropped = [i for i, _ in self._configs if i > index]
        self._configs = [(i, c) for i, c in self._configs if i <= index]
        if dropped:
            self._membership_changed()
        return True

    def _decoded(self, start: int, end: int):
        """
        The entries from C{start} to C{end} with their commands.
        """
        while start <= end:
            entries = self.disk_log.read(start, end + 1, max_bytes=REPLAY_CHUNK_BYTES)
            for entry in entries:
                yield entry, decode_command(entry.data)
            start = entries[-1].index + 1

    def _roll_back(self, index: int) -> bool:
        """
        Rebuild the state from before C{index}, after a healed partition
        cut committed entries: from a snapshot no newer than C{index} plus
        the log, or from nothing (the leader then sends a snapshot).
        """
        for kept in self.snapshots.indexes():
            if kept > index:
                # It holds cut entries; never start from it again.
                self.snapshots.quarantine(kept, DIVERGED_SUFFIX)
        try:
            state = self._load_snapshot()
        except RecoveryError:
            state = None
        try:
            if state is None:
                self.disk_log.reset(0, 0)
                state = ChatState()
        except OSError as error:
            self._fail("resetting the log failed: %s" % (error,))
            return False
        self.state = state
        self.commit_index = self._snapshot_index = state.applied_index
        self._matched = min(self._matched, self.disk_log.last_index)
        self._bytes_since_snapshot = 0
        self._configs = self._scan_configs(self.commit_index + 1)
        self._membership_changed()
        return True

    # -- re-proposing what a healed partition cut (replichat.merge) ------------------

    def _save_orphans(self, orphans: list[dict]) -> None:
        # In origin order, which is the order they were first committed in:
        # a later cut may find older entries (a login after the account it
        # logs into was cut by an earlier heal).
        unique = sorted({merge.key(c): c for c in orphans}.values(), key=merge.key)
        self._save_meta(orphans=unique)
        self._orphans = unique

    def _save_meta(self, **changes) -> None:
        # From the copy in memory: the file was verified once, at start.
        document = {**self._meta_document, "node": self.node_id, **changes}
        self.meta.save(document)
        self._meta_document = document

    def _forget_orphans(self, keys) -> None:
        keys = set(keys)
        left = [c for c in self._orphans if merge.key(c) not in keys]
        if len(left) != len(self._orphans):
            try:
                self._save_orphans(left)
            except OSError as error:
                # Kept in memory and on disk: re-proposing again is harmless.
                self.log.warn("could not forget re-proposed commands: {error}", error=error)

    def _hand_in_orphans(self, now: float) -> None:
        """
        Get this node's orphans committed: proposed if it serves, sent to
        its leader otherwise (again each failure timeout until answered).
        """
        if not self._orphans:
            return
        if self.serving:
            self._commit_orphans(self._orphans).addCallback(
                lambda done: self._forget_orphans(done)
            )
        elif self.role in (FOLLOWER, LEARNER) and self.leader_id:
            sent = self._orphans_sent_at
            if sent is None or now - sent > self.timing.failure_timeout:
                self._orphans_sent_at = now
                self.network.send(
                    self.leader_id, Repropose(self.epoch, COMPACT.encode(self._orphans).encode())
                )

    def _commit_orphans(self, commands: list[dict]) -> Deferred:
        """
        Propose each command not already on its way.

        @return: a Deferred firing with the keys of those committed, once
            all are, or never if this node loses the leadership first.
        """
        waits = []
        for command in commands:
            key = merge.key(command)
            d = self._orphans_in_flight.get(key)
            if d is None:
                d = self._orphans_in_flight[key] = Deferred()
                d.addBoth(self._orphan_done, key)
                self._propose(command, d)
            done: Deferred = Deferred()
            d.addBoth(_fire_with_success, done)
            waits.append(done)
        keys = [merge.key(c) for c in commands]
        all_done = Deferred()

        def check(results: list) -> None:
            if all(results):
                all_done.callback(keys)

        gather = _gather(waits)
        gather.addCallback(check)
        return all_done

    def _orphan_done(self, result: object, key: tuple) -> object:
        # Committed, or lost with the leadership: either way the next
        # hand-in may propose it again (the rid makes that harmless).
        self._orphans_in_flight.pop(key, None)
        return result

    def _on_Repropose(self, peer: int, message: Repropose) -> None:
        if self.role != LEADER or message.epoch != self.epoch:
            return
        commands = DECODER.decode(message.commands.decode())
        self.log.info(
            "node {peer} hands in {count} commands cut by a healed partition",
            peer=peer,
            count=len(commands),
        )
        self._commit_orphans(commands).addCallback(
            lambda keys: self.network.send(
                peer, ReproposeReply(self.epoch, COMPACT.encode(keys).encode())
            )
        )

    def _on_ReproposeReply(self, peer: int, message: ReproposeReply) -> None:
        if peer != self.leader_id:
            return
        keys = [tuple(k) for k in DECODER.decode(message.origins.decode())]
        self._orphans_sent_at = None
        self._forget_orphans(keys)

    def _advance_follower_commit(self, leader_commit: int) -> None:
        self._leader_commit = max(self._leader_commit, leader_commit)
        index = min(self._leader_commit, self._matched, self.disk_log.synced_index)
        if index > self.commit_index:
            self._apply_through(index)
            self._maybe_snapshot()

    # -- snapshots to followers ------------------------------------------------------

    def _start_snapshot(self, peer: int, progress: Progress) -> None:
        for snapshot in self.snapshots.load_all():
            if isinstance(snapshot, CorruptSnapshot):
                continue
            progress.snapshot = (snapshot.index, snapshot.epoch, snapshot.data)
            self.log.info(
                "sending snapshot {index} ({size} bytes) to node {peer}",
                index=snapshot.index,
                size=len(snapshot.data),
                peer=peer,
            )
            self._send_chunk(peer, progress, 0)
            return
        self.log.error("node {peer} needs a snapshot and none is intact", peer=peer)

    def _send_chunk(self, peer: int, progress: Progress, offset: int) -> None:
        index, epoch, data = progress.snapshot
        chunk = data[offset : offset + SNAPSHOT_CHUNK_BYTES]
        done = offset + len(chunk) >= len(data)
        self.network.send(peer, SnapshotChunk(self.epoch, index, epoch, offset, chunk, done))

    def _on_SnapshotReply(self, peer: int, message: SnapshotReply) -> None:
        progress = self._progress.get(peer)
        if message.epoch > self.epoch:
            self._step_down("node %d is in the newer epoch %d" % (peer, message.epoch))
            return
        if self.role != LEADER or progress is None or progress.snapshot is None:
            return
        progress.last_reply = self.clock.seconds()
        index, _, data = progress.snapshot
        if message.index != index or not message.ok:
            self._reprobe(progress)
            self._replicate(peer)
            return
        if message.offset >= len(data):
            progress.snapshot = None
            progress.match = max(progress.match, index)
            progress.next = index + 1
            progress.probing = False
            self._advance_commit()
            self._replicate(peer)
        else:
            self._send_chunk(peer, progress, message.offset)

    def _on_SnapshotChunk(self, peer: int, message: SnapshotChunk) -> None:
        if not self._accept_leader(peer, message.epoch):
            self.network.send(peer, SnapshotReply(self.epoch, message.index, 0, False))
            return
        incoming = self._snapshot_in
        if message.offset == 0:
            incoming = (message.index, message.snapshot_epoch, [], 0)
        if incoming is None or incoming[0] != message.index or incoming[3] != message.offset:
            self._snapshot_in = None
            self.network.send(peer, SnapshotReply(self.epoch, message.index, 0, False))
            return
        index, epoch, chunks, size = incoming
        chunks.append(message.data)
        size += len(message.data)
        self._snapshot_in = (index, epoch, chunks, size)
        if message.done:
            self._snapshot_in = None
            ok = self._install_snapshot(Snapshot(index, epoch, b"".join(chunks)))
            self.network.send(peer, SnapshotReply(self.epoch, index, size if ok else 0, ok))
        else:
            self.network.send(peer, SnapshotReply(self.epoch, index, size, True))

    def _install_snapshot(self, snapshot: Snapshot) -> bool:
        if snapshot.index <= self.commit_index:
            return True
        try:
            state = ChatState.from_snapshot(snapshot.data)
        except Exception as error:
            self.log.error("a received snapshot is unreadable: {error}", error=error)
            return False
        try:
            self.snapshots.save(snapshot)
            self.disk_log.reset(snapshot.index, snapshot.epoch)
        except OSError as error:
            self._fail("installing a snapshot failed: %s" % (error,))
            return False
        self.log.info("installed snapshot {index} from the leader", index=snapshot.index)
        self.state = state
        self.commit_index = self._snapshot_index = snapshot.index
        self._matched = snapshot.index
        self._bytes_since_snapshot = 0
        self._configs = []
        self._membership_changed()
        return True

    # -- applying --------------------------------------------------------------------

    def _apply_through(self, index: int) -> int:
        """
        Apply the committed entries up to C{index}; answer and push.
        """
        applied = 0
        waiting = self._waiting
        while self.commit_index < index:
            start = self.commit_index + 1
            if start in waiting:
                # This leader's own proposal: the command is at hand.
                command, d, size = waiting.pop(start)
                self._apply_one(start, self.epoch, command, size, d)
                applied += 1
                continue
            for entry in self.disk_log.read(start, index + 1, max_bytes=REPLAY_CHUNK_BYTES):
                if entry.index in waiting:
                    break
                self._apply_one(
                    entry.index, entry.epoch, decode_command(entry.data), len(entry.data), None
                )
                applied += 1
        return applied

    def _apply_one(
        self, index: int, epoch: int, command: dict, size: int, d: Deferred | None
    ) -> None:
        outcome = self.state.apply(index, command, epoch)
        self.commit_index = index
        self._bytes_since_snapshot += size
        self._publish(outcome)
        if d is not None:
            d.callback(outcome)
        if command["op"] == "config":
            self._membership_committed(index)

    def _membership_committed(self, index: int) -> None:
        # The committed configuration is the state's now.
        self._configs = [(i, c) for i, c in self._configs if i > index]
        done = [w for w in self._config_waiters if w[0] <= index]
        self._config_waiters = [w for w in self._config_waiters if w[0] > index]
        for _, d in done:
            d.callback(None)
        cluster = self.cluster
        if self.node_id not in cluster.members:
            self.log.warn("node {node} is no longer a member", node=self.node_id)
            if self.role == LEADER:
                self.clock.callLater(0, self._hand_over)
        self._set_role()

    def _publish(self, outcome: Outcome) -> None:
        for uid, message in outcome.pushes:
            for observer in self._push_observers:
                try:
                    observer(uid, message)
                except Exception:
                    self.log.failure("push observer failed")

    def add_push_observer(self, observer: Callable[[int, dict], None]) -> None:
        """
        Call C{observer(uid, message)} for every committed message, after it
        is durable.
        """
        self._push_observers.append(observer)

    def _fail(self, reason: str) -> None:
        self.failed = reason
        self.role = "failed"
        self.log.critical("node {node} stopping: {reason}", node=self.node_id, reason=reason)
        if self._on_fatal is not None:
            self._on_fatal(reason)

    # -- membership changes (leader) -----------------------------------------------------

    def _config_pending(self) -> bool:
        # One change of this leader's at a time.  A predecessor's
        # uncommitted change does not count: it commits with this leader's
        # marker, and the marker may be waiting for a dead member that only
        # a change of this leader's can take out.
        return bool(self._config_waiters) or any(
            command.get("op") == "config" for command, _, _ in self._batch
        )

    def _change_config(self, new: ClusterConfig, why: str) -> Deferred:
        self.log.info("configuration change: {why}", why=why)
        d: Deferred = Deferred()
        self._propose(new.to_command(), None)
        # The config entry's index is known once the batch is flushed.
        index = self.disk_log.last_index + len(self._batch)
        self._config_waiters.append((index, d))
        return d

    def _check_live_set(self) -> None:
        """
        Take silent followers out of the live set and put caught-up ones
        back (or promote caught-up learners), one change at a time.
        """
        if self.role != LEADER or self.stopped:
            return
        if any(command.get("op") == "config" for command, _, _ in self._batch):
            return  # the newest configuration is not in the log yet
        cluster = self.cluster
        down = [p for p in cluster.live if p != self.node_id and self._is_down(p)]
        if down:
            # Even while a change of ours is pending: it may be waiting for
            # exactly these members, and would never commit otherwise.
            # Commit waits for every live member, not a majority, so two
            # successive removals cannot commit anything the other misses.
            self._change_config(
                cluster.without_live(down), "nodes %s are down" % (sorted(down),)
            ).addErrback(_lost_with_leadership)
            return
        if self._config_pending():
            return
        for peer in sorted(cluster.members):
            if peer == self.node_id or peer in cluster.live:
                continue
            progress = self._progress.get(peer)
            if progress is None or self._is_down(peer) or not self._connected(peer):
                continue
            if progress.match >= self.commit_index and progress.match >= (self._marker_index or 0):
                self._change_config(
                    cluster.with_live(peer), "node %d caught up" % (peer,)
                ).addErrback(_lost_with_leadership)
                return

    def _on_Leaving(self, peer: int, message: Leaving) -> None:
        if self.role != LEADER:
            return
        self._peer(peer).refused = True
        self._check_live_set()

    def _on_Join(self, peer: int, message: Join) -> None:
        error = ""
        cluster = self.cluster
        if self.role != LEADER:
            error = "not the leader"
        elif message.node in cluster.retired:
            error = "node id %d was used by a server that left; ids are never reused" % (
                message.node,
            )
        elif message.node in cluster.members:
            known = cluster.members[message.node]
            if (known.host, known.peer_port) != (message.host, message.peer_port):
                error = "node id %d is already a member at %s:%d" % (
                    message.node,
                    known.host,
                    known.peer_port,
                )
        elif self._config_pending():
            error = "a configuration change is in progress; retry"
        else:
            member = Member(message.host, message.client_port, message.peer_port)
            self._change_config(
                cluster.with_learner(message.node, member), "node %d joins" % (message.node,)
            ).addErrback(_lost_with_leadership)
        self.network.send(peer, JoinReply(self.epoch, error, self._healthy_leader()))

    def _send_join(self, peer: int) -> None:
        member = self._joining
        self.network.send(
            peer, Join(self.epoch, self.node_id, member.host, member.client_port, member.peer_port)
        )

    def _on_JoinReply(self, peer: int, message: JoinReply) -> None:
        if self._joining is None or not message.error:
            return
        self.log.warn("node {peer} refused the join: {error}", peer=peer, error=message.error)
        leader = message.leader
        if leader and leader != peer:
            if self._connected(leader):
                self._send_join(leader)
            elif leader in self.cluster.members and hasattr(self.network, "dial"):
                member = self.cluster.members[leader]
                self.network.dial(member.host, member.peer_port)

    def leave(self, node_id: int) -> Deferred:
        """
        Remove C{node_id} from the cluster for good (the leader only).  A
        leaving leader commits its own removal, then hands over.
        """
        if self.role != LEADER:
            leader = self._healthy_leader()
            raise ChatError(errors.NOT_LEADER, "node %d is not the leader" % (self.node_id,),
                            leader=leader)
        cluster = self.cluster
        if node_id not in cluster.members:
            raise ChatError(errors.NOT_FOUND, "node %d is not a member" % (node_id,))
        if cluster.live == {node_id}:
            raise ChatError(errors.BAD_REQUEST, "node %d is the only live member" % (node_id,))
        if self._config_pending():
            raise ChatError(errors.UNAVAILABLE, "a configuration change is in progress; retry")
        return self._change_config(cluster.without_member(node_id), "node %d leaves" % (node_id,))

    def _hand_over(self) -> None:
        best = None
        for peer in sorted(self.cluster.live):
            progress = self._progress.get(peer)
            if peer == self.node_id or progress is None or not self._connected(peer):
                continue
            if best is None or progress.match >= self._progress[best].match:
                best = peer
        if best is not None:
            self.log.info("handing the leadership over to node {peer}", peer=best)
            self.network.send(best, TimeoutNow(self.epoch))
        self._step_down("handing over")

    def shutdown(self) -> None:
        """
        A clean stop: a leader hands over, a follower leaves the live set
        at once (both come back as followers when started again).
        """
        if self.role == LEADER:
            self._hand_over()
        elif self.leader_id and self.role == FOLLOWER:
            self.network.send(self.leader_id, Leaving(self.epoch))
        self.stopped = True

    # -- snapshots -----------------------------------------------------------

    def _maybe_snapshot(self) -> None:
        if self._snapshotting or self.clock.seconds() < self._snapshot_retry_at:
            return
        entries = self.state.applied_index - self._snapshot_index
        if entries >= self.snapshot_every or self._bytes_since_snapshot >= self.snapshot_every_bytes:
            self.take_snapshot()

    def take_snapshot(self) -> Deferred:
        """
        Snapshot the state as applied now, then drop log segments that the
        second newest snapshot covers (the newest may turn out corrupt; the
        one before it plus the log is the fallback).
        """
        index = self.state.applied_index
        epoch = self.disk_log.epoch_at(index)
        self._snapshotting = True
        bytes_before, self._bytes_since_snapshot = self._bytes_since_snapshot, 0

        def written(_: object) -> None:
            self._snapshot_index = index
            kept = self.snapshots.indexes()
            if len(kept) >= 2:
                # Never past what is on every member: an entry a partition
                # may yet make divergent must stay, to be handed in.
                try:
                    self.disk_log.compact(min(kept[1], self.commit_index, self._stable))
                except OSError as error:
                    self._fail("compacting the log failed: %s" % (error,))
                    return
            self.log.info("snapshot at {index} written", index=index)

        def failed(failure) -> None:
            # Retry later, not on every batch (a full disk would otherwise
            # fork a doomed child per batch); the log keeps everything.
            self._snapshot_retry_at = self.clock.seconds() + SNAPSHOT_RETRY_DELAY
            self._bytes_since_snapshot = bytes_before
            self.log.failure("snapshot at {index} failed", failure, index=index)

        def done(result: object) -> object:
            self._snapshotting = False
            return result

        d = self.snapshot_writer.write(self.state, index, epoch)
        d.addCallbacks(written, failed)
        d.addBoth(done)
        return d

    # -- status ----------------------------------------------------------------

    @property
    def last_index(self) -> int:
        return self.disk_log.last_index

    def status(self) -> dict:
        """
        This node's view of the cluster, for the C{cluster} op and the
        admin C{Status} command.
        """
        cluster = self.cluster
        nodes = []
        for node_id in sorted(set(cluster.members) | {self.node_id}):
            member = cluster.members.get(node_id)
            row = {
                "id": node_id,
                "host": member.host if member else None,
                "client_port": member.client_port if member else None,
                "live": node_id in cluster.live,
            }
            if node_id == self.node_id:
                row.update(role=self.role, epoch=self.epoch,
                           last_index=self.disk_log.last_index, commit_index=self.commit_index)
            else:
                peer = self._peers.get(node_id)
                status = peer.status if peer is not None else None
                if status is None or self._is_down(node_id):
                    row.update(role="down" if status is not None else None, epoch=None,
                               last_index=None, commit_index=None)
                else:
                    row.update(role=status.role, epoch=status.epoch,
                               last_index=status.last_index, commit_index=status.commit_index)
                progress = self._progress.get(node_id)
                if progress is not None:
                    row["match_index"] = progress.match
            nodes.append(row)
        return {"leader": self.leader_id or None, "epoch": self.epoch, "nodes": nodes}

    def leader_member(self) -> tuple[int, Member] | None:
        """
        The leader this node knows of and its addresses, if any.
        """
        leader = self._healthy_leader()
        if not leader:
            return None
        member = self.cluster.members.get(leader)
        if member is None:
            return None
        return leader, member


def _fire_with_success(result: object, done: Deferred) -> object:
    """
    Fire C{done} with whether C{result} is a success; pass C{result} on.
    """
    done.callback(not isinstance(result, Failure))
    return None if isinstance(result, Failure) else result


def _gather(deferreds: list[Deferred]) -> Deferred:
    """
    A Deferred firing with the list of results of C{deferreds}, which never
    fail.
    """
    return gatherResults(deferreds) if deferreds else succeed([])


def _lost_with_leadership(failure: Failure) -> None:
    """
    Errback for a change nobody waits on: losing the leadership before it
    committed is expected (the next leader decides again), not an error.
    """
    failure.trap(ChatError)
