# -*- test-case-name: tests.test_log_recovery -*-
"""
Tests for how L{replichat.log.SegmentedLog} recovers what a crash, a torn
write or a damaged disk left behind (L{replichat.segment} is the format).

The files are damaged by hand, byte by byte, and the expectations are those
of the design: a torn tail is cut (and logged); anything that may hold an
acknowledged entry is never silently cut.
"""

import os
import random
import shutil
import struct
import zlib

from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from replichat.entries import Entry
from replichat.fsutil import write_atomically
from replichat.log import LogCorruption, SegmentedLog
from tests.test_log import make_entries

SMALL = 100
"""A segment size that puts three 10-byte entries in each segment."""
RECORD = 34
"""The size of the record of a 10-byte entry."""


def encode_header(base_index, base_epoch):
    """
    A segment header, encoded independently of L{replichat.segment}.
    """
    head = b"RCHLOG01" + struct.pack("<QQ", base_index, base_epoch)
    return head + struct.pack("<I", zlib.crc32(head))


def encode_record(index, epoch, data):
    """
    A record, encoded independently of L{replichat.segment}.
    """
    payload = struct.pack("<QQ", index, epoch) + data
    return struct.pack("<II", len(payload), zlib.crc32(payload)) + payload


class SegmentedLogRecoveryTests(SynchronousTestCase):
    """
    L{SegmentedLog} cuts torn tails and refuses corruption when it opens.
    """

    def setUp(self):
        self.directory = self.mktemp()
        self.events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

    def open(self, directory=None, segment_bytes=16 * 2**20, cut_corrupt_tail=False):
        log = SegmentedLog(
            directory or self.directory, segment_bytes=segment_bytes, cut_corrupt_tail=cut_corrupt_tail
        )
        self.addCleanup(log.close)
        return log

    def build(self, count=5, segment_bytes=16 * 2**20, size=10):
        """
        Write entries 1 to C{count}, with C{size} bytes of data each, one
        append each, then close the log.

        @return: the entries.
        """
        log = self.open(segment_bytes=segment_bytes)
        entries = make_entries(1, count, size=size)
        for entry in entries:
            log.append([entry])
        log.sync()
        log.close()
        return entries

    def path(self, first, directory=None):
        return os.path.join(directory or self.directory, "%020d.seg" % (first,))

    def flip(self, path, offset):
        """
        Flip one bit of the byte at C{offset}, a different bit for each
        offset so that every bit position gets its turn.
        """
        with open(path, "r+b") as f:
            f.seek(offset)
            byte = f.read(1)[0]
            f.seek(offset)
            f.write(bytes([byte ^ (1 << offset % 8)]))

    def zero(self, path, begin, end):
        """
        Overwrite bytes C{begin} to C{end - 1} of C{path} with zeros, as a
        page never written out reads.
        """
        with open(path, "r+b") as f:
            f.seek(begin)
            f.write(bytes(end - begin))

    def copy(self):
        """
        @return: a fresh copy of the log directory.
        """
        copy = self.mktemp()
        shutil.copytree(self.directory, copy)
        return copy

    def warnings(self):
        return [e for e in self.events if e["log_level"] == LogLevel.warn]

    def contents(self, directory):
        """
        @return: a L{dict} of the name and content of every file in
            C{directory}.
        """
        result = {}
        for name in os.listdir(directory):
            with open(os.path.join(directory, name), "rb") as f:
                result[name] = f.read()
        return result

    def assertCorrupt(self, directory, path, offset=None, cut_corrupt_tail=False):
        """
        Opening the log in C{directory} fails naming C{path}, and leaves the
        files as they were.
        """
        before = self.contents(directory)
        error = self.assertRaises(LogCorruption, SegmentedLog, directory, cut_corrupt_tail=cut_corrupt_tail)
        self.assertEqual(error.path, path)
        self.assertIn(path, str(error))
        if offset is not None:
            self.assertEqual(error.offset, offset)
        self.assertEqual(self.contents(directory), before)
        return error

    def assertCorruptTail(self, directory, path, offset, index):
        """
        Opening the log in C{directory} fails on corruption at its very end
        that no torn write leaves: the message names the file, the offset
        and the entry, and tells how to accept the loss.  With
        C{cut_corrupt_tail} it is cut instead, with a warning.

        @return: the log opened with C{cut_corrupt_tail}.
        """
        error = self.assertCorrupt(directory, path, offset)
        self.assertEqual((error.index, error.tail), (index, True))
        message = str(error)
        for part in (
            "offset {}".format(offset),
            "entry {} may have been acknowledged".format(index),
            "(start with --cut-corrupt-tail to drop it and everything after it)",
        ):
            self.assertIn(part, message)
        warned = len(self.warnings())
        log = self.open(directory, cut_corrupt_tail=True)
        self.assertEqual(len(self.warnings()), warned + 1)
        event = self.warnings()[-1]
        self.assertEqual((event["offset"], event["index"], event["path"]), (offset, index, path))
        self.assertIn("may have been acknowledged", event["log_format"])
        self.assertEqual((log.last_index, os.path.getsize(path)), (index - 1, offset))
        return log

    def assertCut(self, directory, path, offset, index, segment_bytes=16 * 2**20):
        """
        Opening the log in C{directory} cuts a torn tail at C{offset} of
        C{path} from entry C{index} on, with a warning, without being told to.

        @return: the log.
        """
        warned = len(self.warnings())
        log = self.open(directory, segment_bytes)
        self.assertEqual(len(self.warnings()), warned + 1)
        event = self.warnings()[-1]
        self.assertEqual((event["offset"], event["index"], event["path"]), (offset, index, path))
        self.assertEqual((log.last_index, os.path.getsize(path)), (index - 1, offset))
        return log

    def check_torn_tail(self, segment_bytes, last_segment):
        """
        Cut the last record at each byte: every time, the entries before it
        are kept, the cut is logged, and the log goes on.
        """
        entries = self.build(5, segment_bytes)
        full = os.path.getsize(self.path(last_segment))
        start = full - RECORD
        for cut in range(start, full):
            copy = self.copy()
            os.truncate(self.path(last_segment, copy), cut)
            warned = len(self.warnings())
            log = self.open(copy, segment_bytes)
            self.assertEqual((log.last_index, log.read(1)), (4, entries[:4]))
            if cut > start:
                event = self.warnings()[warned]
                self.assertEqual(
                    (event["cut"], event["offset"], event["index"], event["path"]),
                    (cut - start, start, 5, self.path(last_segment, copy)),
                )
            self.assertEqual(len(self.warnings()), warned + (cut > start))
            log.append(make_entries(5, 5, epoch=2))
            log.sync()
            log.close()
            log = self.open(copy, segment_bytes)
            self.assertEqual(log.read(1), entries[:4] + make_entries(5, 5, epoch=2))

    def test_torn_tail(self):
        """
        A last record cut anywhere is a torn tail.
        """
        self.check_torn_tail(16 * 2**20, 1)

    def test_torn_tail_segments(self):
        """
        A torn tail is cut from the last of several segments.
        """
        self.check_torn_tail(SMALL, 4)

    def test_garbage_tail(self):
        """
        Garbage after the last record is cut, and the cut is logged.
        """
        entries = self.build(5)
        path = self.path(1)
        size = os.path.getsize(path)
        for garbage in (b"\xff" * 100, bytes(4096), encode_record(6, 1, b"0123456789")[:30]):
            with open(path, "ab") as f:
                f.write(garbage)
            log = self.open()
            self.assertEqual(log.read(1), entries)
            log.close()
            self.assertEqual(os.path.getsize(path), size)
            event = self.warnings()[-1]
            self.assertEqual((event["cut"], event["offset"], event["path"]), (len(garbage), size, path))
        self.assertEqual(len(self.warnings()), 3)

    def test_flipped_middle_record(self):
        """
        A bit flipped anywhere in a record followed by valid ones is
        corruption, reported with the file and offset, and nothing is cut.
        """
        self.build(5)
        offset = 28 + 2 * RECORD
        for n in range(RECORD):
            copy = self.copy()
            self.flip(self.path(1, copy), offset + n)
            error = self.assertCorrupt(copy, self.path(1, copy), offset)
            self.assertEqual(error.index, 3)

    def test_flipped_synced_segment(self):
        """
        Even the last record of a segment that is not the last one is never
        taken for a torn tail: that segment was synced in full.
        """
        self.build(5, SMALL)
        for n in range(RECORD):
            copy = self.copy()
            self.flip(self.path(1, copy), 28 + 2 * RECORD + n)
            self.assertCorrupt(copy, self.path(1, copy), 28 + 2 * RECORD)

    def test_flipped_last_record(self):
        """
        A bit flipped in the very last record, where it leaves a complete
        record of a plausible length, is not what a torn write leaves: that
        entry may have been acknowledged, so it is refused, unless the
        operator asks to cut it.  (A flip in its length field that makes the
        record impossible or run past the end of the file is cut like a
        torn write: see L{test_flipped_last_length}.)
        """
        entries = self.build(5, SMALL)
        for n in range(4, RECORD):  # all but the length
            copy = self.copy()
            self.flip(self.path(4, copy), 28 + RECORD + n)
            log = self.assertCorruptTail(copy, self.path(4, copy), 28 + RECORD, 5)
            self.assertEqual(log.read(1), entries[:4])

    def test_flipped_last_length(self):
        """
        A bit flipped in the length of the very last record is cut like a
        torn write when the length becomes impossible or runs past the end
        of the file, and refused when it leaves a shorter complete record.
        """
        entries = self.build(5, SMALL)
        offset = 28 + RECORD
        for n in range(4):  # the length, 26: each flip is past the end of the file
            copy = self.copy()
            self.flip(self.path(4, copy), offset + n)
            log = self.assertCut(copy, self.path(4, copy), offset, 5, SMALL)
            self.assertEqual(log.read(1), entries[:4])
        for length in (10, 0, 2**31 + 26):  # too short for index and epoch, or too long
            copy = self.copy()
            with open(self.path(4, copy), "r+b") as f:
                f.seek(offset)
                f.write(struct.pack("<I", length))
            self.assertCut(copy, self.path(4, copy), offset, 5, SMALL)
        copy = self.copy()
        with open(self.path(4, copy), "r+b") as f:
            f.seek(offset)
            f.write(struct.pack("<I", 26 ^ 8))  # 18: a shorter, complete record
        self.assertCorruptTail(copy, self.path(4, copy), offset, 5)

    def test_cut_corrupt_tail_not_followed(self):
        """
        Being told to cut a corrupt tail cuts neither a bad record followed
        by valid ones, nor one in a segment synced in full.
        """
        self.build(5, SMALL)
        for first, offset in ((1, 28 + RECORD), (1, 28 + 2 * RECORD), (4, 28)):
            copy = self.copy()
            self.flip(self.path(first, copy), offset + 12)
            error = self.assertCorrupt(copy, self.path(first, copy), offset, cut_corrupt_tail=True)
            self.assertFalse(error.tail)
            self.assertNotIn("--cut-corrupt-tail", str(error))

    def test_garbage_tail_random(self):
        """
        Random garbage after the last record, as from the torn write of a
        file system that does not zero new blocks, is cut: its first four
        bytes as a length are impossible or run past the end of the file,
        save for a chance of about one in four million for 1000 bytes.
        """
        entries = self.build(5)
        path = self.path(1)
        size = os.path.getsize(path)
        for seed in range(100):
            copy = self.copy()
            with open(self.path(1, copy), "ab") as f:
                f.write(random.Random(seed).randbytes(1000))
            log = self.assertCut(copy, self.path(1, copy), size, 6)
            self.assertEqual(log.read(1), entries)
            log.close()

    def test_zeroed_page_in_last_record(self):
        """
        A complete last record with a bad CRC where a page it overlaps
        holds only zeros is what a crash leaves when a page of an unsynced
        write never reached the disk: it is cut, wherever that page is.
        """
        # Records of 1024 bytes from offset 28: the fourth, the last, runs
        # from 3100 to 4124, over the page boundary at 4096.
        entries = self.build(4, size=1000)
        for begin, end in ((4096, 4124), (3100, 4096), (3100, 4124), (3100, 8192)):
            copy = self.copy()
            self.zero(self.path(1, copy), begin, end)
            log = self.assertCut(copy, self.path(1, copy), 3100, 4)
            self.assertEqual(log.read(1), entries[:3])
        # A record of 10024 bytes, over three pages, with the middle one lost.
        self.directory = self.mktemp()
        entries = self.build(1, size=10000)
        self.zero(self.path(1), 4096, 8192)
        log = self.assertCut(self.directory, self.path(1), 28, 1)
        self.assertEqual(log.read(1), [])

    def test_zeros_not_a_page(self):
        """
        Zeros in a complete last record that are not all of its bytes in
        some page, or are fewer than 16 bytes of it, are not a lost page:
        the record is refused as corrupt.
        """
        self.build(4, size=1000)
        copy = self.copy()
        self.zero(self.path(1, copy), 3200, 4095)
        self.assertCorruptTail(copy, self.path(1, copy), 3100, 4)
        for tail, torn in ((15, False), (16, True)):
            # The second record ends C{tail} bytes into the second page.
            directory = self.mktemp()
            log = self.open(directory)
            second = 4096 + tail - 124
            log.append([Entry(1, 1, b"a" * (second - 28 - 24)), Entry(2, 1, b"b" * 100)])
            log.sync()
            log.close()
            path = self.path(1, directory)
            self.assertEqual(os.path.getsize(path), 4096 + tail)
            self.zero(path, 4096, 4096 + tail)
            if torn:
                self.assertCut(directory, path, second, 2)
            else:
                self.assertCorruptTail(directory, path, second, 2)

    def test_zeroed_page_followed(self):
        """
        A zeroed page in a record followed by valid ones, a later page of a
        write reaching the disk before an earlier one, is refused.
        """
        self.build(5, size=1000)
        self.zero(self.path(1), 4096, 4124)
        error = self.assertCorrupt(self.directory, self.path(1), 3100, cut_corrupt_tail=True)
        self.assertEqual((error.index, error.tail), (4, False))

    def test_flipped_header(self):
        """
        A damaged header of a segment holding records is corruption, in the
        first segment as in the last.
        """
        self.build(5, SMALL)
        for first in (1, 4):
            for n in range(28):
                copy = self.copy()
                self.flip(self.path(first, copy), n)
                self.assertCorrupt(copy, self.path(first, copy), 0)

    def test_missing_segment(self):
        """
        A segment missing between two others is corruption.
        """
        self.build(8, SMALL)
        os.unlink(self.path(4))
        error = self.assertCorrupt(self.directory, self.path(7))
        self.assertEqual(error.index, 4)

    def test_segment_epoch_mismatch(self):
        """
        A segment whose header does not continue the previous one's last
        entry, epoch included, is corruption.
        """
        os.mkdir(self.directory)
        with open(self.path(1), "wb") as f:
            f.write(encode_header(0, 0) + encode_record(1, 1, b"a") + encode_record(2, 3, b"b"))
        with open(self.path(3), "wb") as f:
            f.write(encode_header(2, 2) + encode_record(3, 3, b"c"))
        self.assertCorrupt(self.directory, self.path(3), 0)

    def test_well_formed_but_wrong(self):
        """
        A record with a good checksum but a skipped index or a lower epoch
        is corruption, not a torn tail, even at the very end: it is cut
        only when the operator asks.
        """
        for records, offset in (
            ([(1, 1), (3, 1)], 28 + 25),
            ([(1, 2), (2, 1)], 28 + 25),
        ):
            directory = self.mktemp()
            os.mkdir(directory)
            path = self.path(1, directory)
            with open(path, "wb") as f:
                f.write(encode_header(0, 0) + b"".join(encode_record(i, e, b"x") for i, e in records))
            self.assertCorruptTail(directory, path, offset, 2)

    def test_torn_new_segment(self):
        """
        A last segment holding part of a header, or a bad header and nothing
        else, is what a crash while rolling leaves: it is removed.
        """
        entries = self.build(5, SMALL)
        header = encode_header(5, 1)
        for torn in [header[:n] for n in range(28)] + [b"\x00" * 28]:
            copy = self.copy()
            with open(self.path(6, copy), "wb") as f:
                f.write(torn)
            log = self.open(copy, SMALL)
            self.assertFalse(os.path.exists(self.path(6, copy)))
            log.append(make_entries(6, 6))
            self.assertEqual(log.read(1), entries + make_entries(6, 6))
        self.assertEqual(len(self.warnings()), 29)

    def test_torn_first_segment(self):
        """
        A lone first segment with a torn header is a log that was never
        written to: it is recreated empty.
        """
        os.mkdir(self.directory)
        with open(self.path(1), "wb") as f:
            f.write(encode_header(0, 0)[:11])
        log = self.open()
        self.assertEqual((log.last_index, os.path.getsize(self.path(1))), (0, 28))

    def test_torn_lone_later_segment(self):
        """
        A lone segment after compaction with a broken header is corruption:
        the log's base would be lost.
        """
        os.mkdir(self.directory)
        with open(self.path(101), "wb") as f:
            f.write(encode_header(100, 3)[:11])
        self.assertCorrupt(self.directory, self.path(101), 0)

    def test_reset_completed(self):
        """
        A reset file found on open means a reset was committed: it replaces
        every segment, also if some were already removed.
        """
        self.build(8, SMALL)
        os.unlink(self.path(1))
        write_atomically(os.path.join(self.directory, "%020d.reset" % (101,)), encode_header(100, 7))
        log = self.open()
        self.assertEqual((log.base_index, log.base_epoch, log.last_index), (100, 7, 100))
        self.assertEqual(sorted(os.listdir(self.directory)), ["%020d.seg" % (101,)])

    def test_reset_not_committed(self):
        """
        A temporary file left by a reset that crashed before its commit is
        removed, and the old log is intact.
        """
        entries = self.build(5)
        leftover = os.path.join(self.directory, ".%020d.reset.k2j3h1.tmp" % (101,))
        with open(leftover, "wb") as f:
            f.write(encode_header(100, 7))
        self.assertEqual(self.open().read(1), entries)
        self.assertFalse(os.path.exists(leftover))

    def test_other_files_ignored(self):
        """
        Files that are not segments, such as a lock file, are left alone.
        """
        entries = self.build(3)
        for name in ("lock", "notes.txt", "1.seg"):
            with open(os.path.join(self.directory, name), "wb") as f:
                f.write(b"not a segment")
        self.assertEqual(self.open().read(1), entries)
        self.assertEqual(len(os.listdir(self.directory)), 4)

    def test_open_syncs(self):
        """
        Opening fsyncs what it found, which a process crash may have left in
        the page cache only, before calling it synced.
        """
        self.build(3)
        calls = []
        real = os.fdatasync
        self.patch(os, "fdatasync", lambda fd: calls.append(fd) or real(fd))
        log = self.open()
        self.assertEqual((len(calls), log.synced_index), (1, 3))

    def test_read_damaged(self):
        """
        Reading an entry damaged after it was verified is L{LogCorruption},
        never wrong data.
        """
        log = self.open()
        log.append(make_entries(1, 3))
        log.sync()
        self.flip(self.path(1), 28 + RECORD + 30)
        error = self.assertRaises(LogCorruption, log.read, 1)
        self.assertEqual((error.offset, error.index), (28 + RECORD, 2))
        self.assertEqual(log.read(3), make_entries(3, 3))
