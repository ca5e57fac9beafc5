# -*- test-case-name: tests.test_peer -*-
"""
The AMP commands replichat servers exchange (the wire side of
L{replichat.peermessages}).

There is one one-way command per message type, generated from the message's
attrs fields so that adding a message to L{peermessages.MESSAGE_TYPES} adds
its command: the command is named after the message (C{b"Heartbeat"}), its
arguments are the message's fields under the same names, and its argument
types follow the field types (L{_ARGUMENT_FOR_TYPE}).  L{to_command} and
L{from_command} convert between the two.

AMP limits a value to 64 KiB, but an L{Append} batch can carry megabytes and
a snapshot chunk a mebibyte, so C{bytes} fields travel as L{BigBytes}: one
value split over the keys C{name}, C{name.1}, C{name.2} ... of one box.  The
entries of an L{Append} are packed into one such value (L{encode_entries}).

The answered commands are the handshake (L{Hello}, L{Prove}; see
L{replichat.peerproto} for the protocol) and the admin commands the CLI uses
(L{Status}, L{Leave}, L{ForceLead}).
"""

from __future__ import annotations

import struct

import attrs
from twisted.protocols import amp

from replichat.entries import Entry
from replichat.peermessages import MESSAGE_TYPES


class DecodeError(ValueError):
    """
    A peer command whose arguments do not make a valid message.
    """


class Refused(Exception):
    """
    The accepting side of a connection refuses the handshake (a malformed
    L{Hello}); the description says why.
    """


class BigBytes(amp.Argument):
    """
    A bytes value of any length, split over as many box keys as it needs:
    C{name} holds the first 65535 bytes, C{name.1} the next, and so on.  An
    empty value is one empty C{name} key.  Argument names never contain a
    dot, so the extra keys cannot collide with another argument.

    Subclasses convert other values to and from bytes with C{toString} and
    C{fromString}, as for any L{amp.Argument}.
    """

    chunk = amp.MAX_VALUE_LENGTH

    def toString(self, value):
        return value

    def fromString(self, string):
        return string

    def toBox(self, name, strings, objects, proto):
        data = self.toStringProto(objects.pop(name.decode("ascii")), proto)
        strings[name] = data[: self.chunk]
        for part, start in enumerate(range(self.chunk, len(data), self.chunk), 1):
            strings[b"%s.%d" % (name, part)] = data[start : start + self.chunk]

    def fromBox(self, name, strings, objects, proto):
        parts = [strings.pop(name)]
        while (key := b"%s.%d" % (name, len(parts))) in strings:
            parts.append(strings.pop(key))
        objects[name.decode("ascii")] = self.fromStringProto(b"".join(parts), proto)


class BigText(BigBytes):
    """
    A text value of any length, UTF-8 encoded over L{BigBytes} keys.
    """

    def toString(self, value):
        return value.encode("utf-8")

    def fromString(self, string):
        try:
            return string.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DecodeError(f"text is not UTF-8: {e}") from None


#: Per entry: index, epoch, length of data; then the data.
_ENTRY_HEADER = struct.Struct("!QQI")


def encode_entries(entries):
    """
    Pack entries into one bytes value: for each, its index, epoch and data
    length (big-endian 8, 8 and 4 bytes), then its data.

    @param entries: a sequence of L{Entry}.
    @rtype: L{bytes}
    """
    parts = []
    for entry in entries:
        parts.append(_ENTRY_HEADER.pack(entry.index, entry.epoch, len(entry.data)))
        parts.append(entry.data)
    return b"".join(parts)


def decode_entries(blob):
    """
    Unpack what L{encode_entries} packed.

    @raise DecodeError: if C{blob} is cut short, declares more data than it
        holds, or its indexes do not follow one another.
    @rtype: L{tuple} of L{Entry}
    """
    entries = []
    offset = 0
    while offset < len(blob):
        if len(blob) - offset < _ENTRY_HEADER.size:
            raise DecodeError(
                f"entry {len(entries)}: header cut short at byte {offset}"
                f" of {len(blob)}"
            )
        index, epoch, length = _ENTRY_HEADER.unpack_from(blob, offset)
        offset += _ENTRY_HEADER.size
        if length > len(blob) - offset:
            raise DecodeError(
                f"entry {len(entries)} (index {index}): {length} bytes of data"
                f" declared, {len(blob) - offset} left"
            )
        if entries and index != entries[-1].index + 1:
            raise DecodeError(
                f"entry {len(entries)}: index {index} does not follow"
                f" {entries[-1].index}"
            )
        entries.append(Entry(index, epoch, blob[offset : offset + length]))
        offset += length
    return tuple(entries)


class Entries(BigBytes):
    """
    A tuple of L{Entry}, packed by L{encode_entries}.

    The leader sends one batch to every follower: the packing of the last
    tuple is kept, so a batch is packed once, not once per follower.
    """

    def __init__(self, optional=False):
        super().__init__(optional)
        self._last = ((), b"")

    def toString(self, value):
        if self._last[0] is not value:
            self._last = (value, encode_entries(value))
        return self._last[1]

    def fromString(self, string):
        return decode_entries(string)


#: The AMP argument for each field type a message may use.  A message with
#: a field of another type fails at import, naming the field.
_ARGUMENT_FOR_TYPE = {
    int: amp.Integer,
    str: amp.Unicode,
    bool: amp.Boolean,
    bytes: BigBytes,
    tuple[Entry, ...]: Entries,
}


class MessageCommand(amp.Command):
    """
    The base of the generated message commands: one-way, because every
    message is (an answer is another message).

    @cvar message: the L{replichat.peermessages} class carried.
    """

    requiresAnswer = False
    message: type


def _command_for(message_type):
    """
    Build the command that carries C{message_type}.
    """
    arguments = []
    for field in attrs.fields(attrs.resolve_types(message_type)):
        argument = _ARGUMENT_FOR_TYPE.get(field.type)
        if argument is None:
            raise TypeError(
                f"{message_type.__name__}.{field.name}: no AMP argument for"
                f" {field.type!r}; add one to _ARGUMENT_FOR_TYPE"
            )
        arguments.append((field.name.encode("ascii"), argument()))
    name = message_type.__name__
    return type(
        name + "Command",
        (MessageCommand,),
        {
            "__doc__": f"Carries a L{{replichat.peermessages.{name}}}.",
            "__module__": __name__,
            "commandName": name.encode("ascii"),
            "arguments": arguments,
            "message": message_type,
        },
    )


#: Message class -> its command class.
COMMAND_FOR_MESSAGE = {m: _command_for(m) for m in MESSAGE_TYPES}

#: Wire name of a message command -> its command class.
COMMAND_FOR_NAME = {c.commandName: c for c in COMMAND_FOR_MESSAGE.values()}


def to_command(message):
    """
    The command and keyword arguments for C{callRemote} that carry
    C{message}.

    @param message: an instance of one of L{peermessages.MESSAGE_TYPES}.
    @rtype: L{tuple} of (L{MessageCommand} subclass, L{dict})
    @raise KeyError: if C{message} is not a peer message.
    """
    command = COMMAND_FOR_MESSAGE[type(message)]
    kwargs = {f.name: getattr(message, f.name) for f in attrs.fields(command.message)}
    return command, kwargs


def from_command(command, kwargs):
    """
    The message that C{command} carried with the parsed arguments C{kwargs}.

    @raise DecodeError: if C{command} is not a message command, or the
        arguments do not match the message (an L{Append} whose entries do
        not start right after C{prev_index}, for one).
    """
    message_type = getattr(command, "message", None)
    if COMMAND_FOR_MESSAGE.get(message_type) is not command:
        raise DecodeError(f"{command!r} carries no peer message")
    try:
        message = message_type(**kwargs)
    except TypeError as e:
        raise DecodeError(f"{message_type.__name__}: {e}") from None
    entries = getattr(message, "entries", ())
    if entries and entries[0].index != message.prev_index + 1:
        raise DecodeError(
            f"{message_type.__name__}: first entry has index"
            f" {entries[0].index}, expected prev_index + 1 ="
            f" {message.prev_index + 1}"
        )
    return message


class Hello(amp.Command):
    """
    The first box on every connection, sent by the dialing side: "I am
    C{node} (0 for an admin tool); here is my challenge C{nonce}".  The
    accepting side answers with its id, its own challenge, and its proof:
    HMAC-SHA256(key, C{b"accept"} + dial nonce + accept nonce + its id).
    """

    arguments = [(b"node", amp.Integer()), (b"nonce", amp.String())]
    response = [
        (b"node", amp.Integer()),
        (b"nonce", amp.String()),
        (b"proof", amp.String()),
    ]
    errors = {Refused: b"REFUSED"}


class Prove(amp.Command):
    """
    The dialing side's proof, sent once the acceptor's proof checked out:
    HMAC-SHA256(key, C{b"dial"} + dial nonce + accept nonce + dialer id).
    One-way: a wrong proof closes the connection, a right one opens it.
    """

    arguments = [(b"proof", amp.String())]
    requiresAnswer = False


#: Every admin command answers whether it worked and, if not, why.
_ADMIN_RESPONSE = [(b"ok", amp.Boolean()), (b"error", amp.Unicode())]


class Status(amp.Command):
    """
    Admin: the node's status, a JSON object in C{status} (empty if not
    C{ok}).
    """

    response = _ADMIN_RESPONSE + [(b"status", BigText())]


class Leave(amp.Command):
    """
    Admin: remove server C{node} from the cluster (answered once done).
    """

    arguments = [(b"node", amp.Integer())]
    response = _ADMIN_RESPONSE


class ForceLead(amp.Command):
    """
    Admin: make this server lead without waiting for the members of the last
    live set it knows (one of them is gone for good).
    """

    response = _ADMIN_RESPONSE


#: The admin commands, by the name the CLI gives them.
ADMIN_COMMANDS = {"status": Status, "leave": Leave, "force_lead": ForceLead}
