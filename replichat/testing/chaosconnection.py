# -*- test-case-name: tests.test_chaos -*-
"""
Client connections to a real server's client port, as C{bin/chaos} makes
them: L{LineConnection} speaks the JSON line protocol (a request, a
Deferred of its answer, pushed events to a callback), L{client_endpoint}
reaches a server, and L{ask} makes one request on a fresh connection.
"""

from __future__ import annotations

import json

from twisted.internet import defer
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectionLost
from twisted.protocols.basic import LineOnlyReceiver

#: Seconds to connect to a server.
CONNECT_TIMEOUT = 1.0


class RequestTimeout(Exception):
    """
    No answer within the request timeout.
    """


class LineConnection(LineOnlyReceiver):
    """
    One client connection speaking the JSON line protocol: L{call} sends a
    request and returns a Deferred of its answer; pushed events go to
    C{on_event(connection, event)}.

    @ivar node: the server it is connected to.
    @ivar user: the username this connection is logged in as, as far as the
        client knows, and C{token} its session's token.
    """

    delimiter = b"\n"
    MAX_LENGTH = 16 * 1024 * 1024

    def __init__(self, clock, node: int, on_event) -> None:
        self.clock = clock
        self.node = node
        self.on_event = on_event
        self.pending: dict = {}
        self.next_id = 0
        self.user: str | None = None
        self.token: str | None = None
        self.open = False

    def connectionMade(self) -> None:
        self.open = True

    def call(self, op: str, args: dict, rid: str | None, timeout: float) -> Deferred:
        """
        Send a request.

        @return: a Deferred firing with the answer object, or failing with
            L{RequestTimeout} or L{ConnectionLost}.
        """
        self.next_id += 1
        request_id = self.next_id
        request = {"id": request_id, "op": op, **args}
        if rid is not None:
            request["rid"] = rid
        answer = Deferred(lambda d: self.pending.pop(request_id, None))
        self.pending[request_id] = answer
        self.sendLine(json.dumps(request).encode("utf-8"))

        def timed_out(failure):
            failure.trap(defer.TimeoutError, CancelledError)
            raise RequestTimeout(op)

        answer.addTimeout(timeout, self.clock)
        answer.addErrback(timed_out)
        return answer

    def lineReceived(self, line: bytes) -> None:
        try:
            message = json.loads(line)
        except ValueError:
            return
        if not isinstance(message, dict):
            return
        if "event" in message:
            self.on_event(self, message)
            return
        waiting = self.pending.pop(message.get("id"), None)
        if waiting is not None:
            waiting.callback(message)

    def connectionLost(self, reason=None) -> None:
        self.open = False
        pending, self.pending = self.pending, {}
        for waiting in pending.values():
            waiting.errback(ConnectionLost())

    def close(self) -> None:
        if self.transport is not None:
            self.transport.abortConnection()


def client_endpoint(reactor, server) -> TCP4ClientEndpoint:
    """
    An endpoint for the client port of C{server} (a
    L{replichat.testing.chaosservers.ServerProcess}).
    """
    return TCP4ClientEndpoint(reactor, server.host, server.client_port,
                              timeout=CONNECT_TIMEOUT)


async def ask(reactor, server, op: str, timeout: float = 2.0) -> dict | None:
    """
    One request with no arguments on a fresh connection to C{server}; the
    answer, or L{None}.
    """
    connection = LineConnection(reactor, server.node, lambda c, e: None)
    endpoint = client_endpoint(reactor, server)
    try:
        await connectProtocol(endpoint, connection)
        return await connection.call(op, {}, None, timeout)
    except Exception:
        return None
    finally:
        connection.close()
