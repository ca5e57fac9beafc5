# -*- test-case-name: tests.test_history -*-
"""
What clients saw: the records of a run, and their JSON lines.

A L{History} records, as Jepsen's histories do, every operation a client
invoked and how it completed: C{ok} with the result the server answered,
C{fail} with a definite error code, or C{unknown} (a timeout, a lost
connection, C{unavailable}: the write may or may not have taken effect).  It
also records the messages pushed to clients.  L{RecordingClient} fills one
in around a L{replichat.client.ChatClient}; a simulator driving servers
some other way calls L{History.invoke} and friends itself.  L{History.dump}
and L{History.load} keep a history as one JSON event per line.

Holding a history against what the servers kept is done beside this
module:

  - L{replichat.testing.replicas}: C{Replica}, what one server kept, and
    the replay of the committed logs of every replica;
  - L{replichat.testing.checker}: C{check}, the C{Report} of every
    C{Anomaly} it finds, and what each kind of anomaly means.

Their public names (C{check}, C{Replica}, C{Anomaly}, C{Report}, the
anomaly kinds...) lived here once and can still be imported from here
(L{_MOVED}): they are loaded on first use (L{__getattr__}), since they
import the records from this module.
"""

from __future__ import annotations

import importlib
import json
from typing import Any, Iterable

from attrs import define, frozen
from twisted.internet.defer import Deferred

from replichat import errors
from replichat.errors import ChatError
from replichat.handler import token_hash

# -- completions ---------------------------------------------------------------

OK = "ok"
FAIL = "fail"
UNKNOWN = "unknown"

#: Error codes that leave a write's outcome unknown: the server may have
#: committed it and then failed to answer, or the client gave up retrying.
#: (C{unreachable} and C{closed} are the client library's own codes.)
INDEFINITE_CODES = frozenset({errors.UNAVAILABLE, errors.INTERNAL, "unreachable", "closed"})

#: Ops that change replicated state (DESIGN.md §4).
WRITES = frozenset(
    {"create_account", "login", "logout", "send", "read", "delete_messages", "delete_account"}
)

# -- the history -------------------------------------------------------------------


@define(eq=False)
class Op:
    """
    One operation a client invoked, with all its retries.

    @ivar number: its place in the history, from 1.
    @ivar client: the client's name.
    @ivar op: the protocol op.
    @ivar args: its arguments, as sent (without C{rid}).
    @ivar rid: its request id, if any.
    @ivar user: the account the client was logged in as (for C{login} and
        C{create_account}, the one named in C{args}).
    @ivar session: the hash of the client's session token, if it had one.
    @ivar status: L{OK}, L{FAIL}, L{UNKNOWN}, or L{None} while pending (a
        pending operation counts as unknown).
    @ivar result: the answer's C{result}, for L{OK}.
    @ivar error: the error code, for L{FAIL} and an L{UNKNOWN} that had one.
    @ivar attempts: how many times it was sent, where the caller counts.
    """

    number: int
    client: str
    op: str
    args: dict
    rid: str | None = None
    user: str | None = None
    session: str | None = None
    invoked_at: float | None = None
    status: str | None = None
    result: Any = None
    error: str | None = None
    completed_at: float | None = None
    attempts: int = 1

    def describe(self) -> str:
        """
        One line for a trace.
        """
        args = {k: v for k, v in self.args.items() if k != "password"}
        head = "#%d %s%s %s %s" % (
            self.number,
            self.client,
            "" if self.user is None else " as " + self.user,
            self.op,
            _j(args),
        )
        if self.rid is not None:
            head += " rid=" + self.rid
        if self.invoked_at is not None:
            head += " at %.4f" % (self.invoked_at,)
        if self.status is None:
            return head + " -> pending"
        if self.status == OK:
            tail = " " + _j(self.result)
        else:
            tail = "" if self.error is None else " " + self.error
        done = "" if self.completed_at is None else " at %.4f" % (self.completed_at,)
        return "%s -> %s%s%s" % (head, self.status, tail, done)


@frozen
class Push:
    """
    A message pushed to a client.
    """

    number: int
    client: str
    message: Any
    user: str | None = None
    session: str | None = None
    at: float | None = None

    def describe(self) -> str:
        return "#%d %s%s was pushed %s%s" % (
            self.number,
            self.client,
            "" if self.user is None else " as " + self.user,
            _j(self.message),
            "" if self.at is None else " at %.4f" % (self.at,),
        )


def _hashed(token: str | None) -> str | None:
    return None if token is None else token_hash(token)


class History:
    """
    What the clients of one run saw, in the order it happened.

    @ivar events: the L{Op}s (as invoked) and L{Push}es, in order.
    """

    def __init__(self) -> None:
        self.events: list[Op | Push] = []
        self._rids: dict[str, Op] = {}

    @property
    def ops(self) -> list[Op]:
        return [e for e in self.events if isinstance(e, Op)]

    @property
    def pushes(self) -> list[Push]:
        return [e for e in self.events if isinstance(e, Push)]

    def op_for(self, rid: str) -> Op | None:
        """
        The L{Op} that was invoked with request id C{rid}, if any.
        """
        return self._rids.get(rid)

    def invoke(
        self,
        client: str,
        op: str,
        args: dict | None = None,
        *,
        rid: str | None = None,
        user: str | None = None,
        token: str | None = None,
        at: float | None = None,
    ) -> Op:
        """
        A client sends a request.

        @param token: the client's session token (stored hashed), so that
            what it is shown can be checked against its account's id.
        @raise ValueError: if C{rid} was already used: a retry is one more
            attempt of the same L{Op} (L{attempt}), not a new one.
        """
        if rid is not None and rid in self._rids:
            raise ValueError("rid %r is already op #%d" % (rid, self._rids[rid].number))
        args = {k: v for k, v in (args or {}).items() if k != "rid"}
        if user is None and op in ("login", "create_account"):
            user = args.get("username")
        record = Op(len(self.events) + 1, client, op, args, rid, user, _hashed(token), at)
        self.events.append(record)
        if rid is not None:
            self._rids[rid] = record
        return record

    def attempt(self, op: Op) -> None:
        """
        The client sends C{op} once more (same rid).
        """
        op.attempts += 1

    def ok(self, op: Op, result: Any, at: float | None = None) -> None:
        """
        C{op} was answered with C{result}.
        """
        self._complete(op, OK, at, result=result)

    def fail(self, op: Op, code: str, at: float | None = None) -> None:
        """
        C{op} was refused with the error C{code} (and not retried further).
        An indefinite code (L{INDEFINITE_CODES}) makes it L{UNKNOWN}.
        """
        status = UNKNOWN if code in INDEFINITE_CODES else FAIL
        self._complete(op, status, at, error=code)

    def unknown(self, op: Op, at: float | None = None, why: str | None = None) -> None:
        """
        The client gave up on C{op} without an answer.
        """
        self._complete(op, UNKNOWN, at, error=why)

    def _complete(self, op: Op, status: str, at: float | None, result=None, error=None) -> None:
        if op.status is not None:
            raise ValueError("op #%d already completed (%s)" % (op.number, op.status))
        op.status, op.result, op.error, op.completed_at = status, result, error, at

    def pushed(
        self,
        client: str,
        message: Any,
        *,
        user: str | None = None,
        token: str | None = None,
        at: float | None = None,
    ) -> Push:
        """
        A message was pushed to C{client}, logged in as C{user}.
        """
        push = Push(len(self.events) + 1, client, message, user, _hashed(token), at)
        self.events.append(push)
        return push

    def describe(self, numbers: Iterable[int] | None = None) -> str:
        """
        A readable trace: every event, or those numbered C{numbers}.
        """
        wanted = None if numbers is None else set(numbers)
        return "\n".join(
            e.describe() for e in self.events if wanted is None or e.number in wanted
        )

    def to_json(self) -> list[dict]:
        """
        The events as JSON values (see L{from_json}).
        """
        out = []
        for e in self.events:
            if isinstance(e, Op):
                out.append({"type": "op", **{f: getattr(e, f) for f in _OP_FIELDS}})
            else:
                out.append({"type": "push", **{f: getattr(e, f) for f in _PUSH_FIELDS}})
        return out

    @classmethod
    def from_json(cls, values: Iterable[dict]) -> History:
        history = cls()
        for value in values:
            value = dict(value)
            kind = value.pop("type")
            if kind == "op":
                op = Op(**value)
                history.events.append(op)
                if op.rid is not None:
                    history._rids[op.rid] = op
            else:
                history.events.append(Push(**value))
        return history

    def dump(self, path: str) -> None:
        """
        Write the history to C{path}, one JSON event per line.
        """
        with open(path, "w", encoding="utf-8") as f:
            for value in self.to_json():
                f.write(json.dumps(value, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: str) -> History:
        with open(path, encoding="utf-8") as f:
            return cls.from_json(json.loads(line) for line in f if line.strip())


_OP_FIELDS = [a.name for a in Op.__attrs_attrs__]
_PUSH_FIELDS = [a.name for a in Push.__attrs_attrs__]


class RecordingClient:
    """
    A L{replichat.client.ChatClient} (or anything with its C{request},
    C{username}, C{token} and C{on_message}) whose every request and push is
    recorded in a L{History}.

    Writes get a rid made here, so the history knows it; the client library
    reuses it on every retry it makes out of sight.
    """

    def __init__(self, history: History, name: str, client, clock) -> None:
        self.history = history
        self.name = name
        self.client = client
        self.clock = clock
        self._count = 0
        client.on_message = self._on_message

    def _on_message(self, message: dict) -> None:
        self.history.pushed(
            self.name, message, user=self.client.username, token=self.client.token,
            at=self.clock.seconds(),
        )

    def request(self, op: str, **args: Any) -> Deferred:
        """
        Send C{op}; the Deferred fires as C{ChatClient.request}'s does.
        """
        return Deferred.fromCoroutine(self._request(op, args))

    async def _request(self, op: str, args: dict) -> Any:
        rid = args.pop("rid", None)
        if rid is None and op in WRITES and op != "login":
            self._count += 1
            rid = "%s-%d" % (self.name, self._count)
        record = self.history.invoke(
            self.name, op, args, rid=rid, user=self.client.username, token=self.client.token,
            at=self.clock.seconds(),
        )
        if rid is not None:
            args["rid"] = rid
        try:
            result = await self.client.request(op, **args)
        except ChatError as error:
            self.history.fail(record, error.code, self.clock.seconds())
            raise
        except BaseException as error:
            self.history.unknown(record, self.clock.seconds(), type(error).__name__)
            raise
        self.history.ok(record, result, self.clock.seconds())
        return result


def _j(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=repr)


# -- names that moved out ----------------------------------------------------------

#: The public names this module defined before the replay and the checker
#: moved out of it, and the module each lives in now.
_MOVED = dict.fromkeys(("Applied", "Replica"), "replichat.testing.replicas")
_MOVED.update(
    dict.fromkeys(
        (
            "ACCOUNT_GONE_CODES", "Anomaly", "DIVERGED", "DUPLICATE", "FAILED_BUT_APPLIED",
            "KINDS", "LOST", "MISDELIVERED", "NOT_CONVERGED", "NO_EFFECT_CODES", "ORDER",
            "PHANTOM", "READ_TWICE", "REALTIME", "Report", "STALE_READ", "STATE",
            "UNCOMMITTED_READ", "WRONG_ANSWER", "check",
        ),
        "replichat.testing.checker",
    )
)

__all__ = [
    "FAIL", "INDEFINITE_CODES", "OK", "UNKNOWN", "WRITES",
    "History", "Op", "Push", "RecordingClient",
    *sorted(_MOVED),
]


def __getattr__(name: str) -> Any:
    """
    A name in L{_MOVED}, from the module it lives in now (PEP 562).  It is
    imported on first use: that module imports this one, which cannot
    import it back while loading.

    @raise AttributeError: for any other name.
    """
    where = _MOVED.get(name)
    if where is None:
        raise AttributeError("module %r has no attribute %r" % (__name__, name))
    value = getattr(importlib.import_module(where), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_MOVED))
