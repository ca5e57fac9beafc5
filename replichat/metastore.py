# -*- test-case-name: tests.test_disk_faults -*-
"""
The small durable record of a node's own facts: its id and the highest epoch
it has taken or seen, with the leader it follows in it.

An epoch must be on disk before anything is done under it (DESIGN.md §2):
otherwise a node could crash, restart and reuse an epoch for different
entries, or follow two leaders in one epoch.  The record is one JSON file
replaced atomically.

Format: one JSON object, C{{"crc32": C, "epoch": E, "leader": L, "node": N}},
where C{C} is the CRC32 of the object without C{crc32} encoded as
L{_canonical} encodes it.  JSON alone would take a flipped bit in a digit
for another epoch; the CRC makes any flipped bit a refusal to start.  A file
without C{crc32} (written before the CRC was added, or by an operator
repairing a node by hand) is accepted if it holds only the known keys, each
a non-negative integer, so a bit flipped in a key's name is refused too.
"""

from __future__ import annotations

import json
import zlib

from replichat.fsutil import write_atomically

#: The keys the node keeps in the file, each a non-negative integer.
KEYS = ("node", "epoch", "leader")

_CRC_KEY = "crc32"

_REPAIR_HINT = (
    "the epoch and the vote it records are unknown, so starting could reuse "
    "an epoch; refusing to start (restore the file from a backup, or replace "
    'it with {{"node": {node}, "epoch": E, "leader": 0}} where E is above '
    "every epoch the cluster has used: see the status command)"
)


class MetaCorruption(ValueError):
    """
    The meta file exists but cannot be trusted.

    @ivar path: the file.
    @ivar problem: what is wrong with it.
    """

    def __init__(self, path: str, problem: str, node: object = "N") -> None:
        super().__init__("%s: %s: %s" % (path, problem, _REPAIR_HINT.format(node=node)))
        self.path = path
        self.problem = problem


def _canonical(document: dict) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode("utf-8")


class MetaStore:
    """
    A JSON document at C{path}, replaced atomically and durably, verified
    when read.
    """

    def __init__(self, path: str) -> None:
        self.path = path

    def load(self) -> dict:
        """
        The stored document, or an empty one if none was ever saved.

        @raise MetaCorruption: if the file exists but fails its check.
        @raise OSError: if it cannot be read.
        """
        try:
            with open(self.path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return {}
        try:
            document = json.loads(data)
        except ValueError as error:  # bad UTF-8 too
            raise MetaCorruption(self.path, "not valid JSON (%s)" % (error,)) from None
        if not isinstance(document, dict):
            raise MetaCorruption(self.path, "not a JSON object")
        node = document.get("node", "N")
        if _CRC_KEY in document:
            crc = document.pop(_CRC_KEY)
            if crc != zlib.crc32(_canonical(document)):
                raise MetaCorruption(self.path, "checksum mismatch", node)
        else:
            unknown = sorted(set(document) - set(KEYS))
            if unknown:
                raise MetaCorruption(self.path, "unknown keys %s" % (", ".join(unknown),), node)
        for key in KEYS:
            value = document.get(key, 0)
            if type(value) is not int or value < 0:
                raise MetaCorruption(
                    self.path, "%s: expected a non-negative integer, got %r" % (key, value), node
                )
        return document

    def save(self, document: dict) -> None:
        """
        Durably replace the document (temp file, fsync, rename, fsync dir),
        with its CRC.
        """
        document = {k: v for k, v in document.items() if k != _CRC_KEY}
        sealed = dict(document, **{_CRC_KEY: zlib.crc32(_canonical(document))})
        write_atomically(self.path, _canonical(sealed) + b"\n")


class MemoryMetaStore:
    """
    L{MetaStore} in memory, for tests and the simulator.
    """

    def __init__(self) -> None:
        self.document: dict = {}

    def load(self) -> dict:
        return dict(self.document)

    def save(self, document: dict) -> None:
        self.document = dict(document)
