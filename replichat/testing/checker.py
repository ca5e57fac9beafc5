# -*- test-case-name: tests.test_history -*-
"""
The checker: what clients saw (a L{History}) held against what the servers
kept (a L{Replica} of each).

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

Error codes are judged by what they prove:
L{replichat.testing.history.INDEFINITE_CODES} leave the outcome unknown,
and only L{NO_EFFECT_CODES} prove that a write took no effect (see there
why the others do not).

The checks live by family in L{replichat.testing.checkerservers} (the
servers among themselves), L{replichat.testing.checkerwrites} (each write
took effect at most once, as its client was told) and
L{replichat.testing.checkerreads} (what clients were shown), mixed into
one L{_Checker}; L{replichat.testing.checkermatching} tells what counts as
the same name, message or answer, and L{replichat.testing.replicas}
replays the committed log.  L{Anomaly}, L{Report} and the kinds are
defined in L{replichat.testing.checkerreport}.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Iterable

from replichat.jsonwire import DECODER
from replichat.testing.checkermatching import _base_name
from replichat.testing.checkerreads import _ReadChecks
from replichat.testing.checkerreport import (
    DIVERGED,
    DUPLICATE,
    FAILED_BUT_APPLIED,
    KINDS,
    LOST,
    MISDELIVERED,
    NOT_CONVERGED,
    ORDER,
    PHANTOM,
    READ_TWICE,
    REALTIME,
    STALE_READ,
    STATE,
    UNCOMMITTED_READ,
    WRONG_ANSWER,
    Anomaly,
    Report,
)
from replichat.testing.checkerservers import _ServerChecks
from replichat.testing.checkerwrites import ACCOUNT_GONE_CODES, NO_EFFECT_CODES, _WriteChecks
from replichat.testing.history import UNKNOWN, History
from replichat.testing.replicas import Applied, Replica, _Replay

__all__ = [
    "check", "Anomaly", "Report", "KINDS",
    "DIVERGED", "STATE", "ORDER", "NOT_CONVERGED", "LOST", "DUPLICATE", "WRONG_ANSWER",
    "FAILED_BUT_APPLIED", "PHANTOM", "MISDELIVERED", "UNCOMMITTED_READ", "READ_TWICE",
    "REALTIME", "STALE_READ",
    "NO_EFFECT_CODES", "ACCOUNT_GONE_CODES",
]


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


class _Checker(_ServerChecks, _WriteChecks, _ReadChecks):
    """
    One run of L{check}: each C{check_*} method adds what it finds to
    C{report}.  The checks come by family from the mixins; this replays
    the committed log and indexes it for them.

    @ivar ops: the history's L{Op}s, listed once by L{run}.
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

    def flag(self, kind: str, text: str, ops=(), indexes=(), nodes=()) -> None:
        self.report.anomalies.append(Anomaly(kind, text, tuple(ops), tuple(indexes), tuple(nodes)))

    def run(self) -> Report:
        stats = self.report.stats
        self.ops = ops = self.history.ops
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
            op.args.get("text") for op in self.ops if op.op == "send" and op.rid is None
        }
        self.rid_less_names = {
            _base_name(op.args.get("username"))
            for op in self.ops
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
        # rid -> its remembered answer's result, decoded
        self.base_results: dict[str, Any] = {}
        self.base_sent: dict[int, dict] = {}  # message id -> its wire form
        self.base_deleted: set[int] = set()  # uids deleted before the replay's start
        self.base_deleted_names: set[str] = set()
        if base is None:
            return
        self.names_created.update(_base_name(a.username) for a in base.accounts.values())
        for rid, (_, _, result, _, _) in base.rids.items():
            value = None if result is None else DECODER.decode(result)
            self.base_results[rid] = value
            if not isinstance(value, dict):
                continue
            if isinstance(value.get("username"), str):  # create_account, login
                self.names_created.add(_base_name(value["username"]))
            message = value.get("message")
            if isinstance(message, dict) and isinstance(message.get("id"), int):
                self.base_sent[message["id"]] = message
        for op in self.ops:
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
