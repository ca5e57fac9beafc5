# -*- test-case-name: tests.test_state -*-
"""
The byte encoding of a whole L{ChatState}, for snapshots.

Start-up time is bounded by how fast a snapshot decodes, and a snapshot is
mostly messages: a million of them decode as a million small JSON arrays in
several seconds.  So the encoding is sections of columns: every numeric
column (message ids, uids, name references, times, mailbox ids) is a packed
little-endian array that decodes in microseconds, all message texts are one
UTF-8 blob cut by character lengths, and only the small, irregular parts
(accounts, sessions, request ids) are JSON.

Layout (format 2)::

    b"RCSTATE2"
    then sections, each: <I name length> name <Q data length> data

with the sections C{meta} (JSON), C{accounts} (JSON), C{rids} (JSON),
C{m.id}, C{m.from_uid}, C{m.from_name}, C{m.to_uid}, C{m.to_name},
C{m.text_len} (int64 arrays), C{m.sent_at} (float64 array), C{m.text} (UTF-8),
and per account C{a.UID.inbox}, C{a.UID.unread}, C{a.UID.sent} (int64
arrays of message ids).  The encoding is canonical: equal states give equal
bytes.  The integrity of the whole is checked by the snapshot file's CRC.
"""

from __future__ import annotations

import json
import struct
import sys
from array import array
from itertools import accumulate
from operator import itemgetter
from typing import TYPE_CHECKING

from replichat.jsonwire import CANONICAL

if TYPE_CHECKING:  # pragma: no cover
    from replichat.state import ChatState

MAGIC = b"RCSTATE2"
_NAME = struct.Struct("<I")
_LENGTH = struct.Struct("<Q")
_SWAP = sys.byteorder != "little"

#: The numeric message columns: section name, array type code, and the
#: L{Message} field it holds (names are stored as references into the
#: C{names} table of the C{meta} section).
_COLUMNS = (
    ("m.id", "q", "id"),
    ("m.from_uid", "q", "from_uid"),
    ("m.from_name", "q", "from_name"),
    ("m.to_uid", "q", "to_uid"),
    ("m.to_name", "q", "to_name"),
    ("m.sent_at", "d", "sent_at"),
    ("m.text_len", "q", "text"),
)
_MAILBOXES = ("inbox", "unread", "sent")

#: The fields of a stored message tuple, in order (L{replichat.state.Message}).
_FIELDS = ("id", "from_uid", "from_name", "to_uid", "to_name", "text", "sent_at")
_FIELD = {name: position for position, name in enumerate(_FIELDS)}


def _packed(typecode: str, values) -> bytes:
    packed = array(typecode, values)
    if _SWAP:  # pragma: no cover (big-endian hosts)
        packed.byteswap()
    return packed.tobytes()


def _unpacked(typecode: str, data: memoryview) -> array:
    values = array(typecode)
    values.frombytes(data)
    if _SWAP:  # pragma: no cover
        values.byteswap()
    return values


def _json(value: object) -> bytes:
    return CANONICAL.encode(value).encode("utf-8")


def encode_state(state: ChatState) -> bytes:
    """
    The snapshot bytes of C{state}.
    """
    ordered = [state.messages[i] for i in sorted(state.messages)]  # field tuples
    names: dict[str, int] = {}
    from_name, to_name = _FIELD["from_name"], _FIELD["to_name"]
    for message in ordered:
        names.setdefault(message[from_name], len(names))
        names.setdefault(message[to_name], len(names))
    meta = {
        "applied_index": state.applied_index,
        "names": list(names),
        "cluster": state.cluster,
        "aliases": sorted(state.aliases.items()),
    }
    accounts = [state.accounts[uid] for uid in sorted(state.accounts)]
    rids = [[rid, *kept] for rid, kept in state.rids.items()]
    sections = [
        ("meta", _json(meta)),
        ("accounts", _json([[a.uid, a.username, a.password, a.created_at,
                             [[token, ts] for token, ts in a.sessions.items()]]
                            for a in accounts])),
        ("rids", _json(rids)),
    ]
    as_stored = {"from_name": names.__getitem__, "to_name": names.__getitem__, "text": len}
    for name, typecode, field in _COLUMNS:
        values = map(itemgetter(_FIELD[field]), ordered)
        if field in as_stored:
            values = map(as_stored[field], values)
        sections.append((name, _packed(typecode, values)))
    text = _FIELD["text"]
    sections.append(("m.text", "".join(m[text] for m in ordered).encode("utf-8")))
    for account in accounts:
        for mailbox in _MAILBOXES:
            ids = getattr(account, mailbox)
            sections.append(("a.%d.%s" % (account.uid, mailbox), _packed("q", ids)))
    out = [MAGIC]
    for name, data in sections:
        encoded = name.encode("ascii")
        out += [_NAME.pack(len(encoded)), encoded, _LENGTH.pack(len(data)), data]
    return b"".join(out)


def _sections(data: bytes) -> dict[str, memoryview]:
    if not data.startswith(MAGIC):
        raise ValueError("not a replichat state (format 2) snapshot")
    view = memoryview(data)
    sections = {}
    pos = len(MAGIC)
    while pos < len(view):
        (size,) = _NAME.unpack_from(view, pos)
        pos += _NAME.size
        name = bytes(view[pos : pos + size]).decode("ascii")
        pos += size
        (length,) = _LENGTH.unpack_from(view, pos)
        pos += _LENGTH.size
        if pos + length > len(view):
            raise ValueError("section %r runs past the end" % (name,))
        if name in sections:
            raise ValueError("section %r appears twice" % (name,))
        sections[name] = view[pos : pos + length]
        pos += length
    return sections


def decode_state(data: bytes, state_class: type) -> ChatState:
    """
    Rebuild a state from L{encode_state}'s bytes.

    @raise ValueError: if the bytes are not such a snapshot, or are
        inconsistent (columns of different lengths, texts that do not add
        up).
    """
    from replichat.state import Account

    sections = _sections(data)
    meta = json.loads(bytes(sections["meta"]))
    state = state_class()
    state.applied_index = meta["applied_index"]
    state.cluster = meta.get("cluster")
    names = meta["names"]
    columns = {field: _unpacked(code, sections[name]) for name, code, field in _COLUMNS}
    if len({len(column) for column in columns.values()}) > 1:
        raise ValueError("message columns differ in length")
    text = bytes(sections["m.text"]).decode("utf-8")
    ends = list(accumulate(columns["text"]))
    if (ends[-1] if ends else 0) != len(text):
        raise ValueError("message texts do not add up to the text section")
    columns["text"] = map(text.__getitem__, map(slice, [0, *ends], ends))
    for field in ("from_name", "to_name"):
        columns[field] = map(names.__getitem__, columns[field])
    rows = zip(*(columns[field] for field in _FIELDS))
    state.messages = dict(zip(columns["id"], rows))
    for uid, username, password, created, sessions in json.loads(bytes(sections["accounts"])):
        account = Account(uid, username, password, created)
        for mailbox in _MAILBOXES:
            ids = _unpacked("q", sections["a.%d.%s" % (uid, mailbox)])
            setattr(account, mailbox, dict.fromkeys(ids))
        account.sessions = {token: ts for token, ts in sessions}
        state.accounts[uid] = account
        state.uids_by_name[username] = uid
        state.sessions.update(dict.fromkeys(account.sessions, uid))
    state.sorted_names = sorted(state.uids_by_name)
    for rid, who, fingerprint, result, error, made in json.loads(bytes(sections["rids"])):
        state.rids[rid] = (who, fingerprint, result, None if error is None else tuple(error), made)
    state.aliases = {int(a): b for a, b in meta.get("aliases", [])}
    return state
