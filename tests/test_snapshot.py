# -*- test-case-name: tests.test_snapshot -*-
"""
Tests for L{replichat.snapshot} and L{replichat.testing.MemorySnapshotStore}.

L{SnapshotStoreContractMixin} states what every L{ISnapshotStore} does and
runs against the file store and the fake.
"""

import os

from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from replichat.entries import CorruptSnapshot, Snapshot
from replichat.interfaces import ISnapshotStore
from replichat import snapshot as snapshot_module
from replichat.snapshot import FileSnapshotStore
from replichat.testing import MemorySnapshotStore


class SnapshotStoreContractMixin:
    """
    What every L{ISnapshotStore} does.  Mix into a L{SynchronousTestCase}
    that defines L{make_store}.
    """

    def make_store(self):
        """
        @return: a new, empty L{ISnapshotStore}.
        """
        raise NotImplementedError()

    def corrupt(self, store, index):
        """
        Damage the snapshot at C{index} in C{store}, so that it loads as a
        L{CorruptSnapshot}.
        """
        raise NotImplementedError()

    def test_interface(self):
        """
        The store provides L{ISnapshotStore}.
        """
        self.assertTrue(verifyObject(ISnapshotStore, self.make_store()))

    def test_empty(self):
        """
        A new store holds no snapshot.
        """
        store = self.make_store()
        self.assertEqual((store.indexes(), list(store.load_all())), ([], []))

    def test_save_load(self):
        """
        A saved snapshot loads back whole.
        """
        store = self.make_store()
        snapshot = Snapshot(42, 3, b"state\x00\xff" * 100)
        store.save(snapshot)
        self.assertEqual((store.indexes(), list(store.load_all())), ([42], [snapshot]))

    def test_empty_data(self):
        """
        A snapshot may hold no data.
        """
        store = self.make_store()
        store.save(Snapshot(0, 0, b""))
        self.assertEqual(list(store.load_all()), [Snapshot(0, 0, b"")])

    def test_keeps_newest_two(self):
        """
        Only the two snapshots with the highest indexes are kept, newest
        first, whatever the order they were saved in.
        """
        store = self.make_store()
        for index in (10, 30, 20, 5):
            store.save(Snapshot(index, 1, b"%d" % (index,)))
        self.assertEqual(store.indexes(), [30, 20])
        self.assertEqual(list(store.load_all()), [Snapshot(30, 1, b"30"), Snapshot(20, 1, b"20")])

    def test_save_again(self):
        """
        Saving at an index already stored replaces that snapshot.
        """
        store = self.make_store()
        store.save(Snapshot(7, 1, b"old"))
        store.save(Snapshot(7, 2, b"new"))
        self.assertEqual(list(store.load_all()), [Snapshot(7, 2, b"new")])


    def test_corrupt_index(self):
        """
        A corrupt snapshot says its index, for L{ISnapshotStore.quarantine}.
        """
        store = self.make_store()
        store.save(Snapshot(1, 1, b"a"))
        store.save(Snapshot(2, 1, b"b"))
        self.corrupt(store, 2)
        loaded = list(store.load_all())
        self.assertIsInstance(loaded[0], CorruptSnapshot)
        self.assertEqual((loaded[0].index, loaded[1:]), (2, [Snapshot(1, 1, b"a")]))

    def test_quarantine(self):
        """
        A quarantined snapshot is no longer listed nor loaded, and does not
        count as one of the two kept: the next saves keep two intact ones.
        """
        store = self.make_store()
        store.save(Snapshot(1, 1, b"a"))
        store.save(Snapshot(2, 1, b"b"))
        self.corrupt(store, 2)
        store.quarantine(2)
        self.assertEqual((store.indexes(), list(store.load_all())), ([1], [Snapshot(1, 1, b"a")]))
        store.save(Snapshot(3, 1, b"c"))
        self.assertEqual(list(store.load_all()), [Snapshot(3, 1, b"c"), Snapshot(1, 1, b"a")])
        store.save(Snapshot(4, 1, b"d"))
        self.assertEqual(list(store.load_all()), [Snapshot(4, 1, b"d"), Snapshot(3, 1, b"c")])

    def test_quarantine_missing(self):
        """
        Quarantining an index with no snapshot does nothing.
        """
        store = self.make_store()
        store.save(Snapshot(1, 1, b"a"))
        store.quarantine(2)
        self.assertEqual(list(store.load_all()), [Snapshot(1, 1, b"a")])


class FileSnapshotStoreTests(SnapshotStoreContractMixin, SynchronousTestCase):
    """
    L{FileSnapshotStore} keeps the contract, durably, and reports damaged
    files.
    """

    def setUp(self):
        self.directory = self.mktemp()

    def make_store(self):
        return FileSnapshotStore(self.directory)

    def path(self, index):
        return os.path.join(self.directory, "%020d.snap" % (index,))

    def corrupt(self, store, index):
        with open(self.path(index), "r+b") as f:
            f.seek(-1, os.SEEK_END)
            byte = f.read(1)
            f.seek(-1, os.SEEK_END)
            f.write(bytes([byte[0] ^ 1]))

    def test_quarantine_file(self):
        """
        Quarantine renames the file to C{.snap.corrupt}, whole, and fsyncs
        the directory; the file is kept, through later saves and pruning,
        and ignored when the store is opened again.
        """
        store = self.make_store()
        store.save(Snapshot(1, 1, b"a"))
        store.save(Snapshot(2, 1, b"b"))
        self.corrupt(store, 2)
        with open(self.path(2), "rb") as f:
            damaged = f.read()
        synced = []
        self.patch(snapshot_module, "fsync_directory", synced.append)
        store.quarantine(2)
        self.assertEqual(synced, [self.directory])
        quarantined = self.path(2) + ".corrupt"
        with open(quarantined, "rb") as f:
            self.assertEqual(f.read(), damaged)
        self.assertFalse(os.path.exists(self.path(2)))
        for index in (3, 4, 5):
            store.save(Snapshot(index, 1, b"%d" % (index,)))
        store = self.make_store()
        self.assertEqual(store.indexes(), [5, 4])
        self.assertEqual(
            sorted(os.listdir(self.directory)),
            ["%020d.snap.corrupt" % (2,), "%020d.snap" % (4,), "%020d.snap" % (5,)],
        )

    def test_files(self):
        """
        Snapshots survive reopening, one file each, and no temporary file is
        left behind.
        """
        self.make_store().save(Snapshot(1, 1, b"one"))
        self.make_store().save(Snapshot(2, 1, b"two"))
        self.assertEqual(sorted(os.listdir(self.directory)), ["%020d.snap" % (i,) for i in (1, 2)])
        self.assertEqual(list(self.make_store().load_all()), [Snapshot(2, 1, b"two"), Snapshot(1, 1, b"one")])
        with open(self.path(2), "rb") as f:
            self.assertEqual(f.read(8), b"RCHSNP01")

    def test_leftovers_removed(self):
        """
        Temporary files of an interrupted save are removed on opening; other
        files are left alone.
        """
        os.mkdir(self.directory)
        names = [".%020d.snap.ab12cd.tmp" % (3,), "README"]
        for name in names:
            with open(os.path.join(self.directory, name), "wb") as f:
                f.write(b"partial")
        store = self.make_store()
        self.assertEqual((os.listdir(self.directory), store.indexes()), (["README"], []))

    def test_flipped_bit(self):
        """
        A bit flipped anywhere in the file, header or data, makes it a
        L{CorruptSnapshot} naming the file, and the older snapshot is still
        loaded after it.
        """
        store = self.make_store()
        store.save(Snapshot(1, 1, b"older"))
        store.save(Snapshot(2, 5, b"some state"))
        with open(self.path(2), "rb") as f:
            content = f.read()
        for n in range(len(content)):
            with open(self.path(2), "wb") as f:
                f.write(content[:n] + bytes([content[n] ^ (1 << n % 8)]) + content[n + 1 :])
            loaded = list(store.load_all())
            self.assertEqual(loaded[1:], [Snapshot(1, 1, b"older")])
            self.assertIsInstance(loaded[0], CorruptSnapshot)
            self.assertEqual(loaded[0].path, self.path(2))

    def test_reasons(self):
        """
        The reason says what is wrong with the file.
        """
        store = self.make_store()
        store.save(Snapshot(2, 5, b"some state"))
        with open(self.path(2), "rb") as f:
            content = f.read()
        for damaged, reason in [
            (content[:20], "file too short for a header (20 bytes)"),
            (content[:-3], "header says 10 bytes of data, file holds 7"),
            (content + b"x", "header says 10 bytes of data, file holds 11"),
            (b"X" + content[1:], "bad magic b'XCHSNP01'"),
            (content[:-1] + b"!", "CRC mismatch"),
        ]:
            with open(self.path(2), "wb") as f:
                f.write(damaged)
            self.assertEqual(list(store.load_all()), [CorruptSnapshot(self.path(2), reason, index=2)])

    def test_misnamed(self):
        """
        A file whose name and header disagree on the index is corrupt.
        """
        store = self.make_store()
        store.save(Snapshot(2, 5, b"state"))
        os.rename(self.path(2), self.path(3))
        self.assertEqual(list(store.load_all()), [CorruptSnapshot(self.path(3), "header says index 2", index=3)])

    def test_forked_child(self):
        """
        A forked child process, with no reactor running in it, can save a
        snapshot that the parent then loads.
        """
        store = self.make_store()
        pid = os.fork()
        if pid == 0:
            try:
                store.save(Snapshot(9, 2, b"from the child"))
            finally:
                os._exit(0 if store.indexes() == [9] else 1)
        _, status = os.waitpid(pid, 0)
        self.assertEqual(os.waitstatus_to_exitcode(status), 0)
        self.assertEqual(list(store.load_all()), [Snapshot(9, 2, b"from the child")])


class MemorySnapshotStoreTests(SnapshotStoreContractMixin, SynchronousTestCase):
    """
    L{MemorySnapshotStore} keeps the contract.
    """

    def make_store(self):
        return MemorySnapshotStore()

    def corrupt(self, store, index):
        store.corrupt(index)

    def test_quarantined(self):
        """
        C{quarantined} lists the indexes set aside.
        """
        store = MemorySnapshotStore()
        store.save(Snapshot(1, 1, b"a"))
        store.quarantine(1)
        store.quarantine(2)
        self.assertEqual(store.quarantined, [1])

    def test_corrupt(self):
        """
        C{corrupt} makes a snapshot load as a L{CorruptSnapshot}.
        """
        store = MemorySnapshotStore()
        store.save(Snapshot(1, 1, b"a"))
        store.save(Snapshot(2, 1, b"b"))
        store.corrupt(2, "bit rot")
        self.assertEqual(
            list(store.load_all()),
            [CorruptSnapshot("memory:2", "bit rot", index=2), Snapshot(1, 1, b"a")],
        )
