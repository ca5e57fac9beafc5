# -*- test-case-name: tests.test_history -*-
"""
What clients saw, and a checker that holds it against what the servers kept.

A L{History} records, as Jepsen's histories do, every operation a client
invoked and how it completed: C{ok} with the result the server answered,
C{fail} with a definite error code, or C{unknown} (a timeout, a lost
connection, C{unavailable}: the write may or may not have taken effect).  It
also records the messages pushed to clients.  L{RecordingClient} fills one
in around a L{replichat.client.ChatClient}; a simulator driving servers
some other way calls L{History.invoke} and friends itself.

L{check} takes the history and a L{Replica} of each server (its committed
log, and its state when it has one), replays the committed log into a fresh
L{replichat.state.ChatState}, and reports every L{Anomaly}:

  - L{DIVERGED}: two servers committed different entries at one index (the
    committed logs must be prefixes of one another);
  - L{STATE}: a server's state is not the replay of its committed log;
  - L{ORDER}: a recipient's messages are in another order, or differ, on
    two servers;
  - L{NOT_CONVERGED}: after the last heal and a quiet period (when the
    caller says there was one) the servers are not at one commit index with
    one state digest;
  - L{LOST}: an acknowledged write is in no committed entry;
  - L{DUPLICATE}: a request id took effect more than once;
  - L{WRONG_ANSWER}: a client was answered something other than what the
    committed entry of its request produced;
  - L{FAILED_BUT_APPLIED}: a client was told its write had no effect, and
    it had one;
  - L{PHANTOM}: a committed entry that no client asked for;
  - L{MISDELIVERED}: a client was shown mail of an account other than its
    own (checked by name, and by the account's never-reused id where the
    client's session token tells which account it was);
  - L{UNCOMMITTED_READ}: a client was shown a message (read, history,
    push) or an account that no committed entry made: a read of a write
    that was later lost;
  - L{READ_TWICE}: two acknowledged reads returned the same message;
  - L{REALTIME}: a request took effect before one acknowledged before it
    was even sent;
  - L{STALE_READ}: a read that emptied its account's unread messages missed
    one whose send was acknowledged before the read was invoked (checked
    only for runs that promise linearizable reads: see L{check}).

Request ids make writes traceable: an operation with a C{rid} is matched to
the entries that carry it, so give every write one (the client library
does).  A rid-less write is checked only for being asked for, and if
acknowledged for being committed.

A partition's heal re-proposes what the losing side committed
(L{replichat.merge}), and such a command may answer otherwise than it did
there, in the documented ways only: an account both sides created is
renamed C{name~2} (names are compared up to that suffix), a merged
C{delete_messages} skips ids already gone, a write whose account the
winning side deleted (by a committed C{delete_account} before it) is
dropped with it, and it is ordered after what the winning side
acknowledged meanwhile.  A request both sides applied (its rid retried
across the split) keeps the winner's effect, and the ids the loser gave
are aliases of the winner's (C{ChatState.aliases}): the checker takes an
id a client was given as the one it is an alias of.  A request the winner
refused and the loser applied takes effect when merged.  Reads are not
re-proposed, so a run with partitions is checked with C{partitioned=True},
which accepts an acknowledged read missing from the log or answered
otherwise than its committed entry, and a definite error that a side
unaware of the other's writes gave.

A replay may start from a snapshot (the logs were compacted): what was
applied before it is judged from the snapshot's state, its rid memory
(each request's first answer and the id it made) and its aliases, as far
as they tell.

Error codes are judged by what they prove: L{INDEFINITE_CODES} leave the
outcome unknown, and only L{NO_EFFECT_CODES} prove that a write took no
effect (see there why the others do not).
"""

from __future__ import annotations

import json
import os
from collections import Counter, defaultdict
from typing import Any, Iterable

from attrs import define, field, frozen
from twisted.internet.defer import Deferred

from replichat import errors
from replichat.entries import CorruptSnapshot, Entry, Snapshot
from replichat.errors import ChatError
from replichat.handler import token_hash
from replichat.jsonwire import DECODER
from replichat.state import ChatState

# -- completions ---------------------------------------------------------------

OK = "ok"
FAIL = "fail"
UNKNOWN = "unknown"

#: Error codes that leave a write's outcome unknown: the server may have
#: committed it and then failed to answer, or the client gave up retrying.
#: (C{unreachable} and C{closed} are the client library's own codes.)
INDEFINITE_CODES = frozenset({errors.UNAVAILABLE, errors.INTERNAL, "unreachable", "closed"})

#: Definite errors that a server gives only if the request (by its rid) has
#: taken no effect: validation failures (the same for every attempt), and
#: refusals that are skipped for a retry of an applied rid or come from
#: applying it.  (Not during a partition: a side that does not know the
#: other applied the rid refuses a retry on its own state; see L{check}.)
#: Other definite errors (C{not_logged_in}, C{bad_credentials},
#: C{rate_limited}, C{not_leader} when the client library gives up) can
#: answer a retry whose first attempt took effect out of the client's sight,
#: so they prove nothing about the write.
NO_EFFECT_CODES = frozenset(
    {
        errors.BAD_REQUEST,
        errors.UNKNOWN_OP,
        errors.TOO_LARGE,
        errors.USERNAME_TAKEN,
        errors.NO_SUCH_USER,
        errors.NOT_FOUND,
    }
)

#: Ops that change replicated state (DESIGN.md §4).
WRITES = frozenset(
    {"create_account", "login", "logout", "send", "read", "delete_messages", "delete_account"}
)

# -- anomalies -------------------------------------------------------------------

DIVERGED = "diverged"
STATE = "state"
ORDER = "order"
NOT_CONVERGED = "not-converged"
LOST = "lost"
DUPLICATE = "duplicate"
WRONG_ANSWER = "wrong-answer"
FAILED_BUT_APPLIED = "failed-but-applied"
PHANTOM = "phantom"
MISDELIVERED = "misdelivered"
UNCOMMITTED_READ = "uncommitted-read"
READ_TWICE = "read-twice"
REALTIME = "realtime"
STALE_READ = "stale-read"

KINDS = (
    DIVERGED, STATE, ORDER, NOT_CONVERGED, LOST, DUPLICATE, WRONG_ANSWER,
    FAILED_BUT_APPLIED, PHANTOM, MISDELIVERED, UNCOMMITTED_READ, READ_TWICE, REALTIME,
    STALE_READ,
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


# -- what the servers kept ---------------------------------------------------------------


@frozen
class Replica:
    """
    What one server holds at the end of a run.

    @ivar commit_index: the highest index it knows committed.
    @ivar entries: the committed entries it still holds (after its
        compacted base), in index order.
    @ivar base: the snapshot its log starts from, if it was compacted.
    @ivar state: its state machine, if it has one to compare.
    """

    node_id: int
    commit_index: int
    entries: tuple = ()
    base: Snapshot | None = None
    state: ChatState | None = field(default=None, eq=False)

    @classmethod
    def of_storage(cls, node_id, disk_log, snapshots, commit_index, state=None) -> Replica:
        """
        Read a server's committed entries from its L{replichat.interfaces.ILog}
        and the snapshot its log starts from out of its snapshot store.
        """
        stop = min(commit_index, disk_log.last_index) + 1
        entries = ()
        if stop > disk_log.first_index:
            entries = tuple(disk_log.read(disk_log.first_index, stop))
        base = None
        if disk_log.base_index > 0:
            intact = [
                s for s in snapshots.load_all()
                if not isinstance(s, CorruptSnapshot) and s.index >= disk_log.base_index
            ]
            if intact:
                base = min(intact, key=lambda s: s.index)
        return cls(node_id, commit_index, entries, base, state)

    @classmethod
    def of_node(cls, node) -> Replica:
        """
        A running or stopped L{replichat.node.Node}'s committed log and state.
        """
        return cls.of_storage(
            node.node_id, node.disk_log, node.snapshots, node.commit_index, node.state
        )

    @classmethod
    def of_data_dir(cls, node_id: int, data_dir: str, commit_index: int | None = None) -> Replica:
        """
        A stopped server's data directory.  Opening the log recovers it as a
        start-up would (a torn tail is cut).

        @param commit_index: how far its log is known committed; by default
            all of it, which is right only after the cluster converged.
        """
        from replichat.log import SegmentedLog
        from replichat.snapshot import FileSnapshotStore

        disk_log = SegmentedLog(os.path.join(data_dir, "log"))
        try:
            snapshots = FileSnapshotStore(os.path.join(data_dir, "snapshots"))
            last = disk_log.last_index if commit_index is None else commit_index
            return cls.of_storage(node_id, disk_log, snapshots, last)
        finally:
            disk_log.close()


# -- the report ---------------------------------------------------------------------


@frozen
class Anomaly:
    """
    One thing that must not happen, and did.

    @ivar kind: one of L{KINDS}.
    @ivar ops: the numbers of the history events involved.
    @ivar indexes: the log indexes involved.
    @ivar nodes: the servers involved.
    """

    kind: str
    text: str
    ops: tuple = ()
    indexes: tuple = ()
    nodes: tuple = ()


@define
class Report:
    """
    What L{check} found.

    @ivar notes: what could not be checked, and why.
    @ivar stats: counts of what was checked.
    """

    anomalies: list = field(factory=list)
    notes: list = field(factory=list)
    stats: Counter = field(factory=Counter)

    @property
    def ok(self) -> bool:
        return not self.anomalies

    def kinds(self) -> Counter:
        return Counter(a.kind for a in self.anomalies)

    def summary(self) -> str:
        s = self.stats
        head = (
            "%d ops (%d ok, %d failed, %d unknown), %d pushes, %d committed entries, %d replicas"
            % (s["ops"], s["ops ok"], s["ops fail"], s["ops unknown"], s["pushes"],
               s["entries"], s["replicas"])
        )
        if self.ok:
            return head + ": no anomalies"
        kinds = ", ".join("%s %d" % kv for kv in sorted(self.kinds().items()))
        return "%s: %d anomalies (%s)" % (head, len(self.anomalies), kinds)

    def describe(self, history: History | None = None, limit: int = 20) -> str:
        """
        The summary, the first C{limit} anomalies, and (given the history)
        the client events each involves.
        """
        lines = [self.summary()]
        for anomaly in self.anomalies[:limit]:
            lines.append("%s: %s" % (anomaly.kind, anomaly.text))
            if history is not None and anomaly.ops:
                lines.extend("    " + line for line in history.describe(anomaly.ops).splitlines())
        if len(self.anomalies) > limit:
            lines.append("... and %d more" % (len(self.anomalies) - limit,))
        lines.extend("note: " + note for note in self.notes)
        return "\n".join(lines)


# -- replaying the committed log ---------------------------------------------------------


@frozen
class Applied:
    """
    One committed entry as the replay applied it.
    """

    index: int
    command: dict  # as committed
    result: Any
    error: str | None
    duplicate: bool
    who_name: str | None  # the name of the account C{who} named, before
    created: bool = False  # a send or create_account that made a new id
    # The command with the ids it names (who, to, ids) resolved through the
    # aliases known when it was applied, as the state machine applied it.
    resolved: dict | None = None

    @property
    def who(self) -> int | None:
        """
        The account the command was applied to, after alias resolution.
        """
        return (self.command if self.resolved is None else self.resolved).get("who")

    @property
    def to(self) -> int | None:
        """
        A send's recipient, after alias resolution.
        """
        return (self.command if self.resolved is None else self.resolved).get("to")

    @property
    def ids(self) -> list:
        """
        A C{delete_messages}' ids, after alias resolution.
        """
        return list((self.command if self.resolved is None else self.resolved).get("ids") or ())

    @property
    def merged(self) -> bool:
        """
        Whether this is a command re-proposed after a partition healed
        (L{replichat.merge}), whose answer may differ from the first one's.
        """
        return bool(self.command.get("merged"))

    @property
    def effect(self) -> bool:
        """
        Whether applying it changed something a client asked for.
        """
        if self.duplicate or self.error is not None:
            return False
        if self.command["op"] in ("send", "create_account"):
            return self.created
        return True


class _Replay:
    """
    The committed log merged from every replica, applied from the lowest
    point where it is complete.
    """

    def __init__(self, replicas: list[Replica], report: Report) -> None:
        self.report = report
        self.entries: dict[int, Entry] = {}
        self.applied: list[Applied] = []
        self.start = 0
        self.base_state: ChatState | None = None
        self.state: ChatState | None = None
        self.digests: dict[int, str] = {}
        self.complete = False
        self._merge(replicas)
        self._run(replicas)

    def _merge(self, replicas: list[Replica]) -> None:
        holder: dict[int, int] = {}
        for replica in replicas:
            previous = None
            for entry in replica.entries:
                if entry.index > replica.commit_index:
                    break
                if previous is not None and entry.index != previous + 1:
                    self.report.notes.append(
                        "node %d's log skips from %d to %d"
                        % (replica.node_id, previous, entry.index)
                    )
                previous = entry.index
                known = self.entries.get(entry.index)
                if known is None:
                    self.entries[entry.index] = entry
                    holder[entry.index] = replica.node_id
                elif (known.epoch, known.data) != (entry.epoch, entry.data):
                    self.report.anomalies.append(
                        Anomaly(
                            DIVERGED,
                            "nodes %d and %d committed different entries at index %d "
                            "(epochs %d and %d): %s / %s"
                            % (holder[entry.index], replica.node_id, entry.index, known.epoch,
                               entry.epoch, _short(known.data), _short(entry.data)),
                            indexes=(entry.index,),
                            nodes=(holder[entry.index], replica.node_id),
                        )
                    )

    def _starts(self, replicas: list[Replica]):
        """
        Where a replay can begin: C{(index, state)}, lowest first.
        """
        if 1 in self.entries or all(r.commit_index == 0 for r in replicas):
            yield 0, None
        bases = {r.base.index: r.base for r in replicas if r.base is not None}
        for index in sorted(bases):
            yield index, bases[index]

    def _run(self, replicas: list[Replica]) -> None:
        top = max([r.commit_index for r in replicas] + [max(self.entries, default=0)])
        wanted = {r.state.applied_index for r in replicas if r.state is not None}
        for start, snapshot in self._starts(replicas):
            if all(i in self.entries for i in range(start + 1, top + 1)):
                break
        else:
            missing = [i for i in range(1, top + 1) if i not in self.entries]
            self.report.notes.append(
                "no replica holds committed entries %s and no snapshot covers them: "
                "only the logs' agreement was checked" % (_ranges(missing),)
            )
            return
        self.complete = True
        self.start = start
        if snapshot is None:
            state = ChatState()
        else:
            state = ChatState.from_snapshot(snapshot.data)
            self.base_state = ChatState.from_snapshot(snapshot.data)
        self._check_snapshots(replicas, state, start)
        if start in wanted:
            self.digests[start] = state.digest()
        for index in range(start + 1, top + 1):
            command = DECODER.decode(self.entries[index].data.decode("utf-8"))
            resolved = _resolved(state.aliases, command)
            who = resolved.get("who")
            account = state.accounts.get(who) if who is not None else None
            sizes = len(state.messages), len(state.accounts)
            outcome = state.apply(index, command, self.entries[index].epoch)
            self.applied.append(
                Applied(
                    index,
                    command,
                    outcome.result,
                    None if outcome.error is None else outcome.error.code,
                    outcome.duplicate,
                    None if account is None else account.username,
                    created=len(state.messages) > sizes[0] or len(state.accounts) > sizes[1],
                    resolved=resolved,
                )
            )
            if index in wanted:
                self.digests[index] = state.digest()
            self._check_snapshots(replicas, state, index)
        self.state = state

    def _check_snapshots(self, replicas: list[Replica], state: ChatState, index: int) -> None:
        for replica in replicas:
            base = replica.base
            if base is not None and base.index == index and base.data != state.to_snapshot():
                self.report.anomalies.append(
                    Anomaly(
                        STATE,
                        "node %d's snapshot at index %d is not the replay of the committed log"
                        % (replica.node_id, index),
                        indexes=(index,),
                        nodes=(replica.node_id,),
                    )
                )


def _resolved(aliases: dict, command: dict) -> dict:
    """
    C{command} with the ids it names resolved through C{aliases}, as
    L{ChatState.apply} resolves them (a losing side's id names the winner's).
    """
    if not aliases:
        return command
    changed = {}
    for name in ("who", "to"):
        if command.get(name) in aliases:
            changed[name] = aliases[command[name]]
    ids = command.get("ids")
    if ids and any(i in aliases for i in ids):
        changed["ids"] = [aliases.get(i, i) for i in ids]
    return {**command, **changed} if changed else command


def _short(data: bytes, limit: int = 120) -> str:
    text = data.decode("utf-8", "replace")
    return text if len(text) <= limit else text[:limit] + "..."


def _ranges(numbers: list[int]) -> str:
    spans: list[list[int]] = []
    for n in numbers:
        if spans and spans[-1][1] == n - 1:
            spans[-1][1] = n
        else:
            spans.append([n, n])
    return ", ".join(str(a) if a == b else "%d-%d" % (a, b) for a, b in spans[:10])


# -- the checker ---------------------------------------------------------------------------

#: Errors with which a command re-proposed after a partition finds an
#: account gone: C{not_logged_in} the account it acts as (C{who}),
#: C{no_such_user} a send's recipient (C{to}).  The write is dropped with
#: the account, as an account's unread mail is when it is deleted, but only
#: if the winning side really deleted that account (after alias resolution)
#: by a committed C{delete_account} before the entry (L{_Checker.account_gone}):
#: a merged command finding an account missing for any other reason lost a
#: write.
ACCOUNT_GONE_CODES = frozenset({errors.NO_SUCH_USER, errors.NOT_LOGGED_IN})

_ORIGIN_RID = "~origin:"


def check(
    history: History,
    replicas: Iterable[Replica],
    converged: bool = False,
    partitioned: bool = False,
    linearizable: bool | None = None,
) -> Report:
    """
    Check a run: the servers against each other, and the clients' history
    against the committed log.

    @param replicas: one per server whose data is to be checked (a crashed
        server's too: its committed entries must agree with the others').
    @param converged: the run ended with every fault healed and a quiet
        period, so every replica must be at one commit index and state.
    @param partitioned: the run had partitions.  A read acknowledged on the
        side that lost is not re-proposed when the partition heals (its
        messages come back unread, see L{replichat.merge}), so an
        acknowledged read missing from the log, or answered otherwise than
        the entry the winning side committed for the same rid, is then
        expected; and a definite error proves no more that a write had no
        effect, since the side that gave it may not know that the other
        side applied the write.
    @param linearizable: check for L{STALE_READ}s: every read sees every send
        acknowledged before it was invoked.  By default, when the run had no
        partitions.  Turn it off for a run with partitions (each side reads
        only its own writes until the heal) and for a run that paused
        servers (SIGSTOP, or anything that stalls one long enough to be
        dropped from the live set): replication waits for the live set only,
        so a follower dropped while paused misses what the others commit,
        and if they then die it may lead with its stale log; the writes it
        missed come back (re-proposed) when the others do, so nothing is
        lost, but the reads in between do not show them, by design.
    """
    if linearizable is None:
        linearizable = not partitioned
    return _Checker(history, list(replicas), converged, partitioned, linearizable).run()


@frozen
class _Answer:
    """
    One application of a request id that was not a repeat of an earlier
    one: a committed entry, or what the snapshot a replay starts from
    remembers of the rid (its newest answer).

    @ivar took: it succeeded (what its client would have been answered).
    @ivar effect: it changed something (it took, and was no no-op).
    @ivar merged: it was (or, before the replay's start, may have been) a
        command re-proposed after a partition healed.
    @ivar applied: the entry, or L{None} before the replay's start.
    """

    took: bool
    effect: bool
    result: Any
    error: str | None
    merged: bool
    where: str
    indexes: tuple
    applied: Applied | None

    @classmethod
    def of(cls, applied: Applied) -> _Answer:
        """
        A committed entry's answer.
        """
        return cls(
            applied.error is None, applied.effect, applied.result, applied.error,
            applied.merged, "at index %d" % (applied.index,), (applied.index,), applied,
        )


class _Checker:
    """
    One run of L{check}: each C{check_*} method adds what it finds to
    C{report}.
    """

    def __init__(
        self,
        history: History,
        replicas: list[Replica],
        converged: bool,
        partitioned: bool,
        linearizable: bool = False,
    ) -> None:
        self.history = history
        self.replicas = replicas
        self.converged = converged
        self.partitioned = partitioned
        self.linearizable = linearizable
        self.report = Report()
        self._digests: dict[int, str] = {}

    def digest(self, replica: Replica) -> str:
        """
        The digest of a replica's state, computed once.
        """
        key = id(replica.state)
        if key not in self._digests:
            self._digests[key] = replica.state.digest()
        return self._digests[key]

    def flag(self, kind: str, text: str, ops=(), indexes=(), nodes=()) -> None:
        self.report.anomalies.append(Anomaly(kind, text, tuple(ops), tuple(indexes), tuple(nodes)))

    def run(self) -> Report:
        stats = self.report.stats
        ops = self.history.ops
        stats["ops"] = len(ops)
        for op in ops:
            stats["ops " + (op.status or UNKNOWN)] += 1
        stats["pushes"] = len(self.history.pushes)
        stats["replicas"] = len(self.replicas)
        self.replay = _Replay(self.replicas, self.report)
        stats["entries"] = len(self.replay.applied)
        self.check_order()
        self.check_convergence()
        if self.replay.complete:
            self.index_log()
            self.check_states()
            self.check_writes()
            self.check_entries_asked_for()
            self.check_reads()
            self.check_realtime()
            if self.linearizable:
                self.check_stale_reads()
        return self.report

    # -- the servers among themselves --------------------------------------------

    def check_states(self) -> None:
        for replica in self.replicas:
            state = replica.state
            if state is None:
                continue
            self.check_mailboxes(replica.node_id, state)
            if state.applied_index not in self.replay.digests:
                continue
            if self.digest(replica) != self.replay.digests[state.applied_index]:
                self.flag(
                    STATE,
                    "node %d's state at index %d is not the replay of the committed log"
                    % (replica.node_id, state.applied_index),
                    indexes=(state.applied_index,),
                    nodes=(replica.node_id,),
                )

    def check_mailboxes(self, node_id: int, state: ChatState) -> None:
        """
        Every account's inbox holds only mail addressed to it, and its sent
        box only mail it sent.
        """
        for uid, account in state.accounts.items():
            messages = state.messages
            wrong = [i for i in account.inbox if (messages.get(i) or (0, 0, 0, None))[3] != uid]
            wrong += [i for i in account.sent if (messages.get(i) or (0, None))[1] != uid]
            if wrong:
                self.flag(
                    MISDELIVERED,
                    "on node %d account %d (%s) holds messages %s that are not its own"
                    % (node_id, uid, account.username, wrong[:10]),
                    nodes=(node_id,),
                )

    def check_order(self) -> None:
        """
        Every recipient's messages, in the same order with the same content,
        on every replica (setting aside those one has deleted and another
        not yet).
        """
        states = [(r.node_id, r.state) for r in self.replicas if r.state is not None]
        for n, (a_id, a) in enumerate(states):
            for b_id, b in states[n + 1 :]:
                for uid in sorted(a.accounts.keys() & b.accounts.keys()):
                    inbox_a, inbox_b = a.accounts[uid].inbox, b.accounts[uid].inbox
                    common = inbox_a.keys() & inbox_b.keys()
                    seq_a = [a.messages.get(i, (i,))[:6] for i in inbox_a if i in common]
                    seq_b = [b.messages.get(i, (i,))[:6] for i in inbox_b if i in common]
                    if seq_a != seq_b:
                        self.flag(
                            ORDER,
                            "account %d (%s) has its messages in another order, or other "
                            "messages, on nodes %d and %d"
                            % (uid, a.accounts[uid].username, a_id, b_id),
                            nodes=(a_id, b_id),
                        )

    def check_convergence(self) -> None:
        if not self.converged or not self.replicas:
            return
        commits = {r.node_id: r.commit_index for r in self.replicas}
        if len(set(commits.values())) > 1:
            self.flag(
                NOT_CONVERGED,
                "after the quiet period the commit indexes differ: %s"
                % (", ".join("node %d at %d" % kv for kv in sorted(commits.items())),),
                nodes=sorted(commits),
            )
            return
        digests = {r.node_id: self.digest(r) for r in self.replicas if r.state is not None}
        if len(set(digests.values())) > 1:
            self.flag(
                NOT_CONVERGED,
                "after the quiet period the states differ: %s"
                % (", ".join("node %d %s" % (k, v[:12]) for k, v in sorted(digests.items())),),
                nodes=sorted(digests),
            )

    # -- the history against the log -----------------------------------------------

    def index_log(self) -> None:
        replay = self.replay
        self.aliases: dict[int, int] = replay.state.aliases
        self.by_rid: dict[str, list[Applied]] = defaultdict(list)
        self.created: dict[int, Applied] = {}  # message id -> the send that made it
        self.logins: dict[str, int] = {}  # token hash -> uid
        self.login_entries: dict[str, list[Applied]] = defaultdict(list)  # token hash ->
        self.deleted_at: dict[int, int] = {}  # uid -> the index of its delete_account
        # (uid, message id) -> the index of the first read or delete_messages
        # of that account that took the message from its unread ones.
        self.consumed: dict[tuple, int] = {}
        self.names_created: set[str] = set()
        for applied in replay.applied:
            command = applied.command
            op = command["op"]
            rid = command.get("rid")
            if rid is not None:
                self.by_rid[rid].append(applied)
            if op == "login":
                self.login_entries[command["token_hash"]].append(applied)
            if not applied.effect:
                continue
            if op == "send":
                self.created[applied.result["message"]["id"]] = applied
            elif op == "login":
                self.logins[command["token_hash"]] = applied.who
            elif op == "create_account":
                self.names_created.add(_base_name(applied.result["username"]))
            elif op == "delete_account":
                self.deleted_at.setdefault(applied.who, applied.index)
            elif op == "read":
                for message in applied.result["messages"]:
                    self.consumed.setdefault((applied.who, message["id"]), applied.index)
            elif op == "delete_messages":
                for message_id in applied.ids:
                    self.consumed.setdefault((applied.who, message_id), applied.index)
        self.index_base()
        self.dropped: set = set()  # ids of acknowledged messages dropped with an account
        self.rid_less_sends = {
            op.args.get("text") for op in self.history.ops if op.op == "send" and op.rid is None
        }
        self.rid_less_names = {
            _base_name(op.args.get("username"))
            for op in self.history.ops
            if op.op == "create_account" and op.rid is None
        }
        self.report.stats["messages"] = len(self.created)

    def index_base(self) -> None:
        """
        What the snapshot a replay starts from tells of what came before it:
        its messages, sessions and accounts, and from its rid memory the
        answer of every request it remembers (the messages sent and accounts
        created then, even if deleted since) and the accounts a committed
        C{delete_account} of a client in the history removed.
        """
        base = self.replay.base_state
        self.base_messages = {} if base is None else base.messages
        self.base_sessions = {} if base is None else base.sessions
        self.base_rids = {} if base is None else base.rids
        self.base_sent: dict[int, dict] = {}  # message id -> its wire form
        self.base_deleted: set[int] = set()  # uids deleted before the replay's start
        self.base_deleted_names: set[str] = set()
        if base is None:
            return
        self.names_created.update(_base_name(a.username) for a in base.accounts.values())
        for _, _, result, _, _ in base.rids.values():
            value = None if result is None else DECODER.decode(result)
            if not isinstance(value, dict):
                continue
            if isinstance(value.get("username"), str):  # create_account, login
                self.names_created.add(_base_name(value["username"]))
            message = value.get("message")
            if isinstance(message, dict) and isinstance(message.get("id"), int):
                self.base_sent[message["id"]] = message
        for op in self.history.ops:
            kept = self.base_rids.get(op.rid) if op.rid is not None else None
            if (
                op.op == "delete_account"
                and kept is not None
                and kept[3] is None
                and kept[0] not in base.accounts  # (uids are never reused)
            ):
                self.base_deleted.add(kept[0])
                self.base_deleted_names.add(_base_name(op.user))

    def canon(self, thing_id):
        """
        The id that C{thing_id} (a uid or message id a client was given)
        names in the replayed state: itself, or the id it is an alias of (a
        losing side's id for what the winning side made for the same
        request, L{ChatState.aliases}).
        """
        for _ in range(8):
            if not isinstance(thing_id, int) or thing_id not in self.aliases:
                break
            thing_id = self.aliases[thing_id]
        return thing_id

    def account_gone(self, op: Op, answer: _Answer) -> bool:
        """
        Whether a merged write that failed with an L{ACCOUNT_GONE_CODES}
        error was refused because the winning side really deleted the
        account: a committed C{delete_account} of the account it names
        (C{who} for C{not_logged_in}, a send's C{to} for C{no_such_user};
        after alias resolution) came before it.  That is the one way a
        merged write may be dropped though its client was answered
        (L{replichat.merge}); an account missing for any other reason is a
        lost write.
        """
        applied = answer.applied
        if applied is None:
            return self.base_account_gone(op, answer)
        if answer.error == errors.NOT_LOGGED_IN:
            uid = applied.who
        elif answer.error == errors.NO_SUCH_USER and applied.command["op"] == "send":
            uid = applied.to
        else:
            return False
        uid = self.canon(uid)
        deleted = self.deleted_at.get(uid)
        # (A delete before the replay's start came before every entry in it.)
        return (deleted is not None and deleted < applied.index) or uid in self.base_deleted

    def base_account_gone(self, op: Op, answer: _Answer) -> bool:
        """
        L{account_gone} for a write whose failing application came before
        the replay's start, as far as the snapshot tells: the rid memory
        keeps the account it acted as, not a send's recipient, which is
        then judged by name (an account of that name was deleted).  Both
        the write and the delete came before the snapshot, in an order it
        does not keep.
        """
        who = self.base_rids[op.rid][0]
        if answer.error == errors.NOT_LOGGED_IN:
            return self.canon(who) in self.base_deleted
        if answer.error == errors.NO_SUCH_USER and op.op == "send":
            return _base_name(op.args.get("to")) in self.base_deleted_names
        return False

    def applications(self, op: Op) -> list[_Answer]:
        """
        The applications of C{op}'s rid that were not repeats of an earlier
        one (see L{_Answer}), in order, reporting a L{DUPLICATE} if more
        than one took effect.  (A merged command the winning side had
        refused is applied once more, L{replichat.state}: an error and then
        an effect is one effect.)
        """
        entries = self.by_rid.get(op.rid, ())
        if any(a.command["op"] != op.op for a in entries):
            return []  # another request's rid: reported as a phantom
        answers = []
        if op.rid in self.base_rids:
            answers.append(self.base_answer(op))
        answers += [_Answer.of(a) for a in entries if not a.duplicate]
        effects = [a for a in answers if a.effect]
        if len(effects) > 1:
            indexes = [i for a in answers for i in a.indexes]
            self.flag(
                DUPLICATE,
                "%s rid=%s took effect again after its first application: entries %s%s"
                % (op.op, op.rid, indexes,
                   " (first before the replay's start)" if effects[0].applied is None else ""),
                ops=(op.number,),
                indexes=indexes,
            )
        return answers

    def base_answer(self, op: Op) -> _Answer:
        """
        What the snapshot's rid memory keeps of C{op}'s rid: the newest
        answer it had before the replay's start.  Whether that came from a
        command re-proposed after a heal the snapshot does not say; in a run
        with partitions it may have, and it is judged as if it had.
        """
        _, _, result, error, _ = self.base_rids[op.rid]
        result = None if result is None else DECODER.decode(result)
        code = None if error is None else error[0]
        return _Answer(
            code is None, code is None, result, code, self.partitioned,
            "before index %d" % (self.replay.start,), (), None,
        )

    def reproposed(self, rid: str) -> bool:
        """
        Whether a losing side of a partition applied C{rid} too: an entry
        with it was re-proposed after a heal (or, in a run with partitions,
        it was applied before the replay's start, which does not tell).
        """
        return any(a.merged for a in self.by_rid.get(rid, ())) or (
            self.partitioned and rid in self.base_rids
        )

    def check_writes(self) -> None:
        for op in self.history.ops:
            if op.op not in WRITES:
                continue
            self.report.stats["writes checked"] += 1
            if op.rid is not None and op.op != "login":
                self.check_write_by_rid(op)
            elif op.status == OK:
                self.check_ack_without_rid(op)

    def check_write_by_rid(self, op: Op) -> None:
        answers = self.applications(op)
        if not answers:
            if op.status == OK and op.op != "logout" and not (op.op == "read" and self.partitioned):
                # (The client library answers a logout of a session that
                # already ended with {} without committing one.)
                self.flag(
                    LOST,
                    "acknowledged %s rid=%s is in no committed entry" % (op.op, op.rid),
                    ops=(op.number,),
                )
            return
        took = next((a for a in answers if a.took), None)
        if op.status == OK:
            if took is None:
                if any(
                    a.merged and a.error in ACCOUNT_GONE_CODES and self.account_gone(op, a)
                    for a in answers
                ):
                    self.report.stats["merged writes dropped with their account"] += 1
                    if op.op == "send" and isinstance(op.result, dict):
                        self.dropped.add(self.canon((op.result.get("message") or {}).get("id")))
                    return
                first = answers[0]
                self.flag(
                    WRONG_ANSWER,
                    "%s rid=%s was acknowledged, but its committed entry %s failed with %s"
                    % (op.op, op.rid, first.where, first.error),
                    ops=(op.number,), indexes=first.indexes,
                )
            elif op.op != "logout" and not self.same_result(op, took):
                self.flag(
                    WRONG_ANSWER,
                    "%s rid=%s was answered %s, but its committed entry %s gave %s"
                    % (op.op, op.rid, _j(op.result), took.where, _j(took.result)),
                    ops=(op.number,), indexes=took.indexes,
                )
        elif op.status == FAIL and op.error in NO_EFFECT_CODES and took is not None:
            if self.partitioned:
                # During a partition a side that does not know the other
                # applied the request (its first attempt committed there, a
                # retry reached this side) refuses it on its own state: the
                # error proves nothing about the other side's effect.
                self.report.stats["refused during a partition, applied"] += 1
                return
            # Without partitions the error is definite even if the effect
            # came from a command cut from a crashed leader's log and
            # re-proposed: that entry was never committed, so never
            # acknowledged, and applying it after the client was told the
            # request had no effect breaks that answer.
            self.flag(
                FAILED_BUT_APPLIED,
                "%s rid=%s was refused with %s, but took effect %s"
                % (op.op, op.rid, op.error, took.where),
                ops=(op.number,), indexes=took.indexes,
            )

    def same_result(self, op: Op, took: _Answer) -> bool:
        """
        Whether C{op}'s answer is what its application C{took} gave, or
        what another application of the same request may have given in
        the documented ways.
        """
        seen, committed = op.result, took.result
        if seen == committed:
            return True
        if op.op == "send" and self.aliased_message(seen, committed):
            # A losing side applied the request too (a retry across the
            # split) and gave its own message id, now an alias of this one.
            self.report.stats["answers with an aliased id"] += 1
            return True
        if op.op == "read" and self.partitioned:
            # Reads are not re-proposed: a losing side that answered a
            # retry of a read the winner committed had its read undone by
            # the heal (its messages come back unread).  What it showed is
            # still checked (check_reads).
            self.report.stats["reads answered by a losing side"] += 1
            return True
        merged = took.merged or self.reproposed(op.rid)
        return _same_result(op.op, seen, committed, merged)

    def aliased_message(self, seen, committed) -> bool:
        """
        Whether a send's answer C{seen} names a message id that is an alias
        of the committed answer's, and otherwise says the same (but for its
        time, which the side that gave it chose).
        """
        if not isinstance(seen, dict) or not isinstance(committed, dict):
            return False
        mine, theirs = seen.get("message"), committed.get("message")
        if not isinstance(mine, dict) or not isinstance(theirs, dict):
            return False
        return (
            mine.get("id") != theirs.get("id")
            and self.canon(mine.get("id")) == theirs.get("id")
            and _same_message(mine, theirs, aliased=True)
        )

    def check_ack_without_rid(self, op: Op) -> None:
        if op.op == "login":
            token = op.result.get("token") if isinstance(op.result, dict) else None
            hashed = _hashed(token)
            if hashed is None or hashed in self.logins or hashed in self.base_sessions:
                return
            entries = self.login_entries.get(hashed, ())
            if any(a.error is None for a in entries):
                return  # a repeat of a login that succeeded before the replay's start
            if entries:
                # Committed, but every entry failed: a login acknowledged on
                # a losing side, re-proposed, and refused because the winner
                # deleted the account first is dropped with it.
                if any(
                    a.merged and a.error in ACCOUNT_GONE_CODES
                    and self.account_gone(op, _Answer.of(a))
                    for a in entries
                ):
                    self.report.stats["merged logins dropped with their account"] += 1
                    return
                self.flag(
                    WRONG_ANSWER,
                    "login of %s was acknowledged, but its committed entries %s failed with %s"
                    % (op.user, [a.index for a in entries], entries[0].error),
                    ops=(op.number,),
                    indexes=[a.index for a in entries],
                )
            elif self.replay.start == 0:
                # (From a snapshot on, a login before it whose session
                # ended before it leaves no trace.)
                self.flag(
                    LOST,
                    "acknowledged login of %s is in no committed entry" % (op.user,),
                    ops=(op.number,),
                )
        elif op.op == "create_account":
            name = op.result.get("username") if isinstance(op.result, dict) else None
            if name is not None and _base_name(name) not in self.names_created:
                self.flag(
                    LOST,
                    "acknowledged account %r is in no committed entry" % (name,),
                    ops=(op.number,),
                )
        elif op.op == "send":
            message = op.result.get("message") if isinstance(op.result, dict) else None
            if isinstance(message, dict):
                self.check_shown(op, message, "its acknowledged")

    def check_entries_asked_for(self) -> None:
        """
        Every committed client command was asked for by some client.
        """
        by_rid = {op.rid: op for op in self.history.ops if op.rid is not None}
        asked = Counter()
        for op in self.history.ops:
            asked.update(_asked_keys(op))
        for applied in self.replay.applied:
            command = applied.command
            kind = command["op"]
            if kind in ("noop", "config"):
                continue
            rid = command.get("rid")
            if rid is not None and not rid.startswith(_ORIGIN_RID):
                op = by_rid.get(rid)
                if op is None:
                    self.flag(
                        PHANTOM,
                        "entry %d is a %s with rid=%s, which no client sent"
                        % (applied.index, kind, rid),
                        indexes=(applied.index,),
                    )
                elif op.op != kind or not _matches(op, applied):
                    self.flag(
                        PHANTOM,
                        "entry %d (%s) carries rid=%s of another request"
                        % (applied.index, _short(self.replay.entries[applied.index].data), rid),
                        ops=(op.number,),
                        indexes=(applied.index,),
                    )
            elif not asked[_entry_key(applied)]:
                self.flag(
                    PHANTOM,
                    "entry %d (%s) was asked for by no client"
                    % (applied.index, _short(self.replay.entries[applied.index].data)),
                    indexes=(applied.index,),
                )

    # -- what clients were shown -----------------------------------------------------

    def viewer_uid(self, session: str | None) -> int | None:
        if session is None:
            return None
        uid = self.logins.get(session)
        return self.canon(self.base_sessions.get(session) if uid is None else uid)

    def check_shown(self, event: Op | Push, message: dict, how: str) -> tuple | None:
        """
        A message a client was shown must be one the log committed (under
        its id, or one its id is an alias of).

        @return: its C{(to_uid, from_uid)}, if known.
        """
        self.report.stats["messages shown"] += 1
        message_id = message.get("id")
        canonical = self.canon(message_id)
        aliased = canonical != message_id
        applied = self.created.get(canonical)
        if applied is not None:
            wire = applied.result["message"]
            uids = self.canon(applied.to), self.canon(applied.who)
            if aliased:
                self.report.stats["messages shown by an aliased id"] += 1
        elif canonical in self.base_messages:
            _, from_uid, from_name, to_uid, to_name, text, sent_at = self.base_messages[canonical]
            wire = {"id": canonical, "from": from_name, "to": to_name, "text": text,
                    "sent_at": sent_at}
            uids = to_uid, from_uid
        elif canonical in self.dropped:
            return None
        elif canonical in self.base_sent:
            # Sent and gone again before the replay's start: its send's
            # answer is in the snapshot's rid memory.
            wire, uids = self.base_sent[canonical], None
        else:
            # From a snapshot on, a message a rid-less send made before it,
            # and deleted before it, leaves no trace.
            if self.replay.start == 0 or message.get("text") not in self.rid_less_sends:
                self.flag(
                    UNCOMMITTED_READ,
                    "%s was shown %s message %s, which no committed entry made: %s"
                    % (_who(event), how, message_id, _j(message)),
                    ops=(event.number,),
                )
            return None
        if not _same_message(message, wire, aliased):
            self.flag(
                UNCOMMITTED_READ,
                "%s was shown %s message %s as %s, but it was committed as %s"
                % (_who(event), how, message_id, _j(message), _j(wire)),
                ops=(event.number,),
            )
        return uids

    def check_addressee(
        self, seen: Op | Push, message: dict, uids, own_sent: bool, viewer: int | None = None
    ) -> None:
        """
        A client is shown only its own account's mail: by name, and by the
        id of the account its session belongs to (or, given, C{viewer}).
        """
        user = seen.user
        names = (message.get("to"), message.get("from")) if own_sent else (message.get("to"),)
        if user is not None and not any(_same_name(user, n) for n in names):
            self.flag(
                MISDELIVERED,
                "%s was shown message %s of %s"
                % (_who(seen), message.get("id"), " and ".join(sorted({str(n) for n in names}))),
                ops=(seen.number,),
            )
            return
        if viewer is None:
            viewer = self.viewer_uid(seen.session)
        if viewer is not None and uids is not None:
            to_uid, from_uid = uids
            if viewer != to_uid and not (own_sent and viewer == from_uid):
                self.flag(
                    MISDELIVERED,
                    "%s (account id %d) was shown message %s addressed to account id %d"
                    % (_who(seen), viewer, message.get("id"), to_uid),
                    ops=(seen.number,),
                )

    def check_reads(self) -> None:
        read_by: dict[object, dict] = defaultdict(dict)
        for event in self.history.events:
            if isinstance(event, Push):
                if isinstance(event.message, dict):
                    uids = self.check_shown(event, event.message, "a pushed")
                    self.check_addressee(event, event.message, uids, own_sent=False)
                continue
            if event.status != OK or not isinstance(event.result, dict):
                continue
            if event.op in ("read", "history"):
                reader = applied = None
                if event.op == "read" and event.rid is not None:
                    # The account the committed read was applied to.
                    applied = next((a for a in self.by_rid.get(event.rid, ()) if a.effect), None)
                    reader = None if applied is None else self.canon(applied.who)
                for message in event.result.get("messages") or ():
                    if not isinstance(message, dict):
                        continue
                    uids = self.check_shown(event, message, "in a %s" % (event.op,))
                    self.check_addressee(
                        event, message, uids, own_sent=event.op == "history", viewer=reader
                    )
                    if event.op == "read":
                        self.note_read(read_by, event, applied, message.get("id"))
            elif event.op == "list_accounts":
                for name in event.result.get("accounts") or ():
                    base = _base_name(str(name))
                    if base in self.names_created:
                        continue
                    if self.replay.start > 0 and base in self.rid_less_names:
                        continue  # made and deleted before the snapshot, without a rid
                    self.flag(
                        UNCOMMITTED_READ,
                        "%s was shown account %r, which no committed entry created"
                        % (_who(event), name),
                        ops=(event.number,),
                    )

    def note_read(self, read_by, op: Op, applied: Applied | None, message_id) -> None:
        """
        Two acknowledged reads never return one message: the first marked
        it read.  (A read undone by a partition's heal does not count.)
        """
        message_id = self.canon(message_id)
        if op.rid is not None:
            if applied is None:
                return  # lost (reported) or undone by a heal
            if self.partitioned and all(
                self.canon(m["id"]) != message_id for m in applied.result["messages"]
            ):
                # Answered by a losing side whose read of the same rid was
                # undone by the heal (see same_result): the message came
                # back unread, and may be read again.
                return
            reader = ("uid", self.canon(applied.who))
        elif self.partitioned:
            return
        else:
            uid = self.viewer_uid(op.session)
            reader = ("uid", uid) if uid is not None else ("name", op.user)
        first = read_by[reader].setdefault(message_id, op.number)
        if first != op.number:
            self.flag(
                READ_TWICE,
                "message %s was returned by two reads" % (message_id,),
                ops=(first, op.number),
            )

    def check_realtime(self) -> None:
        """
        A request sent after another was acknowledged takes effect after it
        (unless the first was re-proposed after a partition: a minority
        side's writes are ordered after the majority's on heal, and its
        acknowledgement may have come from the minority).
        """
        placed = []
        for op in self.history.ops:
            if op.rid is None or op.invoked_at is None or op.op == "login":
                continue
            first = next((a for a in self.by_rid.get(op.rid, ()) if not a.duplicate), None)
            if first is not None:
                placed.append((op, first))
        done = sorted(
            (
                (op.completed_at, first.index, op)
                for op, first in placed
                if op.status == OK
                and op.completed_at is not None
                and not first.merged
                and not (self.partitioned and self.reproposed(op.rid))
            ),
            key=lambda t: t[0],
        )
        latest = None  # (index, op): the highest index acknowledged so far
        position = 0
        for op, first in sorted(placed, key=lambda t: t[0].invoked_at):
            while position < len(done) and done[position][0] < op.invoked_at:
                if latest is None or done[position][1] > latest[0]:
                    latest = done[position][1:]
                position += 1
            if latest is not None and first.index < latest[0]:
                self.flag(
                    REALTIME,
                    "%s rid=%s took effect at index %d, before index %d of %s rid=%s, "
                    "which was acknowledged before it was sent"
                    % (op.op, op.rid, first.index, latest[0], latest[1].op, latest[1].rid),
                    ops=(latest[1].number, op.number),
                    indexes=(latest[0], first.index),
                )

    def check_stale_reads(self) -> None:
        """
        A read whose answer left its account nothing unread (C{remaining}
        0: it returned every unread message, oldest first) includes every
        message sent to that account whose send was acknowledged before the
        read was invoked, unless a committed read or C{delete_messages} of
        the account took it before the read's entry.  A leader that
        acknowledged a send before its followers had it and then died, or
        a stale server leading after a full restart, breaks this: the send
        comes back later (re-proposed), after reads that missed it.
        """
        base = self.replay.base_state
        sends = defaultdict(list)  # recipient uid -> [(acknowledged at, op, id, index)]
        for op in self.history.ops:
            if op.op != "send" or op.status != OK or op.completed_at is None:
                continue
            message = op.result.get("message") if isinstance(op.result, dict) else None
            if not isinstance(message, dict):
                continue
            message_id = self.canon(message.get("id"))
            if message_id in self.dropped:
                continue
            made = self.created.get(message_id)
            if made is not None:
                sends[self.canon(made.to)].append((op.completed_at, op, message_id, made.index))
            elif base is not None and message_id in base.messages:
                to_uid = base.messages[message_id][3]
                account = base.accounts.get(to_uid)
                if account is not None and message_id in account.unread:
                    sends[to_uid].append((op.completed_at, op, message_id, None))
                # (Else read or deleted before the snapshot.)
            # (Else not committed, reported as lost; or gone before the snapshot.)
        for acknowledged in sends.values():
            acknowledged.sort(key=lambda t: t[0])
        for op in self.history.ops:
            if op.op != "read" or op.status != OK or op.rid is None or op.invoked_at is None:
                continue
            result = op.result
            if not isinstance(result, dict) or result.get("remaining") != 0:
                continue
            applied = next((a for a in self.by_rid.get(op.rid, ()) if a.effect), None)
            if applied is None:
                continue  # lost (reported), or applied before the snapshot
            reader = self.canon(applied.who)
            returned = {
                self.canon(m.get("id")) for m in result.get("messages") or () if isinstance(m, dict)
            }
            self.report.stats["reads checked for staleness"] += 1
            for done_at, send, message_id, index in sends.get(reader, ()):
                if done_at >= op.invoked_at:
                    break
                if message_id in returned:
                    continue
                taken = self.consumed.get((reader, message_id))
                if taken is not None and taken < applied.index:
                    continue
                self.flag(
                    STALE_READ,
                    "read rid=%s (entry %d) left account %d nothing unread, but missed "
                    "message %s%s, whose send rid=%s was acknowledged before the read was sent"
                    % (op.rid, applied.index, reader, message_id,
                       "" if index is None else " (entry %d)" % (index,), send.rid),
                    ops=(send.number, op.number),
                    indexes=(applied.index,) if index is None else (index, applied.index),
                )


# -- matching ------------------------------------------------------------------------------


def _base_name(name):
    """
    A username without the C{~N} a partition's heal may have added to it
    (L{replichat.state}); C{~} is in no name a client can choose.
    """
    if isinstance(name, str) and "~" in name:
        head, _, tail = name.rpartition("~")
        if tail.isdigit():
            return head
    return name


def _same_name(seen, committed) -> bool:
    """
    Whether C{committed} is the name C{seen}, perhaps renamed by a heal.
    """
    return seen == committed or (seen is not None and _base_name(committed) == seen)


def _same_message(seen, committed, aliased: bool = False) -> bool:
    """
    Whether a message a client was shown is the committed one, its names
    perhaps renamed by a heal.  An C{aliased} one (its id an alias of the
    committed one's, L{ChatState.aliases}) was made by a losing side for
    the same request: its id and time are that side's own.
    """
    if not isinstance(seen, dict) or not isinstance(committed, dict):
        return seen == committed
    own = ("from", "to", "id", "sent_at") if aliased else ("from", "to")
    return (
        seen.keys() == committed.keys()
        and all(seen[k] == committed[k] for k in seen if k not in own)
        and _same_name(seen.get("from"), committed.get("from"))
        and _same_name(seen.get("to"), committed.get("to"))
    )


def _same_result(op: str, seen, committed, merged: bool) -> bool:
    """
    Whether a client's answer is what the committed entry gave.  A command
    re-proposed after a partition may answer differently in the ways
    L{replichat.merge} lists: a renamed account, fewer messages deleted.
    """
    if seen == committed:
        return True
    if not merged or not isinstance(seen, dict) or not isinstance(committed, dict):
        return False
    if op == "create_account":
        return _same_name(seen.get("username"), committed.get("username"))
    if op == "send":
        return _same_message(seen.get("message"), committed.get("message"))
    return op == "delete_messages"


def _asked_keys(op: Op) -> list:
    """
    The keys an entry made from C{op} may have (L{_entry_key}), from the
    most to the least specific.
    """
    user = _base_name(op.user)
    if op.op == "send":
        to, text = _base_name(op.args.get("to")), op.args.get("text")
        return [(op.op, u, t, text) for u in {user, None} for t in {to, None}]
    return [(op.op, u) for u in {user, None}]


def _entry_key(applied: Applied) -> tuple:
    command = applied.command
    kind = command["op"]
    name = command.get("username") if kind == "create_account" else applied.who_name
    if kind == "send":
        return (kind, _base_name(name), _base_name(_to_name(applied)), command.get("text"))
    return (kind, _base_name(name))


def _to_name(applied: Applied) -> str | None:
    if applied.command["op"] == "send" and isinstance(applied.result, dict):
        message = applied.result.get("message")
        if isinstance(message, dict):
            return message.get("to")
    return None


def _matches(op: Op, applied: Applied) -> bool:
    """
    Whether a committed entry with C{op}'s rid says what C{op} asked.
    """
    command = applied.command
    kind = command["op"]
    if op.user is not None and applied.who_name is not None and kind != "create_account":
        if not _same_name(op.user, applied.who_name):
            return False
    if kind == "send":
        if "text" in op.args and command.get("text") != op.args["text"]:
            return False
        to = _to_name(applied)
        return to is None or "to" not in op.args or _same_name(op.args["to"], to)
    if kind == "create_account":
        return "username" not in op.args or command["username"] == op.args["username"]
    if kind == "delete_messages":
        return "ids" not in op.args or list(command["ids"]) == list(op.args["ids"])
    if kind == "read":
        return "limit" not in op.args or command["limit"] == op.args["limit"]
    return True


def _who(event: Op | Push) -> str:
    return "client %s%s (#%d)" % (
        event.client, "" if event.user is None else " as " + event.user, event.number
    )


def _j(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=repr)
