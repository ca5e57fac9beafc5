# -*- test-case-name: tests.test_history -*-
"""
The checks of what clients were shown: only their own account's mail
(L{MISDELIVERED}), only what was committed (L{UNCOMMITTED_READ}), no
message returned by two reads (L{READ_TWICE}), and, for a run that
promises linearizable reads, every message acknowledged before a read
that emptied its account's unread ones (L{STALE_READ}).
"""

from __future__ import annotations

from collections import defaultdict

from replichat.testing.checkermatching import _base_name, _same_message, _same_name
from replichat.testing.checkerreport import (
    MISDELIVERED,
    READ_TWICE,
    STALE_READ,
    UNCOMMITTED_READ,
)
from replichat.testing.history import OK, Op, Push, _j
from replichat.testing.replicas import Applied


class _ReadChecks:
    """
    The reads' checks of L{replichat.testing.checker._Checker}, which mixes
    them in and gives them C{history}, its C{ops}, C{partitioned}, C{replay},
    C{flag}, C{canon} and the indexes of the committed log
    (C{_Checker.index_log}).
    """

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
        for op in self.ops:
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
        for op in self.ops:
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


def _who(event: Op | Push) -> str:
    return "client %s%s (#%d)" % (
        event.client, "" if event.user is None else " as " + event.user, event.number
    )
