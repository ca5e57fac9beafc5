"""
Tests for L{replichat.peercommands} and L{replichat.peerproto}: the AMP
transport between servers.

Commands and the handshake run on L{twisted.test.iosim} pumps and a
L{Clock}; what needs real sockets (refused connects, reconnecting dials,
L{admin_call}) runs on 127.0.0.1 with the real reactor, each test within a
few seconds.
"""

import functools
import json
import types

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock, deferLater
from twisted.logger import globalLogPublisher
from twisted.protocols import amp
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.internet.testing import EventLoggingObserver

from replichat.config import ConfigError
from replichat.entries import Entry
from replichat.errors import NOT_LEADER, ChatError
from replichat.peercommands import (
    ADMIN_COMMANDS,
    COMMAND_FOR_MESSAGE,
    BigBytes,
    DecodeError,
    ForceLead,
    Hello,
    Leave,
    Prove,
    Status,
    decode_entries,
    encode_entries,
    from_command,
    to_command,
)
from replichat.peermessages import (
    MESSAGE_TYPES,
    Append,
    AppendReply,
    Coordinator,
    Election,
    ElectionAnswer,
    Heartbeat,
    Join,
    JoinReply,
    Leaving,
    Repropose,
    ReproposeReply,
    SnapshotChunk,
    SnapshotReply,
    TimeoutNow,
)
from replichat.peerproto import (
    DEFAULT_KEY,
    DIALER_REFUSED_HOLD,
    HANDSHAKE_TIMEOUT,
    AdminCallFailed,
    PeerNetwork,
    PeerProtocol,
    admin_call,
    key_is_default,
    load_key,
)

KEY = b"a shared secret for tests"
MiB = 1024 * 1024

HEARTBEAT = Heartbeat(
    epoch=3, role="leader", leader=1, last_index=10, last_epoch=3, commit_index=9
)

#: One of each message, with values that would show a mix-up.
SAMPLES = [
    HEARTBEAT,
    Election(epoch=4, last_epoch=3, last_index=11),
    ElectionAnswer(epoch=4, last_epoch=3, last_index=12, leader=0),
    Coordinator(epoch=5),
    Append(
        epoch=5,
        prev_index=7,
        prev_epoch=4,
        entries=(Entry(8, 4, b"x"), Entry(9, 5, b""), Entry(10, 5, b"\0\n\xff")),
        commit_index=7,
    ),
    Append(epoch=5, prev_index=7, prev_epoch=4, entries=(), commit_index=7),
    AppendReply(epoch=5, ok=True, index=10),
    AppendReply(epoch=5, ok=False, index=3),
    SnapshotChunk(epoch=5, index=100, snapshot_epoch=4, offset=0, data=b"", done=True),
    SnapshotReply(epoch=5, index=100, offset=4096, ok=True),
    Join(epoch=0, node=4, host="127.0.0.1", client_port=7004, peer_port=7104),
    JoinReply(epoch=5, error="not the leader: ask node 2 \N{SNOWMAN}", leader=2),
    Leaving(epoch=5),
    TimeoutNow(epoch=6),
    Repropose(epoch=7, commands=b'[{"op": "send", "origin": [1001, 4]}]' * 5000),
    ReproposeReply(epoch=7, origins=b"[[1001, 4]]"),
]


def over_the_wire(message):
    """
    Send C{message} through its command, real AMP bytes and back.
    """
    command, kwargs = to_command(message)
    [box] = amp.parseString(command.makeArguments(kwargs, None).serialize())
    return from_command(command, command.parseArguments(box, None))


class FakeNode:
    """
    Records what the network tells it; L{wait_for} waits for a call.
    """

    def __init__(self, status=None):
        self.calls = []
        self._waiting = []
        self.status_value = status or {"node": 1, "role": "leader"}
        self.on_leave = lambda node_id: None
        self.on_force_lead = lambda: None
        self.raise_on_receive = None

    def _record(self, *call):
        self.calls.append(call)
        for waiting in list(self._waiting):
            if waiting[0] == call:
                self._waiting.remove(waiting)
                waiting[1].callback(None)

    def wait_for(self, *call):
        d = Deferred()
        if call in self.calls:
            d.callback(None)
        else:
            self._waiting.append((call, d))
        return d

    def receive(self, peer_id, message):
        self._record("receive", peer_id, message)
        if self.raise_on_receive is not None:
            raise self.raise_on_receive

    def peer_connected(self, peer_id):
        self._record("peer_connected", peer_id)

    def peer_lost(self, peer_id):
        self._record("peer_lost", peer_id)

    def peer_refused(self, peer_id):
        self._record("peer_refused", peer_id)

    def status(self):
        self._record("status")
        return self.status_value

    def leave(self, node_id):
        self._record("leave", node_id)
        return self.on_leave(node_id)

    def force_lead(self):
        self._record("force_lead")
        return self.on_force_lead()

    def received(self):
        return [call[1:] for call in self.calls if call[0] == "receive"]


class CommandsTests(SynchronousTestCase):
    """
    Messages to commands and back.
    """

    def test_every_message_type_round_trips(self):
        """
        Every message type has a one-way command with the message's field
        names as arguments, and each sample survives real AMP bytes.
        """
        self.assertEqual({type(m) for m in SAMPLES}, set(MESSAGE_TYPES))
        for message in SAMPLES:
            command, kwargs = to_command(message)
            self.assertFalse(command.requiresAnswer)
            self.assertEqual(command.commandName, type(message).__name__.encode())
            self.assertEqual(set(kwargs), {n.decode() for n, _ in command.arguments})
            self.assertEqual(over_the_wire(message), message)

    def test_command_names_are_distinct(self):
        """
        No two commands share a wire name.
        """
        commands = [
            *COMMAND_FOR_MESSAGE.values(),
            Hello,
            Prove,
            *ADMIN_COMMANDS.values(),
        ]
        names = [c.commandName for c in commands]
        self.assertEqual(len(names), len(set(names)))

    def test_big_append(self):
        """
        An L{Append} of over 3 MiB, with empty entries among large ones,
        travels in one box split over many 64 KiB values.
        """
        sizes = [MiB, 0, 2 * MiB + 5, 0, 17, 65535, 65536]
        entries = tuple(
            Entry(101 + i, 7, bytes([i]) * size) for i, size in enumerate(sizes)
        )
        message = Append(
            epoch=7, prev_index=100, prev_epoch=6, entries=entries, commit_index=99
        )
        command, kwargs = to_command(message)
        box = command.makeArguments(kwargs, None)
        self.assertGreater(len(box), 48)
        self.assertTrue(all(len(v) <= amp.MAX_VALUE_LENGTH for v in box.values()))
        self.assertEqual(over_the_wire(message), message)

    def test_snapshot_chunk_of_one_mib(self):
        """
        A 1 MiB snapshot chunk round-trips.
        """
        data = bytes(range(256)) * (MiB // 256)
        message = SnapshotChunk(
            epoch=2, index=5000, snapshot_epoch=2, offset=MiB, data=data, done=False
        )
        self.assertEqual(over_the_wire(message), message)

    def test_big_bytes_keys(self):
        """
        L{BigBytes} uses one key up to 65535 bytes, then one more per 65535.
        """
        for length, keys in [(0, 1), (65535, 1), (65536, 2), (3 * 65535, 3)]:
            strings = amp.AmpBox()
            BigBytes().toBox(b"data", strings, {"data": b"x" * length}, None)
            self.assertEqual(len(strings), keys, length)
            objects = {}
            BigBytes().fromBox(b"data", strings, objects, None)
            self.assertEqual(objects, {"data": b"x" * length})

    def test_entries_round_trip(self):
        """
        L{decode_entries} undoes L{encode_entries}.
        """
        entries = (Entry(1, 1, b""), Entry(2, 1, b"abc"), Entry(3, 2, b""))
        self.assertEqual(decode_entries(encode_entries(entries)), entries)
        self.assertEqual(decode_entries(b""), ())

    def test_bad_entry_blobs(self):
        """
        A cut, overlong or out-of-order entry blob is a L{DecodeError}
        saying what is wrong.
        """
        good = encode_entries((Entry(1, 1, b"abc"), Entry(2, 1, b"de")))
        cases = [
            (good[:-1], "2 bytes of data declared, 1 left"),
            (good[:5], "header cut short at byte 0"),
            (good + b"\0" * 3, "entry 2: header cut short at byte"),
            (
                encode_entries((Entry(1, 1, b""), Entry(3, 1, b""))),
                "index 3 does not follow 1",
            ),
        ]
        for blob, text in cases:
            e = self.assertRaises(DecodeError, decode_entries, blob)
            self.assertIn(text, str(e))

    def test_bad_blob_from_a_box(self):
        """
        An L{Append} box with a bad entry blob fails to parse with a
        L{DecodeError}.
        """
        command, kwargs = to_command(SAMPLES[4])
        box = command.makeArguments(kwargs, None)
        box[b"entries"] = box[b"entries"][:-2]
        self.assertRaises(DecodeError, command.parseArguments, box, None)

    def test_append_entries_follow_prev_index(self):
        """
        The entries of an L{Append} start right after C{prev_index}.
        """
        command, kwargs = to_command(SAMPLES[4])
        kwargs["prev_index"] = 3
        e = self.assertRaises(DecodeError, from_command, command, kwargs)
        self.assertIn("expected prev_index + 1 = 4", str(e))

    def test_not_a_message_command(self):
        """
        L{from_command} refuses a command that carries no message.
        """
        self.assertRaises(DecodeError, from_command, Status, {})


class KeyTests(SynchronousTestCase):
    """
    L{load_key} and L{key_is_default}.
    """

    def config(self, content):
        path = self.mktemp()
        if content is not None:
            with open(path, "wb") as f:
                f.write(content)
        return types.SimpleNamespace(secret_file=path)

    def test_no_secret_file(self):
        """
        Without a secret file the key is the public default, and says so.
        """
        key = load_key(types.SimpleNamespace(secret_file=None))
        self.assertEqual(key, DEFAULT_KEY)
        self.assertTrue(key_is_default(key))

    def test_secret_file(self):
        """
        The key is the file's content without trailing whitespace.
        """
        key = load_key(self.config(b"  s3cret \n\n"))
        self.assertEqual(key, b"  s3cret")
        self.assertFalse(key_is_default(key))

    def test_empty_or_missing(self):
        """
        An empty (or blank) or missing file is a L{ConfigError} naming it.
        """
        cases = [(b"", "is empty"), (b" \n", "is empty"), (None, "cannot read")]
        for content, text in cases:
            config = self.config(content)
            e = self.assertRaises(ConfigError, load_key, config)
            self.assertIn(config.secret_file, str(e))
            self.assertIn(text, str(e))


class Rogue(amp.AMP):
    """
    A peer that does not follow the handshake: it sends C{first} as soon
    as it connects.
    """

    first = None

    def connectionMade(self):
        super().connectionMade()
        if self.first is not None:
            command, kwargs = self.first
            self.callRemote(command, **kwargs)


class HandshakeTests(SynchronousTestCase):
    """
    L{PeerProtocol} between two L{PeerNetwork}s (not started, with fake
    nodes) on an in-memory connection.
    """

    def setUp(self):
        self.clock = Clock()
        self.node1, self.node2 = FakeNode(), FakeNode()
        self.net1 = PeerNetwork(1, KEY, self.clock, self.node1)
        self.net2 = PeerNetwork(2, KEY, self.clock, self.node2)
        self.events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

    def server(self, key=KEY):
        return PeerProtocol(2, key, self.clock, self.net2)

    def client(self, key=KEY, node_id=1, expected_peer=2):
        return PeerProtocol(
            node_id, key, self.clock, self.net1, True, expected_peer
        )

    def connect(self, server, client):
        client, server, pump = iosim.connectedServerAndClient(
            lambda: server, lambda: client, clock=self.clock
        )
        pump.flush()
        return client, server, pump

    def finish(self, pump):
        """
        Let a dialer's refused connection close, and deliver the close.
        """
        self.clock.advance(DIALER_REFUSED_HOLD)
        pump.flush()

    def warnings(self):
        return [e for e in self.events if e.get("log_level").name == "warn"]

    def test_authenticated_both_ways(self):
        """
        Two servers with the same key authenticate each other; messages then
        flow both ways and reach the nodes.
        """
        client, server, pump = self.connect(self.server(), self.client())
        self.assertEqual((client.peer_id, server.peer_id), (2, 1))
        self.assertEqual(self.node1.calls, [("peer_connected", 2)])
        self.assertEqual(self.node2.calls, [("peer_connected", 1)])
        other = Coordinator(epoch=9)
        self.net1.send(2, HEARTBEAT)
        self.net2.send(1, other)
        self.net2.send(3, other)  # no connection: dropped
        pump.flush()
        self.assertEqual(self.node2.received(), [(1, HEARTBEAT)])
        self.assertEqual(self.node1.received(), [(2, other)])

    def test_wrong_key(self):
        """
        A dialer with another key rejects the acceptor's proof and closes;
        neither node hears of the other, and the refusal is logged.
        """
        client, server, pump = self.connect(self.server(), self.client(key=b"other"))
        self.net1.send(2, HEARTBEAT)
        self.finish(pump)
        self.successResultOf(client.when_closed())
        self.successResultOf(server.when_closed())
        self.failureResultOf(client.when_authenticated())
        self.assertEqual((self.node1.calls, self.node2.calls), ([], []))
        [warning] = self.warnings()
        self.assertEqual(warning["claimed"], 2)
        self.assertIn("wrong proof", warning["reason"])

    def test_wrong_proof(self):
        """
        A dialer whose L{Prove} is wrong is closed, and what it sends next
        never reaches the node.
        """
        client, server, pump = self.connect(self.server(), Rogue())
        answer = client.callRemote(Hello, node=1, nonce=b"n" * 32)
        pump.flush()
        self.assertEqual(self.successResultOf(answer)["node"], 2)
        client.callRemote(Prove, proof=b"\0" * 32)
        command, kwargs = to_command(HEARTBEAT)
        client.callRemote(command, **kwargs)
        pump.flush()
        self.successResultOf(server.when_closed())
        self.assertEqual(self.node2.calls, [])
        [warning] = self.warnings()
        self.assertEqual((warning["claimed"], warning["side"]), (1, "accepted"))

    def test_box_before_auth(self):
        """
        A box other than L{Hello} before authentication closes the
        connection: no responder runs, nothing reaches the node.
        """
        for first in [to_command(HEARTBEAT), (Status, {})]:
            node = FakeNode()
            net = PeerNetwork(2, KEY, self.clock, node)
            rogue = Rogue()
            rogue.first = first
            server = PeerProtocol(2, KEY, self.clock, net)
            client, server, pump = self.connect(server, rogue)
            self.successResultOf(server.when_closed())
            self.assertEqual(node.calls, [])

    def test_answer_before_auth(self):
        """
        An answer box nobody asked for closes the connection too.
        """
        rogue = Rogue()
        client, server, pump = self.connect(self.server(), rogue)
        rogue.sendBox(amp.AmpBox({amp.ANSWER: b"1", b"node": b"3"}))
        pump.flush()
        self.successResultOf(server.when_closed())

    def test_dialer_refuses_command_before_auth(self):
        """
        A dialer refuses an acceptor that sends a command instead of
        answering its L{Hello}.
        """
        rogue = Rogue()
        rogue.first = to_command(HEARTBEAT)
        client, server, pump = self.connect(rogue, self.client())
        self.finish(pump)
        self.successResultOf(client.when_closed())
        self.assertEqual(self.node1.calls, [])

    def test_oversized_box_before_auth(self):
        """
        A stranger cannot send a large box: it is refused before it is
        complete.
        """
        rogue = Rogue()
        client, server, pump = self.connect(self.server(), rogue)
        rogue.callRemote(Hello, node=1, nonce=b"n" * 5000)
        pump.flush()
        self.successResultOf(server.when_closed())
        self.assertIn("box larger than", self.warnings()[0]["reason"])

    def test_malformed_hello(self):
        """
        A L{Hello} with a short nonce is answered with an error and closed.
        """
        client, server, pump = self.connect(self.server(), Rogue())
        failures = []
        client.callRemote(Hello, node=1, nonce=b"short").addErrback(failures.append)
        pump.flush()
        self.assertIn("malformed", str(failures[0].value))
        self.successResultOf(server.when_closed())

    def test_handshake_timeout(self):
        """
        A connection that does not authenticate in time is closed.
        """
        client, server, pump = self.connect(self.server(), Rogue())
        self.clock.advance(HANDSHAKE_TIMEOUT)
        pump.flush()
        self.successResultOf(server.when_closed())

    def test_admin_tool_sends_no_messages(self):
        """
        Id 0 (an admin tool) authenticates, but is not a peer: the node is
        not told of it and its messages are ignored.
        """
        admin = PeerProtocol(0, KEY, self.clock, dialer=True)
        client, server, pump = self.connect(self.server(), admin)
        self.assertEqual(self.successResultOf(admin.when_authenticated()), 2)
        command, kwargs = to_command(HEARTBEAT)
        admin.callRemote(command, **kwargs)
        status = admin.callRemote(Status)
        pump.flush()
        self.assertTrue(self.successResultOf(status)["ok"])
        self.assertEqual(self.node2.calls, [("status",)])

    def test_undecodable_message(self):
        """
        A message that does not decode is logged and dropped; the
        connection stays up.
        """
        client, server, pump = self.connect(self.server(), self.client())
        command, kwargs = to_command(SAMPLES[4])
        box = command.makeArguments(kwargs, None)
        box[b"entries"] = b"\1\2"
        box[amp.COMMAND] = command.commandName
        client.sendBox(box)
        self.net1.send(2, HEARTBEAT)
        pump.flush()
        self.assertEqual(self.node2.received(), [(1, HEARTBEAT)])
        [warning] = self.warnings()
        self.assertIn("header cut short", warning["error"])

    def test_unknown_command(self):
        """
        An unknown command after authentication is answered with an error,
        and the connection stays up.
        """

        class Unknown(amp.Command):
            pass

        client, server, pump = self.connect(self.server(), self.client())
        failures = []
        client.callRemote(Unknown).addErrback(failures.append)
        self.net1.send(2, HEARTBEAT)
        pump.flush()
        [failure] = failures
        self.assertTrue(failure.check(amp.UnhandledCommand))
        self.assertEqual(self.node2.received(), [(1, HEARTBEAT)])

    def test_node_exception(self):
        """
        An exception from the node is logged, not sent back, and the
        connection stays up.
        """
        client, server, pump = self.connect(self.server(), self.client())
        self.node2.raise_on_receive = ZeroDivisionError()
        self.net1.send(2, HEARTBEAT)
        self.net1.send(2, HEARTBEAT)
        pump.flush()
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 2)
        self.assertEqual(len(self.node2.received()), 2)

    def test_newer_connection_replaces_older(self):
        """
        A second authenticated connection from the same peer replaces the
        first: the node hears lost then connected, and only the newer one
        carries messages.
        """
        old_client, old_server, old_pump = self.connect(self.server(), self.client())
        client, server, pump = self.connect(self.server(), self.client())
        self.assertIs(self.net2.connection(1), server)
        old_pump.flush()
        self.successResultOf(old_server.when_closed())
        self.assertEqual(
            self.node2.calls,
            [("peer_connected", 1), ("peer_lost", 1), ("peer_connected", 1)],
        )
        self.net2.send(1, HEARTBEAT)
        pump.flush()
        old_pump.flush()
        self.assertEqual(self.node1.received(), [(2, HEARTBEAT)])

    def test_replaced_connection_is_not_heard(self):
        """
        What a replaced connection still delivers before it closes does not
        reach the node.
        """
        # The old dialer has no network, which would close it as replaced.
        old = PeerProtocol(1, KEY, self.clock, dialer=True)
        old_client, old_server, old_pump = self.connect(self.server(), old)
        client, server, pump = self.connect(self.server(), self.client())
        command, kwargs = to_command(HEARTBEAT)
        old_client.callRemote(command, **kwargs)
        old_pump.flush()
        self.successResultOf(old_server.when_closed())
        self.assertEqual(self.node2.received(), [])


def async_test(f):
    """
    Run an C{async def} test method as a L{Deferred}.
    """

    @functools.wraps(f)
    def test(self):
        return Deferred.fromCoroutine(f(self))

    return test


class NetworkTests(TestCase):
    """
    L{PeerNetwork} and L{admin_call} over real loopback TCP.
    """

    timeout = 10

    async def network(self, node_id, node=None, listen=True):
        """
        A started network on 127.0.0.1, stopped at the end of the test.

        @return: the network, its node and its port (or None).
        """
        node = node or FakeNode()
        network = PeerNetwork(node_id, KEY, reactor, node)
        port = None
        if listen:
            port = (await network.listen(0, "127.0.0.1")).getHost().port
        network.startService()
        self.addCleanup(network.stopService)
        return network, node, port

    async def eventually(self, condition, seconds=2.0):
        """
        Wait until C{condition()} is true, failing after C{seconds}.
        """
        for _ in range(int(seconds / 0.02)):
            if condition():
                return
            await deferLater(reactor, 0.02, lambda: None)
        self.fail(f"{condition} still false after {seconds} seconds")

    async def closed_port(self):
        port = reactor.listenTCP(0, Factory(), interface="127.0.0.1")
        number = port.getHost().port
        await port.stopListening()
        return number

    @async_test
    async def test_admin_commands(self):
        """
        L{admin_call} authenticates as id 0 and gets the answers of
        C{Status}, C{Leave} and C{ForceLead}, including refusals.
        """
        status = {"node": 5, "live": [1, 5]}
        network, node, port = await self.network(5, FakeNode(status))

        async def call(command, **kwargs):
            return await admin_call(reactor, "127.0.0.1", port, KEY, command, **kwargs)

        answer = await call(Status)
        self.assertEqual(json.loads(answer["status"]), status)
        self.assertEqual((answer["ok"], answer["error"]), (True, ""))

        node.on_leave = lambda n: deferLater(reactor, 0.01, lambda: None)
        self.assertEqual(await call(Leave, node=3), {"ok": True, "error": ""})
        node.on_leave = lambda n: self.raise_(ChatError(NOT_LEADER, "ask node 1"))
        answer = await call(Leave, node=3)
        self.assertEqual(answer, {"ok": False, "error": "ask node 1"})

        self.assertEqual(await call(ForceLead), {"ok": True, "error": ""})
        node.on_force_lead = lambda: self.raise_(ChatError(NOT_LEADER, "no"))
        self.assertEqual(await call(ForceLead), {"ok": False, "error": "no"})
        self.assertEqual(
            node.calls,
            [("status",), ("leave", 3), ("leave", 3), ("force_lead",), ("force_lead",)],
        )

    @staticmethod
    def raise_(exception):
        raise exception

    @async_test
    async def test_admin_call_failures(self):
        """
        L{admin_call} fails with L{AdminCallFailed} saying why: wrong key,
        nothing listening.
        """
        network, node, port = await self.network(5)
        with self.assertRaises(AdminCallFailed) as caught:
            await admin_call(reactor, "127.0.0.1", port, b"wrong", Status)
        self.assertIn("cannot authenticate", str(caught.exception))
        closed = await self.closed_port()
        with self.assertRaises(AdminCallFailed) as caught:
            await admin_call(reactor, "127.0.0.1", closed, KEY, Status)
        self.assertIn("refused the connection", str(caught.exception))
        self.assertEqual(node.calls, [])

    @async_test
    async def test_admin_call_timeout(self):
        """
        L{admin_call} gives up on a server that never answers.
        """
        factory = Factory.forProtocol(Protocol)
        silent = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(silent.stopListening)
        with self.assertRaises(AdminCallFailed) as caught:
            await admin_call(
                reactor, "127.0.0.1", silent.getHost().port, KEY, Status, timeout=0.2
            )
        self.assertIn("no answer", str(caught.exception))

    @async_test
    async def test_dial_refused(self):
        """
        A dial to a port nobody listens on tells the node C{peer_refused}.
        """
        network, node, _ = await self.network(1, listen=False)
        network.set_peers({2: ("127.0.0.1", await self.closed_port())})
        await node.wait_for("peer_refused", 2)
        self.assertNotIn(("peer_connected", 2), node.calls)

    async def pair(self):
        """
        Networks 1 and 2, connected.
        """
        net1, node1, port1 = await self.network(1)
        net2, node2, port2 = await self.network(2)
        net1.set_peers({1: ("127.0.0.1", port1), 2: ("127.0.0.1", port2)})
        net2.set_peers({1: ("127.0.0.1", port1), 2: ("127.0.0.1", port2)})
        await node1.wait_for("peer_connected", 2)
        await node2.wait_for("peer_connected", 1)
        return net1, node1, net2, node2

    @async_test
    async def test_one_connection_both_ways(self):
        """
        Networks 1 and 2 exchange messages both ways over the one
        connection 1 dialed.
        """
        net1, node1, net2, node2 = await self.pair()
        self.assertTrue(net1.connection(2).dialer)
        self.assertFalse(net2.connection(1).dialer)
        # Nothing else was connected: 2 never dialed 1.
        self.assertEqual((len(net1._protocols), len(net2._protocols)), (1, 1))
        reply = AppendReply(epoch=3, ok=True, index=10)
        net1.send(2, HEARTBEAT)
        net2.send(1, reply)
        await node2.wait_for("receive", 1, HEARTBEAT)
        await node1.wait_for("receive", 2, reply)

    @async_test
    async def test_dialer_sees_peer_go(self):
        """
        When 2 stops listening and drops the connection, 1 is told
        C{peer_lost}, then C{peer_refused} by its next dial.
        """
        net1, node1, net2, node2 = await self.pair()
        await net2.stopService()
        await node1.wait_for("peer_refused", 2)
        calls = [c for c in node1.calls if c[0] != "peer_refused"]
        self.assertEqual(calls[-1], ("peer_lost", 2))
        self.assertLess(
            node1.calls.index(("peer_lost", 2)), node1.calls.index(("peer_refused", 2))
        )
        self.assertEqual(node2.calls, [("peer_connected", 1)])

    @async_test
    async def test_acceptor_probes(self):
        """
        When 1 goes, 2 (which accepted its connection) is told
        C{peer_lost}, then C{peer_refused} by its probe of 1's port.
        """
        net1, node1, net2, node2 = await self.pair()
        await net1.stopService()
        await node2.wait_for("peer_refused", 1)
        self.assertEqual(
            node2.calls, [("peer_connected", 1), ("peer_lost", 1), ("peer_refused", 1)]
        )

    @async_test
    async def test_extra_dial(self):
        """
        A joining server dials a member whose id it does not know; the
        connection works both ways; once the member dials back, the regular
        connection takes over and the extra dial stops.
        """
        net1, node1, port1 = await self.network(1)
        net4, node4, port4 = await self.network(4)
        net4.set_peers({1: ("127.0.0.1", port1)})
        net4.dial("127.0.0.1", port1)
        await node4.wait_for("peer_connected", 1)
        await node1.wait_for("peer_connected", 4)
        join = Join(epoch=0, node=4, host="127.0.0.1", client_port=1, peer_port=port4)
        net4.send(1, join)
        await node1.wait_for("receive", 4, join)

        net1.set_peers({1: ("127.0.0.1", port1), 4: ("127.0.0.1", port4)})
        await node4.wait_for("peer_lost", 1)
        await deferLater(reactor, 0.3, lambda: None)  # let any churn show
        self.assertEqual(net4._extra_dials, [])
        self.assertTrue(net1.connection(4).dialer)
        self.assertFalse(net4.connection(1).dialer)
        for node, peer in [(node1, 4), (node4, 1)]:
            connects = [c for c in node.calls if c[0] != "receive"]
            self.assertEqual(connects[-1], ("peer_connected", peer))
            self.assertLessEqual(len(connects), 3, connects)
        net1.send(4, HEARTBEAT)
        await node4.wait_for("receive", 1, HEARTBEAT)

    @async_test
    async def test_redundant_extra_dial(self):
        """
        An extra dial between servers already connected the regular way is
        closed on both sides, and the regular connection stays.
        """
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        net1, node1, port1 = await self.network(1)
        net4, node4, port4 = await self.network(4)
        net1.set_peers({4: ("127.0.0.1", port4)})
        await node4.wait_for("peer_connected", 1)
        regular = net4.connection(1)
        net4.dial("127.0.0.1", port1)

        def closed_twice():
            closing = "node {peer} is connected already; closing the extra connection"
            return [e["log_format"] for e in events].count(closing) == 2

        await self.eventually(closed_twice)
        await deferLater(reactor, 0.2, lambda: None)  # let any churn show
        self.assertEqual(net4._extra_dials, [])
        self.assertIs(net4.connection(1), regular)
        self.assertEqual(node1.calls, [("peer_connected", 4)])
        self.assertEqual(node4.calls, [("peer_connected", 1)])
