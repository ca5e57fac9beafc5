# -*- test-case-name: tests.test_node,tests.test_cluster -*-
"""
The leader's commit path: propose a command, append each reactor turn's
batch (group commit), send it to every follower and fsync it here while
they do, replicate to followers that lag or must be probed (a L{Progress}
each), and commit once an entry is durable on every member of the live set.
"""

from __future__ import annotations

from attrs import define, field
from twisted.internet.defer import Deferred

from replichat import errors, failpoints
from replichat.entries import Entry
from replichat.errors import ChatError
from replichat.nodecommands import encode_command
from replichat.peermessages import LEADER, Append, AppendReply

#: Entry data per Append read back from the log for a follower that lags,
#: and how many such Appends may be in flight to it.  (New batches go to an
#: up-to-date follower as they are made, however many are in flight.)
APPEND_BYTES = 1 * 2**20
CATCH_UP_INFLIGHT = 8


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
    base_probed: bool = False  # probed at the log's base before a snapshot


class _LeaderCommit:
    """
    The leader's commit path of L{replichat.node.Node}.

    Keeps C{_batch} and C{_flush_call} (the batch of this reactor turn),
    C{_sync_call}, C{_waiting} (proposals appended and not yet applied),
    C{_progress} (a L{Progress} per follower) and C{_stable}.  The fsync
    turn (C{_schedule_sync}, C{_sync}) is a follower's too: there it
    answers the Appends in C{_pending_replies} (L{replichat.nodefollower}).
    A commit applies through L{replichat.nodeapply}.
    """

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
        # One tuple for the whole batch: every follower's Append carries it,
        # and the wire packs it once (peercommands.Entries).
        entries = tuple(
            Entry(first + offset, self.epoch, data) for offset, (_, data, _) in enumerate(batch)
        )
        for entry, (command, data, d) in zip(entries, batch):
            self._waiting[entry.index] = (command, d, len(data))
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
        progress.base_probed = False
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
        base = self.disk_log.base_index
        if progress.next <= base:
            if progress.probing and not progress.base_probed:
                # Entries up to the base are on every member, so a member
                # whose log reaches it matches there: bring it on from
                # there (a divergent suffix is then cut and handed in)
                # rather than wipe its log with a snapshot.
                progress.base_probed = True
                progress.next = base + 1
            else:
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
        self._note_epoch(message.epoch)
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
        # The planted bug commits on the leader's fsync alone.
        counted = () if failpoints.on(failpoints.ACK_BEFORE_FOLLOWERS_FSYNC) else cluster.live
        for peer in cluster.members:
            if peer != self.node_id:
                progress = self._progress.get(peer)
                match = progress.match if progress else 0
                stable = min(stable, match)
                if peer in counted:
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
