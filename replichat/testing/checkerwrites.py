# -*- test-case-name: tests.test_history -*-
"""
The checks of writes against the committed log: every request took effect
at most once (L{DUPLICATE}), and as its client was told: an acknowledged
write is committed (L{LOST}) with the answer it got (L{WRONG_ANSWER}), a
write refused with a definite error took no effect (L{FAILED_BUT_APPLIED}),
every committed entry was asked for (L{PHANTOM}), and a request takes
effect after those acknowledged before it was sent (L{REALTIME}).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from attrs import frozen

from replichat import errors
from replichat.testing.checkermatching import (
    _asked_keys,
    _base_name,
    _entry_key,
    _matches,
    _same_message,
    _same_result,
)
from replichat.testing.checkerreport import (
    DUPLICATE,
    FAILED_BUT_APPLIED,
    LOST,
    PHANTOM,
    REALTIME,
    WRONG_ANSWER,
)
from replichat.testing.history import FAIL, OK, WRITES, Op, _hashed, _j
from replichat.testing.replicas import Applied, _short

#: Definite errors that a server gives only if the request (by its rid) has
#: taken no effect: validation failures (the same for every attempt), and
#: refusals that are skipped for a retry of an applied rid or come from
#: applying it.  (Not during a partition: a side that does not know the
#: other applied the rid refuses a retry on its own state; see
#: L{replichat.testing.checker.check}.)
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

#: Errors with which a command re-proposed after a partition finds an
#: account gone: C{not_logged_in} the account it acts as (C{who}),
#: C{no_such_user} a send's recipient (C{to}).  The write is dropped with
#: the account, as an account's unread mail is when it is deleted, but only
#: if the winning side really deleted that account (after alias resolution)
#: by a committed C{delete_account} before the entry (L{_WriteChecks.account_gone}):
#: a merged command finding an account missing for any other reason lost a
#: write.
ACCOUNT_GONE_CODES = frozenset({errors.NO_SUCH_USER, errors.NOT_LOGGED_IN})

_ORIGIN_RID = "~origin:"


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


class _WriteChecks:
    """
    The writes' checks of L{replichat.testing.checker._Checker}, which
    mixes them in and gives them C{history}, its C{ops}, C{partitioned},
    C{replay}, C{flag}, C{canon} and the indexes of the committed log
    (C{_Checker.index_log}, with the snapshot's decoded rid memory
    C{base_results}); C{check_shown} comes from
    L{replichat.testing.checkerreads._ReadChecks}.
    """

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
        error = self.base_rids[op.rid][3]
        result = self.base_results[op.rid]
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
        for op in self.ops:
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
        asked = Counter()
        for op in self.ops:
            asked.update(_asked_keys(op))
        for applied in self.replay.applied:
            command = applied.command
            kind = command["op"]
            if kind in ("noop", "config"):
                continue
            rid = command.get("rid")
            if rid is not None and not rid.startswith(_ORIGIN_RID):
                op = self.history.op_for(rid)
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

    def check_realtime(self) -> None:
        """
        A request sent after another was acknowledged takes effect after it
        (unless the first was re-proposed after a partition: a minority
        side's writes are ordered after the majority's on heal, and its
        acknowledgement may have come from the minority).
        """
        placed = []
        for op in self.ops:
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
