# -*- test-case-name: tests.test_node -*-
"""
The small durable record of a node's own facts: its id and the highest epoch
it has taken or seen.

An epoch must be on disk before anything is done under it (DESIGN.md §2):
otherwise a node could crash, restart and reuse an epoch for different
entries.  The record is one JSON file replaced atomically.
"""

from __future__ import annotations

import json

from replichat.fsutil import write_atomically


class MetaStore:
    """
    A JSON document at C{path}, replaced atomically and durably.
    """

    def __init__(self, path: str) -> None:
        self.path = path

    def load(self) -> dict:
        """
        The stored document, or an empty one if none was ever saved.

        @raise ValueError: if the file exists but is not a JSON object.
        """
        try:
            with open(self.path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return {}
        document = json.loads(data)
        if not isinstance(document, dict):
            raise ValueError("%s: not a JSON object" % (self.path,))
        return document

    def save(self, document: dict) -> None:
        """
        Durably replace the document (temp file, fsync, rename, fsync dir).
        """
        data = json.dumps(document, sort_keys=True).encode("utf-8")
        write_atomically(self.path, data)


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

