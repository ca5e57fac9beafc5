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

The class is composed of one mixin per concern, each in its own module:

  - L{replichat.noderecovery}: the state from snapshot and log at start-up;
  - L{replichat.nodepeers}: the failure detector and connection events;
  - L{replichat.nodeelection}: the Bully election;
  - L{replichat.nodeleadership}: taking, following and giving up an epoch;
  - L{replichat.nodeleader}: the leader's commit path;
  - L{replichat.nodefollower}: the follower's commit path, cuts and roll back;
  - L{replichat.nodesnapshots}: taking, sending and installing snapshots;
  - L{replichat.nodeapply}: applying committed entries;
  - L{replichat.nodemembership}: the configuration and live-set changes;
  - L{replichat.nodejoinleave}: join, leave, hand-over and shutdown;
  - L{replichat.nodemerge}: re-proposing what a healed partition cut.

This module holds what ties them together: the state they share
(L{Node.__init__}), start-up, the dispatch of peer messages, the tick and
the status.  The commands' encoding is in L{replichat.nodecommands}.
"""

from __future__ import annotations

from typing import Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from replichat import election
from replichat.membership import ClusterConfig, Member
from replichat.nodeapply import _Applying
from replichat.nodeelection import _Election
from replichat.nodefollower import _FollowerCommit
from replichat.nodejoinleave import _JoinLeave
from replichat.nodeleader import _LeaderCommit
from replichat.nodeleadership import _Leadership
from replichat.nodemembership import _Membership
from replichat.nodemerge import _OrphanMerge
from replichat.nodepeers import _FailureDetector
from replichat.noderecovery import _Recovery
from replichat.nodesnapshots import _Snapshots
from replichat.peermessages import CANDIDATE, FOLLOWER, LEADER, LEARNER, Heartbeat
from replichat.state import ChatState

# Importable from here as before the core was split.
from replichat.nodecommands import REPLAY_CHUNK_BYTES, decode_command, encode_command  # noqa: F401
from replichat.nodeleader import Progress
from replichat.nodepeers import NoNetwork, PeerState, Timing
from replichat.noderecovery import RecoveryError
from replichat.nodesnapshots import InlineSnapshotWriter


class Node(
    _Recovery,
    _FailureDetector,
    _Election,
    _Leadership,
    _LeaderCommit,
    _FollowerCommit,
    _Snapshots,
    _Applying,
    _Membership,
    _JoinLeave,
    _OrphanMerge,
):
    """
    One replichat server's core.

    Its behaviour comes from the mixins it is made of (see the module
    docstring); this class sets up the state they share, starts the node,
    dispatches peer messages to their C{_on_<message>} methods, ticks, and
    reports status.  It also keeps the meta file (C{_save_meta}) and
    stops the node when the disk fails (C{_fail}).

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
        self._commit_seen: dict[int, tuple[int, int]] = {}  # (last epoch, commit)
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
        self._orphan_tries: dict[tuple, int] = {}
        self._meta_document: dict = {}

    # -- start-up ------------------------------------------------------------

    def start(self) -> None:
        """
        Recover from disk and look for a leader; a node that is the only
        member of its live set leads at once.

        @raise RecoveryError: if the data cannot be recovered intact.
        """
        document = self._meta_document = self.meta.load()
        # Before anything on disk is touched: another node's data is not ours
        # to cut or recover.
        owner = document.get("node", self.node_id)
        if owner != self.node_id:
            raise RecoveryError(
                "this data directory belongs to node %s, not node %s"
                % (owner, self.node_id)
            )
        if document.get("cut") is not None:
            self._finish_cut(document["cut"])  # a crash stopped a healed partition's cut
        self.recover()
        document = self._meta_document
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
        self._membership_changed()  # a failure-detector entry per peer
        if self.role == CANDIDATE:
            self._start_election()

    def _save_meta(self, **changes) -> None:
        # From the copy in memory: the file was verified once, at start.
        document = {**self._meta_document, "node": self.node_id, **changes}
        self.meta.save(document)
        self._meta_document = document

    def _fail(self, reason: str) -> None:
        self.failed = reason
        self.role = "failed"
        self.log.critical("node {node} stopping: {reason}", node=self.node_id, reason=reason)
        if self._on_fatal is not None:
            self._on_fatal(reason)

    # -- the tick --------------------------------------------------------------

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
        # Only the newest history a peer reported counts: a commit index
        # from before a heal cut its log back says nothing any more.
        seen = (message.last_epoch, message.commit_index)
        self._commit_seen[peer] = max(self._commit_seen.get(peer, seen), seen)
        if message.epoch > self.epoch and message.role == LEADER:
            if self.role == LEADER:
                self._step_down("node %d leads in the newer epoch %d" % (peer, message.epoch))
        if peer == self.leader_id and self.role != LEADER:
            if message.role != LEADER:
                self.log.info("node {leader} no longer leads", leader=peer)
                self._lose_leader()
            elif message.epoch == self.epoch:
                self._advance_follower_commit(message.commit_index)

    # -- status ----------------------------------------------------------------

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
