# -*- test-case-name: tests.test_state -*-
"""
The chat state machine: accounts, sessions, mailboxes, and exactly-once
bookkeeping, changed only by applying committed log entries.

Applying is pure and deterministic: every input (timestamps, password
hashes, token hashes) comes from the entry, which the leader filled in before
the entry was logged, so every replica that applies the same entries in the
same order reaches the same state, and a restart that replays the log
rebuilds it exactly.

A message is addressed to an account's uid, which is never reused, so mail
can never reach a later account that took a freed name.

Uids and message ids are named after the log entry that first created them,
its I{origin} (epoch, index), as C{epoch * ORIGIN_BASE + index}.  Epochs
are unique to one leader (see L{replichat.election.next_epoch}), so two
sides of a partition never give one id to different things, and an entry
re-proposed after a partition heals (its command then carries C{origin}
and C{merged}) creates the same ids it created on the losing side: a
client that saw them there can still use them.

Each message is stored once, in C{ChatState.messages}; accounts hold only
ids.  Reading always takes the oldest unread messages first, so an account's
unread messages are an ordered subset of its inbox; both are insertion
ordered dicts keyed by message id (message ids only grow), which makes
"read N", "delete these ids" and "newest first" cheap.
"""

from __future__ import annotations

import bisect
import fnmatch
import hashlib
import heapq
import re
from collections import OrderedDict
from itertools import islice
from typing import NamedTuple

from attrs import define, field, frozen

from replichat import errors, failpoints, merge
from replichat.errors import ChatError
from replichat.jsonwire import COMPACT, DECODER
from replichat.statecodec import decode_state, encode_state


#: How many request ids the state remembers, oldest forgotten first.  It is
#: part of the replicated semantics, so it is a constant and not a setting:
#: two replicas with different values would answer a retry differently.
RID_CAPACITY = 100_000

#: Sessions kept per account; logging in again evicts the oldest.
SESSIONS_PER_ACCOUNT = 32

#: The operations that create something named by their entry's id.
_CREATING = frozenset({"create_account", "send"})

#: Ids are C{epoch * ORIGIN_BASE + index} of the creating entry.
ORIGIN_BASE = 10**10


def resolved(aliases: dict[int, int], command: dict) -> dict:
    """
    C{command} with the uids and message ids it names (C{who}, C{to},
    C{ids}) resolved through C{aliases}: a losing side's id names the
    winner's (L{ChatState.aliases}).
    """
    changed = {}
    for name in ("who", "to"):
        if command.get(name) in aliases:
            changed[name] = aliases[command[name]]
    ids = command.get("ids")
    if ids and any(i in aliases for i in ids):
        changed["ids"] = [aliases.get(i, i) for i in ids]
    return {**command, **changed} if changed else command


def origin_id(epoch: int, index: int) -> int:
    """
    The uid or message id created by the entry at (C{epoch}, C{index}).
    """
    return epoch * ORIGIN_BASE + index


class Message(NamedTuple):
    """
    One message, immutable once sent.  Names are kept as they were when it
    was sent, so history still reads right after an account is deleted.

    The state stores each message as a plain tuple of these fields (see
    L{ChatState.message} for this named view): CPython's cyclic collector
    stops tracking plain tuples of strings and numbers, but never a
    namedtuple, so with millions of messages every full collection would
    otherwise walk them all and pause the server for longer and longer.
    """

    id: int
    from_uid: int
    from_name: str
    to_uid: int
    to_name: str
    text: str
    sent_at: float

    def to_wire(self) -> dict:
        """
        The protocol's message object.
        """
        return {
            "id": self.id,
            "from": self.from_name,
            "to": self.to_name,
            "text": self.text,
            "sent_at": self.sent_at,
        }


@define(eq=False)
class Account:
    """
    One account and its mail.

    @ivar inbox: ids of received messages this account has not deleted.
    @ivar unread: the ids in C{inbox} not yet read, oldest first.
    @ivar sent: ids of messages it sent and has not deleted.
    @ivar sessions: token hash -> login time, oldest first.
    """

    uid: int
    username: str
    password: dict
    created_at: float
    inbox: dict = field(factory=dict)
    unread: dict = field(factory=dict)
    sent: dict = field(factory=dict)
    sessions: dict = field(factory=dict)


@frozen
class Outcome:
    """
    What applying one entry produced.

    @ivar result: the answer for the client, or L{None} on error.
    @ivar error: the refusal, or L{None} on success.
    @ivar pushes: C{(uid, message)} pairs to push to logged-in recipients.
    @ivar duplicate: the entry repeated a known request id; C{result} and
        C{error} are the first answer and nothing changed.
    """

    result: dict | None = None
    error: ChatError | None = None
    pushes: tuple = ()
    duplicate: bool = False


def _ok(result: dict, pushes: tuple = ()) -> Outcome:
    return Outcome(result=result, pushes=pushes)


def _first_outcome(remembered: tuple) -> Outcome:
    """
    The outcome a remembered request id answers with.
    """
    _, _, result, error, _ = remembered
    return Outcome(
        result=None if result is None else DECODER.decode(result),
        error=None if error is None else ChatError(*error),
        duplicate=True,
    )


def _glob_prefix(pattern: str) -> str:
    """
    The literal text before the first wildcard, to narrow a sorted scan.
    """
    match = re.search(r"[*?\[]", pattern)
    return pattern if match is None else pattern[: match.start()]


class ChatState:
    """
    The replicated chat state.  Change it only through L{apply}.
    """

    def __init__(self) -> None:
        self.applied_index = 0
        self.accounts: dict[int, Account] = {}
        self.messages: dict[int, tuple] = {}  # id -> the fields of a Message
        self.uids_by_name: dict[str, int] = {}
        self.sorted_names: list[str] = []
        self.sessions: dict[str, int] = {}
        self.rids: OrderedDict[str, tuple] = OrderedDict()
        # Accounts whose inbox or sent messages are not in id order, because
        # a message merged after a partition kept its older id: their
        # history is sorted instead of merged.  Derived, not snapshotted.
        self.out_of_order: set[int] = set()
        # Ids a losing side of a partition gave for a request the winning
        # side had applied too (the same rid, retried across the split):
        # the loser's id -> the winner's, so what the loser's clients did
        # with theirs reaches the one that exists (see replichat.merge).
        self.aliases: dict[int, int] = {}
        # The newest committed cluster configuration (the JSON form of
        # replichat.membership.ClusterConfig), None before the first.
        self.cluster: dict | None = None

    # -- applying entries ---------------------------------------------------

    def apply(self, index: int, command: dict, epoch: int = 0) -> Outcome:
        """
        Apply the command of the entry at C{index}.

        @param index: must be C{applied_index + 1}.
        @param command: the decoded entry (see L{replichat.commands}).
        @param epoch: the entry's epoch, which with C{index} names the ids
            it creates, unless the command carries its C{origin}.
        """
        if index != self.applied_index + 1:
            raise ValueError(
                "apply out of order: %d after %d" % (index, self.applied_index)
            )
        self.applied_index = index
        if self.aliases:
            command = resolved(self.aliases, command)
        new_id = origin_id(*merge.origin_of(command, epoch, index))
        rid = command.get("rid")
        if rid is not None and not failpoints.on(failpoints.FORGET_RID_DEDUPE):
            remembered = self.rids.get(rid)
            if remembered is not None:
                if not command.get("merged"):
                    return self._repeat(command, remembered)
                if remembered[3] is None:
                    # Both sides of a partition applied this request (a
                    # client retried across the split).  Keep the winner's
                    # effect and point the loser's id at it.
                    made = remembered[4]
                    if made is not None and made != new_id:
                        self.aliases[new_id] = made
                    return self._repeat(command, remembered)
                waiting = remembered[3][0] in merge.WAITING_CODES
                if not command.get("committed") and not waiting:
                    # Not known committed where it was cut: the refusal,
                    # given since, is the answer that stands.
                    return self._repeat(command, remembered)
                # (A command waiting for its account is handed in again
                # until the account is there: see merge.WAITING_CODES.)
                # The winner refused it, with no effect, and the losing side
                # committed it, perhaps acknowledged: one of the two answers
                # was lost on its way to the client.  Apply it, once: better
                # an effect after a refusal than a lost acknowledged write.
        handler = getattr(self, "_apply_" + command["op"])
        try:
            outcome = handler(command, new_id)
        except ChatError as error:
            outcome = Outcome(error=error)
        if rid is not None:
            made = new_id if outcome.error is None and command["op"] in _CREATING else None
            self._remember(rid, command, outcome, made)
        return outcome

    def _repeat(self, command: dict, remembered: tuple) -> Outcome:
        who, fingerprint = remembered[:2]
        if (who, fingerprint) != (command.get("who"), command.get("fp")):
            return Outcome(
                error=ChatError(
                    errors.BAD_REQUEST,
                    "request id %r was already used for another request"
                    % (command["rid"],),
                )
            )
        return _first_outcome(remembered)

    def _remember(self, rid: str, command: dict, outcome: Outcome, made: int | None) -> None:
        # The result is kept encoded: a tuple of strings and numbers is
        # invisible to the cyclic garbage collector, a dict of dicts is not,
        # and up to RID_CAPACITY of them would be rescanned at every full
        # collection.
        error = outcome.error
        result = None if outcome.result is None else COMPACT.encode(outcome.result)
        wire_error = None if error is None else (error.code, error.message)
        self.rids[rid] = (command.get("who"), command.get("fp"), result, wire_error, made)
        while len(self.rids) > RID_CAPACITY:
            self.rids.popitem(last=False)

    def _apply_noop(self, command: dict, new_id: int) -> Outcome:
        return _ok({})

    def _apply_config(self, command: dict, new_id: int) -> Outcome:
        # Membership is the replication layer's business; the state only
        # keeps the newest configuration so that snapshots carry it.
        self.cluster = command["cluster"]
        return _ok({})

    def _apply_create_account(self, command: dict, uid: int) -> Outcome:
        name = command["username"]
        if uid in self.accounts:
            return _ok({"username": self.accounts[uid].username})  # merged twice
        if name in self.uids_by_name:
            if not command.get("merged"):
                raise ChatError(errors.USERNAME_TAKEN, "username %r is taken" % (name,))
            # Both sides of a partition gave the name away.  The account was
            # acknowledged on the losing side and has mail there, so it is
            # kept, under the first free name "<name>~2", "<name>~3"...
            suffix = 2
            while "%s~%d" % (name, suffix) in self.uids_by_name:
                suffix += 1
            name = "%s~%d" % (name, suffix)
        self.accounts[uid] = Account(uid, name, command["password"], command["ts"])
        self.uids_by_name[name] = uid
        bisect.insort(self.sorted_names, name)
        return _ok({"username": name})

    def _apply_login(self, command: dict, new_id: int) -> Outcome:
        account = self._account(command["who"])
        sessions = account.sessions
        sessions[command["token_hash"]] = command["ts"]
        self.sessions[command["token_hash"]] = account.uid
        while len(sessions) > SESSIONS_PER_ACCOUNT:
            oldest = next(iter(sessions))
            del sessions[oldest]
            del self.sessions[oldest]
        return _ok({"username": account.username, "unread": len(account.unread)})

    def _apply_logout(self, command: dict, new_id: int) -> Outcome:
        uid = self.sessions.pop(command["token_hash"], None)
        if uid is not None:
            self.accounts[uid].sessions.pop(command["token_hash"], None)
        return _ok({})

    def _apply_send(self, command: dict, message_id: int) -> Outcome:
        sender = self._account(command["who"])
        recipient = self.accounts.get(command["to"])
        if recipient is None:
            raise ChatError(errors.NO_SUCH_USER, "the recipient no longer exists")
        if message_id in self.messages:
            return _ok({"message": self.message(message_id).to_wire()})  # merged twice
        message = Message(
            message_id,
            sender.uid,
            sender.username,
            recipient.uid,
            recipient.username,
            command["text"],
            float(command["ts"]),  # snapshots store times as doubles
        )
        self.messages[message.id] = tuple(message)
        for uid, ids in ((recipient.uid, recipient.inbox), (sender.uid, sender.sent)):
            if ids and next(reversed(ids)) > message_id:
                self.out_of_order.add(uid)
        recipient.inbox[message.id] = None
        recipient.unread[message.id] = None
        sender.sent[message.id] = None
        wire = message.to_wire()
        return _ok({"message": wire}, pushes=((recipient.uid, wire),))

    def _apply_read(self, command: dict, new_id: int) -> Outcome:
        account = self._account(command["who"])
        taken = list(islice(account.unread, command["limit"]))
        for message_id in taken:
            del account.unread[message_id]
        return _ok(
            {
                "messages": [self.message(i).to_wire() for i in taken],
                "remaining": len(account.unread),
            }
        )

    def _apply_delete_messages(self, command: dict, new_id: int) -> Outcome:
        account = self._account(command["who"])
        ids = command["ids"]
        missing = [i for i in ids if i not in account.inbox and i not in account.sent]
        if missing and command.get("merged"):
            # Acknowledged on the losing side of a partition: delete what is
            # still here (the rest may be gone with a deleted account).
            ids = [i for i in ids if i not in missing]
        elif missing:
            # All or nothing, and the same answer for another account's
            # message as for one that never existed: ids leak nothing.
            raise ChatError(
                errors.NOT_FOUND,
                "no message of yours has id %s" % (", ".join(map(str, missing)),),
            )
        unique = list(dict.fromkeys(ids))
        for message_id in unique:
            account.unread.pop(message_id, None)
            account.inbox.pop(message_id, 0)
            account.sent.pop(message_id, 0)
            self._forget_if_unseen(message_id)
        return _ok({"deleted": len(unique)})

    def _forget_if_unseen(self, message_id: int) -> None:
        """
        Drop a message that neither its recipient nor its sender still has.
        """
        message = self.message(message_id)
        recipient = self.accounts.get(message.to_uid)
        sender = self.accounts.get(message.from_uid)
        if (recipient is None or message_id not in recipient.inbox) and (
            sender is None or message_id not in sender.sent
        ):
            del self.messages[message_id]

    def _apply_delete_account(self, command: dict, new_id: int) -> Outcome:
        account = self._account(command["who"])
        del self.accounts[account.uid]
        del self.uids_by_name[account.username]
        del self.sorted_names[bisect.bisect_left(self.sorted_names, account.username)]
        for token_hash in account.sessions:
            del self.sessions[token_hash]
        for message_id in [*account.inbox, *account.sent]:
            if message_id in self.messages:
                self._forget_if_unseen(message_id)
        return _ok({})

    def _account(self, uid: int) -> Account:
        account = self.accounts.get(uid)
        if account is None:
            raise ChatError(errors.NOT_LOGGED_IN, "the account of this session is gone")
        return account

    # -- queries (any replica, no change) -------------------------------------

    def message(self, message_id: int) -> Message:
        """
        The stored message with this id.

        @raise KeyError: if there is none.
        """
        return Message._make(self.messages[message_id])

    def account_named(self, username: str) -> Account | None:
        """
        The account called C{username} now, if any.
        """
        uid = self.uids_by_name.get(username)
        return None if uid is None else self.accounts[uid]

    def session(self, token_hash: str) -> Account | None:
        """
        The account a session token (by its hash) belongs to, if it is valid.
        """
        uid = self.sessions.get(token_hash)
        return None if uid is None else self.accounts[uid]

    def recall(self, rid: str, fingerprint: str) -> Outcome | None:
        """
        The first outcome of a remembered request with this fingerprint,
        whoever sent it, or L{None}.
        """
        remembered = self.rids.get(rid)
        if remembered is None or remembered[1] != fingerprint:
            return None
        return _first_outcome(remembered)

    def list_accounts(self, pattern: str, offset: int, limit: int) -> dict:
        """
        Account names matching a glob pattern, sorted, one page of them.
        """
        names = self.sorted_names
        prefix = _glob_prefix(pattern)
        start = bisect.bisect_left(names, prefix)
        match = re.compile(fnmatch.translate(pattern)).match
        matching = []
        for name in islice(names, start, None):
            if not name.startswith(prefix):
                break
            if match(name):
                matching.append(name)
        return {"accounts": matching[offset : offset + limit], "total": len(matching)}

    def history(
        self, uid: int, with_uid: int | None, before: int | None, limit: int
    ) -> list[dict]:
        """
        Messages sent or received by C{uid}, newest first, optionally only
        those exchanged with C{with_uid} and those older than C{before}.
        """
        account = self.accounts[uid]
        if uid in self.out_of_order:
            newest_first = iter(sorted({*account.inbox, *account.sent}, reverse=True))
        else:
            newest_first = heapq.merge(
                reversed(account.inbox), reversed(account.sent), reverse=True
            )
        page = []
        last_id = None
        for message_id in newest_first:
            if message_id == last_id:
                continue  # a message to oneself is in both inbox and sent
            last_id = message_id
            if before is not None and message_id >= before:
                continue
            message = self.message(message_id)
            if with_uid is not None and with_uid not in (message.from_uid, message.to_uid):
                continue
            page.append(message.to_wire())
            if len(page) == limit:
                break
        return page

    # -- snapshots -----------------------------------------------------------

    def to_snapshot(self) -> bytes:
        """
        Encode the whole state (L{replichat.statecodec}); L{from_snapshot}
        of it equals this state, and equal states encode to equal bytes.
        """
        return encode_state(self)

    @classmethod
    def from_snapshot(cls, data: bytes) -> ChatState:
        """
        Rebuild a state from L{to_snapshot}'s bytes.

        @raise ValueError: if the data is not a snapshot of a known format.
        """
        state = decode_state(data, cls)
        for account in state.accounts.values():
            for ids in (account.inbox, account.sent):
                if any(a > b for a, b in zip(ids, islice(ids, 1, None))):
                    state.out_of_order.add(account.uid)
        return state

    def digest(self) -> str:
        """
        A hash of the whole state, to compare replicas.
        """
        return hashlib.sha256(self.to_snapshot()).hexdigest()
