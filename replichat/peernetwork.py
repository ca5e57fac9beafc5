# -*- test-case-name: tests.test_peer,tests.test_cli -*-
"""
The connections of one server to its peers: L{PeerNetwork}.

It keeps one connection per pair of servers: the lower id dials the higher
(L{replichat.peerdial}), the higher uses what it accepted.  It tells the
node when a peer connects, is lost, or is I{refused} (a connect to its port
was refused: the process is gone, so the node need not wait for a failure
timeout), delivers the messages of the current connection with each peer,
and sends the node's.
"""

from __future__ import annotations

from twisted.application.service import Service
from twisted.internet.defer import DeferredList, maybeDeferred
from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint
from twisted.logger import Logger

from replichat.peercommands import to_command
from replichat.peerconnection import PeerProtocol, _describe
from replichat.peerdial import _Dial, _Dialing, _Factory


class PeerNetwork(_Dialing, Service):
    """
    The connections of one server to its peers.

    The node calls L{send}; the server calls L{set_peers}, L{listen} and
    L{dial}.  The network calls the node's C{receive(peer_id, message)},
    C{peer_connected(peer_id)}, C{peer_lost(peer_id)} and
    C{peer_refused(peer_id)}, and, for admin commands, C{status()},
    C{leave(node_id)} and C{force_lead()}.  Exceptions from the node are
    logged and go no further.

    For each peer, C{peer_connected} and C{peer_lost} alternate.  When a
    newer connection with a peer replaces an older one (the peer restarted
    before the old one was seen to fail), the node is told C{peer_lost}
    then C{peer_connected}: whatever was in flight on the old one is gone.
    C{peer_refused} may come repeatedly while a peer stays down.
    """

    log = Logger()

    def __init__(self, node_id, key, reactor, node, tls=None):
        """
        @param node_id: this server's id.
        @param key: the shared secret (L{load_key}).
        @param reactor: provides L{IReactorTCP} and L{IReactorTime}.
        @param node: the replication core.
        @param tls: L{None}, or a context factory such as
            L{twisted.internet.ssl.CertificateOptions}, used for both the
            connections this server accepts and those it makes (mutual TLS
            if it requires and verifies peer certificates).
        """
        self.node_id = node_id
        self.node = node
        self._key = key
        self._reactor = reactor
        self._tls = tls
        self._peers = {}
        self._dials = {}  # peer id -> _Dial, for the peers this server dials
        self._extra_dials = []
        self._dial_of = {}  # protocol -> the _Dial that made it
        self._current = {}  # peer id -> its authenticated PeerProtocol
        self._protocols = set()
        self._ports = []
        self._probes = set()
        self._stopping = False

    # The node's API

    def send(self, peer_id, message):
        """
        Send C{message} to C{peer_id} if a connection with it is up;
        otherwise drop it (the core retries).
        """
        connection = self._current.get(peer_id)
        if connection is None:
            return
        try:
            command, kwargs = to_command(message)
            connection.callRemote(command, **kwargs)
        except Exception:
            self.log.failure(
                "cannot send {message!r} to node {peer}", message=message, peer=peer_id
            )

    # The server's API

    def connection(self, peer_id):
        """
        The authenticated connection with C{peer_id}, or L{None}.
        """
        return self._current.get(peer_id)

    def set_peers(self, peers):
        """
        Set the peers' addresses: C{{peer_id: (host, peer_port)}} (this
        server's own id is ignored).  This server dials those with a higher
        id; connections with peers no longer listed are closed.
        """
        peers = {pid: tuple(address) for pid, address in peers.items()}
        peers.pop(self.node_id, None)
        removed = set(self._peers) - set(peers)
        self._peers = peers
        for pid, dial in list(self._dials.items()):
            if peers.get(pid) != dial.address:
                del self._dials[pid]
                self._stop_dial(dial)
        for pid, address in peers.items():
            if pid > self.node_id and pid not in self._dials:
                self._dials[pid] = self._start_dial(_Dial(address, peer_id=pid))
        for dial in list(self._extra_dials):
            if dial.peer_id in removed:
                self._stop_dial(dial)
        for pid in removed:
            if pid in self._current:
                self.log.info("node {peer} is no longer a peer", peer=pid)
                self._current[pid].close()

    def listen(self, port, interface=""):
        """
        Accept peer connections on C{port} (0 picks one).

        @return: a L{Deferred} firing with the L{IListeningPort}.
        """
        endpoint_type = TCP6ServerEndpoint if ":" in interface else TCP4ServerEndpoint
        endpoint = endpoint_type(self._reactor, port, interface=interface)
        factory = _Factory(lambda: self._build(dialer=False))
        if self._tls is not None:
            from twisted.protocols.tls import TLSMemoryBIOFactory  # see above

            factory = TLSMemoryBIOFactory(self._tls, False, factory)
        return endpoint.listen(factory).addCallback(self._listening)

    def _listening(self, port):
        self._ports.append(port)
        self.log.info("peers connect to {address}", address=_describe(port.getHost()))
        return port

    def dial(self, host, port):
        """
        Keep a connection to C{host:port}, a server whose id is not known
        yet (a joining server dials a member).  Once the handshake tells its
        id, the connection serves like any peer's; the dial stops when a
        regular connection with that peer takes over.
        """
        dial = _Dial((host, port), extra=True)
        self._extra_dials.append(self._start_dial(dial))

    # Service

    def startService(self):
        super().startService()
        self._stopping = False
        for dial in [*self._dials.values(), *self._extra_dials]:
            dial.service.startService()

    def stopService(self):
        """
        Stop dialing and listening, close every connection, and fire once
        all are closed.  The node is told nothing more.
        """
        super().stopService()
        self._stopping = True
        dials = [*self._dials.values(), *self._extra_dials]
        waits = [d.service.stopService() for d in dials if d.service.running]
        waits += [maybeDeferred(port.stopListening) for port in self._ports]
        self._ports = []
        for probe in list(self._probes):
            probe.cancel()
        for protocol in list(self._protocols):
            waits.append(protocol.when_closed())
            protocol.close()
        return DeferredList(waits, consumeErrors=True)

    # Connections

    def _build(self, dialer, dial=None):
        expected = dial.peer_id if dial is not None and not dial.extra else None
        protocol = PeerProtocol(
            self.node_id, self._key, self._reactor, self, dialer, expected
        )
        self._protocols.add(protocol)
        if dial is not None:
            self._dial_of[protocol] = dial
        return protocol

    def connection_authenticated(self, protocol):
        pid = protocol.peer_id
        if pid == 0:
            return  # an admin tool: it only asks questions
        dial = self._dial_of.get(protocol)
        if dial is not None and dial.extra:
            dial.peer_id = pid
        current = self._current.get(pid)
        if (
            current is not None
            and self._is_regular(current)
            and not self._is_regular(protocol)
        ):
            # An extra dial's connection (ours or the peer's) is redundant
            # next to the regular one; replacing it would only make the two
            # dials take turns closing each other.
            self.log.info(
                "node {peer} is connected already; closing the extra connection",
                peer=pid,
            )
            if dial is not None and dial.extra:
                self._stop_dial(dial)
            else:
                protocol.close()
            return
        if self._is_regular(protocol):
            for extra in list(self._extra_dials):
                if extra.peer_id == pid:
                    self._stop_dial(extra)
        self._current[pid] = protocol
        if current is not None:
            # The newest wins: the peer may have restarted before the old
            # connection was seen to fail.
            self.log.info(
                "a newer connection with node {peer} ({address}) replaces the older",
                peer=pid,
                address=protocol.address,
            )
            current.close()
            self._notify("peer_lost", pid)
        self._notify("peer_connected", pid)

    def _is_regular(self, protocol):
        """
        Whether C{protocol} is the connection the pair's rule makes: dialed
        by the lower id with its regular dial, accepted by the higher.
        """
        if protocol.peer_id < self.node_id:
            return not protocol.dialer
        dial = self._dial_of.get(protocol)
        return dial is not None and not dial.extra

    def message_received(self, protocol, message):
        pid = protocol.peer_id
        # Only the current connection speaks for a peer: a replaced one may
        # still deliver a few boxes before it closes.
        if self._current.get(pid) is protocol:
            self._notify("receive", pid, message)

    def connection_lost(self, protocol):
        self._protocols.discard(protocol)
        self._dial_of.pop(protocol, None)
        pid = protocol.peer_id
        if self._current.get(pid) is not protocol:
            return
        del self._current[pid]
        self._notify("peer_lost", pid)
        # A dialer learns whether the peer is gone from its next attempt;
        # the accepting side asks the peer's port once.
        if not protocol.dialer and pid in self._peers and not self._stopping:
            self._probe(pid)

    def _notify(self, method, *args):
        if self._stopping:
            return
        try:
            getattr(self.node, method)(*args)
        except Exception:
            self.log.failure("node.{method}{args!r} failed", method=method, args=args)
