# -*- test-case-name: tests.test_hostile -*-
"""
Hostile connections (DESIGN.md §6, security (1), (4) and (5)).

Client port: one connection's limits (line size, requests in flight, output
waiting for a client that does not read, idle time) hold in memory, on a
fake clock; then real hostile clients -- a 10 MB line, 10,000 pipelined
requests, readers that never read, a 1 byte/s slow loris -- run against a
real server process on 127.0.0.1 while a well-behaved client sends 50
messages, which must all succeed with a bounded p99 latency.

Peer port: whatever an unauthenticated connection sends -- random bytes,
well-formed AMP boxes of real and made-up commands with random arguments,
megabytes without a box end -- nothing reaches the node, no exception
escapes, the connection is closed, and what it makes the server buffer is
bounded.
"""

from __future__ import annotations

import json
import select
import socket
import struct
import sys
import threading
import time

from hypothesis import HealthCheck, given, settings, strategies as st
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver, StringTransport
from twisted.logger import globalLogPublisher
from twisted.protocols import amp
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from replichat.lineproto import TURN_BUDGET
from replichat.peercommands import (
    ADMIN_COMMANDS,
    COMMAND_FOR_NAME,
    ForceLead,
    Hello,
    Leave,
    Prove,
    Status,
    to_command,
)
from replichat.peerproto import (
    DIALER_REFUSED_HOLD,
    HANDSHAKE_TIMEOUT,
    MAX_BOX_BEFORE_AUTH,
    NONCE_BYTES,
    PeerProtocol,
    _proof,
)
from tests.realserver import RealServer
from tests.test_lineproto import Server
from tests.test_peer import SAMPLES

MiB = 1024 * 1024
KEY = b"the cluster's secret"

# ---------------------------------------------------------------------------
# Client port, in memory
# ---------------------------------------------------------------------------


class PausingTransport(StringTransport):
    """
    A L{StringTransport} that treats its registered streaming producer as a
    TCP transport does: it pauses it once more than C{buffer_size} bytes
    wait to be read, and resumes it when the client reads them (L{drain}).

    @ivar aborted: whether L{abortConnection} was called (rather than
        L{loseConnection}, which would wait for the client to read).
    """

    def __init__(self, buffer_size: int = 65536) -> None:
        super().__init__()
        self.buffer_size = buffer_size
        self.producer_paused = False
        self.aborted = False

    def write(self, data: bytes) -> None:
        super().write(data)
        if (self.producer is not None and not self.producer_paused
                and len(self.io.getvalue()) > self.buffer_size):
            self.producer_paused = True
            self.producer.pauseProducing()

    def abortConnection(self) -> None:
        self.aborted = True
        self.disconnecting = True

    def drain(self) -> list[dict]:
        """
        The client reads everything: return it, decoded, and resume the
        producer as the transport would.
        """
        data = self.value()
        self.clear()
        if self.producer_paused and not self.disconnecting:
            self.producer_paused = False
            self.producer.resumeProducing()
        return [json.loads(line) for line in data.split(b"\n") if line]


class CountingHandler:
    """
    Wraps a handler, counting the requests it is given.
    """

    def __init__(self, handler) -> None:
        self._handler = handler
        self.handled = 0

    def handle(self, connection, request):
        self.handled += 1
        return self._handler.handle(connection, request)

    def __getattr__(self, name):
        return getattr(self._handler, name)


class Line:
    """
    One connection to an in-memory L{Server} over a L{PausingTransport}.
    """

    def __init__(self, server: Server, buffer_size: int = 65536) -> None:
        self.server = server
        self.handler = server.handler
        if not isinstance(self.handler, CountingHandler):
            self.handler = CountingHandler(server.handler)
        server.factory.handler = self.handler
        self.protocol = server.factory.buildProtocol(None)
        # The turn budget never runs out unless a test says so: what a turn
        # does must not depend on the speed of the machine.
        self.protocol.work_clock = lambda: 0.0
        self.transport = PausingTransport(buffer_size)
        self.protocol.makeConnection(self.transport)

    def send(self, data: bytes) -> None:
        assert self.transport.producerState == "producing", "the server stopped reading"
        self.protocol.dataReceived(data)
        self.server.settle()

    def request(self, request_id: object, op: str, **args: object) -> bytes:
        return json.dumps({"id": request_id, "op": op, **args}).encode() + b"\n"


class ClientLimitTests(SynchronousTestCase):
    """
    Per-connection limits on the client port, on a fake clock.
    """

    def populated(self, **limits: object) -> tuple[Server, object]:
        """
        A server where alice has 30 messages of 1000 characters, and her
        logged-in connection.
        """
        server = Server(**limits)
        alice = server.user("alice")
        for i in range(30):
            alice.ok("send", to="alice", text="%d" % i + "x" * 999)
        return server, alice

    def login(self, server: Server, line: Line, name: str) -> None:
        line.send(line.request("login", "login", username=name, password="pw"))
        [answer] = [a for a in line.transport.drain() if a.get("id") == "login"]
        assert answer["ok"], answer

    def test_pipelined_heavy_requests_a_buffer_at_a_time(self) -> None:
        """
        A packet of 1000 pipelined requests with big answers is handled only
        while the client reads: one turn does about a transport buffer's
        worth of answers, the rest waits, unread and unhandled, and every
        request is answered once, in order, as the client reads.
        """
        server, _ = self.populated()
        line = Line(server)
        self.login(server, line, "alice")
        # Each answer is about 31 KB: the third one fills the 64 KiB buffer.
        per_turn = 3
        handled = line.handler.handled
        line.send(b"".join(line.request(i, "history", limit=1000) for i in range(1000)))
        self.assertEqual(line.transport.producerState, "paused")
        self.assertEqual(line.handler.handled - handled, per_turn)
        answers = []
        turns = 0
        while len(answers) < 1000:
            turns += 1
            self.assertLess(turns, 2000)
            handled = line.handler.handled
            answers.extend(line.transport.drain())
            self.assertLessEqual(line.handler.handled - handled, per_turn)
        self.assertEqual([a["id"] for a in answers], list(range(1000)))
        self.assertTrue(all(a["ok"] and len(a["result"]["messages"]) == 30 for a in answers))
        self.assertEqual(line.transport.producerState, "producing")
        self.assertFalse(line.transport.disconnecting)

    def test_non_reader_dropped_by_pushes(self) -> None:
        """
        A client that stops reading: the requests it already sent are not
        handled; once more than C{max_output_bytes} of pushed messages wait
        for it, it is aborted, and nothing it sent is handled afterwards.
        """
        server, alice = self.populated(max_output_bytes=65536)
        server.connect().ok("create_account", username="mute", password="pw")
        line = Line(server)
        self.login(server, line, "mute")
        line.send(b"".join(line.request(i, "hello") for i in range(2000)))
        self.assertEqual(line.transport.producerState, "paused")
        handled = line.handler.handled
        for i in range(200):
            alice.ok("send", to="mute", text="y" * 1000)
            if line.transport.disconnecting:
                break
        self.assertTrue(line.transport.aborted)
        self.assertLess(i, 100)
        self.assertEqual(line.handler.handled, handled)
        line.protocol.resumeProducing()
        line.protocol.dataReceived(line.request("late", "hello"))
        self.assertEqual(line.handler.handled, handled)
        self.assertEqual(line.protocol._held_lines, [])
        # The sender never noticed.
        self.assertEqual(alice.ok("hello")["node"], 1)

    def test_idle_non_reader_aborted(self) -> None:
        """
        An idle connection that does not read its answers is aborted: a
        clean close would wait forever for it to read.
        """
        server, _ = self.populated(idle_timeout=30.0)
        line = Line(server)
        self.login(server, line, "alice")
        line.send(b"".join(line.request(i, "history", limit=1000) for i in range(100)))
        self.assertEqual(line.transport.producerState, "paused")
        server.clock.advance(29)
        self.assertFalse(line.transport.disconnecting)
        server.clock.advance(1)
        self.assertTrue(line.transport.aborted)

    def test_slow_loris(self) -> None:
        """
        A client trickling one byte a second, never completing a line, is
        closed after C{idle_timeout}: bytes that make no request do not
        keep a connection open.
        """
        server = Server(idle_timeout=30.0)
        line = Line(server)
        trickle = b'{"id": 1, "op": "hello", "pad": "' + b"x" * 100
        for second in range(len(trickle)):
            if line.transport.disconnecting:
                break
            line.send(trickle[second:second + 1])
            server.clock.advance(1)
        self.assertEqual(second, 30)
        self.assertTrue(line.transport.disconnecting)
        self.assertEqual(line.transport.value(), b"")
        self.assertEqual(line.handler.handled, 0)

    def test_ten_megabyte_line(self) -> None:
        """
        A 10 MB line, in 64 KiB packets, is answered once with
        C{too_large} and never buffered beyond C{max_line_bytes}; the next
        line is served.
        """
        server = Server()
        line = Line(server)
        packet = b"x" * 65536
        for _ in range(160):
            line.send(packet)
            self.assertLessEqual(len(line.protocol._buffer), server.config.limits.max_line_bytes)
        line.send(b"\n" + line.request("next", "hello"))
        answers = line.transport.drain()
        self.assertEqual([(a["id"], a["ok"]) for a in answers], [(None, False), ("next", True)])
        self.assertEqual(answers[0]["error"]["code"], "too_large")
        self.assertEqual(line.handler.handled, 1)

    def test_turns_shared_between_connections(self) -> None:
        """
        Two connections pipelining requests that each take longer than a
        turn's budget are served in turns, one request each, rather than
        one connection's whole packet first; neither reads more meanwhile.
        """
        server = Server()
        order: list[tuple[str, object]] = []
        work = [0.0]

        class SlowHandler(CountingHandler):
            def handle(self, connection, request):
                order.append((connection.name, request.id))
                work[0] += 2 * TURN_BUDGET
                return super().handle(connection, request)

        server.handler = SlowHandler(server.handler)
        lines = {}
        for name in ("a", "b"):
            lines[name] = line = Line(server)
            line.protocol.name = name
            line.protocol.work_clock = lambda: work[0]
        for name, line in lines.items():
            line.protocol.dataReceived(b"".join(line.request(i, "hello") for i in range(4)))
            self.assertEqual(line.transport.producerState, "paused")
        self.assertEqual(order, [("a", 0), ("b", 0)])
        server.settle()
        self.assertEqual(order, [(name, i) for i in range(4) for name in "ab"])
        for line in lines.values():
            self.assertEqual([a["id"] for a in line.transport.drain()], [0, 1, 2, 3])
            self.assertEqual(line.transport.producerState, "producing")

    def test_ten_thousand_pipelined_sends(self) -> None:
        """
        10,000 pipelined sends in one packet: at most C{max_inflight} run at
        once, the others are refused with C{rate_limited}; every one is
        answered exactly once and each accepted one is logged once.
        """
        server = Server(max_inflight=64)
        server.connect().ok("create_account", username="sink", password="pw")
        server.connect().ok("create_account", username="piper", password="pw")
        line = Line(server)
        self.login(server, line, "piper")
        before = server.disk_log.last_index
        line.send(b"".join(line.request(i, "send", to="sink", text="t") for i in range(10000)))
        answers = []
        for _ in range(10000):
            answers.extend(line.transport.drain())
            server.settle()
            if len(answers) == 10000:
                break
        self.assertEqual(sorted(a["id"] for a in answers), list(range(10000)))
        accepted = [a for a in answers if a["ok"]]
        refused = {a["error"]["code"] for a in answers if not a["ok"]}
        self.assertEqual(refused, {"rate_limited"})
        self.assertGreaterEqual(len(accepted), 64)
        self.assertEqual(server.disk_log.last_index - before, len(accepted))
        self.assertEqual(len({a["result"]["message"]["id"] for a in accepted}), len(accepted))


# ---------------------------------------------------------------------------
# Peer port, unauthenticated
# ---------------------------------------------------------------------------


class Recorder:
    """
    Records every method called on it.  A connection's owner (a
    L{replichat.peerproto.PeerNetwork} in the server) and its node.
    """

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)

        def record(*args: object) -> None:
            self.calls.append((name, *args))

        return record


class Owner(Recorder):
    """
    A L{Recorder} with a recording C{node}, as the admin commands look for.
    """

    def __init__(self) -> None:
        super().__init__()
        self.node = Recorder()


def all_commands():
    return [*COMMAND_FOR_NAME.values(), Hello, Prove, *ADMIN_COMMANDS.values()]


COMMAND_NAMES = sorted({c.commandName for c in all_commands()}
                       | {b"StartTLS", b"junk", b"hello", b"\xff"})
ARGUMENT_NAMES = sorted({name for c in all_commands() for name, _ in c.arguments}
                        | {b"entries.1", b"data.1", b"status"})

#: Values that parse, nearly parse, or do not: numbers, booleans, nonces.
values = (
    st.binary(max_size=64)
    | st.integers(-2**70, 2**70).map(lambda i: b"%d" % i)
    | st.sampled_from([b"True", b"False", b"", b"0", b"1", b"-1"])
    | st.binary(min_size=NONCE_BYTES, max_size=NONCE_BYTES)
)
keys = st.sampled_from(ARGUMENT_NAMES) | st.binary(min_size=1, max_size=12)


def valid_boxes() -> list[amp.AmpBox]:
    """
    One well-formed box of every message command (what an authenticated
    peer sends) and of every admin command.
    """
    made = []
    for message in SAMPLES:
        command, kwargs = to_command(message)
        box = command.makeArguments(kwargs, None)
        box[amp.COMMAND] = command.commandName
        made.append(box)
    for command, kwargs in ((Status, {}), (Leave, {"node": 1}), (ForceLead, {})):
        box = command.makeArguments(kwargs, None)
        box[amp.COMMAND] = command.commandName
        box[amp.ASK] = b"1"
        made.append(box)
    return made


VALID_BOXES = valid_boxes()


@st.composite
def boxes(draw) -> bytes:
    """
    One serialized AMP box: a well-formed message or admin command, or a
    command (real or not), an answer or an error (to a tag that may or may
    not be outstanding), or no kind at all, with random arguments.
    """
    kind = draw(st.sampled_from(["valid", "command", "ask", "answer", "error", "none"]))
    if kind == "valid":
        return draw(st.sampled_from(VALID_BOXES)).serialize()
    box = draw(st.dictionaries(keys, values, max_size=5))
    tag = draw(st.sampled_from([b"1", b"2", b"x"]))
    if kind in ("command", "ask"):
        box[amp.COMMAND] = draw(st.sampled_from(COMMAND_NAMES))
        if kind == "ask":
            box[amp.ASK] = tag
    elif kind == "answer":
        box[amp.ANSWER] = tag
    elif kind == "error":
        box[amp.ERROR] = tag
        for key in (amp.ERROR_CODE, amp.ERROR_DESCRIPTION):
            if draw(st.booleans()):
                box[key] = draw(values)
    return amp.AmpBox(box).serialize()


def hello(node: int = 1, nonce: bytes = b"n" * NONCE_BYTES, tag: bytes = b"1") -> bytes:
    return amp.AmpBox({amp.COMMAND: Hello.commandName, amp.ASK: tag,
                       b"node": b"%d" % node, b"nonce": nonce}).serialize()


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:])]


PEER_FUZZ = settings(max_examples=150, deadline=None,
                     suppress_health_check=[HealthCheck.too_slow])


class PeerPreAuthTests(SynchronousTestCase):
    """
    An unauthenticated connection to a server's peer port (or a dialer
    reaching a stranger) acts on nothing.
    """

    def connect(self, dialer: bool = False) -> tuple[PeerProtocol, StringTransport, Owner, Clock]:
        clock = Clock()
        owner = Owner()
        if dialer:
            protocol = PeerProtocol(1, KEY, clock, owner, True, expected_peer=2)
        else:
            protocol = PeerProtocol(2, KEY, clock, owner)
        transport = StringTransport()
        protocol.makeConnection(transport)
        return protocol, transport, owner, clock

    def feed(self, protocol: PeerProtocol, transport: StringTransport,
             pieces: list[bytes], escapes: list | None = None) -> None:
        """
        Deliver C{pieces} as a TCP transport would: not after the server
        closed the connection (it stops reading).

        @param escapes: if given, an exception escaping C{dataReceived} is
            appended to it and the connection closed, as the reactor would
            (it logs the exception and drops the connection); otherwise it
            fails the test.
        """
        for piece in pieces:
            if transport.disconnecting:
                break
            try:
                protocol.dataReceived(piece)
            except Exception as error:
                if escapes is None:
                    raise
                escapes.append(error)
                transport.loseConnection()

    def check_nothing_happened(self, protocol, transport, owner, clock) -> None:
        """
        Within the handshake deadline the connection is closed, and neither
        the node nor the owner heard of anything but the lost connection.
        """
        clock.advance(HANDSHAKE_TIMEOUT + DIALER_REFUSED_HOLD)
        self.assertTrue(transport.disconnecting)
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(owner.node.calls, [])
        self.assertEqual(owner.calls, [("connection_lost", protocol)])
        self.assertIsNone(protocol.peer_id)
        self.failureResultOf(protocol.when_authenticated())

    @PEER_FUZZ
    @given(data=st.binary(max_size=2000), cuts=st.lists(st.integers(0, 2000), max_size=6))
    def test_random_bytes(self, data: bytes, cuts: list[int]) -> None:
        """
        Random bytes in random pieces: nothing reaches the node, no
        exception escapes, the connection is closed.
        """
        connection = self.connect()
        self.feed(connection[0], connection[1], split(data, cuts))
        self.check_nothing_happened(*connection)
        self.flushLoggedErrors()

    @PEER_FUZZ
    @given(first=st.none() | st.integers(-3, 3), nonce_ok=st.booleans(),
           sent=st.lists(boxes(), min_size=1, max_size=5),
           cuts=st.lists(st.integers(0, 4000), max_size=6))
    def test_random_boxes(self, first, nonce_ok: bool, sent: list[bytes],
                          cuts: list[int]) -> None:
        """
        Well-formed AMP boxes -- the real message, handshake and admin
        commands and made-up ones, with random arguments, answers and
        errors -- optionally after a L{Hello} (so the server waits for a
        L{Prove}): nothing reaches the node, the connection never
        authenticates and is closed.
        """
        connection = self.connect()
        data = b"".join(sent)
        if first is not None:
            nonce = b"n" * NONCE_BYTES if nonce_ok else b"short"
            data = hello(first, nonce) + data
        self.feed(connection[0], connection[1], split(data, cuts))
        self.check_nothing_happened(*connection)
        self.flushLoggedErrors()

    @PEER_FUZZ
    @given(sent=st.lists(boxes(), min_size=1, max_size=5),
           cuts=st.lists(st.integers(0, 4000), max_size=6))
    def test_dialer_meets_a_stranger(self, sent: list[bytes], cuts: list[int]) -> None:
        """
        A server dialing a peer's address where a stranger answers (with
        random answers to its L{Hello}, errors, or commands) acts on
        nothing and closes the connection.
        """
        connection = self.connect(dialer=True)
        self.assertIn(Hello.commandName, connection[1].value())
        self.feed(connection[0], connection[1], split(b"".join(sent), cuts))
        self.check_nothing_happened(*connection)
        self.flushLoggedErrors()

    def test_harness_sees_a_peer(self) -> None:
        """
        The checks above can fail: a stranger that knows the key does
        reach the owner.
        """
        protocol, transport, owner, clock = self.connect()
        protocol.dataReceived(hello(1))
        [answer] = amp.parseString(transport.value())
        proof = _proof(KEY, b"dial", b"n" * NONCE_BYTES, answer[b"nonce"], 1)
        protocol.dataReceived(amp.AmpBox({amp.COMMAND: Prove.commandName,
                                          b"proof": proof}).serialize())
        self.assertEqual(owner.calls, [("connection_authenticated", protocol)])
        with self.assertRaises(self.failureException):
            self.check_nothing_happened(protocol, transport, owner, clock)

    def test_ten_megabytes_without_a_box_end(self) -> None:
        """
        10 MB of keys and values that never end a box, in 64 KiB packets:
        the connection is closed within the first packets, having buffered
        at most one AMP value.
        """
        protocol, transport, owner, clock = self.connect()
        pair = b"\x00\x01k\xff\xff" + b"v" * 65535
        stream = pair * (10 * MiB // len(pair))
        fed = 0
        for start in range(0, len(stream), 65536):
            if transport.disconnecting:
                break
            protocol.dataReceived(stream[start:start + 65536])
            fed += 65536
            self.assertLessEqual(len(protocol._unprocessed), 2 + 65535 + 65536)
        self.assertTrue(transport.disconnecting)
        self.assertLessEqual(fed, MAX_BOX_BEFORE_AUTH + 2 * 65536)
        self.check_nothing_happened(protocol, transport, owner, clock)

    def test_trickled_value_closed_at_deadline(self) -> None:
        """
        One AMP value declared 64 KiB long and trickled in: at most that
        much is buffered, and the connection is closed at the handshake
        deadline.
        """
        protocol, transport, owner, clock = self.connect()
        protocol.dataReceived(b"\x00\x01k\xff\xff")
        for _ in range(int(HANDSHAKE_TIMEOUT) - 1):
            protocol.dataReceived(b"v" * 1000)
            clock.advance(1)
        self.assertFalse(transport.disconnecting)
        self.assertLessEqual(len(protocol._unprocessed), 2 + 65535)
        self.check_nothing_happened(protocol, transport, owner, clock)


class PeerPreAuthLoggingTests(SynchronousTestCase):
    """
    A stranger's malformed handshake is refused with a clear warning, not
    an exception out of C{dataReceived} or an unhandled-error traceback
    (which any stranger could otherwise write to the log at will).
    """

    def check_refused_cleanly(self, protocol: PeerProtocol, transport: StringTransport,
                              boxes_sent: list, clock: Clock | None = None) -> None:
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        for box in boxes_sent:
            protocol.dataReceived(box.serialize())
        if clock is not None:
            clock.advance(DIALER_REFUSED_HOLD)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.flushLoggedErrors(), [], boxes_sent)
        refusals = [e for e in events if "refused" in e.get("log_format", "")]
        self.assertTrue(refusals, boxes_sent)

    def test_dialer_malformed_answers(self) -> None:
        """
        A dialer answered with an error box without a code, or with an
        answer missing the acceptor's nonce, refuses the connection.
        """
        cases = [
            [amp.AmpBox({amp.ERROR: b"1"})],
            [amp.AmpBox({amp.ANSWER: b"1", b"node": b"2", b"proof": b"p"})],
        ]
        for boxes_sent in cases:
            clock = Clock()
            protocol = PeerProtocol(1, KEY, clock, Owner(), True, expected_peer=2)
            transport = StringTransport()
            protocol.makeConnection(transport)
            self.check_refused_cleanly(protocol, transport, boxes_sent, clock)

    def test_malformed_handshake(self) -> None:
        """
        A L{Hello} without arguments, or with a node id that is not a
        number, and a L{Prove} without a proof after a good L{Hello}: each
        connection is refused with a warning and no failure is logged.
        """
        cases = [
            [amp.AmpBox({amp.COMMAND: b"Hello", amp.ASK: b"1"})],
            [amp.AmpBox({amp.COMMAND: b"Hello", amp.ASK: b"1", b"node": b"x",
                         b"nonce": b"n" * NONCE_BYTES})],
            [amp.parseString(hello(1))[0], amp.AmpBox({amp.COMMAND: b"Prove"})],
        ]
        for boxes_sent in cases:
            protocol = PeerProtocol(2, KEY, Clock(), Owner())
            transport = StringTransport()
            protocol.makeConnection(transport)
            self.check_refused_cleanly(protocol, transport, boxes_sent)


# ---------------------------------------------------------------------------
# Real hostile clients against a real server
# ---------------------------------------------------------------------------

#: Limits of the real server: small enough that each is reached quickly.
LIMITS = {"idle_timeout": 2.0, "max_output_bytes": 65536, "max_inflight": 64}
IDLE = LIMITS["idle_timeout"]

#: The good client's bound on its p99 send latency, in seconds.
P99_BOUND = 1.0

TCP_ESTABLISHED = 1


def tcp_state(sock: socket.socket) -> int:
    """
    The kernel's TCP state of C{sock} (Linux): whether the server closed or
    reset it, without reading what it sent.
    """
    return struct.unpack("B", sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1))[0]


class Hostile(threading.Thread):
    """
    One hostile client in a thread: C{attack(self)} runs until it returns
    or C{stop} is set; its failure, if any, is kept for the test to raise.
    """

    def __init__(self, name: str, attack, server: RealServer) -> None:
        super().__init__(name=name, daemon=True)
        self.attack = attack
        self.server = server
        self.stop = threading.Event()
        self.started = threading.Event()
        self.result: dict = {}
        self.error: BaseException | None = None

    def connect(self, timeout: float = 10.0) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.server.port), timeout=timeout)

    def run(self) -> None:
        try:
            self.attack(self)
        except BaseException as error:  # reported by the test
            self.error = error
        finally:
            self.started.set()


def request(request_id: object, op: str, **args: object) -> bytes:
    return json.dumps({"id": request_id, "op": op, **args}).encode() + b"\n"


def login(sock: socket.socket, name: str) -> object:
    """
    Log C{sock} in as C{name}; return a line reader for it.
    """
    reader = sock.makefile("rb")
    sock.sendall(request("login", "login", username=name, password="pw"))
    while True:
        answer = json.loads(reader.readline())
        if answer.get("id") == "login":
            assert answer["ok"], answer
            return reader


def big_line(h: Hostile) -> None:
    """
    10 MB lines without a newline, again and again: each is answered with
    one C{too_large}, and the connection still serves the next line.
    """
    sock = h.connect()
    reader = sock.makefile("rb")
    junk = b"x" * (10 * MiB)
    rounds = 0
    while not h.stop.is_set() or rounds == 0:
        sock.sendall(junk + b"\n" + request(rounds, "hello"))
        first, second = json.loads(reader.readline()), json.loads(reader.readline())
        assert (first["id"], first["error"]["code"]) == (None, "too_large"), first
        assert (second["id"], second["ok"]) == (rounds, True), second
        rounds += 1
        h.started.set()
        h.stop.wait(0.1)
    h.result["rounds"] = rounds
    sock.close()


def pipeliner(h: Hostile) -> None:
    """
    10,000 sends in one write, read back concurrently: every one answered
    once, those past C{max_inflight} refused with C{rate_limited}.
    """
    sock = h.connect()
    reader = login(sock, "piper")
    batch = b"".join(request(i, "send", to="sink", text="pipelined %d" % i)
                     for i in range(10000))
    writer = threading.Thread(target=sock.sendall, args=(batch,), daemon=True)
    writer.start()
    h.started.set()
    codes: dict[str, int] = {}
    seen = set()
    while len(seen) < 10000:
        answer = json.loads(reader.readline())
        assert answer["id"] not in seen, answer
        seen.add(answer["id"])
        code = "ok" if answer["ok"] else answer["error"]["code"]
        codes[code] = codes.get(code, 0) + 1
    writer.join(10)
    h.result["codes"] = codes
    sock.close()


def non_reader(h: Hostile, name: str) -> None:
    """
    Logged in as C{name}, sends 2000 requests with 60 KB answers and never
    reads; records how long until the server closed or reset it.
    """
    sock = h.connect()
    login(sock, name)
    sock.sendall(b"".join(request(i, "history", limit=1000) for i in range(2000)))
    flooded = time.monotonic()
    h.started.set()
    deadline = flooded + IDLE + 5
    while time.monotonic() < deadline and tcp_state(sock) == TCP_ESTABLISHED:
        time.sleep(0.02)
    h.result["closed_after"] = time.monotonic() - flooded
    h.result["state"] = tcp_state(sock)
    sock.close()


def slow_loris(h: Hostile) -> None:
    """
    One byte a second of a line that never ends; records how long until
    the server closed it, and whether it answered anything.
    """
    sock = h.connect()
    trickle = b'{"id": 1, "op": "hello", "pad": "' + b"x" * 100
    start = time.monotonic()
    h.started.set()
    received = b""
    for byte in trickle:
        try:
            sock.sendall(bytes([byte]))
        except OSError:
            break
        readable, _, _ = select.select([sock], [], [], 1.0)
        if readable:
            try:
                data = sock.recv(4096)
            except OSError:
                break
            if not data:
                break
            received += data
        if time.monotonic() - start > IDLE + 5:
            break
    h.result["closed_after"] = time.monotonic() - start
    h.result["received"] = received
    sock.close()


def fill_mailbox(server: RealServer, name: str, count: int) -> None:
    """
    Have C{name} send itself C{count} messages, pipelined a window at a time.
    """
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    reader = login(sock, name)
    window = LIMITS["max_inflight"]
    for start in range(0, count, window):
        ids = range(start, min(count, start + window))
        sock.sendall(b"".join(request(i, "send", to=name, text="m") for i in ids))
        answered = 0
        while answered < len(ids):
            answer = json.loads(reader.readline())
            if "event" not in answer:
                assert answer["ok"], answer
                answered += 1
    sock.close()


def slow_requests(h: Hostile) -> None:
    """
    2000 pipelined requests that each scan a 5000-message mailbox for the
    messages with an account it never wrote to: cheap to send, tiny
    answers, tens of milliseconds of work each.  Reads its answers.
    """
    sock = h.connect()
    reader = login(sock, "hoarder")
    batch = b"".join(request(i, "history", limit=1, **{"with": "good"}) for i in range(2000))
    writer = threading.Thread(target=sock.sendall, args=(batch,), daemon=True)
    writer.start()
    h.started.set()
    answered = 0
    sock.settimeout(0.2)
    while not h.stop.is_set() and answered < 2000:
        try:
            answer = json.loads(reader.readline())
        except (TimeoutError, socket.timeout):
            continue
        assert answer["ok"] and answer["result"] == {"messages": []}, answer
        answered += 1
    h.result["answered"] = answered
    sock.close()


class RealHostileClientTests(TestCase):
    """
    Hostile clients against a real server process, while a well-behaved
    client sends 50 messages, paced over the attack.
    """

    def setUp(self) -> None:
        if not sys.platform.startswith("linux"):
            self.skipTest("reads the kernel's TCP state (TCP_INFO)")
        self.server = RealServer(self.mktemp(), limits=LIMITS)
        self.addCleanup(self.server.stop)
        self.server.start()

    def accounts(self, *names: str) -> None:
        """
        Create the good client's account and C{names} (each costs the
        server a real scrypt hash).
        """
        setup = self.server.client()
        for name in ("good", *names):
            setup.ok("create_account", username=name, password="pw")
        setup.close()

    def big_mailboxes(self, *names: str) -> None:
        """
        Give each of C{names} 30 messages of 2000 characters: 60 KB per
        C{history} answer.
        """
        for name in names:
            client = self.server.client()
            client.ok("login", username=name, password="pw")
            for i in range(30):
                client.ok("send", to=name, text="%d" % i + "h" * 1999)
            client.close()

    def logged(self, text: str) -> int:
        """
        How many lines of the server's log hold C{text}.
        """
        return sum(text in line for line in self.server.output().splitlines())

    def attack(self, hostiles: list[Hostile], to: str = "good", pace: float = 0.05,
               size: int = 10) -> list[float]:
        """
        Start C{hostiles}, then send 50 messages of C{size} characters to
        C{to} as a good client, one every C{pace} seconds; stop the hostiles
        and return the send latencies.
        """
        for hostile in hostiles:
            hostile.start()
        for hostile in hostiles:
            self.assertTrue(hostile.started.wait(10), hostile.name)
        good = self.server.client(timeout=5)
        good.ok("login", username="good", password="pw")
        latencies = []
        for i in range(50):
            started = time.monotonic()
            message = good.ok("send", to=to, text=("good %d " % i).ljust(size, "."))["message"]
            latencies.append(time.monotonic() - started)
            self.assertEqual((message["from"], message["to"]), ("good", to))
            time.sleep(pace)
        good.close()
        for hostile in hostiles:
            hostile.stop.set()
        for hostile in hostiles:
            hostile.join(IDLE + 10)
            self.assertFalse(hostile.is_alive(), hostile.name)
            if hostile.error is not None:
                raise AssertionError("%s: %r\n%s" % (hostile.name, hostile.error,
                                                     self.server.tail()))
        self.assertEqual(len(latencies), 50)
        latencies.sort()
        p99 = latencies[int(0.99 * len(latencies))]
        self.assertLess(p99, P99_BOUND, "p99 %.3fs, max %.3fs" % (p99, latencies[-1]))
        self.assertTrue(self.server.running, self.server.tail())
        return latencies

    def check_big_line(self, hostile: Hostile) -> None:
        self.assertGreaterEqual(hostile.result["rounds"], 1)

    def check_pipeliner(self, hostile: Hostile) -> None:
        codes = hostile.result["codes"]
        self.assertEqual(sum(codes.values()), 10000)
        self.assertEqual(set(codes), {"ok", "rate_limited"}, codes)

    def check_closed_at_idle(self, hostile: Hostile) -> None:
        self.assertNotEqual(hostile.result["state"], TCP_ESTABLISHED,
                            "the non-reader is still connected")
        self.assertGreater(hostile.result["closed_after"], IDLE - 0.5)
        self.assertLess(hostile.result["closed_after"], IDLE + 2.5)
        self.assertGreaterEqual(self.logged("closing idle client connection"), 1)

    def test_big_line_and_pipelined(self) -> None:
        """
        10 MB lines and 10,000 pipelined sends: the good client's sends all
        succeed with p99 under a second; the big lines are refused with
        C{too_large} on a connection that stays usable, the pipelined sends
        past C{max_inflight} with C{rate_limited}.
        """
        self.accounts("sink", "piper")
        big = Hostile("10 MB lines", big_line, self.server)
        piper = Hostile("10k pipelined", pipeliner, self.server)
        self.attack([big, piper], pace=0.02)
        self.check_big_line(big)
        self.check_pipeliner(piper)

    def test_non_readers_and_slow_loris(self) -> None:
        """
        A client that never reads its 60 KB answers is closed at the idle
        timeout (aborted: it would never read what is buffered); one that
        never reads while the good client's messages are pushed to it is
        dropped sooner, once C{max_output_bytes} wait for it; a 1 byte/s
        slow loris is closed at the idle timeout, unanswered.  The good
        client's sends, to the one that does not read, all succeed.
        """
        self.accounts("quiet", "mute")
        self.big_mailboxes("quiet", "mute")
        quiet = Hostile("non-reader", lambda h: non_reader(h, "quiet"), self.server)
        mute = Hostile("non-reader with pushes", lambda h: non_reader(h, "mute"), self.server)
        loris = Hostile("slow loris", slow_loris, self.server)
        # 50 x 3000 characters pushed to "mute": over max_output_bytes
        # after about 22, within a second.
        self.attack([quiet, mute, loris], to="mute", pace=0.03, size=3000)
        self.check_closed_at_idle(quiet)
        self.assertNotEqual(mute.result["state"], TCP_ESTABLISHED)
        self.assertLess(mute.result["closed_after"], IDLE + 2.5)
        self.assertEqual(self.logged("bytes wait unread"), 1)
        self.assertGreater(loris.result["closed_after"], IDLE - 0.5)
        self.assertLess(loris.result["closed_after"], IDLE + 2.5)
        self.assertEqual(loris.result["received"], b"")

    def test_expensive_pipelined_requests(self) -> None:
        """
        Pipelined requests that are cheap to send but each take tens of
        milliseconds (a history filter over a big mailbox) get a turn's
        budget at a time: the good client's sends stay fast, and the
        hostile connection is served too, between them.
        """
        self.accounts("hoarder")
        fill_mailbox(self.server, "hoarder", 5000)
        hostile = Hostile("expensive requests", slow_requests, self.server)
        self.attack([hostile], pace=0.02)
        self.assertGreater(hostile.result["answered"], 10)

    def test_all_at_once(self) -> None:
        """
        All of them at once, twice over: the good client is still served.
        """
        self.accounts("sink", "piper", "quiet")
        self.big_mailboxes("quiet")
        hostiles = [
            Hostile("10 MB lines", big_line, self.server),
            Hostile("10k pipelined", pipeliner, self.server),
            Hostile("non-reader", lambda h: non_reader(h, "quiet"), self.server),
            Hostile("slow loris", slow_loris, self.server),
            Hostile("10 MB lines 2", big_line, self.server),
            Hostile("slow loris 2", slow_loris, self.server),
        ]
        self.attack(hostiles, pace=0.02)
        self.check_big_line(hostiles[0])
        self.check_pipeliner(hostiles[1])
        self.check_closed_at_idle(hostiles[2])
        self.check_big_line(hostiles[4])
