# -*- test-case-name: tests.test_chaos -*-
"""
Tests for the chaos tools: the fault-injecting proxy
(L{replichat.testing.proxy}) with real sockets on 127.0.0.1, and one short,
bounded run of C{bin/chaos} against real servers.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from twisted.internet import error, reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase

from replichat.testing.chaosfaults import KINDS
from replichat.testing.proxy import DROP, STALL, FaultProxy

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Recorder(Protocol):
    """
    A connection that keeps what it receives and whether it was lost.
    """

    def __init__(self) -> None:
        self.received = b""
        self.lost = False

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason=None) -> None:
        self.lost = True


class Upstream:
    """
    A server standing for a replichat peer port: it records every
    connection it accepts.
    """

    def __init__(self) -> None:
        self.connections: list[Recorder] = []
        factory = Factory.forProtocol(Recorder)
        factory.buildProtocol = self._build
        self.port = reactor.listenTCP(0, factory, interface="127.0.0.1")

    def _build(self, addr):
        protocol = Recorder()
        self.connections.append(protocol)
        return protocol


async def eventually(condition, timeout: float = 3.0) -> None:
    """
    Wait until C{condition()} holds, or fail after C{timeout} seconds.
    """
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met within %ss" % (timeout,))
        await deferLater(reactor, 0.01)


async def for_a_while(seconds: float = 0.3) -> None:
    await deferLater(reactor, seconds)


def asynchronous(method):
    """
    Run an C{async def} test method as a Deferred.
    """

    def test(self):
        return Deferred.fromCoroutine(method(self))

    test.__name__ = method.__name__
    test.__doc__ = method.__doc__
    return test


class FaultProxyTests(TestCase):
    """
    L{FaultProxy} forwards one link (server 1 reaching server 2) and applies
    faults to it, with real TCP connections on 127.0.0.1.
    """

    def setUp(self) -> None:
        self.upstream = Upstream()
        self.addCleanup(self.upstream.port.stopListening)
        self.proxy = FaultProxy(reactor)
        self.addCleanup(self.proxy.close)
        self.port = self.proxy.add_link(
            1, 2, "127.0.0.1", ("127.0.0.1", self.upstream.port.getHost().port),
            source_host="127.0.0.1",
        )
        self.clients: list[Recorder] = []
        self.addCleanup(self._close_clients)

    def _close_clients(self) -> None:
        for client in self.clients:
            if client.transport is not None:
                client.transport.abortConnection()
        for server in self.upstream.connections:
            server.transport.abortConnection()

    async def connect(self) -> Recorder:
        """
        Connect as server 1 to the proxy's port for the link 1 -> 2.
        """
        client = Recorder()
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.port, timeout=2)
        await connectProtocol(endpoint, client)
        self.clients.append(client)
        return client

    async def connected_pair(self) -> tuple[Recorder, Recorder]:
        """
        A connection through the proxy and the upstream end of it.
        """
        before = len(self.upstream.connections)
        client = await self.connect()
        await eventually(lambda: len(self.upstream.connections) > before)
        return client, self.upstream.connections[-1]

    @asynchronous
    async def test_forwards_both_ways(self):
        """
        Without faults, bytes go through unchanged in both directions, and
        a close on one side closes the other.
        """
        client, server = await self.connected_pair()
        client.transport.write(b"ping")
        await eventually(lambda: server.received == b"ping")
        server.transport.write(b"pong")
        await eventually(lambda: client.received == b"pong")
        server.transport.loseConnection()
        await eventually(lambda: client.lost)

    @asynchronous
    async def test_drop_cut_aborts_then_silence(self):
        """
        Cutting a link in L{DROP} mode aborts its connections; a new
        connection is accepted but never reaches the target (silence, not a
        refusal), and is aborted when the link heals; after that,
        connections go through again.
        """
        client, server = await self.connected_pair()
        self.proxy.cut(1, 2, DROP)
        await eventually(lambda: client.lost and server.lost)
        silent = await self.connect()
        silent.transport.write(b"hello?")
        await for_a_while()
        self.assertEqual(len(self.upstream.connections), 1)
        self.assertFalse(silent.lost)
        self.proxy.heal()
        await eventually(lambda: silent.lost)
        client, server = await self.connected_pair()
        client.transport.write(b"again")
        await eventually(lambda: server.received == b"again")

    @asynchronous
    async def test_stall_holds_then_delivers(self):
        """
        In L{STALL} mode bytes are held both ways and delivered, in order,
        when the link heals; the connection survives.
        """
        client, server = await self.connected_pair()
        self.proxy.cut(1, 2, STALL)
        client.transport.write(b"a")
        client.transport.write(b"b")
        server.transport.write(b"c")
        await for_a_while()
        self.assertEqual((server.received, client.received), (b"", b""))
        self.proxy.heal()
        await eventually(lambda: server.received == b"ab" and client.received == b"c")
        self.assertFalse(client.lost or server.lost)

    @asynchronous
    async def test_one_way_cut(self):
        """
        A one-way cut drops the bytes one server sends the other while the
        other way still flows; the connection, which lost bytes, is aborted
        when the link heals.
        """
        client, server = await self.connected_pair()
        self.proxy.block(1, 2, DROP)
        client.transport.write(b"lost")
        server.transport.write(b"arrives")
        await eventually(lambda: client.received == b"arrives")
        await for_a_while(0.1)
        self.assertEqual(server.received, b"")
        self.proxy.heal()
        await eventually(lambda: client.lost and server.lost)

    @asynchronous
    async def test_one_way_cut_other_direction(self):
        """
        Blocking the target's flow (2 -> 1) leaves the source's flowing.
        """
        client, server = await self.connected_pair()
        self.proxy.block(2, 1, DROP)
        client.transport.write(b"arrives")
        server.transport.write(b"lost")
        await eventually(lambda: server.received == b"arrives")
        await for_a_while(0.1)
        self.assertEqual(client.received, b"")

    @asynchronous
    async def test_delay(self):
        """
        A delay holds each chunk for that long, in order.
        """
        client, server = await self.connected_pair()
        self.proxy.set_delay(1, 2, 0.4)
        started = time.monotonic()
        client.transport.write(b"one")
        await for_a_while(0.05)
        client.transport.write(b"two")
        await for_a_while(0.15)
        self.assertEqual(server.received, b"")
        await eventually(lambda: server.received == b"onetwo")
        self.assertGreaterEqual(time.monotonic() - started, 0.4)

    @asynchronous
    async def test_target_down_refuses(self):
        """
        While the target is down, connections to it are refused; once it is
        up again, the proxy listens on the same port.
        """
        self.proxy.target_down(2)
        await for_a_while(0.05)
        with self.assertRaises(error.ConnectionRefusedError):
            await self.connect()
        self.proxy.target_up(2)
        await eventually(lambda: self.proxy.links[(1, 2)].listening is not None)
        client, server = await self.connected_pair()
        client.transport.write(b"back")
        await eventually(lambda: server.received == b"back")

    @asynchronous
    async def test_cut_hides_target_down(self):
        """
        A down target behind a cut link is silence, not a refusal: the
        packet that would say so is lost.
        """
        self.proxy.target_down(2)
        self.proxy.cut(1, 2, DROP)
        await for_a_while(0.05)
        silent = await self.connect()
        await for_a_while(0.1)
        self.assertFalse(silent.lost)
        self.assertEqual(self.upstream.connections, [])


class ChaosRunTests(SynchronousTestCase):
    """
    One short run of C{bin/chaos} against three real servers.
    """

    #: Seconds of workload and faults; the whole run takes about 10 more.
    DURATION = 25

    def test_short_run_is_clean(self):
        """
        A bounded run injects every kind of fault, acknowledges a fair
        number of writes, and ends clean (exit status 0).
        """
        directory = tempfile.mkdtemp(prefix="replichat-test-chaos-")
        summary_path = os.path.join(directory, "summary.json")
        command = [
            sys.executable, "-m", "replichat.testing.chaos",
            "--duration", str(self.DURATION), "--seed", "1",
            "--dir", os.path.join(directory, "run"), "--summary", summary_path,
            "--final-timeout", "8",
        ]
        env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        # The driver's servers die with it (PR_SET_PDEATHSIG) if the
        # timeout has to kill it.
        done = subprocess.run(command, env=env, cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, timeout=55)
        output = done.stdout.decode("utf-8", "replace")
        self.assertEqual(done.returncode, 0, output)
        with open(summary_path) as f:
            summary = json.load(f)
        for kind in (*KINDS, "restart", "resume", "heal"):
            self.assertGreater(summary["faults"].get(kind, 0), 0, (kind, output))
        acked = sum(summary["ops"].get(op, {}).get("ok", 0)
                    for op in ("send", "read", "delete_messages", "create_account"))
        self.assertGreater(acked, 200, output)
        shutil.rmtree(directory)  # kept, with every log, when the run fails

    timeout = 60
