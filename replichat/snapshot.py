# -*- test-case-name: tests.test_snapshot -*-
"""
Durable snapshots of the state machine in files (L{FileSnapshotStore}).

On-disk format (version 1): one file per snapshot, C{{index:020d}.snap},
holding the magic C{b"RCHSNP01"}, C{<QQQ} index, epoch and data length,
C{<I} CRC32, then the data.  The CRC covers the magic, the three numbers and
the data, so that a flipped bit in the epoch is caught as surely as one in
the data.

A snapshot found corrupt is set aside by L{FileSnapshotStore.quarantine},
renamed to C{{index:020d}.snap.corrupt}: kept for the operator, but no longer
a snapshot of the store, so it never counts as one of the two kept (the
fallback that compaction relies on), and never pruned.

Only plain synchronous file I/O is used, so a forked child process (with no
reactor and no threads) can write a snapshot while the parent keeps serving.
"""

import os
import re
import zlib
from struct import Struct

from zope.interface import implementer

from replichat.entries import CorruptSnapshot, Snapshot
from replichat.fsutil import fsync_directory, make_directory, remove_temp_files, write_atomically
from replichat.interfaces import ISnapshotStore

MAGIC = b"RCHSNP01"
_HEADER = Struct("<8sQQQ")
_CRC = Struct("<I")
HEADER_SIZE = _HEADER.size + _CRC.size
KEEP = 2
"""How many snapshots are kept: the newest, and one to fall back on."""

_NAME = re.compile(r"^(\d{20})\.snap$")  # not .snap.corrupt
CORRUPT_SUFFIX = ".corrupt"

#: The suffix of a snapshot set aside because it holds entries a healed
#: partition cut (intact, but no longer this cluster's history).
DIVERGED_SUFFIX = ".diverged"


def encode_snapshot(snapshot):
    """
    The file content for C{snapshot}.

    @rtype: L{bytes}
    """
    header = _HEADER.pack(MAGIC, snapshot.index, snapshot.epoch, len(snapshot.data))
    return header + _CRC.pack(zlib.crc32(snapshot.data, zlib.crc32(header))) + snapshot.data


def decode_snapshot(content):
    """
    Decode the content of a snapshot file.

    @return: the L{Snapshot}, or a L{str} saying what is wrong with it.
    """
    if len(content) < HEADER_SIZE:
        return "file too short for a header ({} bytes)".format(len(content))
    magic, index, epoch, length = _HEADER.unpack_from(content)
    if magic != MAGIC:
        return "bad magic {!r}".format(magic)
    if len(content) != HEADER_SIZE + length:
        return "header says {} bytes of data, file holds {}".format(length, len(content) - HEADER_SIZE)
    (crc,) = _CRC.unpack_from(content, _HEADER.size)
    data = content[HEADER_SIZE:]
    if zlib.crc32(data, zlib.crc32(content[: _HEADER.size])) != crc:
        return "CRC mismatch"
    return Snapshot(index, epoch, data)


@implementer(ISnapshotStore)
class FileSnapshotStore:
    """
    An L{ISnapshotStore} in a directory, created if missing.  Temporary files
    left by a crash during L{save} are removed on construction.

    @ivar directory: the snapshot directory.
    """

    def __init__(self, directory):
        self.directory = directory
        make_directory(directory)
        remove_temp_files(directory)

    def _path(self, index):
        return os.path.join(self.directory, "{:020d}.snap".format(index))

    def save(self, snapshot):
        write_atomically(self._path(snapshot.index), encode_snapshot(snapshot))
        old = self.indexes()[KEEP:]
        for index in old:
            os.unlink(self._path(index))
        if old:
            fsync_directory(self.directory)

    def load_all(self):
        for index in self.indexes():
            path = self._path(index)
            try:
                with open(path, "rb") as f:
                    content = f.read()
            except OSError as e:
                yield CorruptSnapshot(path, "unreadable: {}".format(e), index=index)
                continue
            decoded = decode_snapshot(content)
            if isinstance(decoded, str):
                yield CorruptSnapshot(path, decoded, index=index)
            elif decoded.index != index:
                yield CorruptSnapshot(path, "header says index {}".format(decoded.index), index=index)
            else:
                yield decoded

    def quarantine(self, index, suffix=CORRUPT_SUFFIX):
        """
        See L{ISnapshotStore.quarantine}: renames the file to
        C{{index:020d}.snap.corrupt} (or C{suffix}), replacing an older one
        of that name, and fsyncs the directory.
        """
        path = self._path(index)
        try:
            os.rename(path, path + suffix)
        except FileNotFoundError:
            return
        fsync_directory(self.directory)

    def indexes(self):
        matches = (_NAME.match(name) for name in os.listdir(self.directory))
        return sorted((int(m.group(1)) for m in matches if m), reverse=True)
