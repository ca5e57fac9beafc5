# -*- test-case-name: tests.test_client -*-
"""
Tests for L{replichat.client} and L{replichat.clientproto}.

L{ClientLineProtocol} is tested on a L{StringTransport}.  L{ChatClient} is
tested against L{FakeNode}s: scripted servers that speak the line protocol
of DESIGN.md §4 over C{iosim} connections, on a L{Clock}, so that leader
changes, lost connections and retries happen deterministically.  (The real
server is exercised by the integration tests.)
"""

import json

from twisted.internet.defer import fail, succeed
from twisted.internet.error import ConnectionLost, ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver, StringTransport
from twisted.logger import LogLevel, globalLogPublisher
from twisted.protocols.basic import LineOnlyReceiver
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase

from replichat.client import ChatClient, ServerUnreachable
from replichat.clientproto import MAX_ANSWER, ChatError, ClientLineProtocol, query_node


def decode_lines(data):
    return [json.loads(line) for line in data.split(b"\n") if line]


class ClientLineProtocolTests(SynchronousTestCase):
    """
    Tests for L{ClientLineProtocol}.
    """

    def setUp(self):
        self.events = []
        self.lost = []
        self.proto = ClientLineProtocol(
            on_event=self.events.append, on_lost=lambda p, r: self.lost.append(r)
        )
        self.transport = StringTransport()
        self.proto.makeConnection(self.transport)

    def sent(self):
        return decode_lines(self.transport.value())

    def receive(self, obj):
        self.proto.dataReceived(json.dumps(obj).encode("utf-8") + b"\n")

    def test_request_line(self):
        """
        A request is one compact JSON line with a fresh C{id}, the C{op} and
        the arguments, non-ASCII text sent as UTF-8.
        """
        self.proto.call("send", {"to": "bob", "text": "h\u00e9"})
        self.proto.call("hello")
        expected = '{"to":"bob","text":"h\u00e9","id":1,"op":"send"}\n{"id":2,"op":"hello"}\n'
        self.assertEqual(self.transport.value(), expected.encode("utf-8"))

    def test_out_of_order_answers(self):
        """
        Answers are matched to requests by C{id}, whatever their order.
        """
        first = self.proto.call("hello")
        second = self.proto.call("cluster")
        self.receive({"id": 2, "ok": True, "result": {"which": "second"}})
        self.assertNoResult(first)
        self.assertEqual(self.successResultOf(second), {"which": "second"})
        self.receive({"id": 1, "ok": True, "result": {"which": "first"}})
        self.assertEqual(self.successResultOf(first), {"which": "first"})

    def test_error_answer(self):
        """
        An C{ok: false} answer fails the request with a L{ChatError} carrying
        the code, message and leader.
        """
        answer = self.proto.call("send", {"to": "bob", "text": "x"})
        leader = {"id": 3, "host": "10.0.0.3", "port": 7001}
        self.receive({"id": 1, "ok": False,
                      "error": {"code": "not_leader", "message": "ask 3", "leader": leader}})
        error = self.failureResultOf(answer, ChatError).value
        self.assertEqual((error.code, error.message, error.leader), ("not_leader", "ask 3", leader))
        self.assertEqual(str(error), "not_leader: ask 3")

    def test_event(self):
        """
        A line with C{event} and no C{id} goes to the event callback and
        answers no request.
        """
        pending = self.proto.call("hello")
        event = {"event": "message", "message": {"id": 17, "from": "bob", "text": "yo"}}
        self.receive(event)
        self.assertEqual(self.events, [event])
        self.assertNoResult(pending)

    def test_bad_lines_ignored(self):
        """
        Lines that are not JSON objects, answers to unknown requests and
        error answers without an id are logged and dropped; the connection
        stays up and later answers still arrive.
        """
        observer = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        pending = self.proto.call("hello")
        for line in [b"not json", b"\xff\xfe", b"[1, 2]",
                     b'{"id": 99, "ok": true, "result": {}}', b'{"id": [1], "ok": true}',
                     b'{"ok": false, "error": {"code": "bad_request"}}']:
            self.proto.dataReceived(line + b"\n")
        warnings = [e for e in observer if e["log_level"] == LogLevel.warn]
        self.assertEqual(len(warnings), 6)
        self.assertFalse(self.transport.disconnecting)
        self.receive({"id": 1, "ok": True, "result": {"role": "leader"}})
        self.assertEqual(self.successResultOf(pending), {"role": "leader"})

    def test_event_callback_error(self):
        """
        An exception from the event callback is logged as a failure and
        does not break the connection.
        """
        self.proto.on_event = lambda event: 1 / 0
        self.receive({"event": "message", "message": {"id": 1}})
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        pending = self.proto.call("hello")
        self.receive({"id": 1, "ok": True, "result": {}})
        self.assertEqual(self.successResultOf(pending), {})

    def test_connection_lost(self):
        """
        Losing the connection fails every pending request with
        L{ConnectionLost}, calls C{on_lost}, fires L{when_lost}, and later
        calls fail at once.
        """
        first, second = self.proto.call("hello"), self.proto.call("cluster")
        waiting = self.proto.when_lost()
        self.proto.connectionLost(iosim.Failure(ConnectionLost("gone")))
        self.failureResultOf(first, ConnectionLost)
        self.failureResultOf(second, ConnectionLost)
        self.assertEqual(len(self.lost), 1)
        self.assertIsNone(self.successResultOf(waiting))
        self.failureResultOf(self.proto.call("hello"), ConnectionLost)

    def test_too_large(self):
        """
        A request longer than the 64 KiB line limit fails with C{too_large}
        and is not sent.
        """
        answer = self.proto.call("send", {"to": "bob", "text": "x" * 70000})
        self.assertEqual(self.failureResultOf(answer, ChatError).value.code, "too_large")
        self.assertEqual(self.transport.value(), b"")

    def test_cancel_forgets(self):
        """
        A cancelled request is forgotten: its late answer is dropped.
        """
        answer = self.proto.call("hello")
        answer.cancel()
        self.failureResultOf(answer)
        observer = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        self.receive({"id": 1, "ok": True, "result": {}})
        self.assertEqual(len(observer), 1)

    def test_overlong_line(self):
        """
        A line from the server over L{MAX_ANSWER} bytes drops the connection,
        since the stream cannot be trusted after it; a long answer under it
        (a page of long messages) does not.
        """
        EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        self.proto.dataReceived(b"x" * 70000)
        self.assertFalse(self.transport.disconnecting)
        self.proto.dataReceived(b"x" * MAX_ANSWER)
        self.assertTrue(self.transport.disconnecting)


class FakeServerProtocol(LineOnlyReceiver):
    """
    The server end of one connection to a L{FakeNode}.
    """

    delimiter = b"\n"

    def __init__(self, node):
        self.node = node
        self.username = None

    def connectionMade(self):
        self.node.connections.append(self)

    def connectionLost(self, reason):
        self.node.connections.remove(self)

    def send_json(self, obj):
        self.sendLine(json.dumps(obj).encode("utf-8"))

    def lineReceived(self, line):
        request = json.loads(line)
        self.node.requests.append(request)
        answer = self.node.answer(self, request)
        if answer is not None:
            self.send_json({"id": request["id"], **answer})


def ok(**result):
    return {"ok": True, "result": result}


def error(code, message="scripted", leader=None):
    body = {"code": code, "message": message}
    if leader is not None:
        body["leader"] = leader
    return {"ok": False, "error": body}


#: Ops that only a leader carries out (they commit); a follower refuses them
#: with C{not_leader}.
LEADER_OPS = {"create_account", "login", "logout", "send", "read", "delete_messages",
              "delete_account"}


class FakeNode:
    """
    A scripted server.  The replicated state (sessions, messages, rids)
    lives on the L{FakeNetwork}, shared by all nodes, as the real cluster
    shares it through its log.

    @ivar script: op -> answers to give (before acting normally); L{None}
        in the list means "never answer".
    """

    def __init__(self, net, node_id, host, port):
        self.net = net
        self.id = node_id
        self.host, self.port = host, port
        self.role, self.epoch, self.leader = "follower", 1, None
        self.up = True
        self.requests = []
        self.connections = []
        self.script = {}

    def ops(self):
        return [request["op"] for request in self.requests]

    def make_leader(self, others=()):
        """
        Make this node the leader, and C{others} its followers.
        """
        self.role, self.leader = "leader", self.info()
        for other in others:
            other.role, other.leader = "follower", self.info()

    def info(self):
        return {"id": self.id, "host": self.host, "port": self.port}

    def crash(self):
        self.up = False
        for connection in list(self.connections):
            connection.transport.loseConnection()

    def push(self, username, message):
        for connection in self.connections:
            if connection.username == username:
                connection.send_json({"event": "message", "message": message})

    def answer(self, conn, request):
        op = request["op"]
        if self.script.get(op):
            return self.script[op].pop(0)
        if op == "hello":
            return ok(node=self.id, role=self.role, epoch=self.epoch, leader=self.leader)
        if op in ("cluster", "list_accounts", "history"):
            return ok(leader=self.leader, nodes=[])
        if op in LEADER_OPS and self.role != "leader":
            return error("not_leader", "not the leader", self.leader)
        # Like the real server, login is never deduplicated by rid.
        dedup = op != "login" and "rid" in request
        if dedup and request["rid"] in self.net.done:
            return self.net.done[request["rid"]]
        answer = getattr(self, "op_" + op)(conn, request)
        if dedup:
            self.net.done[request["rid"]] = answer
        return answer

    def op_create_account(self, conn, request):
        return ok(username=request["username"])

    def op_login(self, conn, request):
        conn.username = request["username"]
        token = "token-" + conn.username
        self.net.tokens[token] = conn.username
        return ok(token=token, unread=0)

    def op_resume(self, conn, request):
        if request["token"] not in self.net.tokens:
            return error("bad_credentials", "unknown token")
        conn.username = self.net.tokens[request["token"]]
        return ok(username=conn.username, unread=0)

    def op_logout(self, conn, request):
        if conn.username is None:
            return error("not_logged_in", "not logged in")
        conn.username = None
        return ok()

    def op_send(self, conn, request):
        if conn.username is None:
            return error("not_logged_in", "log in first")
        self.net.next_id += 1
        message = {"id": self.net.next_id, "from": conn.username, "to": request["to"],
                   "text": request["text"], "sent_at": 0}
        return ok(message=message)

    def op_read(self, conn, request):
        return ok(messages=self.net.mailbox, remaining=0)


class FakeEndpoint:
    def __init__(self, net, host, port):
        self.net, self.address = net, (host, port)

    def connect(self, factory):
        self.net.attempts.append(self.address)
        node = self.net.nodes.get(self.address)
        if node is None or not node.up:
            return fail(ConnectionRefusedError())
        client = factory.buildProtocol(None)
        server = FakeServerProtocol(node)
        pump = iosim.connect(server, iosim.makeFakeServer(server),
                             client, iosim.makeFakeClient(client), greet=False)
        self.net.pumps.append(pump)
        return succeed(client)


class FakeNetwork:
    """
    L{FakeNode}s reachable through L{FakeEndpoint}s.
    """

    def __init__(self):
        self.nodes = {}
        self.pumps = []
        self.attempts = []
        self.tokens = {}
        self.done = {}
        self.mailbox = []
        self.next_id = 0

    def add(self, node_id):
        node = FakeNode(self, node_id, "10.0.0.{}".format(node_id), 7001)
        self.nodes[(node.host, node.port)] = node
        return node

    def endpoint(self, host, port):
        return FakeEndpoint(self, host, port)

    def flush(self):
        """
        Deliver everything in flight on every connection, including ones
        opened meanwhile.
        """
        moved = True
        while moved:
            moved = False
            for pump in list(self.pumps):
                moved = pump.flush() or moved


class ChatClientTests(SynchronousTestCase):
    """
    Tests for L{ChatClient} against a cluster of L{FakeNode}s.
    """

    def setUp(self):
        self.clock = Clock()
        self.net = FakeNetwork()
        self.node1, self.node2, self.node3 = (self.net.add(i) for i in (1, 2, 3))
        self.node1.make_leader([self.node2, self.node3])
        self.client = self.make_client()

    def make_client(self, **kwargs):
        addresses = [(n.host, n.port) for n in (self.node1, self.node2, self.node3)]
        return ChatClient(addresses, self.clock, endpoint_factory=self.net.endpoint, **kwargs)

    def complete(self, d):
        self.net.flush()
        return self.successResultOf(d)

    def logged_in(self):
        self.complete(self.client.login("alice", "pw"))

    def test_connect_follows_hello(self):
        """
        C{connect} asks the first server C{hello}; a follower naming the
        leader makes the client move there.
        """
        self.node2.make_leader([self.node1, self.node3])
        hello = self.complete(self.client.connect())
        self.assertEqual((hello["node"], hello["role"]), (2, "leader"))
        self.assertEqual(self.client.address, ("10.0.0.2", 7001))
        self.assertEqual(self.node1.ops(), ["hello"])
        self.assertEqual(self.node1.connections, [])

    def test_connect_skips_unreachable(self):
        """
        An unreachable server is skipped for the next one in the list.
        """
        self.node1.up = False
        self.node2.make_leader([self.node3])
        self.complete(self.client.connect())
        self.assertEqual(self.client.address, ("10.0.0.2", 7001))
        self.assertEqual(self.net.attempts, [("10.0.0.1", 7001), ("10.0.0.2", 7001)])

    def test_rids(self):
        """
        Mutating requests carry a fresh C{rid} (a per-client random prefix
        and a counter), an explicit one is kept, and reads carry none; nor
        does C{login}, which servers do not deduplicate.
        """
        self.logged_in()
        self.complete(self.client.send("bob", "one"))
        self.complete(self.client.send("bob", "two"))
        self.complete(self.client.request("send", to="bob", text="three", rid="mine"))
        self.complete(self.client.cluster())
        ops = ("login", "send", "cluster")
        rids = [r.get("rid") for r in self.node1.requests if r["op"] in ops]
        prefix = rids[1].rsplit("-", 1)[0]
        self.assertEqual(rids, [None, prefix + "-1", prefix + "-2", "mine", None])
        self.assertEqual(len(prefix), 12)
        self.assertNotEqual(self.make_client()._rid_prefix, prefix)

    def test_history_arguments(self):
        """
        C{history} sends only the arguments it was given, C{with_} as
        C{with}.
        """
        self.complete(self.client.history(with_="bob", limit=5))
        self.complete(self.client.history())
        requests = [r for r in self.node1.requests if r["op"] == "history"]
        self.assertEqual([sorted(r) for r in requests],
                         [["id", "limit", "op", "with"], ["id", "op"]])
        self.assertEqual(requests[0]["with"], "bob")

    def test_not_leader_followed(self):
        """
        A C{not_leader} answer sends the request, with the same C{rid}, to
        the leader it names, after resuming the session there.
        """
        self.logged_in()
        self.node2.make_leader([self.node1, self.node3])
        result = self.complete(self.client.send("bob", "hi"))
        self.assertEqual(result["message"]["text"], "hi")
        self.assertEqual(self.node2.ops(), ["hello", "resume", "send"])
        self.assertEqual(self.node1.requests[-1]["op"], "send")
        self.assertEqual(self.node1.requests[-1]["rid"], self.node2.requests[-1]["rid"])
        self.assertEqual(self.client.address, ("10.0.0.2", 7001))

    def test_not_leader_concurrent(self):
        """
        Requests refused together by a deposed leader share one move to
        the new leader, each keeping its C{rid}.
        """
        self.logged_in()
        self.node2.make_leader([self.node1, self.node3])
        first, second = self.client.send("bob", "one"), self.client.send("bob", "two")
        self.net.flush()
        self.assertEqual(self.successResultOf(first)["message"]["text"], "one")
        self.assertEqual(self.successResultOf(second)["message"]["text"], "two")
        self.assertEqual(self.node2.ops(), ["hello", "resume", "send", "send"])
        rids = [sorted(r["rid"] for r in node.requests if r["op"] == "send")
                for node in (self.node1, self.node2)]
        self.assertEqual(rids[0], rids[1])
        self.assertEqual(self.net.attempts.count(("10.0.0.2", 7001)), 1)

    def test_unavailable_backoff(self):
        """
        C{unavailable} is retried after 0.05 s, then 0.1 s, 0.2 s, ...
        """
        self.logged_in()
        self.node1.script["send"] = [error("unavailable")] * 3
        result = self.client.send("bob", "hi")
        for now, sends in [(0.0, 1), (0.049, 1), (0.051, 2), (0.149, 2), (0.151, 3), (0.349, 3)]:
            self.clock.advance(now - self.clock.seconds())
            self.net.flush()
            self.assertEqual(self.node1.ops().count("send"), sends)
            self.assertNoResult(result)
        self.clock.advance(0.002)
        self.assertEqual(self.complete(result)["message"]["text"], "hi")
        rids = {r["rid"] for r in self.node1.requests if r["op"] == "send"}
        self.assertEqual(len(rids), 1)

    def test_unavailable_deadline(self):
        """
        After the deadline, the last C{unavailable} answer is the result;
        the backoff stops growing at 1 s.
        """
        self.client.timeout = 5
        self.node1.script["create_account"] = [error("unavailable")] * 100
        result = self.client.create_account("alice", "pw")
        while self.clock.seconds() < 4.99:
            self.clock.advance(0.01)
            self.net.flush()
        self.assertNoResult(result)
        self.clock.advance(0.01)
        self.net.flush()
        self.assertEqual(self.failureResultOf(result, ChatError).value.code, "unavailable")
        # 0, .05, .15, .35, .75, 1.55, 2.55, 3.55, 4.55 and the last at 5.
        self.assertEqual(self.node1.ops().count("create_account"), 10)

    def test_connection_lost_retries_same_rid(self):
        """
        When the connection is lost with a request pending, the client
        reconnects (here to the new leader), resumes its session, and sends
        the request again with the same C{rid}.
        """
        self.logged_in()
        self.node1.script["send"] = [None]
        result = self.client.send("bob", "hi")
        self.net.flush()
        self.assertNoResult(result)
        self.node2.make_leader([self.node3])
        self.node1.crash()
        self.assertEqual(self.complete(result)["message"]["text"], "hi")
        self.assertEqual(self.node2.ops(), ["hello", "resume", "send"])
        self.assertEqual(self.node2.requests[1]["token"], "token-alice")
        self.assertEqual(self.node1.requests[-1]["rid"], self.node2.requests[-1]["rid"])
        self.assertEqual(self.client.token, "token-alice")

    def test_login_retried(self):
        """
        A login whose connection is lost before the answer is simply sent
        again, to the new leader, without resuming the old session for it;
        the token of that second answer is kept and resumed after the next
        failover.
        """
        self.logged_in()
        self.node1.script["login"] = [None]
        result = self.client.login("bob", "pw")
        self.net.flush()
        self.assertNoResult(result)
        self.node2.make_leader([self.node3])
        self.node1.crash()
        self.node2.script["login"] = [ok(token="second", unread=3)]
        self.net.tokens["second"] = "bob"
        self.assertEqual(self.complete(result), {"token": "second", "unread": 3})
        self.assertEqual((self.client.username, self.client.token), ("bob", "second"))
        logins = [r for r in self.node1.requests + self.node2.requests if r["op"] == "login"]
        self.assertEqual([r["username"] for r in logins], ["alice", "bob", "bob"])
        self.assertEqual([r.get("rid") for r in logins], [None] * 3)
        # The background reconnection resumed alice's session; the login
        # replaced it on that connection, so no further resume is needed.
        self.assertEqual(self.node2.ops(), ["hello", "resume", "login"])
        self.assertEqual(self.node2.requests[1]["token"], "token-alice")
        self.complete(self.client.send("carol", "hi"))
        self.assertEqual(self.node2.ops()[-1], "send")
        self.node3.make_leader()
        self.node2.crash()
        self.net.flush()
        self.assertEqual(self.node3.ops(), ["hello", "resume"])
        self.assertEqual(self.node3.requests[1]["token"], "second")

    def test_logout_already_ended(self):
        """
        A logout whose first attempt ended the session before its connection
        was lost succeeds when the new server no longer knows the session;
        a logout without a session still fails with C{not_logged_in}.
        """
        self.logged_in()
        self.node1.script["logout"] = [None]
        result = self.client.logout()
        self.net.flush()
        self.assertNoResult(result)
        self.net.tokens.clear()
        self.node2.make_leader([self.node3])
        self.node1.crash()
        self.assertEqual(self.complete(result), {})
        self.assertEqual((self.client.username, self.client.token), (None, None))
        self.assertEqual(self.node2.ops(), ["hello", "resume", "logout"])
        result = self.client.logout()
        self.net.flush()
        self.assertEqual(self.failureResultOf(result, ChatError).value.code, "not_logged_in")

    def test_reconnect_keeps_pushes(self):
        """
        A logged-in client reconnects and resumes as soon as its connection
        is lost, so pushed messages keep arriving without a new request.
        """
        seen = []
        self.client.on_message = seen.append
        self.logged_in()
        self.node2.make_leader([self.node3])
        self.node1.crash()
        self.net.flush()
        self.assertEqual(self.node2.ops(), ["hello", "resume"])
        self.node2.push("alice", {"id": 7, "text": "still here"})
        self.net.flush()
        self.assertEqual([m["id"] for m in seen], [7])

    def test_reconnect_outlasts_deadline(self):
        """
        A logged-in client keeps trying to reconnect after the deadline,
        saying so, until a server is back or it is closed.
        """
        notes = []
        self.client.on_status = notes.append
        self.logged_in()
        for node in (self.node1, self.node2, self.node3):
            node.crash()
        self.net.flush()
        self.clock.pump([0.1] * 250)
        self.assertEqual(notes.count("connection lost; reconnecting"), 1)
        self.assertEqual(sum(n.startswith("still reconnecting (unreachable: ") for n in notes), 2)
        self.node2.up = True
        self.node2.make_leader()
        self.clock.advance(1)
        self.net.flush()
        self.assertEqual(self.node2.ops(), ["hello", "resume"])
        self.assertEqual(notes[-1], "connected to 10.0.0.2:7001 (leader)")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_close_stops_reconnecting(self):
        """
        C{close} ends the background reconnection.
        """
        self.logged_in()
        for node in (self.node1, self.node2, self.node3):
            node.crash()
        self.net.flush()
        self.clock.advance(0.01)
        self.assertNotEqual(self.clock.getDelayedCalls(), [])
        self.successResultOf(self.client.close())
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_resume_refused(self):
        """
        If the new server no longer knows the session, the client drops
        its token and the request gets the server's own answer.
        """
        self.logged_in()
        self.node1.script["send"] = [None]
        result = self.client.send("bob", "hi")
        self.net.flush()
        self.net.tokens.clear()
        self.node2.make_leader([self.node3])
        self.node1.crash()
        self.net.flush()
        self.assertEqual(self.failureResultOf(result, ChatError).value.code, "not_logged_in")
        self.assertIsNone(self.client.token)
        self.assertIsNone(self.client.username)

    def test_push_once(self):
        """
        Each pushed message id reaches C{on_message} once, however often it
        is pushed; ids returned by C{read} count as seen.
        """
        seen = []
        self.client.on_message = seen.append
        self.logged_in()
        self.net.mailbox = [{"id": 5, "text": "read already"}]
        self.complete(self.client.read())
        for message_id in (1, 1, 2, 5, 1):
            self.node1.push("alice", {"id": message_id, "text": "x"})
        self.net.flush()
        self.assertEqual([m["id"] for m in seen], [1, 2])

    def test_seen_bounded(self):
        """
        Only the last C{seen_limit} ids are remembered.
        """
        seen = []
        self.client = self.make_client(seen_limit=2)
        self.client.on_message = seen.append
        self.logged_in()
        for message_id in (1, 2, 3, 3, 1):
            self.node1.push("alice", {"id": message_id})
        self.net.flush()
        self.assertEqual([m["id"] for m in seen], [1, 2, 3, 1])

    def test_other_events(self):
        """
        Events other than C{message} go to C{on_event}; a C{leader_changed}
        hint makes the named leader the first one tried on reconnecting.
        """
        events = []
        self.client.on_event = events.append
        self.logged_in()
        event = {"event": "leader_changed", "leader": self.node3.info()}
        self.node1.connections[0].send_json(event)
        self.net.flush()
        self.assertEqual(events, [event])
        self.node3.make_leader([self.node2])
        self.node1.crash()
        self.net.flush()
        self.assertEqual(self.net.attempts[-1], ("10.0.0.3", 7001))
        self.assertEqual(self.client.address, ("10.0.0.3", 7001))

    def test_unreachable(self):
        """
        With every server down, connecting is retried with backoff until
        the deadline, then fails with L{ServerUnreachable}.
        """
        self.client.timeout = 2
        for node in (self.node1, self.node2, self.node3):
            node.up = False
        result = self.client.hello()
        self.clock.pump([0.01] * 199)
        self.assertNoResult(result)
        self.clock.advance(0.01)
        failure = self.failureResultOf(result, ServerUnreachable)
        self.assertEqual(failure.value.code, "unreachable")
        # One round of three addresses at 0, .05, .15, .35, .75, 1.55, 2.
        self.assertEqual(len(self.net.attempts), 21)

    def test_pending_fails_when_cluster_gone(self):
        """
        A request pending when its server dies, with no other server to
        go to, fails once the deadline passes.
        """
        self.logged_in()
        self.node1.script["send"] = [None]
        result = self.client.send("bob", "hi")
        self.net.flush()
        for node in (self.node1, self.node2, self.node3):
            node.crash()
        self.net.flush()
        self.clock.advance(9.9)
        self.assertNoResult(result)
        self.clock.advance(0.1)
        self.assertEqual(self.failureResultOf(result, ChatError).value.code, "unreachable")

    def test_answer_timeout(self):
        """
        A server that accepts but never answers is given up after
        C{answer_timeout}; the request moves to another server.
        """
        self.logged_in()
        self.node1.script["send"] = [None]
        self.node1.script["hello"] = [None]
        self.node2.make_leader([self.node3])
        result = self.client.send("bob", "hi")
        self.net.flush()
        self.clock.advance(4.9)
        self.assertNoResult(result)
        self.clock.advance(0.1)
        self.net.flush()
        self.clock.advance(2)
        self.assertEqual(self.complete(result)["message"]["text"], "hi")
        self.assertEqual(self.client.address, ("10.0.0.2", 7001))

    def test_session_state(self):
        """
        C{login} and C{resume} keep the token and username; C{logout}
        forgets them.
        """
        self.logged_in()
        self.assertEqual((self.client.username, self.client.token), ("alice", "token-alice"))
        self.complete(self.client.logout())
        self.assertEqual((self.client.username, self.client.token), (None, None))
        self.complete(self.client.resume("token-alice"))
        self.assertEqual((self.client.username, self.client.token), ("alice", "token-alice"))

    def test_error_answer_raised(self):
        """
        An error answer other than C{not_leader} and C{unavailable} fails
        the operation at once, without a retry.
        """
        self.node1.script["create_account"] = [error("username_taken", "taken")]
        result = self.client.create_account("a", "b")
        self.net.flush()
        failure = self.failureResultOf(result, ChatError)
        self.assertEqual((failure.value.code, failure.value.message), ("username_taken", "taken"))
        self.assertEqual(self.node1.ops().count("create_account"), 1)

    def test_close(self):
        """
        C{close} drops the connection and stops a retry that is waiting,
        which fails with C{closed}; no timer is left behind.
        """
        self.node1.script["send"] = [error("unavailable")]
        self.logged_in()
        result = self.client.send("bob", "hi")
        self.net.flush()
        closed = self.client.close()
        self.net.flush()
        self.successResultOf(closed)
        self.assertEqual(self.failureResultOf(result, ChatError).value.code, "closed")
        self.assertEqual(self.node1.connections, [])
        self.assertEqual(self.clock.getDelayedCalls(), [])


class QueryNodeTests(SynchronousTestCase):
    """
    Tests for L{query_node}.
    """

    def test_asks_one_node(self):
        """
        L{query_node} asks the given server, follows no leader, and closes
        the connection after the answer.
        """
        net = FakeNetwork()
        node = net.add(2)
        node.leader = {"id": 1, "host": "10.0.0.1", "port": 7001}
        result = query_node(Clock(), node.host, node.port, "hello", endpoint_factory=net.endpoint)
        net.flush()
        self.assertEqual(self.successResultOf(result)["role"], "follower")
        self.assertEqual(net.attempts, [("10.0.0.2", 7001)])
        self.assertEqual(node.connections, [])
