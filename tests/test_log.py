# -*- test-case-name: tests.test_log -*-
"""
Tests for L{replichat.log} and L{replichat.testing.MemoryLog}.

L{LogContractMixin} states what every L{ILog} does and runs against the real
log (with large and with tiny segments) and against the fake.  The recovery
tests for the on-disk format are in L{tests.test_log_recovery}.
"""

import os

from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from replichat.entries import Entry
from replichat.interfaces import ILog
from replichat.log import LogFailed, SegmentedLog
from replichat.testing import MemoryLog


def make_entries(first, last, epoch=1, size=10):
    """
    Entries C{first} to C{last} of one epoch, each with C{size} bytes of
    data that differ from entry to entry.
    """
    return [Entry(i, epoch, (b"%d:" % (i,) + b"x" * size)[:size]) for i in range(first, last + 1)]


def state(log):
    """
    Every attribute of an L{ILog}, in the order the interface lists them.
    """
    return (log.base_index, log.base_epoch, log.first_index, log.last_index, log.last_epoch, log.synced_index)


class LogContractMixin:
    """
    What every L{ILog} does.  Mix into a L{SynchronousTestCase} that defines
    L{make_log} and L{reopen}.
    """

    def make_log(self):
        """
        @return: a new, empty L{ILog}.
        """
        raise NotImplementedError()

    def reopen(self, log):
        """
        Simulate a restart, losing at most what was not synced.

        @return: the L{ILog} to use from now on.
        """
        raise NotImplementedError()

    def test_interface(self):
        """
        The log provides L{ILog}.
        """
        self.assertTrue(verifyObject(ILog, self.make_log()))

    def test_empty(self):
        """
        A new log is empty after (0, 0).
        """
        log = self.make_log()
        self.assertEqual(
            state(log),
            (0, 0, 1, 0, 0, 0),
        )
        self.assertEqual(log.read(1), [])
        self.assertEqual(log.epoch_at(0), 0)
        self.assertRaises(IndexError, log.epoch_at, 1)

    def test_append_read(self):
        """
        Appended entries are read back, whole or by range, and C{last_index}
        and C{last_epoch} follow the last one.
        """
        log = self.make_log()
        entries = make_entries(1, 3, epoch=1) + make_entries(4, 6, epoch=2)
        log.append(entries[:2])
        log.append(entries[2:])
        self.assertEqual(log.read(1), entries)
        self.assertEqual(log.read(2, 5), entries[1:4])
        self.assertEqual(log.read(4, 100), entries[3:])
        self.assertEqual(log.read(5, 3), [])
        self.assertEqual(log.read(7), [])
        self.assertEqual((log.last_index, log.last_epoch), (6, 2))

    def test_epoch_at(self):
        """
        C{epoch_at} gives each entry's epoch and refuses indexes not held.
        """
        log = self.make_log()
        log.append(make_entries(1, 2, epoch=1) + make_entries(3, 3, epoch=4) + make_entries(4, 5, epoch=9))
        self.assertEqual([log.epoch_at(i) for i in range(0, 6)], [0, 1, 1, 4, 9, 9])
        self.assertRaises(IndexError, log.epoch_at, 6)
        self.assertRaises(IndexError, log.epoch_at, -1)

    def test_append_gap_rejected(self):
        """
        Entries that do not continue the log are refused, the whole batch.
        """
        log = self.make_log()
        log.append(make_entries(1, 2))
        self.assertRaises(ValueError, log.append, make_entries(4, 4))
        self.assertRaises(ValueError, log.append, make_entries(2, 2))
        self.assertRaises(ValueError, log.append, make_entries(3, 3) + make_entries(5, 5))
        self.assertEqual(log.last_index, 2)
        self.assertEqual(log.read(1), make_entries(1, 2))

    def test_append_decreasing_epoch_rejected(self):
        """
        An entry may not have a lower epoch than the one before it.
        """
        log = self.make_log()
        log.append(make_entries(1, 1, epoch=3))
        self.assertRaises(ValueError, log.append, make_entries(2, 2, epoch=2))
        self.assertRaises(ValueError, log.append, [Entry(2, 3, b""), Entry(3, 1, b"")])
        self.assertEqual(log.last_index, 1)

    def test_append_iterable(self):
        """
        Any iterable of entries may be appended, a generator too.
        """
        log = self.make_log()
        log.append(entry for entry in make_entries(1, 3))
        self.assertEqual(log.read(1), make_entries(1, 3))

    def test_append_nothing(self):
        """
        Appending no entries changes nothing.
        """
        log = self.make_log()
        log.append([])
        self.assertEqual((log.last_index, log.read(1)), (0, []))

    def test_sync(self):
        """
        After C{sync}, every appended entry is durable.
        """
        log = self.make_log()
        log.append(make_entries(1, 4))
        log.sync()
        self.assertEqual(log.synced_index, 4)
        log.append(make_entries(5, 5))
        log.sync()
        self.assertEqual(log.synced_index, 5)

    def test_read_max_bytes(self):
        """
        C{read} stops before C{max_bytes} of data is exceeded, but returns at
        least one entry.
        """
        log = self.make_log()
        entries = make_entries(1, 6, size=10)
        log.append(entries)
        self.assertEqual(log.read(1, max_bytes=25), entries[:2])
        self.assertEqual(log.read(2, max_bytes=30), entries[1:4])
        self.assertEqual(log.read(3, max_bytes=0), entries[2:3])
        self.assertEqual(log.read(1, 3, max_bytes=1000), entries[:2])
        self.assertEqual(log.read(1, max_bytes=1000), entries)

    def test_read_compacted(self):
        """
        Reading from below C{first_index} is an L{IndexError}.
        """
        log = self.make_log()
        self.assertRaises(IndexError, log.read, 0)
        log.append(make_entries(1, 5))
        log.compact(2)
        self.assertRaises(IndexError, log.read, 2)

    def test_truncate_after(self):
        """
        C{truncate_after} drops later entries durably, and the log continues
        from the kept ones, possibly in a new epoch.
        """
        log = self.make_log()
        log.append(make_entries(1, 5, epoch=2))
        log.truncate_after(3)
        self.assertEqual((log.last_index, log.last_epoch, log.synced_index), (3, 2, 3))
        log.append(make_entries(4, 4, epoch=5))
        log.truncate_after(10)
        log.sync()
        log = self.reopen(log)
        self.assertEqual(log.read(1), make_entries(1, 3, epoch=2) + make_entries(4, 4, epoch=5))

    def test_truncate_below_base(self):
        """
        Truncating to the base empties the log; below it is refused.
        """
        log = self.make_log()
        log.append(make_entries(1, 5, epoch=1) + make_entries(6, 9, epoch=3))
        log.compact(6)
        log.truncate_after(6)
        self.assertEqual((log.last_index, log.last_epoch, log.read(7)), (6, 3, []))
        self.assertRaises(ValueError, log.truncate_after, 5)
        log.append(make_entries(7, 7, epoch=4))
        self.assertEqual(log.read(7), make_entries(7, 7, epoch=4))

    def test_compact(self):
        """
        After C{compact}, the base is the compacted entry and the entries
        after it are kept.
        """
        log = self.make_log()
        log.append(make_entries(1, 4, epoch=1) + make_entries(5, 10, epoch=2))
        log.compact(5)
        self.assertEqual((log.base_index, log.base_epoch, log.first_index), (5, 2, 6))
        self.assertEqual(log.epoch_at(5), 2)
        self.assertRaises(IndexError, log.epoch_at, 4)
        self.assertEqual(log.read(6), make_entries(6, 10, epoch=2))
        log.compact(3)
        self.assertEqual(log.base_index, 5)
        log.append(make_entries(11, 11, epoch=2))
        self.assertEqual(log.last_index, 11)

    def test_compact_beyond_last(self):
        """
        Entries not in the log cannot be compacted.
        """
        log = self.make_log()
        log.append(make_entries(1, 3))
        self.assertRaises(IndexError, log.compact, 4)
        self.assertEqual(log.base_index, 0)

    def test_compact_reopen(self):
        """
        After compaction and a restart the entries after the compacted index
        are all there; the base may be lower, never higher.
        """
        log = self.make_log()
        entries = make_entries(1, 30)
        log.append(entries)
        log.sync()
        log.compact(17)
        log = self.reopen(log)
        self.assertLessEqual(log.base_index, 17)
        self.assertEqual(log.read(18), entries[17:])
        self.assertEqual(log.read(log.first_index), entries[log.base_index :])

    def test_reset(self):
        """
        C{reset} empties the log and restarts it after the given entry.
        """
        log = self.make_log()
        log.append(make_entries(1, 5))
        log.reset(100, 7)
        self.assertEqual(
            state(log),
            (100, 7, 101, 100, 7, 100),
        )
        self.assertEqual((log.read(101), log.epoch_at(100)), ([], 7))
        self.assertRaises(ValueError, log.append, make_entries(101, 101, epoch=6))
        self.assertRaises(ValueError, log.append, make_entries(6, 6, epoch=7))
        log.append(make_entries(101, 102, epoch=7))
        log.sync()
        log = self.reopen(log)
        self.assertEqual((log.base_index, log.base_epoch), (100, 7))
        self.assertEqual(log.read(101), make_entries(101, 102, epoch=7))

    def test_reset_lower(self):
        """
        A log may be reset to before its current end.
        """
        log = self.make_log()
        log.append(make_entries(1, 20))
        log.reset(3, 1)
        log = self.reopen(log)
        self.assertEqual((log.base_index, log.last_index, log.read(4)), (3, 3, []))

    def test_reopen_keeps_synced(self):
        """
        A restart keeps every synced entry, and what it keeps is synced.
        """
        log = self.make_log()
        entries = make_entries(1, 7)
        log.append(entries[:5])
        log.sync()
        log.append(entries[5:])
        log = self.reopen(log)
        self.assertIn(log.last_index, (5, 7))
        self.assertEqual(log.read(1), entries[: log.last_index])
        self.assertEqual(log.synced_index, log.last_index)
        end = log.last_index
        log.append(make_entries(end + 1, end + 1))
        self.assertEqual(log.last_index, end + 1)


class SegmentedLogTests(LogContractMixin, SynchronousTestCase):
    """
    L{SegmentedLog} with the default segment size keeps the contract.
    """

    segment_bytes = 16 * 2**20

    def make_log(self):
        log = SegmentedLog(self.mktemp(), segment_bytes=self.segment_bytes)
        self.addCleanup(log.close)
        return log

    def reopen(self, log):
        log.close()
        log = SegmentedLog(log.directory, segment_bytes=self.segment_bytes)
        self.addCleanup(log.close)
        return log


class SmallSegmentLogTests(SegmentedLogTests):
    """
    L{SegmentedLog} with segments of a few entries keeps the contract.
    """

    segment_bytes = 100


class MemoryLogTests(LogContractMixin, SynchronousTestCase):
    """
    L{MemoryLog} keeps the contract, and loses unsynced entries in a crash.
    """

    def make_log(self):
        return MemoryLog()

    def reopen(self, log):
        log.crash()
        return log

    def test_crash(self):
        """
        C{crash} drops exactly the entries appended after the last sync.
        """
        log = MemoryLog()
        log.append(make_entries(1, 3))
        log.sync()
        log.append(make_entries(4, 6))
        self.assertEqual(log.synced_index, 3)
        log.crash()
        self.assertEqual((log.last_index, log.synced_index), (3, 3))
        self.assertEqual(log.read(1), make_entries(1, 3))


class SegmentedLogWritingTests(SynchronousTestCase):
    """
    How L{SegmentedLog} writes: files, system calls, failures.
    """

    def setUp(self):
        self.directory = self.mktemp()

    def open(self, segment_bytes=16 * 2**20):
        log = SegmentedLog(self.directory, segment_bytes=segment_bytes)
        self.addCleanup(log.close)
        return log

    def segments(self):
        return sorted(name for name in os.listdir(self.directory) if name.endswith(".seg"))

    def test_first_segment(self):
        """
        Opening an empty directory creates the first segment, holding only a
        header after (0, 0).
        """
        self.open()
        self.assertEqual(self.segments(), ["00000000000000000001.seg"])
        with open(os.path.join(self.directory, self.segments()[0]), "rb") as f:
            self.assertEqual(f.read()[:24], b"RCHLOG01" + bytes(16))

    def test_one_write_one_sync(self):
        """
        One append is one write, however many entries; durability waits for
        C{sync}, which is one fdatasync, skipped if nothing is new.
        """
        calls = []
        log = self.open()

        def count(name):
            real = getattr(os, name)
            self.patch(os, name, lambda *args: calls.append(name) or real(*args))

        count("pwrite")
        count("fdatasync")
        log.append(make_entries(1, 64))
        self.assertEqual((calls, log.synced_index), (["pwrite"], 0))
        log.sync()
        log.sync()
        self.assertEqual((calls, log.synced_index), (["pwrite", "fdatasync"], 64))

    def fill(self, log, first=1, last=20):
        """
        Append entries C{first} to C{last} one by one: with C{segment_bytes}
        of 200, each segment holds four.
        """
        entries = make_entries(first, last, size=30)
        for entry in entries:
            log.append([entry])
        return entries

    def test_roll(self):
        """
        A segment grown past C{segment_bytes} is synced and followed by a new
        one named after its first index; the log reads across segments,
        also after a restart.
        """
        log = self.open(segment_bytes=200)
        entries = self.fill(log, 1, 3)
        self.assertEqual((log.synced_index, self.segments()), (0, ["%020d.seg" % (1,)]))
        entries += self.fill(log, 4, 4)
        self.assertEqual(log.synced_index, 4)
        log.close()
        log = self.open(segment_bytes=200)
        entries += self.fill(log, 5, 20)
        self.assertEqual(self.segments(), ["%020d.seg" % (i,) for i in (1, 5, 9, 13, 17, 21)])
        log.close()
        log = self.open(segment_bytes=200)
        self.assertEqual(log.read(1), entries)
        self.assertEqual(log.read(2, max_bytes=100), entries[1:4])
        self.assertEqual([log.epoch_at(i) for i in (4, 5, 20)], [1, 1, 1])

    def test_compact_removes_segments(self):
        """
        Compaction removes the segments holding only compacted entries; after
        a restart the base is where the first kept segment starts.
        """
        log = self.open(segment_bytes=200)
        entries = self.fill(log)
        log.compact(10)
        self.assertEqual(self.segments()[0], "%020d.seg" % (9,))
        log.close()
        log = self.open(segment_bytes=200)
        self.assertEqual((log.base_index, log.read(9)), (8, entries[8:]))

    def test_compact_keeps_last_segment(self):
        """
        Compacting everything keeps the last segment, so the log still knows
        where it ends.
        """
        log = self.open(segment_bytes=200)
        log.append(make_entries(1, 6, epoch=3, size=30))
        log.compact(6)
        self.assertEqual(self.segments(), ["%020d.seg" % (7,)])
        log.close()
        log = self.open(segment_bytes=200)
        self.assertEqual((log.base_index, log.last_index, log.base_epoch), (6, 6, 3))

    def test_truncate_removes_segments(self):
        """
        Truncation removes later segments and cuts the one holding the kept
        end; a restart sees the same.
        """
        log = self.open(segment_bytes=200)
        entries = self.fill(log)
        log.truncate_after(5)
        self.assertEqual(self.segments(), ["%020d.seg" % (i,) for i in (1, 5)])
        log.append(make_entries(6, 9, epoch=2))
        log.close()
        log = self.open(segment_bytes=200)
        self.assertEqual(log.read(1), entries[:5] + make_entries(6, 9, epoch=2))

    def test_failed_sync_is_final(self):
        """
        After a failed fsync the log refuses every change, even if the disk
        works again, because the failed data may be lost for good.
        """
        log = self.open()
        log.append(make_entries(1, 2))

        def fail(fd):
            raise OSError(5, "EIO injected")

        self.patch(os, "fdatasync", fail)
        self.assertRaises(OSError, log.sync)
        self.assertEqual(log.synced_index, 0)
        self.patch(os, "fdatasync", lambda fd: None)
        self.assertRaises(LogFailed, log.sync)
        self.assertRaises(LogFailed, log.append, make_entries(3, 3))
        self.assertRaises(LogFailed, log.truncate_after, 1)
        self.assertEqual(log.read(1), make_entries(1, 2))
