# -*- test-case-name: tests.test_integration -*-
"""
The client library against the real server stack, in one process over real
TCP on 127.0.0.1: the on-disk log, the node, the handler and the line
protocol, with the reactor.  Lost connections are made on purpose to show
that a retried request is applied once.
"""

from __future__ import annotations

import os

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase

from replichat.client import ChatClient
from replichat.config import parse_config
from replichat.handler import ChatHandler
from replichat.lineproto import ClientFactory, ClientProtocol
from replichat.log import SegmentedLog
from replichat.metastore import MetaStore
from replichat.node import Node
from replichat.passwords import PasswordHasher
from replichat.snapshot import FileSnapshotStore


class ForgetfulProtocol(ClientProtocol):
    """
    Drops the connection instead of answering the first C{send} whose text
    says so, after it is committed: a reply lost in a crash.
    """

    def _answer_result(self, result: dict, request_id: object) -> None:
        message = result.get("message") if isinstance(result, dict) else None
        if message and message["text"].startswith("lose-reply") and not self.factory.lost:
            self.factory.lost = True
            self.inflight -= 1
            self.transport.abortConnection()
            return
        super()._answer_result(result, request_id)


class ServerStack:
    """
    One node on disk with a client listener on an ephemeral port.
    """

    def __init__(self, test: TestCase) -> None:
        base = os.path.abspath(test.mktemp())
        os.makedirs(base)
        self.node = Node(
            1,
            SegmentedLog(os.path.join(base, "log")),
            FileSnapshotStore(os.path.join(base, "snapshots")),
            MetaStore(os.path.join(base, "meta.json")),
            reactor,
        )
        self.node.start()
        config = parse_config({
            "nodes": {1: {"host": "127.0.0.1", "client_port": 1, "peer_port": 2}},
            "data_dir": base,
        })
        handler = ChatHandler(self.node, PasswordHasher(n=16), config, config.limits, reactor)
        self.factory = ClientFactory(handler, config.limits, reactor)
        self.factory.protocol = ForgetfulProtocol
        self.factory.lost = False
        self.port = reactor.listenTCP(0, self.factory, interface="127.0.0.1")
        test.addCleanup(self.port.stopListening)
        test.addCleanup(self.node.disk_log.close)

    def client(self, test: TestCase) -> ChatClient:
        client = ChatClient([("127.0.0.1", self.port.getHost().port)], reactor, timeout=5.0)
        test.addCleanup(client.close)
        return client


class ClientServerTests(TestCase):
    """
    The library and the server together.
    """

    timeout = 30

    async def _test_chat(self) -> None:
        stack = ServerStack(self)
        alice, bob = stack.client(self), stack.client(self)
        pushed: list[dict] = []
        arrived: Deferred = Deferred()

        def on_message(message: dict) -> None:
            pushed.append(message)
            if not arrived.called:
                arrived.callback(None)

        bob.on_message = on_message
        await alice.create_account("alice", "pw")
        await bob.create_account("bob", "pw")
        await alice.login("alice", "pw")
        login = await bob.login("bob", "pw")
        self.assertEqual(login["unread"], 0)
        sent = (await alice.send("bob", "hello bob"))["message"]
        await arrived
        self.assertEqual(pushed, [sent])
        read = await bob.read(10)
        self.assertEqual(read["messages"], [sent])
        listed = await alice.list_accounts("*")
        self.assertEqual(listed, {"accounts": ["alice", "bob"], "total": 2})

    def test_chat(self):
        """
        Create, log in, send with an instant push, read and list.
        """
        return Deferred.fromCoroutine(self._test_chat())

    async def _test_lost_reply(self) -> None:
        stack = ServerStack(self)
        alice = stack.client(self)
        await alice.create_account("alice", "pw")
        await alice.create_account("bob", "pw")
        await alice.login("alice", "pw")
        result = await alice.send("bob", "lose-reply once")
        self.assertTrue(stack.factory.lost)
        bob = stack.node.state.account_named("bob")
        texts = [stack.node.state.message(i).text for i in bob.inbox]
        self.assertEqual(texts, ["lose-reply once"])
        self.assertEqual(result["message"]["id"], next(iter(bob.inbox)))
        # The session survived the reconnect (resumed by token).
        self.assertEqual((await alice.read(5))["remaining"], 0)

    def test_lost_reply_applied_once(self):
        """
        A send whose reply is lost with the connection is retried by the
        library with the same rid after reconnecting and resuming, and is
        applied exactly once.
        """
        return Deferred.fromCoroutine(self._test_lost_reply())
