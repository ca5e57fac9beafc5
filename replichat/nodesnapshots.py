# -*- test-case-name: tests.test_node,tests.test_disk_faults -*-
"""
Snapshots: taking one when enough has been applied (then compacting the
log), sending one in chunks to a follower that needs entries compacted
away, and installing one received from the leader.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, succeed

from replichat import merge
from replichat.entries import CorruptSnapshot, Snapshot
from replichat.nodeleader import Progress
from replichat.peermessages import LEADER, SnapshotChunk, SnapshotReply
from replichat.state import ChatState

#: Seconds to wait before trying again after a snapshot failed.
SNAPSHOT_RETRY_DELAY = 60.0

#: Bytes of snapshot per SnapshotChunk.
SNAPSHOT_CHUNK_BYTES = 1 * 2**20


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


class _Snapshots:
    """
    The snapshots of L{replichat.node.Node}.

    Keeps C{_snapshotting}, C{_snapshot_retry_at}, C{_snapshot_index} and
    C{_bytes_since_snapshot}, writes through C{snapshot_writer} and
    compacts C{disk_log} no further than C{_stable}.  As a leader it sends
    C{progress.snapshot} (L{replichat.nodeleader.Progress}); as a follower
    it gathers C{_snapshot_in} and installs it, resetting C{state},
    C{commit_index}, C{_matched} and C{_configs}.
    """

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
        self._note_epoch(message.epoch)
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
        log = self.disk_log
        if snapshot.index <= self.commit_index and self._holds(snapshot.index, snapshot.epoch):
            return True
        try:
            state = ChatState.from_snapshot(snapshot.data)
        except Exception as error:
            self.log.error("a received snapshot is unreadable: {error}", error=error)
            return False
        if state.applied_index != snapshot.index:
            self.log.error(
                "a received snapshot {index} holds the state at {applied}",
                index=snapshot.index,
                applied=state.applied_index,
            )
            return False
        # Whatever this log holds past the entries every member has may be
        # a healed partition's divergent suffix: hand it in before it goes.
        start = max(self._stable, log.base_index) + 1
        found = merge.orphans(self._decoded(start, log.last_index), self.commit_index)
        try:
            if found:
                self._save_orphans(self._orphans + found)
            self.snapshots.save(snapshot)
            log.reset(snapshot.index, snapshot.epoch)
        except OSError as error:
            self._fail("installing a snapshot failed: %s" % (error,))
            return False
        self.log.info("installed snapshot {index} from the leader", index=snapshot.index)
        self._use_state(state)  # the log is empty after it: no configurations
        self._matched = snapshot.index
        self._membership_changed()
        return True

    def _holds(self, index: int, epoch: int) -> bool:
        """
        Whether this log has the entry (C{index}, C{epoch}), or compacted it.
        """
        log = self.disk_log
        if index < log.base_index:
            return True
        return index <= log.last_index and log.epoch_at(index) == epoch
