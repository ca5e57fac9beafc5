# -*- test-case-name: tests.test_log_recovery -*-
"""
The on-disk format of one log segment, version 1, and the in-memory index
that L{replichat.log.SegmentedLog} keeps of it.

A segment file starts with a 28-byte header: the magic C{b"RCHLOG01"},
C{<QQ} index and epoch of the entry just before the segment's first one, and
C{<I} CRC32 of those 24 bytes.  Records follow back to back: C{<II} payload
length and CRC32 of the payload, then the payload: C{<QQ} index and epoch,
then the entry's data.

Everything here works on bytes already in memory: L{scan} indexes the
records up to the first one it cannot accept, and L{damage_at} says what is
wrong with that one, and whether a crash in the middle of a write can have
left it so.  The file handling, and the policy of what to cut and what to
refuse, is in L{replichat.log}.
"""

import zlib
from array import array
from struct import Struct
from struct import error as StructError

from attrs import define, field

from replichat.entries import Entry

MAGIC = b"RCHLOG01"
_HEADER = Struct("<8sQQ")
_HEADER_CRC = Struct("<I")
HEADER_SIZE = _HEADER.size + _HEADER_CRC.size
_RECORD_HEAD = Struct("<II")  # payload length, payload CRC32
_INDEX_EPOCH = Struct("<QQ")
_RECORD = Struct("<IIQQ")  # both of the above, unpacked in one call
RECORD_OVERHEAD = _RECORD.size
MAX_RECORD = 64 * 2**20
"""The largest payload (index, epoch and data) a record may hold."""
SEARCH_AHEAD = 64
"""How many indexes past a bad record to look for when telling a torn tail
from corruption."""
PAGE_SIZE = 4096
"""The unit in which a crash may lose part of an unsynced write."""
ZEROED_PART_MIN = 16
"""How many bytes of a record a page must hold, all zero, to pass for a page
lost in a crash (see L{damage_at})."""
CUT_HINT = (
    "nothing valid follows it, but a crash during a write leaves no record like "
    "this one, so entry {index} may have been acknowledged: check that the other "
    "servers hold it, or accept its loss "
    "(start with --cut-corrupt-tail to drop it and everything after it)"
)
"""What L{LogCorruption} tells the operator about corruption at the very
end of the log, which the operator may choose to cut."""


class LogCorruption(Exception):
    """
    The log on disk is damaged where acknowledged entries may live.

    @ivar path: the file.
    @ivar offset: the byte offset of the damage.
    @ivar index: the entry index expected there.
    @ivar problem: what is wrong there.
    @ivar tail: whether nothing valid follows the damage, so that an
        operator may choose to cut it (L{CUT_HINT}).
    """

    def __init__(self, path, offset, index, problem, tail=False):
        message = (
            "{path}: {problem} at offset {offset} (expected entry {index}); "
            "refusing to start rather than drop entries that may have been "
            "acknowledged"
        )
        if tail:
            message += "; " + CUT_HINT
        super().__init__(message.format(path=path, problem=problem, offset=offset, index=index))
        self.path = path
        self.offset = offset
        self.index = index
        self.problem = problem
        self.tail = tail


@define
class Segment:
    """
    The index of one segment file: where each record is, and its epoch, so
    that reads and C{epoch_at} need no scan.

    @ivar path: the file.
    @ivar base_index: the index of the entry before the first one.
    @ivar base_epoch: that entry's epoch.
    @ivar offsets: the byte offset of each record.
    @ivar epochs: the epoch of each record.
    @ivar size: the end of the last record.
    """

    path: str
    base_index: int
    base_epoch: int
    offsets: array = field(factory=lambda: array("Q"))
    epochs: array = field(factory=lambda: array("Q"))
    size: int = HEADER_SIZE

    @property
    def last_index(self):
        return self.base_index + len(self.offsets)

    @property
    def last_epoch(self):
        return self.epochs[-1] if self.epochs else self.base_epoch

    def end_of(self, n):
        """
        The byte offset just after record C{n} (counting from 0).
        """
        return self.offsets[n + 1] if n + 1 < len(self.offsets) else self.size

    def truncate(self, n):
        """
        Forget every record from record C{n} on.
        """
        if n < len(self.offsets):
            self.size = self.offsets[n]
            del self.offsets[n:], self.epochs[n:]


def encode_header(base_index, base_epoch):
    """
    @return: the header of a segment following (C{base_index},
        C{base_epoch}).
    """
    head = _HEADER.pack(MAGIC, base_index, base_epoch)
    return head + _HEADER_CRC.pack(zlib.crc32(head))


def decode_header(buf):
    """
    @return: (base_index, base_epoch), or L{None} if C{buf} does not start
        with a valid header.
    """
    if len(buf) < HEADER_SIZE:
        return None
    magic, base_index, base_epoch = _HEADER.unpack_from(buf)
    (crc,) = _HEADER_CRC.unpack_from(buf, _HEADER.size)
    if magic != MAGIC or crc != zlib.crc32(buf[: _HEADER.size]):
        return None
    return base_index, base_epoch


def encode_records(entries, segment):
    """
    Encode C{entries} as records to be written at the end of C{segment}.

    @return: the bytes, and the offset each record will have.
    """
    parts, offsets, pos = [], array("Q"), segment.size
    pack_head, pack_ie, crc32 = _RECORD_HEAD.pack, _INDEX_EPOCH.pack, zlib.crc32
    for entry in entries:
        ie = pack_ie(entry.index, entry.epoch)
        parts += (pack_head(16 + len(entry.data), crc32(entry.data, crc32(ie))), ie, entry.data)
        offsets.append(pos)
        pos += RECORD_OVERHEAD + len(entry.data)
    return b"".join(parts), offsets


def record_at(buf, pos):
    """
    @return: the (index, epoch, end) of a record with a sane length and a
        good CRC at offset C{pos} of C{buf}, or L{None}.
    """
    if pos < 0 or len(buf) - pos < _RECORD.size:
        return None
    length, crc, index, epoch = _RECORD.unpack_from(buf, pos)
    end = pos + _RECORD_HEAD.size + length
    if length < _INDEX_EPOCH.size or length > MAX_RECORD or end > len(buf):
        return None
    if zlib.crc32(memoryview(buf)[pos + _RECORD_HEAD.size : end]) != crc:
        return None
    return index, epoch, end


def valid_record_after(buf, bad, expected):
    """
    Look for a valid record of one of the indexes C{expected} to
    C{expected + SEARCH_AHEAD - 1} anywhere after offset C{bad}: if there is
    one, the bad record is not a torn tail.  A record's index sits 8 bytes
    into it, so searching for its encoding finds the candidates quickly.

    @return: the offset of such a record, or L{None}.
    """
    for index in range(expected, expected + SEARCH_AHEAD):
        needle = index.to_bytes(8, "little")
        hit = buf.find(needle, bad + _RECORD_HEAD.size + 1)
        while hit != -1:
            found = record_at(buf, hit - _RECORD_HEAD.size)
            if found is not None and found[0] == index:
                return hit - _RECORD_HEAD.size
            hit = buf.find(needle, hit + 1)
    return None


def scan(segment, buf):
    """
    Verify the records in C{buf}, the whole segment file, and index them
    into C{segment} (whose header is already read) up to the first one that
    is damaged or does not continue the log (an index that is not the next
    one, or a decreasing epoch); L{damage_at} then says what is wrong there.

    @return: the offset of that record, or L{None} if all are good.
    """
    view = memoryview(buf)
    unpack, crc32 = _RECORD.unpack_from, zlib.crc32
    offsets, epochs = [], []
    add_offset, add_epoch = offsets.append, epochs.append  # the hot loop of start-up
    expected, last_epoch = segment.base_index + 1, segment.base_epoch
    pos, end, bad = HEADER_SIZE, len(buf), None
    while pos < end:
        if end - pos < RECORD_OVERHEAD:
            bad = pos
            break
        length, crc, index, epoch = unpack(buf, pos)
        stop = pos + 8 + length
        if length < 16 or length > MAX_RECORD or stop > end or crc32(view[pos + 8 : stop]) != crc:
            bad = pos
            break
        if index != expected or epoch < last_epoch:  # intact, but not the next entry
            bad = pos
            break
        add_offset(pos)
        add_epoch(epoch)
        expected, last_epoch, pos = index + 1, epoch, stop
    segment.offsets.extend(offsets)
    segment.epochs.extend(epochs)
    segment.size = pos
    return bad


def damage_at(buf, pos, last_epoch):
    """
    Say what is wrong with the record at offset C{pos} of C{buf}, the first
    one L{scan} did not accept, and whether a crash in the middle of a write
    can have left it so.

    A crash while appending can leave the file (a) cut short, inside a
    record; (b) with a record head whose length is impossible, 0 or below
    the 16 bytes of index and epoch, or above L{MAX_RECORD}, such as the
    zeros of a file extended before its data reached the disk, or the bytes
    of a partly written head; or with whole pages of an unsynced write never
    written out, which read as zeros: (c) from the record to the end of the
    file, which (a) and (b) already cover, since such a record's length is
    0 or cut short; or (d) within a complete record, whose CRC then fails,
    where some L{PAGE_SIZE}-aligned page holds at least L{ZEROED_PART_MIN}
    bytes of the record, all zero.  The minimum keeps the header bytes that
    may legitimately be zero (the high bytes of the length, at the start of
    a record; those of a small index and epoch, at the end of an entry with
    no data, fewer than 16 since an index is never 0) from passing for a
    lost page when a bit flipped elsewhere in the record.  Its price is a
    false alarm, on the safe side: a crash that lost only a page holding
    fewer than 16 bytes of a record (the end of one that crosses a page
    boundary by so little) is refused, and an operator must clear it.

    Anything else is not torn: a complete record with a plausible length and
    a bad CRC (a flipped bit), or a good record that does not continue the
    log.  Such a record may be an entry that was fsynced and acknowledged.

    Garbage appended after the last record is nearly always (a) or (b): its
    first four bytes, as a random length, make a complete record of
    plausible length only if they fall between 16 and the bytes left after
    them, a chance below C{n / 2**32} for C{n} bytes of garbage (2.3e-7 for
    1000 bytes, 1/256 for a whole 16 MiB segment).  And the rare garbage
    that does is refused as corruption, never silently cut.

    @param last_epoch: the epoch of the record before.
    @return: C{(torn, problem)}: whether the damage is one that a crash
        during a write leaves, which may be cut, and what it is.
    """
    rest = len(buf) - pos
    if rest < _RECORD_HEAD.size:
        return True, "incomplete record head ({} bytes)".format(rest)  # (a)
    length, crc = _RECORD_HEAD.unpack_from(buf, pos)
    if length < _INDEX_EPOCH.size or length > MAX_RECORD:
        return True, "impossible record length {}".format(length)  # (b), (c)
    end = pos + _RECORD_HEAD.size + length
    if end > len(buf):
        return True, "record of {} bytes cut short at {}".format(end - pos, rest)  # (a), (c)
    if zlib.crc32(memoryview(buf)[pos + _RECORD_HEAD.size : end]) == crc:
        index, epoch = _INDEX_EPOCH.unpack_from(buf, pos + _RECORD_HEAD.size)
        return False, "entry {} of epoch {} after epoch {}".format(index, epoch, last_epoch)
    page = _zeroed_page(buf, pos, end)
    if page is not None:
        return True, "record with a bad CRC, zeros in the page at offset {}".format(page)  # (d)
    return False, "complete record with a bad CRC"


def _zeroed_page(buf, begin, end):
    """
    @return: the offset of the first L{PAGE_SIZE}-aligned page that holds at
        least L{ZEROED_PART_MIN} bytes of C{buf[begin:end]}, all of them
        zero, or L{None}.
    """
    page = begin - begin % PAGE_SIZE
    while page < end:
        first, stop = max(begin, page), min(end, page + PAGE_SIZE)
        if stop - first >= ZEROED_PART_MIN and buf.count(0, first, stop) == stop - first:
            return page
        page += PAGE_SIZE
    return None


def decode_records(segment, buf, begin, first, stop):
    """
    Decode and verify records C{first} to C{stop - 1} of C{segment}, read
    into C{buf} from offset C{begin} of the file.

    @rtype: L{list} of L{Entry}
    @raise LogCorruption: if one was damaged since it was verified.
    """
    view = memoryview(buf)
    unpack, crc32 = _RECORD.unpack_from, zlib.crc32
    entries, pos = [], 0
    for index in range(segment.base_index + 1 + first, segment.base_index + 1 + stop):
        try:
            length, crc, found, epoch = unpack(buf, pos)
        except StructError:
            found = None
        end = pos + 8 + length if found is not None else 0
        if found != index or end > len(buf) or crc32(view[pos + 8 : end]) != crc:
            raise LogCorruption(segment.path, begin + pos, index, "record damaged since it was written")
        entries.append(Entry(index, epoch, buf[pos + RECORD_OVERHEAD : end]))
        pos = end
    return entries
