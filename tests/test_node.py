# -*- test-case-name: tests.test_node -*-
"""
Tests for L{replichat.node}: group commit, epochs, recovery from snapshot
plus log, crash points, and the snapshot policy, on in-memory storage and the
real on-disk storage alike.
"""

from __future__ import annotations

import os

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from replichat.log import SegmentedLog
from replichat.metastore import MemoryMetaStore, MetaStore
from replichat.node import Node, RecoveryError, decode_command
from replichat.snapshot import FileSnapshotStore
from replichat.state import ChatState
from replichat import election
from replichat.testing import MemoryLog, MemorySnapshotStore

PASSWORD = {"alg": "scrypt", "n": 16, "r": 8, "p": 1, "salt": "", "hash": ""}


class Disk:
    """
    The storage of one node, surviving its restarts.
    """

    def __init__(self) -> None:
        self.log = MemoryLog()
        self.snapshots = MemorySnapshotStore()
        self.meta = MemoryMetaStore()

    def node(self, clock: Clock, snapshot_every: int = 1000) -> Node:
        node = Node(1, self.log, self.snapshots, self.meta, clock, snapshot_every=snapshot_every)
        node.start()
        return node

    def crash(self) -> None:
        self.log.crash()


def create(node: Node, name: str):
    return node.propose({"op": "create_account", "who": None, "username": name,
                         "password": PASSWORD, "ts": 1.0})


def fill(node: Node, clock: Clock, prefix: str, batches: int = 5, size: int = 7) -> None:
    """
    Create C{batches * size} accounts, one reactor turn (one batch) per
    C{size}.
    """
    for batch in range(batches):
        for i in range(size):
            create(node, "%s%d-%d" % (prefix, batch, i))
        clock.advance(0)


class CommitTests(SynchronousTestCase):
    """
    The leader's commit path.
    """

    def test_group_commit(self) -> None:
        """
        Commands proposed in one reactor turn are one batch: not applied
        before the flush, all applied after it, with consecutive indexes.
        """
        clock = Clock()
        disk = Disk()
        node = disk.node(clock)
        start = disk.log.last_index
        ds = [create(node, "u%d" % i) for i in range(5)]
        for d in ds:
            self.assertNoResult(d)
        self.assertEqual(disk.log.last_index, start)
        clock.advance(0)
        results = [self.successResultOf(d).result for d in ds]
        self.assertEqual(results, [{"username": "u%d" % i} for i in range(5)])
        self.assertEqual(disk.log.synced_index, start + 5)
        self.assertEqual(node.commit_index, start + 5)
        self.assertEqual(node.state.applied_index, start + 5)

    def test_epoch_per_start(self) -> None:
        """
        Each start takes a new epoch, durable before use, and commits a
        marker entry in it.
        """
        disk = Disk()
        # Rounds 1, 2, 3, in node 1's residue (election.next_epoch).
        for expected in (1001, 2001, 3001):
            node = disk.node(Clock())
            self.assertEqual(node.epoch, expected)
            self.assertEqual(disk.meta.document["epoch"], expected)
            [marker] = disk.log.read(node._marker_index, node._marker_index + 1)
            self.assertEqual((marker.epoch, decode_command(marker.data)), (expected, {"op": "noop"}))
            self.assertTrue(node.serving)

    def test_epoch_not_behind_log(self) -> None:
        """
        An epoch record lost behind the log (say, restored from an old
        backup) still yields an epoch above every logged one.
        """
        disk = Disk()
        disk.node(Clock())
        disk.node(Clock())
        disk.meta.document = {}
        self.assertEqual(disk.node(Clock()).epoch, 3001)

    def test_foreign_data_dir(self) -> None:
        """
        A data directory that belongs to another node id is refused.
        """
        disk = Disk()
        disk.node(Clock())
        other = Node(2, disk.log, disk.snapshots, disk.meta, Clock())
        self.assertRaises(RecoveryError, other.start)


class RecoveryTests(SynchronousTestCase):
    """
    Restarting rebuilds exactly the acknowledged state.
    """

    def run_commands(self, node: Node, clock: Clock, count: int) -> list:
        ds = [create(node, "user%d" % i) for i in range(count)]
        clock.advance(0)
        return [self.successResultOf(d) for d in ds]

    def test_restart_same_state(self) -> None:
        """
        After a crash, a restarted node has the same state as before.
        """
        clock = Clock()
        disk = Disk()
        node = disk.node(clock)
        self.run_commands(node, clock, 30)
        digest = node.state.digest()
        disk.crash()
        again = disk.node(Clock())
        # The new node's marker entry is the only difference.
        expected = ChatState.from_snapshot(node.state.to_snapshot())
        expected.apply(expected.applied_index + 1, {"op": "noop"})
        self.assertEqual(again.state.digest(), expected.digest())
        self.assertNotEqual(again.state.digest(), digest)
        self.assertEqual(len(again.state.accounts), 30)

    def test_unsynced_lost_unacknowledged(self) -> None:
        """
        Commands still in the batch at a crash were never acknowledged and
        are gone after the restart; everything acknowledged is there.
        """
        clock = Clock()
        disk = Disk()
        node = disk.node(clock)
        self.run_commands(node, clock, 3)
        pending = create(node, "late")
        disk.crash()
        self.assertNoResult(pending)
        again = disk.node(Clock())
        self.assertIsNone(again.state.account_named("late"))
        self.assertIsNotNone(again.state.account_named("user2"))

    def test_snapshot_and_compaction(self) -> None:
        """
        Snapshots are taken every C{snapshot_every} entries; the log is
        compacted to the second newest; restart uses snapshot plus log.
        """
        clock = Clock()
        disk = Disk()
        node = disk.node(clock, snapshot_every=10)
        for batch in range(5):
            ds = [create(node, "b%d-%d" % (batch, i)) for i in range(7)]
            clock.advance(0)
            for d in ds:
                self.successResultOf(d)
        indexes = disk.snapshots.indexes()
        self.assertEqual(len(indexes), 2)
        self.assertEqual(disk.log.base_index, indexes[1])
        again = disk.node(Clock(), snapshot_every=10)
        self.assertEqual(len(again.state.accounts), 35)

    def test_snapshot_by_bytes(self) -> None:
        """
        A snapshot is also taken once enough entry bytes were logged, even
        if there are few entries.
        """
        clock = Clock()
        disk = Disk()
        node = Node(1, disk.log, disk.snapshots, disk.meta, clock,
                    snapshot_every=10**6, snapshot_every_bytes=2000)
        node.start()
        fill(node, clock, "x" * 50, batches=1, size=5)
        self.assertEqual(disk.snapshots.indexes(), [])
        fill(node, clock, "y" * 50, batches=1, size=15)
        self.assertEqual(disk.snapshots.indexes(), [node.state.applied_index])

    def test_corrupt_newest_snapshot(self) -> None:
        """
        A corrupt newest snapshot is skipped for the older one, which the
        log still extends.
        """
        clock = Clock()
        disk = Disk()
        node = disk.node(clock, snapshot_every=10)
        fill(node, clock, "c")
        newest = disk.snapshots.indexes()[0]
        disk.snapshots.corrupt(newest)
        again = disk.node(Clock(), snapshot_every=10)
        self.assertEqual(len(again.state.accounts), 35)
        # Set aside, so it never counts as one of the two kept snapshots.
        self.assertNotIn(newest, disk.snapshots.indexes())
        self.assertEqual(disk.snapshots.quarantined, [newest])
        self.flushLoggedErrors()

    def test_no_snapshot_for_compacted_log(self) -> None:
        """
        A compacted log without an intact snapshot covering its start is
        refused rather than served with entries missing.
        """
        clock = Clock()
        disk = Disk()
        node = disk.node(clock, snapshot_every=10)
        fill(node, clock, "d")
        for index in disk.snapshots.indexes():
            disk.snapshots.corrupt(index)
        error = self.assertRaises(RecoveryError, disk.node, Clock())
        self.assertIn("no intact snapshot", str(error))


class OnDiskTests(SynchronousTestCase):
    """
    The node on the real log, snapshot store and meta file.
    """

    def test_reopen(self) -> None:
        """
        A node restarted on the same directory (log, snapshots, meta) has
        every acknowledged account and a higher epoch.
        """
        base = self.mktemp()
        os.makedirs(base)

        def open_node() -> Node:
            node = Node(
                1,
                SegmentedLog(os.path.join(base, "log"), segment_bytes=4096),
                FileSnapshotStore(os.path.join(base, "snap")),
                MetaStore(os.path.join(base, "meta.json")),
                clock,
                snapshot_every=100,
            )
            node.start()
            return node

        clock = Clock()
        node = open_node()
        fill(node, clock, "n", batches=30, size=10)
        self.assertEqual(len(node.state.accounts), 300)
        node.disk_log.close()
        again = open_node()
        self.assertEqual(sorted(again.state.uids_by_name), sorted(node.state.uids_by_name))
        self.assertEqual(again.epoch, node.epoch + election.EPOCH_STRIDE)
        self.assertGreater(again.disk_log.base_index, 0)
