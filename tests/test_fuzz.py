# -*- test-case-name: tests.test_fuzz -*-
"""
Property-based fuzzing of the client line protocol (DESIGN.md §6, security
(3) and (5)): whatever a client sends, the server does not crash, answers
each line it can frame with exactly one clear answer (an error code from the
contract, never C{internal}), keeps the connection usable, and changes no
state it was not validly asked to change; and however accounts send, read,
page, delete, resume and survive a restart, each sees only its own mail and
can delete only its own.
"""

from __future__ import annotations

import json
import time

from hypothesis import HealthCheck, Phase, given, settings, strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver, StringTransport
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from replichat.clientproto import MAX_ANSWER, ClientLineProtocol
from replichat.handler import ChatHandler
from replichat.lineproto import ClientFactory
from replichat.membership import ClusterConfig
from replichat.node import Node
from replichat.requests import MUTATING, OPS
from tests.test_lineproto import Server, Wire

#: The error codes of the contract (DESIGN.md §4).
CODES = {
    "bad_request", "unknown_op", "too_large", "not_leader", "unavailable",
    "not_logged_in", "bad_credentials", "username_taken", "no_such_user",
    "not_found", "rate_limited", "internal",
}

FUZZ = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=8,
)

arg_names = st.sampled_from(sorted({name for spec in OPS.values() for name in spec}
                                   | {"rid", "id", "op", "junk"}))
requests = st.fixed_dictionaries(
    {"op": st.sampled_from(sorted(OPS) + ["nope", ""]) | st.text(max_size=5)},
    optional={"id": json_values},
).flatmap(lambda base: st.dictionaries(arg_names, json_values, max_size=4).map(
    lambda extra: {**extra, **base}))


def check_answer(test: SynchronousTestCase, line: dict) -> None:
    """
    C{line} is a well-formed answer: C{ok}, and for an error a contract
    code other than C{internal} with a message for a human.
    """
    test.assertIn("ok", line)
    test.assertIn("id", line)
    if not line["ok"]:
        test.assertIn(line["error"]["code"], CODES)
        test.assertIsInstance(line["error"]["message"], str)
        test.assertTrue(line["error"]["message"])
        test.assertNotEqual(line["error"]["code"], "internal")


def framed_lines(data: bytes, max_line_bytes: int) -> int:
    """
    How many answers the server owes for C{data} (ending in a newline): one
    per line that is overlong or not blank.
    """
    owed = 0
    for line in data.split(b"\n")[:-1]:
        if len(line) > max_line_bytes:
            owed += 1
        elif (line[:-1] if line.endswith(b"\r") else line).strip():
            owed += 1
    return owed


def mail_view(server: Server, observers: dict[str, Wire]) -> dict:
    """
    What each account sees of its mail, through the protocol: its whole
    history and its unread count.  C{observers} are connections with
    sessions of their own, so the fuzzed connection cannot end them.
    """
    view = {}
    for name, wire in observers.items():
        history = wire.ok("history", limit=1000)["messages"]
        unread = wire.ok("resume", token=wire.token)["unread"]
        view[name] = (history, unread)
    return view


def observer(server: Server, name: str) -> Wire:
    wire = server.connect()
    wire.token = wire.ok("login", username=name, password="pw")["token"]
    return wire


class ProtocolFuzzTests(SynchronousTestCase):
    """
    Random input on a client connection.
    """

    @FUZZ
    @given(chunks=st.lists(st.binary(max_size=300), max_size=8))
    def test_random_bytes(self, chunks: list[bytes]) -> None:
        """
        Arbitrary bytes in arbitrary pieces: no crash, exactly one
        well-formed error answer per framed line, no state change, and the
        connection still serves.
        """
        server = Server(max_line_bytes=1024)
        wire = server.connect()
        before = server.node.state.digest()
        for chunk in chunks:
            wire.send_raw(chunk)
        wire.send_raw(b"\n")
        answers = wire.lines()
        self.assertEqual(len(answers), framed_lines(b"".join(chunks) + b"\n", 1024))
        for line in answers:
            self.assertFalse(line["ok"])
            check_answer(self, line)
        self.assertEqual(server.node.state.digest(), before)
        self.assertFalse(wire.transport.disconnecting)
        wire.send_raw(b'\n{"id": "last", "op": "hello"}\n')
        self.assertEqual(wire.lines()[-1]["id"], "last")

    @FUZZ
    @given(lines=st.lists(st.binary(max_size=80).map(lambda b: b.replace(b"\n", b"")),
                          min_size=1, max_size=20),
           split=st.integers(1, 50))
    def test_random_lines_any_split(self, lines: list[bytes], split: int) -> None:
        """
        Random lines delivered in pieces of any size get the same answers
        as when delivered whole: framing does not depend on packet
        boundaries.
        """
        data = b"\n".join(lines) + b"\n"
        whole = Server(max_line_bytes=1024).connect()
        whole.send_raw(data)
        pieces = Server(max_line_bytes=1024).connect()
        for start in range(0, len(data), split):
            pieces.send_raw(data[start:start + split])
        self.assertEqual(pieces.lines(), whole.lines())

    @FUZZ
    @given(batch=st.lists(requests, min_size=1, max_size=6))
    def test_random_requests(self, batch: list[dict]) -> None:
        """
        Structurally random requests, logged out: each gets exactly one
        answer with its id, no error is internal, every error leaves the
        state exactly as it was, and the only change a logged out client
        can make is creating an account.
        """
        server = Server()
        wire = server.connect()
        for i, request in enumerate(batch):
            request = dict(request, id=i)
            if request.get("op") == "login":
                continue  # a login would make it a logged-in client
            before = server.node.state.digest()
            wire.send_raw(json.dumps(request).encode() + b"\n")
            answers = [line for line in wire.lines() if "event" not in line]
            self.assertEqual([a["id"] for a in answers], [i])
            check_answer(self, answers[0])
            if not (answers[0]["ok"] and request["op"] == "create_account"):
                self.assertEqual(server.node.state.digest(), before, request)
        for account in server.node.state.accounts.values():
            self.assertEqual(account.inbox, {})
            self.assertEqual(account.sent, {})
        self.assertEqual(wire.ok("hello")["node"], 1)

    @FUZZ
    @given(batch=st.lists(requests, min_size=1, max_size=6))
    def test_random_requests_logged_in(self, batch: list[dict]) -> None:
        """
        Random requests from a logged-in user never touch another account's
        mail and never fail internally; an error answer changes no one's
        mail, and one that wrote nothing to the log changes no state at all.
        """
        server = Server()
        bob = server.user("bob")
        alice = server.user("alice")
        server.user("carol")
        alice.ok("send", to="carol", text="for carol only")
        bob.ok("send", to="alice", text="bob to alice")
        observers = {name: observer(server, name) for name in ("alice", "bob", "carol")}
        carol_view = mail_view(server, {"carol": observers["carol"]})
        for i, request in enumerate(batch):
            request = dict(request, id=i)
            if request.get("op") == "delete_account":
                continue
            view = mail_view(server, observers)
            digest = server.node.state.digest()
            last_index = server.disk_log.last_index
            bob.send_raw(json.dumps(request).encode() + b"\n")
            answers = []
            for line in bob.lines():
                if "event" in line:
                    self.assertEqual(line["message"]["to"], "bob")
                    continue
                check_answer(self, line)
                self.assertNotIn("for carol only", json.dumps(line))
                answers.append(line)
            self.assertEqual([a["id"] for a in answers], [i])
            if not answers[0]["ok"]:
                self.assertEqual(mail_view(server, observers), view, request)
                if server.disk_log.last_index == last_index:
                    self.assertEqual(server.node.state.digest(), digest, request)
            elif request["op"] not in MUTATING:
                self.assertEqual(server.node.state.digest(), digest, request)
        self.assertEqual(mail_view(server, {"carol": observers["carol"]}), carol_view)


class RestartableServer(Server):
    """
    L{Server} whose node can be restarted on the same storage: its state is
    rebuilt from the log, and clients come back by resuming their sessions.
    """

    def restart(self) -> None:
        """
        Abandon the node as if its process were killed (its pending timers
        stay on the old clock, never to run) and start a new one.
        """
        old = self.node
        self.clock = Clock()
        self.clock.advance(old.clock.seconds())
        self.node = Node(1, self.disk_log, old.snapshots, old.meta, self.clock,
                         initial_cluster=ClusterConfig.initial(self.config))
        self.node.start()
        self.handler = ChatHandler(self.node, self.hasher, self.config, self.config.limits,
                                   self.clock)
        self.factory = ClientFactory(self.handler, self.config.limits, self.clock)
        self.settle()


USERS = ("ann", "ben", "cat")

#: Message ids a client may make up: small, huge, and around real ones.
made_up_ids = st.integers(1, 2**62)


class Mailboxes(RuleBasedStateMachine):
    """
    Three accounts send, read, page through history and delete at random,
    naming message ids taken from each other's real messages as well as
    made-up ones, resume on new connections and live through restarts.  A
    model says what each may see; the server must agree exactly, and never
    show or delete a message outside an account's own mail.
    """

    def __init__(self) -> None:
        super().__init__()
        self.server = RestartableServer(max_text_chars=100)
        self.wires: dict[str, Wire] = {}
        self.tokens: dict[str, str] = {}
        for name in USERS:
            wire = self.server.connect()
            wire.ok("create_account", username=name, password="pw")
            self.tokens[name] = wire.ok("login", username=name, password="pw")["token"]
            self.wires[name] = wire
        self.sent_order: list[int] = []  # message ids, oldest first
        self.messages: dict[int, dict] = {}  # id -> the message as sent
        self.visible: dict[str, set] = {name: set() for name in USERS}
        self.unread: dict[str, list] = {name: [] for name in USERS}

    # -- helpers ---------------------------------------------------------------

    def expected_history(self, name: str, with_name: str | None, before: int | None,
                         limit: int) -> list[dict]:
        page = []
        for message_id in reversed(self.sent_order):
            if message_id not in self.visible[name]:
                continue
            if before is not None and message_id >= before:
                continue
            message = self.messages[message_id]
            if with_name is not None and with_name not in (message["from"], message["to"]):
                continue
            page.append(message)
            if len(page) == limit:
                break
        return page

    # -- rules -----------------------------------------------------------------

    @rule(sender=st.sampled_from(USERS), to=st.sampled_from(USERS),
          text=st.text(min_size=1, max_size=30))
    def send(self, sender: str, to: str, text: str) -> None:
        message = self.wires[sender].ok("send", to=to, text=text)["message"]
        assert (message["from"], message["to"], message["text"]) == (sender, to, text), message
        assert message["id"] not in self.messages, message
        self.messages[message["id"]] = message
        self.sent_order.append(message["id"])
        self.visible[sender].add(message["id"])
        self.visible[to].add(message["id"])
        self.unread[to].append(message["id"])

    @rule(name=st.sampled_from(USERS), limit=st.integers(1, 4))
    def read(self, name: str, limit: int) -> None:
        result = self.wires[name].ok("read", limit=limit)
        taken, self.unread[name] = self.unread[name][:limit], self.unread[name][limit:]
        assert result["messages"] == [self.messages[i] for i in taken], (name, result, taken)
        assert result["remaining"] == len(self.unread[name])

    @rule(data=st.data(), name=st.sampled_from(USERS),
          with_name=st.none() | st.sampled_from(USERS), limit=st.integers(1, 8))
    def history(self, data, name: str, with_name: str | None, limit: int) -> None:
        choices = st.none() | made_up_ids
        if self.sent_order:
            choices = choices | st.sampled_from(self.sent_order)
        before = data.draw(choices, label="before")
        args = {"limit": limit, "with": with_name, "before": before}
        args = {k: v for k, v in args.items() if v is not None}
        got = self.wires[name].ok("history", **args)["messages"]
        for message in got:
            assert name in (message["from"], message["to"]), (name, message)
        assert got == self.expected_history(name, with_name, before, limit), (name, args, got)

    @precondition(lambda self: self.sent_order)
    @rule(data=st.data(), name=st.sampled_from(USERS))
    def delete(self, data, name: str) -> None:
        """
        Delete ids drawn from every account's real messages (and made-up
        ones): all of them if all are this account's, else none.
        """
        ids = data.draw(st.lists(st.sampled_from(self.sent_order) | made_up_ids,
                                 min_size=1, max_size=4), label="ids")
        answer = self.wires[name].call("delete_messages", ids=ids)
        if all(i in self.visible[name] for i in ids):
            assert answer["ok"], (name, ids, answer)
            assert answer["result"] == {"deleted": len(set(ids))}
            for i in ids:
                self.visible[name].discard(i)
                if i in self.unread[name]:
                    self.unread[name].remove(i)
        else:
            assert not answer["ok"], (name, ids, answer)
            assert answer["error"]["code"] == "not_found", answer

    @rule(name=st.sampled_from(USERS))
    def resume_elsewhere(self, name: str) -> None:
        wire = self.server.connect()
        result = wire.ok("resume", token=self.tokens[name])
        assert result == {"username": name, "unread": len(self.unread[name])}, result
        self.wires[name] = wire

    @rule()
    def restart(self) -> None:
        for wire in self.wires.values():
            wire.protocol.connectionLost(None)
        self.server.restart()
        for name in USERS:
            self.resume_elsewhere(name)

    # -- invariants -------------------------------------------------------------

    @invariant()
    def pushes_are_own_mail(self) -> None:
        for name, wire in self.wires.items():
            for event in wire.events():
                assert event["message"]["to"] == name, (name, event)
                assert event["message"]["id"] in self.messages, event

    @invariant()
    def each_sees_exactly_its_own(self) -> None:
        for name, wire in self.wires.items():
            got = wire.ok("history", limit=1000)["messages"]
            assert got == self.expected_history(name, None, None, 1000), (name, got)


class MailboxTests(SynchronousTestCase):
    """
    The L{Mailboxes} state machine.
    """

    def test_each_account_only_its_own_mail(self) -> None:
        """
        Over random sequences of sends, reads, history pages, deletes with
        other accounts' real ids, resumes and restarts, every account sees
        and deletes exactly its own mail.
        """
        run_state_machine_as_test(
            Mailboxes,
            settings=settings(max_examples=40, stateful_step_count=25, deadline=None,
                              suppress_health_check=[HealthCheck.too_slow]),
        )

    def test_model_catches_a_leak(self) -> None:
        """
        The machine can fail: with a handler that answers C{history} from
        every account's mail, it finds the leak.
        """
        def leaky(handler, connection, request, limit, before, **args):
            state = handler.node.state
            everyone = [state.message(i).to_wire() for i in sorted(state.messages, reverse=True)]
            return {"messages": everyone[:limit]}

        self.patch(ChatHandler, "op_history", leaky)
        with self.assertRaises(AssertionError):
            run_state_machine_as_test(
                Mailboxes,
                settings=settings(max_examples=40, stateful_step_count=10, deadline=None,
                                  database=None, phases=[Phase.generate],
                                  suppress_health_check=[HealthCheck.too_slow]),
            )


class ClientParserTests(SynchronousTestCase):
    """
    The client's side of the line protocol (L{ClientLineProtocol}) reading
    what a server sends.
    """

    def connect(self) -> tuple[ClientLineProtocol, StringTransport]:
        proto = ClientLineProtocol()
        transport = StringTransport()
        proto.makeConnection(transport)
        return proto, transport

    @FUZZ
    @given(lines=st.lists(st.binary(max_size=100).map(lambda b: b.replace(b"\n", b"")),
                          max_size=10),
           tail=st.binary(max_size=20).map(lambda b: b.replace(b"\n", b"")),
           cuts=st.lists(st.integers(0, 1200), max_size=8))
    def test_framing_any_split(self, lines: list[bytes], tail: bytes, cuts: list[int]) -> None:
        """
        Whatever the packet boundaries, the server's lines are delivered
        whole, once, in order, and an unfinished line waits.
        """
        proto, transport = self.connect()
        got: list[bytes] = []
        proto.lineReceived = got.append
        data = b"".join(line + b"\n" for line in lines) + tail
        points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
        for start, end in zip(points, points[1:]):
            proto.dataReceived(data[start:end])
        self.assertEqual(got, lines)
        proto.dataReceived(b"\n")
        self.assertEqual(got, lines + [tail])
        self.assertFalse(transport.disconnecting)

    @FUZZ
    @given(chunks=st.lists(st.binary(max_size=200), max_size=8))
    def test_random_server_bytes(self, chunks: list[bytes]) -> None:
        """
        Garbage from a server raises nothing and leaves a pending request
        pending (only its own answer may end it).
        """
        proto, transport = self.connect()
        pending = proto.call("hello")
        for chunk in chunks:
            proto.dataReceived(chunk)
        proto.dataReceived(b"\n")
        self.assertNoResult(pending)
        proto.dataReceived(b'{"id": 1, "ok": true, "result": {"node": 1}}\n')
        self.assertEqual(self.successResultOf(pending), {"node": 1})

    def test_long_answer(self) -> None:
        """
        An answer far over the 64 KiB request limit -- a page of 1000
        messages of 10,000 characters -- arriving in 64 KiB packets is
        accepted, in linear time.
        """
        proto, transport = self.connect()
        pending = proto.call("history", {"limit": 1000})
        messages = [{"id": i, "from": "a", "to": "b", "text": "x" * 10_000, "sent_at": 1.0}
                    for i in range(1000)]
        line = json.dumps({"id": 1, "ok": True, "result": {"messages": messages}}).encode()
        started = time.monotonic()
        for start in range(0, len(line), 65536):
            proto.dataReceived(line[start:start + 65536])
        proto.dataReceived(b"\n")
        self.assertLess(time.monotonic() - started, 2.0)
        self.assertEqual(len(self.successResultOf(pending)["messages"]), 1000)
        self.assertFalse(transport.disconnecting)

    def test_overlong_answer(self) -> None:
        """
        A line over L{MAX_ANSWER} drops the connection, whether it arrives
        in one packet or many.
        """
        for packets in ([b"x" * (MAX_ANSWER + 1)], [b"x" * (MAX_ANSWER // 2 + 1)] * 2):
            EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
            proto, transport = self.connect()
            for packet in packets:
                proto.dataReceived(packet)
            self.assertTrue(transport.disconnecting)
