# -*- test-case-name: tests.test_cli,tests.test_peer -*-
"""
The admin tools' side of the admin commands: L{admin_call} connects to a
server's peer port as id 0, authenticates, asks one command and closes.
The server's side is L{replichat.peeradmin}.
"""

from __future__ import annotations

from twisted.internet import error
from twisted.internet.defer import Deferred, TimeoutError
from twisted.internet.endpoints import connectProtocol
from twisted.protocols import amp

from replichat.peerauth import AuthenticationFailed
from replichat.peerconnection import PeerProtocol
from replichat.peerdial import CONNECT_TIMEOUT, _client_endpoint


class AdminCallFailed(Exception):
    """
    L{admin_call} could not get an answer; the message says why, for a
    human.
    """


async def _admin_call(reactor, host, port, key, command, tls, kwargs):
    protocol = PeerProtocol(0, key, reactor, dialer=True)
    endpoint = _client_endpoint(reactor, host, port, CONNECT_TIMEOUT, tls)
    await connectProtocol(endpoint, protocol)
    try:
        await protocol.when_authenticated()
        return await protocol.callRemote(command, **kwargs)
    finally:
        protocol.close()
        await protocol.when_closed()


def admin_call(reactor, host, port, key, command, timeout=10.0, tls=None, **kwargs):
    """
    Connect to a server's peer port as an admin tool (id 0), authenticate,
    call C{command} (one of L{peercommands.ADMIN_COMMANDS}) and close.

    @return: a L{Deferred} firing with the answer (a L{dict}: C{ok},
        C{error}, and for L{peercommands.Status} C{status}, JSON text), or
        failing with L{AdminCallFailed} saying why for a human.
    """
    d = Deferred.fromCoroutine(
        _admin_call(reactor, host, port, key, command, tls, kwargs)
    )
    d.addTimeout(timeout, reactor)

    def explain(failure):
        where = f"{host}:{port}"
        if failure.check(TimeoutError):
            reason = f"no answer from {where} within {timeout} seconds"
        elif failure.check(error.ConnectionRefusedError):
            reason = f"{where} refused the connection: is the server running?"
        elif failure.check(AuthenticationFailed):
            reason = f"cannot authenticate with {where}: {failure.value}"
        elif failure.check(error.ConnectionClosed):
            reason = f"{where} closed the connection (is the secret right?)"
        elif failure.check(error.ConnectError, amp.RemoteAmpError):
            reason = f"{where}: {failure.value}"
        else:
            return failure
        raise AdminCallFailed(reason)

    return d.addErrback(explain)
