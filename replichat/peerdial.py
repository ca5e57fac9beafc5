# -*- test-case-name: tests.test_peer,tests.test_chaos -*-
"""
How a server reaches its peers: L{_Dialing}, the part of
L{replichat.peernetwork.PeerNetwork} that keeps a persistent dial (a
L{ClientService}) to each peer it is to dial and probes a peer whose
accepted connection was lost.

Every outbound peer connection, including L{replichat.peeradminclient}'s,
gets its endpoint from L{_client_endpoint}, looked up in this module at
each call: L{replichat.testing.chaosserve} replaces it to route peer
connections through a proxy.
"""

from __future__ import annotations

import random
from functools import partial

from attrs import define
from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet import error
from twisted.internet.abstract import isIPv6Address
from twisted.internet.endpoints import (
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    connectProtocol,
)
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from zope.interface import implementer

#: Reconnect delays of a dialer: failover speed depends on noticing a
#: restarted peer quickly, so they stay short.
RETRY_INITIAL_DELAY = 0.05
RETRY_MAX_DELAY = 1.0

#: Connect timeout of a dialer's attempts, and of the accepting side's probe.
CONNECT_TIMEOUT = 2.0
PROBE_TIMEOUT = 0.5
#: How many times, and how often, to probe a peer whose connection was lost.
PROBE_ATTEMPTS = 5
PROBE_INTERVAL = 0.05


def _client_endpoint(reactor, host, port, timeout, tls):
    """
    A client endpoint to C{host:port}, wrapped in TLS if C{tls} is given.
    """
    endpoint_type = TCP6ClientEndpoint if isIPv6Address(host) else TCP4ClientEndpoint
    endpoint = endpoint_type(reactor, host, port, timeout=timeout)
    if tls is not None:
        # Imported here: TLS needs pyOpenSSL, which plain TCP does not.
        from twisted.internet.endpoints import wrapClientTLS

        endpoint = wrapClientTLS(tls, endpoint)
    return endpoint


class _Factory(Factory):
    """
    A quiet factory calling C{build()} for each connection.
    """

    noisy = False

    def __init__(self, build):
        self._build = build

    def buildProtocol(self, addr):
        return self._build()


@implementer(IStreamClientEndpoint)
class _ReportRefusals:
    """
    An endpoint that calls C{on_refused()} when a connect is refused.
    """

    def __init__(self, endpoint, on_refused):
        self._endpoint = endpoint
        self._on_refused = on_refused

    def connect(self, factory):
        def check(failure):
            if failure.check(error.ConnectionRefusedError):
                self._on_refused()
            return failure

        return self._endpoint.connect(factory).addErrback(check)

    def __repr__(self):
        return repr(self._endpoint)


@define
class _Dial:
    """
    A persistent dial of a L{PeerNetwork}.

    @ivar peer_id: whom it reaches: for a peer's dial the peer's id; for an
        extra dial (L{PeerNetwork.dial}) L{None} until a handshake tells.
    """

    address: tuple
    service: ClientService | None = None
    peer_id: int | None = None
    extra: bool = False


class _Dialing:
    """
    The dials and probes of L{replichat.peernetwork.PeerNetwork}.

    Starts and stops each L{_Dial}'s L{ClientService} (building connections
    with C{_build}), tells the node C{peer_refused} when a connect is
    refused, and keeps C{_probes}; reads C{_reactor}, C{_tls}, C{_peers},
    C{_current}, C{_extra_dials}, C{_stopping} and C{running}, and logs
    with the network's C{log}.
    """

    def _start_dial(self, dial):
        host, port = dial.address
        endpoint = _client_endpoint(
            self._reactor, host, port, CONNECT_TIMEOUT, self._tls
        )
        policy = backoffPolicy(
            initialDelay=RETRY_INITIAL_DELAY,
            maxDelay=RETRY_MAX_DELAY,
            jitter=lambda: random.uniform(0, RETRY_INITIAL_DELAY),
        )
        dial.service = ClientService(
            _ReportRefusals(endpoint, partial(self._refused, dial)),
            _Factory(partial(self._build, dialer=True, dial=dial)),
            retryPolicy=policy,
            clock=self._reactor,
        )
        if self.running:
            dial.service.startService()
        return dial

    def _stop_dial(self, dial):
        if dial in self._extra_dials:
            self._extra_dials.remove(dial)
        if dial.service.running:
            dial.service.stopService().addErrback(
                lambda f: self.log.failure("stopping a dial failed", f)
            )

    def _refused(self, dial):
        pid = dial.peer_id
        if pid is not None and pid not in self._current:
            self._notify("peer_refused", pid)

    def _probe(self, pid, attempts=PROBE_ATTEMPTS):
        if pid not in self._peers or pid in self._current or self._stopping:
            return
        host, port = self._peers[pid]
        endpoint = _client_endpoint(self._reactor, host, port, PROBE_TIMEOUT, None)
        probe = connectProtocol(endpoint, Protocol())
        self._probes.add(probe)

        def connected(protocol):
            protocol.transport.abortConnection()  # something listens: alive?
            # A dying process's kernel may still accept on its listening
            # socket for a moment after its connections closed; look again
            # shortly, until the peer redials or the port refuses.
            if attempts > 1:
                self._reactor.callLater(PROBE_INTERVAL, self._probe, pid, attempts - 1)

        def failed(failure):
            failure.trap(
                error.ConnectError, error.ConnectingCancelledError, error.DNSLookupError
            )
            if failure.check(error.ConnectionRefusedError) and pid not in self._current:
                self._notify("peer_refused", pid)

        probe.addCallbacks(connected, failed)
        probe.addErrback(
            lambda f: self.log.failure("probe of node {peer}", f, peer=pid)
        )
        probe.addBoth(lambda _: self._probes.discard(probe))
