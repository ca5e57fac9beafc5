# -*- test-case-name: tests.test_log_recovery -*-
"""
The on-disk format of one log segment, version 1, and the in-memory index
that L{replichat.log.SegmentedLog} keeps of it.

A segment file starts with a 28-byte header: the magic C{b"RCHLOG01"},
C{<QQ} index and epoch of the entry just before the segment's first one, and
C{<I} CRC32 of those 24 bytes.  Records follow back to back: C{<II} payload
length and CRC32 of the payload, then the payload: C{<QQ} index and epoch,
then the entry's data.

Everything here works on bytes already in memory; the file handling, and
the policy of what to cut and what to refuse, is in L{replichat.log}.
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


class LogCorruption(Exception):
    """
    The log on disk is damaged where acknowledged entries may live.

    @ivar path: the file.
    @ivar offset: the byte offset of the damage.
    @ivar index: the entry index expected there.
    """

    def __init__(self, path, offset, index, problem):
        super().__init__(
            "{path}: {problem} at offset {offset} (expected entry {index}); "
            "refusing to start rather than drop entries that may have been "
            "acknowledged".format(path=path, problem=problem, offset=offset, index=index)
        )
        self.path = path
        self.offset = offset
        self.index = index


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
    into C{segment} (whose header is already read) up to the first bad one.

    @return: the offset of the first bad record, or L{None} if all are good.
    @raise LogCorruption: for a record with a good CRC but the wrong index
        or a decreasing epoch, which no torn write produces.
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
        if index != expected or epoch < last_epoch:
            problem = "entry {} of epoch {} after epoch {}".format(index, epoch, last_epoch)
            raise LogCorruption(segment.path, pos, expected, problem)
        add_offset(pos)
        add_epoch(epoch)
        expected, last_epoch, pos = index + 1, epoch, stop
    segment.offsets.extend(offsets)
    segment.epochs.extend(epochs)
    segment.size = pos
    return bad


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
