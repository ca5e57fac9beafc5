# -*- test-case-name: tests.test_node -*-
"""
A replichat node's core: recovery, the commit path and the snapshot policy.

The node owns the log, the state machine and the snapshot store, and is
driven only by method calls and an injected clock, so a test (or a whole
simulated cluster) runs it without a reactor.

The commit path is the leader's: every mutating request becomes a command
(L{propose}); commands that arrive in the same reactor turn are one batch,
appended to the log with one write and one fsync (group commit); a command is
applied to the state machine and answered only once its entry is durable.
Replication extends this path (a batch commits when every live follower has
fsynced it too) without changing its shape.
"""

from __future__ import annotations

import gc
import time
from typing import Callable

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from replichat import errors
from replichat.entries import CorruptSnapshot, Entry, Snapshot
from replichat.errors import ChatError
from replichat.jsonwire import COMPACT, DECODER
from replichat.state import ChatState, Outcome

#: How much entry data one read of the log returns while replaying.
REPLAY_CHUNK_BYTES = 8 * 2**20

#: Seconds to wait before trying again after a snapshot failed.
SNAPSHOT_RETRY_DELAY = 60.0


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


class Node:
    """
    One replichat server's core.

    @ivar state: the state machine, applied up to C{commit_index}.
    @ivar epoch: the epoch this node leads in (0 before L{start}).
    @ivar role: C{"leader"} once started (a single node always leads).
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
        self.state = ChatState()
        self.epoch = 0
        self.role = "starting"
        self.commit_index = 0
        self.failed: str | None = None
        self._batch: list[tuple[dict, bytes, Deferred]] = []
        self._flush_call = None
        self._waiting: dict[int, tuple[dict, Deferred]] = {}
        self._push_observers: list[Callable[[int, dict], None]] = []
        self._snapshot_index = 0
        self._bytes_since_snapshot = 0
        self._snapshotting = False
        self._snapshot_retry_at = 0.0

    # -- start-up ------------------------------------------------------------

    def start(self) -> None:
        """
        Recover from disk, take a new epoch and commit its marker entry.

        @raise RecoveryError: if the data cannot be recovered intact.
        """
        self.recover()
        self._take_epoch()
        self.role = "leader"
        # The marker commits the new epoch into the log before any request
        # is served in it (a new leader does the same after an election).
        self.propose({"op": "noop"})
        self.flush()

    def recover(self) -> None:
        """
        Rebuild the state from the newest intact snapshot plus the log.
        """
        started = time.monotonic()
        # Recovery allocates millions of long-lived objects; the cyclic
        # collector would rescan them all repeatedly for nothing.
        gc.disable()
        try:
            self.state = self._load_snapshot()
            self._snapshot_index = self.state.applied_index
            replayed = self._replay()
        finally:
            gc.enable()
        gc.freeze()
        self.commit_index = self.state.applied_index
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

    def _replay(self) -> int:
        state = self.state
        start = state.applied_index + 1
        last = self.disk_log.last_index
        while start <= last:
            for entry in self.disk_log.read(start, max_bytes=REPLAY_CHUNK_BYTES):
                state.apply(entry.index, decode_command(entry.data))
                self._bytes_since_snapshot += len(entry.data)
            start = state.applied_index + 1
        return last - self._snapshot_index

    def _take_epoch(self) -> None:
        document = self.meta.load()
        owner = document.get("node", self.node_id)
        if owner != self.node_id:
            raise RecoveryError(
                "this data directory belongs to node %s, not node %s"
                % (owner, self.node_id)
            )
        # The epoch is durable before any entry carries it, so a restart can
        # never reuse an epoch for different entries.
        epoch = max(document.get("epoch", 0), self.disk_log.last_epoch) + 1
        self.meta.save({**document, "node": self.node_id, "epoch": epoch})
        self.epoch = epoch

    # -- the commit path -----------------------------------------------------

    def propose(self, command: dict) -> Deferred:
        """
        Commit a command and apply it.

        @return: a Deferred firing with the L{Outcome} once the command's
            entry is durable and applied; it never fires if the node fails
            first (nothing unacknowledged is ever reported as done).
        @raise ChatError: C{unavailable} if this node cannot commit now.
        """
        if self.failed is not None or self.role != "leader":
            raise ChatError(errors.UNAVAILABLE, "this server cannot commit now; retry")
        # Encoded now, so a command that cannot be encoded fails alone
        # instead of taking its whole batch down with it.
        data = encode_command(command)
        d: Deferred = Deferred()
        self._batch.append((command, data, d))
        if self._flush_call is None:
            # Everything proposed in this reactor turn shares one fsync.
            self._flush_call = self.clock.callLater(0, self.flush)
        return d

    def flush(self) -> None:
        """
        Append and fsync the current batch, then commit and apply it.
        """
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush_call = None
        batch, self._batch = self._batch, []
        if not batch or self.failed is not None:
            return
        first = self.disk_log.last_index + 1
        entries = []
        for offset, (command, data, d) in enumerate(batch):
            index = first + offset
            entries.append(Entry(index, self.epoch, data))
            self._waiting[index] = (command, d)
            self._bytes_since_snapshot += len(data)
        try:
            self.disk_log.append(entries)
            self.disk_log.sync()
        except OSError as error:
            # A failed fsync cannot be retried safely: the kernel may have
            # dropped the dirty pages.  Stop without acknowledging anything.
            self._fail("writing the log failed: %s" % (error,))
            return
        self._commit(self.disk_log.last_index)

    def _commit(self, index: int) -> None:
        while self.commit_index < index:
            self.commit_index += 1
            command, d = self._waiting.pop(self.commit_index)
            outcome = self.state.apply(self.commit_index, command)
            self._publish(outcome)
            d.callback(outcome)
        self._maybe_snapshot()

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
                self.disk_log.compact(kept[1])
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
