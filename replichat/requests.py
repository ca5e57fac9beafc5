# -*- test-case-name: tests.test_lineproto -*-
"""
Parsing and validating client requests (DESIGN.md §4).

A request line is one JSON object: C{id} (echoed in the answer), C{op}, and
the op's arguments.  L{parse_request} turns a decoded object into a
L{Request} whose arguments have the right types, ranges and defaults, or
raises L{ChatError} (C{bad_request}, C{unknown_op}) saying exactly what is
wrong.  Nothing here touches state, so it can be fuzzed on its own.

Every op accepts an optional C{rid} (request id, 1-128 characters); the
mutating ones use it to be applied once however often they are retried.
"""

from __future__ import annotations

import hashlib
from typing import Any, Callable

from attrs import frozen

from replichat import errors
from replichat.errors import ChatError
from replichat.jsonwire import CANONICAL

MAX_RID_CHARS = 128
MAX_USERNAME_CHARS = 64
MAX_PASSWORD_CHARS = 1024
MAX_PATTERN_CHARS = 256
MAX_PAGE = 1000
MAX_IDS = 1000

#: Ops that change the replicated state; only the leader takes them.
MUTATING = frozenset(
    {"create_account", "login", "logout", "send", "read", "delete_messages", "delete_account"}
)

#: Characters that may appear in a username besides letters and digits.
#: Wildcard characters are excluded so that every name is its own pattern.
USERNAME_PUNCTUATION = frozenset("._-")


@frozen
class Request:
    """
    A valid request.

    @ivar id: the client's id for it, echoed in the answer.
    @ivar op: the operation.
    @ivar args: the arguments, validated, with defaults filled in.
    @ivar rid: the request id, or L{None}.
    """

    id: Any
    op: str
    args: dict
    rid: str | None = None

    def fingerprint(self) -> str:
        """
        A digest of what the request asks for (not of secrets), stored with
        its rid so that a rid reused for a different request is noticed.
        """
        public = {k: v for k, v in self.args.items() if k != "password"}
        text = CANONICAL.encode([self.op, public])
        return hashlib.blake2b(text.encode("utf-8"), digest_size=8).hexdigest()


def _bad(message: str) -> ChatError:
    return ChatError(errors.BAD_REQUEST, message)


def _string(name: str, value: object, max_chars: int) -> str:
    if not isinstance(value, str):
        raise _bad("%s must be a string, got %s" % (name, _type(value)))
    if not value:
        raise _bad("%s must not be empty" % (name,))
    if len(value) > max_chars:
        raise _bad("%s is longer than %d characters" % (name, max_chars))
    return value


def _integer(name: str, value: object, low: int, high: int | None = None) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise _bad("%s must be an integer, got %s" % (name, _type(value)))
    if value < low or (high is not None and value > high):
        bounds = "at least %d" % (low,) if high is None else "%d-%d" % (low, high)
        raise _bad("%s must be %s, got %d" % (name, bounds, value))
    return value


def _type(value: object) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
            type(None): "null", int: "an integer", float: "a number"}.get(type(value), "?")


def username(value: object, name: str = "username") -> str:
    """
    Validate a username: 1-64 letters, digits, '.', '_' or '-'.
    """
    text = _string(name, value, MAX_USERNAME_CHARS)
    for char in text:
        if not (char.isalnum() or char in USERNAME_PUNCTUATION):
            raise _bad(
                "%s may hold only letters, digits, '.', '_' and '-', not %r" % (name, char)
            )
    return text


def _password(value: object) -> str:
    return _string("password", value, MAX_PASSWORD_CHARS)


def _ids(value: object) -> list[int]:
    if not isinstance(value, list) or not value:
        raise _bad("ids must be a non-empty list of message ids")
    if len(value) > MAX_IDS:
        raise _bad("ids may hold at most %d message ids" % (MAX_IDS,))
    return [_integer("ids[%d]" % (i,), item, 1) for i, item in enumerate(value)]


# For each op: argument name -> (required, validator, default).  A validator
# takes the value and the limits.
Validator = Callable[[object, Any], object]
_REQUIRED = object()

OPS: dict[str, dict[str, tuple[object, Validator]]] = {
    "hello": {},
    "cluster": {},
    "create_account": {
        "username": (_REQUIRED, lambda v, limits: username(v)),
        "password": (_REQUIRED, lambda v, limits: _password(v)),
    },
    "login": {
        "username": (_REQUIRED, lambda v, limits: _string("username", v, MAX_USERNAME_CHARS)),
        "password": (_REQUIRED, lambda v, limits: _password(v)),
    },
    "resume": {"token": (_REQUIRED, lambda v, limits: _string("token", v, 256))},
    "logout": {},
    "list_accounts": {
        "pattern": ("*", lambda v, limits: _string("pattern", v, MAX_PATTERN_CHARS)),
        "offset": (0, lambda v, limits: _integer("offset", v, 0)),
        "limit": (50, lambda v, limits: _integer("limit", v, 1, MAX_PAGE)),
    },
    "send": {
        "to": (_REQUIRED, lambda v, limits: _string("to", v, MAX_USERNAME_CHARS)),
        "text": (_REQUIRED, lambda v, limits: _string("text", v, limits.max_text_chars)),
    },
    "read": {"limit": (10, lambda v, limits: _integer("limit", v, 1, MAX_PAGE))},
    "history": {
        "with": (None, lambda v, limits: _string("with", v, MAX_USERNAME_CHARS)),
        "before": (None, lambda v, limits: _integer("before", v, 1)),
        "limit": (50, lambda v, limits: _integer("limit", v, 1, MAX_PAGE)),
    },
    "delete_messages": {"ids": (_REQUIRED, lambda v, limits: _ids(v))},
    "delete_account": {"password": (_REQUIRED, lambda v, limits: _password(v))},
}


_ALLOWED = {op: frozenset(spec) | {"id", "op", "rid"} for op, spec in OPS.items()}


def parse_request(obj: object, limits: Any) -> Request:
    """
    Validate a decoded request line.

    @param obj: the JSON value of the line.
    @param limits: the config's L{replichat.config.Limits} (text size).
    @raise ChatError: C{bad_request} or C{unknown_op}; its message names the
        offending field.
    """
    if not isinstance(obj, dict):
        raise _bad("a request must be a JSON object, got %s" % (_type(obj),))
    request_id = obj.get("id")
    if isinstance(request_id, (dict, list)):
        raise _bad("id must be a number or a string")
    op = obj.get("op")
    if not isinstance(op, str):
        raise _bad("op must be a string naming the operation")
    spec = OPS.get(op)
    if spec is None:
        raise ChatError(errors.UNKNOWN_OP, "unknown op %r" % (op[:64],))
    if not obj.keys() <= _ALLOWED[op]:
        unknown = sorted(set(obj) - _ALLOWED[op])
        raise _bad("%s does not take %s" % (op, ", ".join(map(repr, unknown))))
    rid = obj.get("rid")
    if rid is not None:
        rid = _string("rid", rid, MAX_RID_CHARS)
    args = {}
    for name, (default, validate) in spec.items():
        value = obj.get(name)
        if value is None:
            if default is _REQUIRED:
                raise _bad("%s needs %s" % (op, name))
            args[name] = default
        else:
            args[name] = validate(value, limits)
    return Request(request_id, op, args, rid)
