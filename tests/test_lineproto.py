# -*- test-case-name: tests.test_lineproto -*-
"""
Tests for L{replichat.lineproto} and L{replichat.handler}: every op over the
wire, pushes, sessions, bad lines and per-connection limits, on one node with
in-memory storage and a fake clock.
"""

from __future__ import annotations

import json

from attrs import evolve
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from replichat.config import parse_config
from replichat.handler import ChatHandler
from replichat.lineproto import ClientFactory
from replichat.metastore import MemoryMetaStore
from replichat.membership import ClusterConfig
from replichat.node import Node
from replichat.passwords import PasswordHasher
from replichat.testing import MemoryLog, MemorySnapshotStore

PASSWORD_RECORD = {"alg": "scrypt", "n": 16, "r": 8, "p": 1, "salt": "", "hash": ""}

CONFIG = {
    "nodes": {1: {"host": "127.0.0.1", "client_port": 7001, "peer_port": 7101}},
    "data_dir": "unused",
}


class Wire:
    """
    One client connection to the server under test, speaking JSON lines.
    """

    def __init__(self, server: "Server") -> None:
        self.server = server
        self.protocol = server.factory.buildProtocol(None)
        self.transport = StringTransport()
        self.protocol.makeConnection(self.transport)
        self.next_id = 0
        self.seen: list[dict] = []

    def send_raw(self, data: bytes) -> None:
        self.protocol.dataReceived(data)
        self.server.settle()

    def lines(self) -> list[dict]:
        """
        Everything received since the last call, decoded.
        """
        data = self.transport.value()
        self.transport.clear()
        got = [json.loads(line) for line in data.split(b"\n") if line]
        self.seen.extend(got)
        return got

    def call(self, op: str, **args: object) -> dict:
        """
        Send one request and return its answer (events are kept aside).
        """
        self.next_id += 1
        self.send_raw(json.dumps({"id": self.next_id, "op": op, **args}).encode() + b"\n")
        answers = [line for line in self.lines() if line.get("id") == self.next_id]
        assert len(answers) == 1, answers
        return answers[0]

    def ok(self, op: str, **args: object) -> dict:
        answer = self.call(op, **args)
        assert answer["ok"], answer
        return answer["result"]

    def error(self, op: str, **args: object) -> str:
        answer = self.call(op, **args)
        assert not answer["ok"], answer
        assert answer["error"]["message"], answer
        return answer["error"]["code"]

    def events(self) -> list[dict]:
        self.lines()
        return [line for line in self.seen if "event" in line]


class Server:
    """
    A started node with its handler and client factory, all in memory.
    """

    def __init__(self, **limits: object) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        config = parse_config(CONFIG)
        self.config = evolve(config, limits=evolve(config.limits, **limits))
        self.disk_log = MemoryLog()
        self.node = Node(1, self.disk_log, MemorySnapshotStore(), MemoryMetaStore(), self.clock,
                         initial_cluster=ClusterConfig.initial(self.config))
        self.node.start()
        self.hasher = PasswordHasher(n=16)
        self.handler = ChatHandler(self.node, self.hasher, self.config, self.config.limits, self.clock)
        self.factory = ClientFactory(self.handler, self.config.limits, self.clock)

    def settle(self) -> None:
        """
        Run the pending reactor turn (the group-commit flush).
        """
        self.clock.advance(0)

    def connect(self) -> Wire:
        return Wire(self)

    def user(self, name: str, password: str = "pw") -> Wire:
        wire = self.connect()
        wire.ok("create_account", username=name, password=password)
        wire.ok("login", username=name, password=password)
        return wire


class OpsTests(SynchronousTestCase):
    """
    Every op, answered as DESIGN.md §4 says.
    """

    def setUp(self) -> None:
        self.server = Server()

    def test_hello_cluster(self) -> None:
        """
        C{hello} and C{cluster} describe this node as the leader.
        """
        wire = self.server.connect()
        leader = {"id": 1, "host": "127.0.0.1", "port": 7001}
        hello = wire.ok("hello")
        self.assertEqual(hello, {"node": 1, "role": "leader", "epoch": 1001, "leader": leader})
        cluster = wire.ok("cluster")
        self.assertEqual(cluster["leader"], leader)
        [node] = cluster["nodes"]
        self.assertEqual(node["id"], 1)
        self.assertEqual(node["role"], "leader")
        self.assertTrue(node["live"])
        self.assertEqual(node["commit_index"], self.server.node.commit_index)
        self.assertEqual(node["last_index"], self.server.disk_log.last_index)

    def test_account_lifecycle(self) -> None:
        """
        Create, log in, log out, delete; the password is never logged.
        """
        wire = self.server.connect()
        self.assertEqual(wire.ok("create_account", username="alice", password="s3cret"),
                         {"username": "alice"})
        self.assertEqual(wire.error("create_account", username="alice", password="x"),
                         "username_taken")
        self.assertEqual(wire.error("login", username="alice", password="wrong"),
                         "bad_credentials")
        self.assertEqual(wire.error("login", username="nobody", password="s3cret"),
                         "bad_credentials")
        result = wire.ok("login", username="alice", password="s3cret")
        self.assertEqual(result["unread"], 0)
        self.assertGreater(len(result["token"]), 30)
        self.assertEqual(wire.ok("logout"), {})
        self.assertEqual(wire.error("read"), "not_logged_in")
        wire.ok("login", username="alice", password="s3cret")
        self.assertEqual(wire.error("delete_account", password="wrong"), "bad_credentials")
        self.assertEqual(wire.ok("delete_account", password="s3cret"), {})
        self.assertEqual(wire.error("read"), "not_logged_in")
        self.assertEqual(wire.error("login", username="alice", password="s3cret"),
                         "bad_credentials")
        for entry in self.server.disk_log.read(1):
            self.assertNotIn(b"s3cret", entry.data)
            self.assertNotIn(result["token"].encode(), entry.data)

    def test_send_push_read(self) -> None:
        """
        A message to a logged-in user is pushed to each of its connections
        once it is committed; reading returns it oldest first.
        """
        alice = self.server.user("alice")
        bob = self.server.user("bob")
        bob2 = self.server.connect()
        token = bob.ok("login", username="bob", password="pw")["token"]
        self.assertEqual(bob2.ok("resume", token=token), {"username": "bob", "unread": 0})
        sent = alice.ok("send", to="bob", text="hi bob", rid="r-1")["message"]
        self.assertEqual((sent["from"], sent["to"], sent["text"]), ("alice", "bob", "hi bob"))
        self.assertEqual(sent["sent_at"], self.server.clock.seconds())
        self.assertEqual(bob.events(), [{"event": "message", "message": sent}])
        self.assertEqual(bob2.events(), [{"event": "message", "message": sent}])
        self.assertEqual(alice.events(), [])
        self.assertEqual(alice.error("send", to="nobody", text="x"), "no_such_user")
        alice.ok("send", to="bob", text="second")
        read = bob.ok("read", limit=1)
        self.assertEqual(read["messages"], [sent])
        self.assertEqual(read["remaining"], 1)
        self.assertEqual(bob.ok("history", limit=5)["messages"][1], sent)
        self.assertEqual(len(bob.ok("history", **{"with": "alice"})["messages"]), 2)
        self.assertEqual(bob.error("history", **{"with": "nobody"}), "no_such_user")

    def test_offline_mailbox(self) -> None:
        """
        Mail to a user who is not logged in waits; login reports it unread.
        """
        alice = self.server.user("alice")
        self.server.connect().ok("create_account", username="bob", password="pw")
        for i in range(3):
            alice.ok("send", to="bob", text="m%d" % i)
        bob = self.server.connect()
        self.assertEqual(bob.ok("login", username="bob", password="pw")["unread"], 3)
        self.assertEqual(bob.events(), [])
        self.assertEqual([m["text"] for m in bob.ok("read", limit=10)["messages"]],
                         ["m0", "m1", "m2"])

    def test_retry_same_rid(self) -> None:
        """
        A send retried with its rid, even on a new connection after resume,
        is applied once and answered with the first result.
        """
        alice = self.server.user("alice")
        bob = self.server.user("bob")
        first = alice.ok("send", to="bob", text="once", rid="abc-1")
        token = alice.ok("login", username="alice", password="pw")["token"]
        again = self.server.connect()
        again.ok("resume", token=token)
        self.assertEqual(again.ok("send", to="bob", text="once", rid="abc-1"), first)
        self.assertEqual(len(bob.events()), 1)
        self.assertEqual(bob.ok("read")["remaining"], 0)

    def test_retry_create_and_delete_account(self) -> None:
        """
        Retried create_account and delete_account get their first answers.
        """
        wire = self.server.connect()
        wire.ok("create_account", username="carol", password="pw", rid="c-1")
        self.assertEqual(wire.ok("create_account", username="carol", password="pw", rid="c-1"),
                         {"username": "carol"})
        wire.ok("login", username="carol", password="pw")
        wire.ok("delete_account", password="pw", rid="d-1")
        other = self.server.connect()
        self.assertEqual(other.ok("delete_account", password="pw", rid="d-1"), {})
        # Another account cannot use that rid to "delete" itself.
        bob = self.server.user("bob")
        self.assertEqual(bob.error("delete_account", password="wrong", rid="d-1"),
                         "bad_credentials")
        self.assertEqual(bob.error("delete_account", password="pw", rid="d-1"), "bad_request")
        self.assertIsNotNone(self.server.node.state.account_named("bob"))

    def test_login_retry_gets_working_session(self) -> None:
        """
        A login retried with the same rid gets a fresh, working session (a
        login is never answered from the rid memory: its first token never
        reached the client).
        """
        self.server.connect().ok("create_account", username="dan", password="pw")
        first = self.server.connect()
        token1 = first.ok("login", username="dan", password="pw", rid="l-1")["token"]
        second = self.server.connect()
        token2 = second.ok("login", username="dan", password="pw", rid="l-1")["token"]
        self.assertNotEqual(token1, token2)
        self.assertEqual(second.ok("read"), {"messages": [], "remaining": 0})
        self.assertEqual(self.server.connect().ok("resume", token=token2)["username"], "dan")

    def test_no_push_after_logout_elsewhere(self) -> None:
        """
        A connection that resumed a session stops getting pushes once that
        session is logged out on another connection.
        """
        alice = self.server.user("alice")
        bob = self.server.user("bob")
        token = bob.ok("login", username="bob", password="pw")["token"]
        other = self.server.connect()
        other.ok("resume", token=token)
        bob.ok("logout")
        alice.ok("send", to="bob", text="after logout")
        self.assertEqual(other.events(), [])
        self.assertEqual(bob.events(), [])

    def test_list_accounts(self) -> None:
        """
        Listing with a pattern, offset and limit.
        """
        wire = self.server.connect()
        for name in ("ann", "andy", "bob"):
            wire.ok("create_account", username=name, password="pw")
        self.assertEqual(wire.ok("list_accounts"), {"accounts": ["andy", "ann", "bob"], "total": 3})
        self.assertEqual(wire.ok("list_accounts", pattern="an*", offset=1, limit=1),
                         {"accounts": ["ann"], "total": 2})

    def test_delete_messages(self) -> None:
        """
        A user deletes its own messages; another's ids are refused.
        """
        alice = self.server.user("alice")
        bob = self.server.user("bob")
        carol = self.server.user("carol")
        mid = alice.ok("send", to="bob", text="x")["message"]["id"]
        self.assertEqual(carol.error("delete_messages", ids=[mid]), "not_found")
        self.assertEqual(bob.ok("delete_messages", ids=[mid]), {"deleted": 1})
        self.assertEqual(bob.ok("read"), {"messages": [], "remaining": 0})

    def test_forged_token(self) -> None:
        """
        A token the server never issued resumes nothing.
        """
        wire = self.server.connect()
        self.assertEqual(wire.error("resume", token="forged" * 8), "bad_credentials")
        self.assertEqual(wire.error("send", to="x", text="y"), "not_logged_in")

    def test_session_ended_elsewhere(self) -> None:
        """
        After logout, the token no longer resumes, and the logged out
        session's other connection is refused.
        """
        alice = self.server.user("alice")
        token = alice.ok("login", username="alice", password="pw")["token"]
        other = self.server.connect()
        other.ok("resume", token=token)
        alice.ok("logout")
        self.assertEqual(other.error("read"), "not_logged_in")
        self.assertEqual(self.server.connect().error("resume", token=token), "bad_credentials")

    def test_pipelined_guesses_limited(self) -> None:
        """
        Login attempts count before their password is checked, so guesses
        pipelined on many connections cannot exceed the limit, and one
        connection may have only two password checks running.
        """
        self.server.connect().ok("create_account", username="eve", password="pw")
        pending: list[Deferred] = []
        self.server.hasher.check = lambda password, record: pending.append(Deferred()) or pending[-1]
        wires = [self.server.connect() for _ in range(8)]
        codes = []
        for i, wire in enumerate(wires):
            for j in range(3):
                wire.send_raw(json.dumps({"id": j, "op": "login", "username": "eve",
                                          "password": "guess"}).encode() + b"\n")
            codes.extend(line["error"]["code"] for line in wire.lines())
        limit = self.server.config.limits.login_attempts_per_minute
        self.assertEqual(len(pending), limit)
        self.assertEqual(len(codes), 24 - limit)
        self.assertEqual(set(codes), {"rate_limited"})
        for d in pending:
            d.callback(False)
        self.server.settle()
        answers = [line["error"]["code"] for wire in wires for line in wire.lines()]
        self.assertEqual(answers, ["bad_credentials"] * limit)

    def test_login_table_bounded(self) -> None:
        """
        The table of recent login attempts forgets expired names and never
        holds more than its limit, however many names are tried.
        """
        from replichat import handler as handler_module
        self.patch(handler_module, "LOGIN_TABLE_LIMIT", 50)
        wire = self.server.connect()
        for i in range(200):
            self.assertEqual(wire.error("login", username="n%d" % i, password="x"),
                             "bad_credentials")
        table = self.server.handler._login_attempts
        self.assertLessEqual(len(table), 51)
        self.assertIn("n199", table)
        self.server.clock.advance(61)
        wire.error("login", username="fresh", password="x")
        self.assertEqual(list(table), ["fresh"])

    def test_login_rate_limited(self) -> None:
        """
        After too many failed logins for a name, even the right password is
        refused for a minute.
        """
        wire = self.server.connect()
        wire.ok("create_account", username="alice", password="pw")
        for _ in range(self.server.config.limits.login_attempts_per_minute):
            self.assertEqual(wire.error("login", username="alice", password="no"),
                             "bad_credentials")
        self.assertEqual(wire.error("login", username="alice", password="pw"), "rate_limited")
        self.server.clock.advance(61)
        wire.ok("login", username="alice", password="pw")


class BadInputTests(SynchronousTestCase):
    """
    Bad lines get clear errors and the connection stays usable.
    """

    def setUp(self) -> None:
        self.server = Server(max_line_bytes=1024, max_text_chars=100)
        self.wire = self.server.connect()

    def errors_for(self, data: bytes) -> list[tuple]:
        self.wire.send_raw(data)
        return [(line["id"], line["error"]["code"]) for line in self.wire.lines()]

    def test_bad_lines(self) -> None:
        """
        Not JSON, not an object, not UTF-8: C{bad_request} with a null id.
        """
        self.assertEqual(self.errors_for(b"not json\n"), [(None, "bad_request")])
        self.assertEqual(self.errors_for(b"[1, 2]\n"), [(None, "bad_request")])
        self.assertEqual(self.errors_for(b'"x"\n'), [(None, "bad_request")])
        self.assertEqual(self.errors_for(b'{"id": 1, "op": "hel\xfflo"}\n'), [(None, "bad_request")])
        self.assertEqual(self.errors_for(b"\n\r\n"), [])
        self.assertEqual(self.wire.ok("hello")["node"], 1)

    def test_not_strict_json(self) -> None:
        """
        NaN, Infinity, overflowing numbers, lone surrogates and deep nesting
        are refused with C{bad_request}; nothing is applied and the
        connection goes on.
        """
        lines = [
            b'{"id": NaN, "op": "hello"}\n',
            b'{"id": 1e400, "op": "hello"}\n',
            b'{"id": 1, "op": "create_account", "username": "a", "password": "\\ud800"}\n',
            b'{"id": "\\udfff", "op": "hello"}\n',
            b"[" * 50_000 + b"\n",
        ]
        server = Server()
        wire = server.connect()
        for line in lines:
            wire.send_raw(line)
            self.assertEqual([(l["id"], l["error"]["code"]) for l in wire.lines()],
                             [(None, "bad_request")], line[:60])
        self.assertEqual(server.node.state.accounts, {})
        self.assertEqual(wire.ok("hello")["node"], 1)

    def test_paired_surrogates_accepted(self) -> None:
        """
        A properly escaped astral character (a surrogate pair) is fine.
        """
        alice = self.server.user("alice")
        sent = alice.ok("send", to="alice", text="\U0001F600")["message"]
        self.assertEqual(sent["text"], "\U0001F600")

    def test_bad_requests(self) -> None:
        """
        Unknown ops, missing, unknown and mistyped arguments are refused
        with the request's id.
        """
        cases = [
            ({"id": 5, "op": "fly"}, "unknown_op"),
            ({"id": 6}, "bad_request"),
            ({"id": 7, "op": 3}, "bad_request"),
            ({"id": 8, "op": "create_account", "username": "a"}, "bad_request"),
            ({"id": 9, "op": "create_account", "username": "a b", "password": "x"}, "bad_request"),
            ({"id": 10, "op": "create_account", "username": "", "password": "x"}, "bad_request"),
            ({"id": 11, "op": "read", "limit": "3"}, "bad_request"),
            ({"id": 12, "op": "read", "limit": True}, "bad_request"),
            ({"id": 13, "op": "list_accounts", "limit": 1001}, "bad_request"),
            ({"id": 14, "op": "hello", "extra": 1}, "bad_request"),
            ({"id": 15, "op": "delete_messages", "ids": []}, "bad_request"),
            ({"id": 16, "op": "delete_messages", "ids": [1, "2"]}, "bad_request"),
            ({"id": "s", "op": "send", "to": "x", "text": "t", "rid": 5}, "bad_request"),
            ({"id": 17, "op": "send", "to": "x", "text": "t" * 101}, "bad_request"),
        ]
        for request, code in cases:
            got = self.errors_for(json.dumps(request).encode() + b"\n")
            self.assertEqual(got, [(request["id"], code)], request)
        self.assertEqual(self.server.node.state.accounts, {})

    def test_too_large(self) -> None:
        """
        An overlong line is answered with C{too_large}, skipped to its end
        (even when it arrives in pieces), and the next line is served.
        """
        self.wire.send_raw(b'{"id": 1, "op": "hello", "pad": "' + b"x" * 700)
        self.wire.send_raw(b"y" * 700)
        self.wire.send_raw(b"z" * 700)
        self.wire.send_raw(b'"}\n{"id": 2, "op": "hello"}\n')
        lines = self.wire.lines()
        self.assertEqual([(l["id"], l["ok"]) for l in lines], [(None, False), (2, True)])
        self.assertEqual(lines[0]["error"]["code"], "too_large")
        self.assertFalse(self.wire.transport.disconnecting)

    def test_pipelined(self) -> None:
        """
        Many requests in one packet are all answered, sharing one fsync.
        """
        alice = self.server.user("alice")
        self.server.user("bob")
        syncs_before = self.server.disk_log.last_index
        batch = b"".join(
            json.dumps({"id": i, "op": "send", "to": "bob", "text": str(i)}).encode() + b"\n"
            for i in range(50)
        )
        alice.send_raw(batch)
        answers = alice.lines()
        self.assertEqual(sorted(a["id"] for a in answers), list(range(50)))
        self.assertTrue(all(a["ok"] for a in answers))
        self.assertEqual(self.server.disk_log.last_index, syncs_before + 50)

    def test_inflight_limit(self) -> None:
        """
        Past C{max_inflight} unanswered requests, more are refused with
        C{rate_limited} until answers go out.
        """
        server = Server(max_inflight=2)
        wire = server.connect()
        pending: list[Deferred] = []
        server.hasher.hash = lambda password: pending.append(Deferred()) or pending[-1]
        for i in range(3):
            wire.send_raw(json.dumps({"id": i, "op": "create_account", "username": "u%d" % i,
                                      "password": "pw"}).encode() + b"\n")
        self.assertEqual([(l["id"], l["error"]["code"]) for l in wire.lines()],
                         [(2, "rate_limited")])
        self.assertEqual(len(pending), 2)
        pending[0].callback(PASSWORD_RECORD)
        server.settle()
        self.assertEqual([(l["id"], l["ok"]) for l in wire.lines()], [(0, True)])
        self.assertEqual(wire.ok("hello")["node"], 1)

    def test_slow_reader_dropped(self):
        """
        A client that stops reading is no longer read from, the requests it
        already sent wait unanswered, and it is dropped once more than
        C{max_output_bytes} (here, messages pushed to it) wait for it.
        """
        server = Server(max_output_bytes=10_000)
        alice = server.user("alice")
        bob = server.user("bob")
        bob.protocol.pauseProducing()
        self.assertEqual(bob.transport.producerState, "paused")
        bob.send_raw(b'{"id": "held", "op": "cluster"}\n')
        self.assertEqual(bob.lines(), [])
        for i in range(100):
            alice.ok("send", to="bob", text="x" * 200)
            if bob.transport.disconnecting:
                break
        self.assertTrue(bob.transport.disconnecting)
        self.assertLess(i, 99)

    def test_idle_timeout(self) -> None:
        """
        A connection silent for C{idle_timeout} is closed.
        """
        server = Server(idle_timeout=30.0)
        wire = server.connect()
        server.clock.advance(29)
        wire.send_raw(b'{"id": 1, "op": "hello"}\n')
        server.clock.advance(29)
        self.assertFalse(wire.transport.disconnecting)
        server.clock.advance(2)
        self.assertTrue(wire.transport.disconnecting)


class DurabilityTests(SynchronousTestCase):
    """
    Nothing is answered before it is durable.
    """

    def test_answer_after_sync(self) -> None:
        """
        A request is answered only in the turn that syncs its entry, and
        the entry is synced by then.
        """
        server = Server()
        wire = server.connect()
        wire.protocol.dataReceived(b'{"id": 1, "op": "create_account", "username": "a", "password": "p"}\n')
        self.assertEqual(wire.transport.value(), b"")
        before = server.disk_log.synced_index
        server.settle()
        self.assertEqual(json.loads(wire.transport.value())["ok"], True)
        self.assertEqual(server.disk_log.synced_index, before + 1)

    def test_failed_sync_acknowledges_nothing(self) -> None:
        """
        If fsync fails, the request is never answered and the node stops
        taking writes.
        """
        server = Server()
        fatal: list[str] = []
        server.node._on_fatal = fatal.append
        wire = server.connect()

        def broken_sync() -> None:
            raise OSError(5, "Input/output error")

        server.disk_log.sync = broken_sync
        wire.send_raw(b'{"id": 1, "op": "create_account", "username": "a", "password": "p"}\n')
        self.assertEqual(wire.lines(), [])
        self.assertEqual(len(fatal), 1)
        self.assertIn("Input/output error", fatal[0])
        self.assertEqual(server.node.state.accounts, {})
        self.assertEqual(wire.error("create_account", username="b", password="p"), "unavailable")
        self.flushLoggedErrors()
