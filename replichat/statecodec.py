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
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from replichat.state import ChatState

MAGIC = b"RCSTATE2"
_NAME = struct.Struct("<I")
_LENGTH = struct.Struct("<Q")
_JSON = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, sort_keys=True)
_SWAP = sys.byteorder != "little"


def _packed(typecode: str, values) -> bytes:
    packed = array(typecode, values)
    if _SWAP:  # pragma: no cover (big-endian hosts)
        packed.byteswap()
    return packed.tobytes()


def _unpacked(typecode: str, data: bytes) -> array:
    values = array(typecode)
    values.frombytes(data)
    if _SWAP:  # pragma: no cover
        values.byteswap()
    return values


def encode_state(state: ChatState) -> bytes:
    """
    The snapshot bytes of C{state}.
    """
    sections: list[tuple[str, bytes]] = []
    accounts = []
    for uid in sorted(state.accounts):
        account = state.accounts[uid]
        accounts.append([uid, account.username, account.password, account.created_at,
                         [[token, ts] for token, ts in account.sessions.items()]])
        sections.append(("a.%d.inbox" % uid, _packed("q", account.inbox)))
        sections.append(("a.%d.unread" % uid, _packed("q", account.unread)))
        sections.append(("a.%d.sent" % uid, _packed("q", account.sent)))
    ordered = [state.messages[i] for i in sorted(state.messages)]
    names: dict[str, int] = {}
    for message in ordered:
        names.setdefault(message.from_name, len(names))
        names.setdefault(message.to_name, len(names))
    ids, from_uids, from_names, to_uids, to_names, texts, sent_ats = (
        zip(*ordered) if ordered else ((),) * 7
    )
    meta = {
        "applied_index": state.applied_index,
        "next_uid": state.next_uid,
        "next_message_id": state.next_message_id,
        "names": list(names),
    }
    sections[:0] = [
        ("meta", _JSON.encode(meta).encode("utf-8")),
        ("accounts", _JSON.encode(accounts).encode("utf-8")),
        ("rids", _JSON.encode([[rid, *kept] for rid, kept in state.rids.items()]).encode()),
        ("m.id", _packed("q", ids)),
        ("m.from_uid", _packed("q", from_uids)),
        ("m.from_name", _packed("q", map(names.__getitem__, from_names))),
        ("m.to_uid", _packed("q", to_uids)),
        ("m.to_name", _packed("q", map(names.__getitem__, to_names))),
        ("m.sent_at", _packed("d", sent_ats)),
        ("m.text_len", _packed("q", map(len, texts))),
        ("m.text", "".join(texts).encode("utf-8")),
    ]
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
        sections[name] = view[pos : pos + length]
        pos += length
    return sections


def decode_state(data: bytes, state_class: type) -> ChatState:
    """
    Rebuild a state from L{encode_state}'s bytes.

    @raise ValueError: if the bytes are not such a snapshot.
    """
    from replichat.state import Account, Message

    sections = _sections(data)
    meta = json.loads(bytes(sections["meta"]))
    state = state_class()
    state.applied_index = meta["applied_index"]
    state.next_uid = meta["next_uid"]
    state.next_message_id = meta["next_message_id"]
    names = meta["names"]
    column = lambda name, code="q": _unpacked(code, sections[name])
    lengths = column("m.text_len")
    text = bytes(sections["m.text"]).decode("utf-8")
    ends = list(accumulate(lengths))
    texts = map(text.__getitem__, map(slice, [0, *ends], ends))
    ids = column("m.id")
    rows = zip(
        ids,
        column("m.from_uid"),
        map(names.__getitem__, column("m.from_name")),
        column("m.to_uid"),
        map(names.__getitem__, column("m.to_name")),
        texts,
        column("m.sent_at", "d"),
    )
    # _make builds each tuple in C; calling Message() runs Python code.
    state.messages = dict(zip(ids, map(Message._make, rows)))
    for uid, username, password, created, sessions in json.loads(bytes(sections["accounts"])):
        account = Account(uid, username, password, created)
        account.inbox = dict.fromkeys(column("a.%d.inbox" % uid))
        account.unread = dict.fromkeys(column("a.%d.unread" % uid))
        account.sent = dict.fromkeys(column("a.%d.sent" % uid))
        account.sessions = {token: ts for token, ts in sessions}
        state.accounts[uid] = account
        state.uids_by_name[username] = uid
        state.sessions.update(dict.fromkeys(account.sessions, uid))
    state.sorted_names = sorted(state.uids_by_name)
    for rid, who, fingerprint, result, error in json.loads(bytes(sections["rids"])):
        state.rids[rid] = (who, fingerprint, result, None if error is None else tuple(error))
    return state
