# -*- test-case-name: tests.test_node -*-
"""
Commands as log entry data: how a command is encoded into an entry and
decoded from one, how a C{config} entry is found without decoding, and how
much of the log one read returns.  Shared by every part of
L{replichat.node.Node} that reads the log.
"""

from __future__ import annotations

from replichat.jsonwire import COMPACT, DECODER

#: How much entry data one read of the log returns while replaying.
REPLAY_CHUNK_BYTES = 8 * 2**20

#: Marks a config entry in encoded data, to find them without decoding all.
_CONFIG_MARK = b'"op":"config"'


def encode_command(command: dict) -> bytes:
    """
    The log entry data for a command.
    """
    return COMPACT.encode(command).encode("utf-8")


def decode_command(data: bytes) -> dict:
    """
    The command of a log entry.
    """
    return DECODER.decode(data.decode("utf-8"))
