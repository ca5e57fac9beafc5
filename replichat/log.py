# -*- test-case-name: tests.test_log -*-
"""
The durable, segmented, checksummed log (L{SegmentedLog}, an L{ILog}).

Files.  A log directory holds segments named C{{first_index:020d}.seg}, in
the format of L{replichat.segment}; other files are ignored.  The process
must hold the data directory's L{replichat.fsutil.DataDirLock}.

Writing.  L{SegmentedLog.append} writes a whole batch with one C{pwrite};
nothing is durable until L{SegmentedLog.sync} fdatasyncs the current
segment.  A segment grown past C{segment_bytes} is synced before the next one
is created (header written, file fsynced, directory fsynced), so every
segment but the last is durable in full.  The first segment is created
eagerly, when an empty directory is opened.  After any C{OSError} while
changing the log it refuses every later change (L{LogFailed}): a failed
fsync cannot be retried safely, the process must stop.

Recovery.  Constructing a L{SegmentedLog} recovers the directory, verifying
every header and record: CRCs, indexes without gaps (across segments too),
epochs never decreasing.  Dropping an entry that may have been acknowledged
is worse than stopping, so the first bad record is cut off, with everything
after it and a warning, only if it is in the last segment, no valid record
of the next indexes follows it, and it is damage that a crash in the middle
of an unsynced write leaves (L{replichat.segment.damage_at}): a record cut
short by the end of the file, a record head with an impossible length, or a
complete record with a bad CRC that overlaps a page left all zeros.  Garbage
appended after the last record is nearly always of the first two kinds.
Anything else raises L{LogCorruption} and the server does not start: in an
earlier segment, which was synced in full; followed by valid records; or at
the very end but not torn, such as a bit flipped in a complete last record,
or an intact record that does not continue the log.  That last record may
hold an acknowledged entry, so only the operator can accept its loss,
starting with C{cut_corrupt_tail} (C{--cut-corrupt-tail}); then it is cut
like a torn tail, and replication brings it back if the other servers hold
it.  A crash that persisted a later page of an unsynced write but not an
earlier one is refused too (valid records follow the damage), a false alarm
that an operator must clear.  A last segment holding no more than a broken
header (a crash while creating it) is removed.  What recovery finds is
fsynced before it counts as synced: after a process crash it may sit in the
page cache only.

Compaction removes whole segments, oldest first, and stores no base: after
reopening, C{base_index} is the header base of the first remaining segment,
possibly lower than before (those entries are still valid).
L{SegmentedLog.reset} commits by atomically creating
C{{index + 1:020d}.reset}, a complete header, which recovery, finding it,
renames into place after removing every segment: a crash leaves either the
old log or the new empty one.
"""

import functools
import os
import re
from bisect import bisect_right

from twisted.logger import Logger
from zope.interface import implementer

from replichat.fsutil import (
    fsync_directory,
    make_directory,
    remove_temp_files,
    write_all,
    write_atomically,
)
from replichat.interfaces import ILog
from replichat.segment import (
    HEADER_SIZE,
    MAX_RECORD,
    RECORD_OVERHEAD,
    LogCorruption,
    Segment,
    damage_at,
    decode_header,
    decode_records,
    encode_header,
    encode_records,
    scan,
    valid_record_after,
)

__all__ = ["LogCorruption", "LogFailed", "SegmentedLog", "check_continues"]

_TORN_TAIL_CUT = (
    "cut {cut} bytes of torn tail at offset {offset} of {path} "
    "(entry {index} onwards): {problem}"
)
_CORRUPT_TAIL_CUT = (
    "cut {cut} bytes of corrupt tail at offset {offset} of {path} "
    "(entry {index} onwards), as asked (--cut-corrupt-tail): {problem}; "
    "entry {index} may have been acknowledged, and is lost here"
)

_SEGMENT_NAME = re.compile(r"^(\d{20})\.seg$")
_RESET_NAME = re.compile(r"^(\d{20})\.reset$")


class LogFailed(OSError):
    """
    An earlier write, fsync or file operation failed, so the log's state on
    disk is unknown and it accepts no more changes.
    """


def check_continues(last_index, last_epoch, entries):
    """
    Check that C{entries} may be appended to a log ending at (C{last_index},
    C{last_epoch}): consecutive indexes, epochs never decreasing, records
    within L{MAX_RECORD}.  Shared by every L{ILog} so that they refuse alike.

    @raise ValueError: if they may not.
    """
    for entry in entries:
        if entry.index != last_index + 1:
            raise ValueError("entry {} does not follow {}".format(entry.index, last_index))
        if not last_epoch <= entry.epoch < 2**64:
            problem = "entry {} has epoch {} after {}".format(entry.index, entry.epoch, last_epoch)
            raise ValueError(problem)
        if len(entry.data) > MAX_RECORD - 16:
            raise ValueError("entry {} is too large".format(entry.index))
        last_index, last_epoch = entry.index, entry.epoch


def _fatal_on_oserror(method):
    """
    Refuse to change a failed or closed log, and fail it on any C{OSError}.
    """

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        if self._failed is not None:
            raise LogFailed("the log failed earlier: {}".format(self._failed))
        if self._fd is None:
            raise LogFailed("the log is closed")
        try:
            return method(self, *args, **kwargs)
        except OSError as e:
            self._failed = e
            raise

    return wrapper


@implementer(ILog)
class SegmentedLog:
    """
    An L{ILog} in a directory of segment files; see the module docstring.

    Constructing one creates the directory if needed, then recovers it; the
    process must hold the data directory's L{replichat.fsutil.DataDirLock}.

    @ivar directory: the log directory.
    @ivar segment_bytes: the size past which a new segment is started.
    @ivar cut_corrupt_tail: whether recovery cuts a damaged record at the
        end of the log that is not a torn write, which may lose an
        acknowledged entry (an operator's choice), instead of refusing it.
    @ivar synced_index: the highest index known durable.
    """

    log = Logger()

    def __init__(self, directory, segment_bytes=16 * 2**20, cut_corrupt_tail=False):
        """
        @raise LogCorruption: if the log is damaged beyond a torn tail.
        @raise OSError: if the files cannot be read or repaired.
        """
        self.directory = directory
        self.segment_bytes = segment_bytes
        self.cut_corrupt_tail = cut_corrupt_tail
        self._segments = []
        self._firsts = []  # each segment's first index, for bisect
        self._fd = None  # the last segment, open for reading and writing
        self._failed = None
        make_directory(directory)
        remove_temp_files(directory)
        self._recover()

    base_index = property(lambda self: self._base_index)
    base_epoch = property(lambda self: self._base_epoch)
    first_index = property(lambda self: self._base_index + 1)
    last_index = property(lambda self: self._segments[-1].last_index)
    last_epoch = property(lambda self: self._segments[-1].last_epoch)

    def _path(self, first_index, suffix=".seg"):
        return os.path.join(self.directory, "{:020d}{}".format(first_index, suffix))

    def _recover(self):
        names = os.listdir(self.directory)
        resets = sorted(n for n in names if _RESET_NAME.match(n))
        if len(resets) > 1:
            raise LogCorruption(self.directory, 0, 0, "several reset files {}".format(resets))
        if resets:
            self._finish_reset(os.path.join(self.directory, resets[0]))
            names = os.listdir(self.directory)
        firsts = sorted(int(m.group(1)) for m in map(_SEGMENT_NAME.match, names) if m)
        for n, first in enumerate(firsts):
            self._load_segment(self._path(first), first, last=n == len(firsts) - 1)
        if not self._segments:
            self._fd, segment = self._create_segment(0, 0)
            self._append_segment(segment)
        else:
            self._fd = os.open(self._segments[-1].path, os.O_RDWR)
            os.fdatasync(self._fd)
            fsync_directory(self.directory)
        self._base_index = self._segments[0].base_index
        self._base_epoch = self._segments[0].base_epoch
        self.synced_index = self.last_index

    def _load_segment(self, path, first, last):
        with open(path, "rb") as f:
            buf = f.read()
        header = decode_header(buf)
        if header is None or header[0] != first - 1:
            if last and len(buf) <= HEADER_SIZE and (self._segments or first == 1):
                self.log.warn(
                    "removing {path}: a last segment holding only a torn header ({size} bytes)",
                    path=path,
                    size=len(buf),
                )
                os.unlink(path)
                fsync_directory(self.directory)
                return
            raise LogCorruption(path, 0, first, "bad segment header")
        segment = Segment(path, *header)
        if self._segments:
            previous = self._segments[-1]
            if header != (previous.last_index, previous.last_epoch):
                problem = "segment starts after entry {} of epoch {}".format(*header)
                raise LogCorruption(path, 0, previous.last_index + 1, problem)
        bad = scan(segment, buf)
        if bad is not None:
            expected = segment.last_index + 1
            torn, problem = damage_at(buf, bad, segment.last_epoch)
            if not last:
                problem += " in a segment that was synced in full"
                raise LogCorruption(path, bad, expected, problem)
            if valid_record_after(buf, bad, expected) is not None:
                raise LogCorruption(path, bad, expected, problem + ", followed by valid records")
            if not (torn or self.cut_corrupt_tail):
                raise LogCorruption(path, bad, expected, problem, tail=True)
            self.log.warn(
                _TORN_TAIL_CUT if torn else _CORRUPT_TAIL_CUT,
                cut=len(buf) - bad,
                offset=bad,
                path=path,
                index=expected,
                problem=problem,
            )
            segment.size = bad
            os.truncate(path, bad)
        self._append_segment(segment)

    def _append_segment(self, segment):
        self._segments.append(segment)
        self._firsts.append(segment.base_index + 1)

    def _create_segment(self, base_index, base_epoch):
        """
        Durably create an empty segment after (C{base_index}, C{base_epoch}).

        @return: its open file descriptor and L{Segment}.
        """
        path = self._path(base_index + 1)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            write_all(fd, encode_header(base_index, base_epoch), 0)
            os.fsync(fd)
            fsync_directory(self.directory)
        except OSError:
            os.close(fd)
            raise
        return fd, Segment(path, base_index, base_epoch)

    def _finish_reset(self, reset_path):
        """
        Complete a committed reset: remove every segment, then rename the
        reset file into place.
        """
        for name in sorted(os.listdir(self.directory), reverse=True):
            if _SEGMENT_NAME.match(name):
                os.unlink(os.path.join(self.directory, name))
        fsync_directory(self.directory)
        os.rename(reset_path, reset_path[: -len(".reset")] + ".seg")
        fsync_directory(self.directory)

    def _segment_for(self, index):
        return self._segments[bisect_right(self._firsts, index) - 1]

    @_fatal_on_oserror
    def append(self, entries):
        """
        See L{ILog.append}: one C{pwrite} for the batch, then a new segment
        if the current one has grown past C{segment_bytes}.
        """
        entries = list(entries)  # a generator would be used up by the check
        check_continues(self.last_index, self.last_epoch, entries)
        if not entries:
            return
        segment = self._segments[-1]
        data, offsets = encode_records(entries, segment)
        write_all(self._fd, data, segment.size)
        segment.offsets.extend(offsets)
        segment.epochs.extend(entry.epoch for entry in entries)
        segment.size += len(data)
        if segment.size >= self.segment_bytes:
            self._roll()

    def _roll(self):
        self.sync()
        last = self._segments[-1]
        fd, segment = self._create_segment(last.last_index, last.last_epoch)
        os.close(self._fd)
        self._fd = fd
        self._append_segment(segment)

    @_fatal_on_oserror
    def sync(self):
        """
        See L{ILog.sync}: one C{fdatasync} of the current segment (the
        others were synced in full before it was created), if anything new.
        """
        if self.synced_index != self.last_index:
            os.fdatasync(self._fd)
            self.synced_index = self.last_index

    def epoch_at(self, index):
        if index == self._base_index:
            return self._base_epoch
        if not self._base_index < index <= self.last_index:
            raise IndexError("entry {} is not in the log".format(index))
        segment = self._segment_for(index)
        return segment.epochs[index - segment.base_index - 1]

    def read(self, start, stop=None, max_bytes=None):
        if start < self.first_index:
            raise IndexError("entry {} is compacted".format(start))
        stop = self.last_index + 1 if stop is None else min(stop, self.last_index + 1)
        result, used = [], 0
        while start < stop:
            segment = self._segment_for(start)
            first = n = start - segment.base_index - 1
            count = min(stop, segment.last_index + 1) - segment.base_index - 1
            while n < count:
                if max_bytes is not None:
                    size = segment.end_of(n) - segment.offsets[n] - RECORD_OVERHEAD
                    if used + size > max_bytes and (result or n > first):
                        stop = segment.base_index + 1 + n  # the budget ends the read here
                        break
                    used += size
                n += 1
            if n > first:
                result += self._read_records(segment, first, n)
            start = segment.base_index + 1 + n
        return result

    def _read_records(self, segment, first, stop):
        """
        Read and verify records C{first} to C{stop - 1} of C{segment}, with
        one C{pread}.
        """
        begin, end = segment.offsets[first], segment.end_of(stop - 1)
        if segment is self._segments[-1] and self._fd is not None:
            buf = os.pread(self._fd, end - begin, begin)
        else:
            # Older segments are read rarely (catch-up of a lagging peer):
            # opening them on demand keeps one descriptor per log.
            fd = os.open(segment.path, os.O_RDONLY)
            try:
                buf = os.pread(fd, end - begin, begin)
            finally:
                os.close(fd)
        return decode_records(segment, buf, begin, first, stop)

    @_fatal_on_oserror
    def truncate_after(self, index):
        """
        See L{ILog.truncate_after}: later segments are removed newest first
        (a crash leaves a prefix of the old log), then the segment holding
        C{index} is cut and fsynced, which also makes the kept entries durable.
        """
        if index < self._base_index:
            raise ValueError("cannot truncate below the base {}".format(self._base_index))
        if index >= self.last_index:
            return
        keep = bisect_right(self._firsts, index + 1)
        if keep < len(self._segments):
            os.close(self._fd)
            self._fd = None
            for segment in reversed(self._segments[keep:]):
                os.unlink(segment.path)
            fsync_directory(self.directory)
            del self._segments[keep:], self._firsts[keep:]
            self._fd = os.open(self._segments[-1].path, os.O_RDWR)
        segment = self._segments[-1]
        segment.truncate(index - segment.base_index)
        os.ftruncate(self._fd, segment.size)
        os.fsync(self._fd)
        self.synced_index = index

    @_fatal_on_oserror
    def compact(self, index):
        """
        See L{ILog.compact}: removes, oldest first, the segments all of whose
        entries are compacted, never the last one.

        @raise IndexError: if C{index} is after the last entry.
        """
        if index <= self._base_index:
            return
        self._base_epoch = self.epoch_at(index)
        self._base_index = index
        removed = 0
        while removed + 1 < len(self._segments) and self._segments[removed].last_index <= index:
            os.unlink(self._segments[removed].path)
            removed += 1
        if removed:
            fsync_directory(self.directory)
            del self._segments[:removed], self._firsts[:removed]

    @_fatal_on_oserror
    def reset(self, index, epoch):
        """
        See L{ILog.reset}: committed by atomically creating the reset file,
        then completed as recovery would complete it.
        """
        reset_path = self._path(index + 1, ".reset")
        write_atomically(reset_path, encode_header(index, epoch))
        os.close(self._fd)
        self._fd = None
        self._finish_reset(reset_path)
        self._segments, self._firsts = [], []
        self._append_segment(Segment(self._path(index + 1), index, epoch))
        self._fd = os.open(self._segments[-1].path, os.O_RDWR)
        self._base_index, self._base_epoch = index, epoch
        self.synced_index = index

    def close(self):
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)
