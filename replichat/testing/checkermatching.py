# -*- test-case-name: tests.test_history -*-
"""
How the checker matches what clients saw to what was committed: names up
to the C{~N} a partition's heal may add, messages up to their aliases,
answers of commands re-proposed after a heal, and committed entries to the
requests that asked for them.  Shared by the checks of
L{replichat.testing.checker}.
"""

from __future__ import annotations

from replichat.testing.history import Op
from replichat.testing.replicas import Applied


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
    Whether C{committed} is the name C{seen}, either perhaps renamed by a
    heal (one side may have merged a rename the other side applies later).
    """
    return seen == committed or (
        seen is not None and committed is not None and _base_name(committed) == _base_name(seen)
    )


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
