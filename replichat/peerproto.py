# -*- test-case-name: tests.test_peer -*-
"""
The AMP connections between replichat servers.

L{PeerProtocol} is one connection.  It authenticates before anything else:
until both sides have proved they hold the cluster's shared secret, every
box other than the next handshake step closes the connection, and no
responder runs.  The handshake is a mutual HMAC-SHA256 challenge over two
fresh nonces, with the role (C{b"accept"}, C{b"dial"}) and the prover's id
in the MAC so that a proof can neither be reflected back nor claimed for
another id::

    dialer -> Hello(node=D, nonce=n1)
    dialer <- node=A, nonce=n2, proof=HMAC(key, b"accept" + n1 + n2 + b"A")
              (the dialer checks it, or closes)
    dialer -> Prove(proof=HMAC(key, b"dial" + n1 + n2 + b"D"))
              (the acceptor checks it, or closes)

After that, message commands become L{replichat.peermessages} values handed
to the node, and the admin commands (L{peercommands.Status} ...) are
answered; id 0 is an admin tool, which may only use the latter.

L{PeerNetwork} keeps one connection per pair of servers: the lower id dials
the higher with a L{ClientService}, the higher uses what it accepted.  It
tells the node when a peer connects, is lost, or is I{refused} (a connect to
its port was refused: the process is gone, so the node need not wait for a
failure timeout).  L{admin_call} is the CLI's client.

Peers authenticate each other, but boxes are not MAC'd one by one: against
an attacker who can alter traffic on the wire, give C{tls} as well.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import random
from functools import partial

from attrs import define
from twisted.application.internet import ClientService, backoffPolicy
from twisted.application.service import Service
from twisted.internet import error
from twisted.internet.abstract import isIPv6Address
from twisted.internet.defer import (
    Deferred,
    DeferredList,
    TimeoutError,
    fail,
    maybeDeferred,
    succeed,
)
from twisted.internet.endpoints import (
    TCP4ClientEndpoint,
    TCP4ServerEndpoint,
    TCP6ClientEndpoint,
    TCP6ServerEndpoint,
    connectProtocol,
)
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.protocols import amp
from zope.interface import implementer

from replichat.config import ConfigError
from replichat.errors import ChatError
from replichat.peercommands import (
    ADMIN_COMMANDS,
    COMMAND_FOR_NAME,
    ForceLead,
    Hello,
    Leave,
    Prove,
    Refused,
    Status,
    from_command,
    to_command,
)

#: Length of each side's challenge.
NONCE_BYTES = 32

#: Seconds a connection may take to authenticate before it is closed.
HANDSHAKE_TIMEOUT = 5.0

#: Seconds a dialer keeps a connection it refused open (ignoring it) before
#: closing it.  L{ClientService} retries a connection that was made quickly,
#: so without this a wrong secret would reconnect and fail many times a
#: second.
DIALER_REFUSED_HOLD = 1.0

#: Largest box accepted before authentication (a handshake box is ~100
#: bytes), so a stranger cannot make a server buffer a huge box.
MAX_BOX_BEFORE_AUTH = 4096

#: Largest box accepted from an authenticated peer.
MAX_BOX = 64 * 1024 * 1024

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

#: The key used when the configuration names no secret file.  It is
#: public, so it authenticates nothing; L{key_is_default} tells the caller
#: to say so.
DEFAULT_KEY = hashlib.sha256(b"replichat: default peer key, not a secret").digest()


class AuthenticationFailed(Exception):
    """
    A connection was refused during the handshake; the message says why.
    """


class AdminCallFailed(Exception):
    """
    L{admin_call} could not get an answer; the message says why, for a
    human.
    """


def load_key(config):
    """
    The shared secret peers authenticate with: the content of
    C{config.secret_file} without trailing whitespace, or L{DEFAULT_KEY}
    when the configuration names no file (check L{key_is_default} and warn).

    @raise ConfigError: naming the file, if it cannot be read or is empty.
    @rtype: L{bytes}
    """
    path = config.secret_file
    if path is None:
        return DEFAULT_KEY
    try:
        with open(path, "rb") as f:
            key = f.read().rstrip()
    except OSError as e:
        raise ConfigError([("secret_file", f"cannot read {path}: {e.strerror}")])
    if not key:
        raise ConfigError([("secret_file", f"{path} is empty")])
    return key


def key_is_default(key):
    """
    Whether C{key} is the public L{DEFAULT_KEY}, which authenticates no one.
    """
    return hmac.compare_digest(key, DEFAULT_KEY)


def _proof(key, role, dial_nonce, accept_nonce, node_id):
    """
    The handshake MAC of C{node_id} acting as C{role}; the nonces have a
    fixed length, so the concatenation is unambiguous.
    """
    message = role + dial_nonce + accept_nonce + b"%d" % (node_id,)
    return hmac.new(key, message, hashlib.sha256).digest()


def _describe(address):
    """
    C{host:port} of an L{IAddress}, or its repr.
    """
    host, port = getattr(address, "host", None), getattr(address, "port", None)
    return f"{host}:{port}" if host is not None else repr(address)


# Handshake states of a PeerProtocol.
_NEW = "new"
_CHALLENGED = "challenged"  # acceptor: Hello answered, waiting for Prove
_AUTHENTICATED = "authenticated"
_REFUSED = "refused"


class PeerProtocol(amp.AMP):
    """
    One authenticated AMP connection between two servers, or between a
    server and an admin tool (id 0).

    The C{owner} (a L{PeerNetwork}, or L{None} for an admin tool) is told
    C{connection_authenticated(protocol)}, C{message_received(protocol,
    message)} and, for every connection, authenticated or not,
    C{connection_lost(protocol)}; its C{node} answers the admin commands.

    @ivar dialer: this side made the connection.
    @ivar peer_id: the other side's id, once authenticated; else L{None}.
    """

    log = Logger()

    def __init__(
        self, node_id, key, clock, owner=None, dialer=False, expected_peer=None
    ):
        """
        @param node_id: this side's id (0 for an admin tool).
        @param key: the shared secret.
        @param clock: an L{IReactorTime} for the handshake deadline.
        @param expected_peer: for a dialer, the id it means to reach; a
            different answer is refused.
        """
        super().__init__()
        self.node_id = node_id
        self.dialer = dialer
        self.expected_peer = expected_peer
        self.peer_id = None
        self._key = key
        self._clock = clock
        self._owner = owner
        self._state = _NEW
        self._claimed = None
        self._dial_nonce = self._accept_nonce = b""
        self._box_bytes = 0
        self._timer = None
        self._authenticated_waiters = []
        self._closed_waiters = []
        self._closed = False
        self.address = "?"

    # Connection life

    def connectionMade(self):
        self.address = _describe(self.transport.getPeer())
        # Replication is latency bound: never let Nagle hold a small box.
        for option in ("setTcpNoDelay", "setTcpKeepAlive"):
            try:
                getattr(self.transport, option)(True)
            except Exception:
                pass  # not TCP (a test transport, TLS over something else)
        self._timer = self._clock.callLater(
            HANDSHAKE_TIMEOUT,
            self._refuse,
            f"did not authenticate within {HANDSHAKE_TIMEOUT} seconds",
        )
        super().connectionMade()
        if self.dialer:
            Deferred.fromCoroutine(self._dial()).addErrback(self._dial_failed)

    def connectionLost(self, reason):
        self._cancel_timer()
        self._closed = True
        if self._state in (_NEW, _CHALLENGED):
            self.log.debug(
                "connection with {address} closed before authenticating",
                address=self.address,
            )
        super().connectionLost(reason)
        self._fail_waiters(AuthenticationFailed("the connection was closed"))
        if self._owner is not None:
            self._owner.connection_lost(self)
        waiters, self._closed_waiters = self._closed_waiters, []
        for d in waiters:
            d.callback(None)

    def when_authenticated(self):
        """
        @return: a L{Deferred} firing with the peer's id once both sides are
            authenticated (for a dialer: once the acceptor's proof checked
            out and ours is sent), or failing with L{AuthenticationFailed}.
        """
        if self._state == _AUTHENTICATED:
            return succeed(self.peer_id)
        if self._state == _REFUSED or self._closed:
            return fail(AuthenticationFailed("the connection was refused or closed"))
        d = Deferred()
        self._authenticated_waiters.append(d)
        return d

    def when_closed(self):
        """
        @return: a L{Deferred} firing once the connection is closed.
        """
        d = Deferred()
        if self._closed:
            d.callback(None)
        else:
            self._closed_waiters.append(d)
        return d

    def close(self):
        """
        Close the connection (flushing what was sent).
        """
        if self.transport is not None:
            self.transport.loseConnection()

    # Authentication

    async def _dial(self):
        dial_nonce = os.urandom(NONCE_BYTES)
        answer = await self.callRemote(Hello, node=self.node_id, nonce=dial_nonce)
        peer, accept_nonce = answer["node"], answer["nonce"]
        expected = _proof(self._key, b"accept", dial_nonce, accept_nonce, peer)
        if not hmac.compare_digest(expected, answer["proof"]):
            self._refuse(f"node {peer} gave a wrong proof (not our secret?)", peer)
        elif len(accept_nonce) != NONCE_BYTES or peer <= 0 or peer == self.node_id:
            self._refuse(f"bad handshake answer (node {peer})", peer)
        elif self.expected_peer is not None and peer != self.expected_peer:
            self._refuse(f"it is node {peer}, not node {self.expected_peer}", peer)
        else:
            proof = _proof(self._key, b"dial", dial_nonce, accept_nonce, self.node_id)
            self.callRemote(Prove, proof=proof)
            self._authenticate(peer)

    def _dial_failed(self, failure):
        if failure.check(error.ConnectionClosed):
            return  # connectionLost tells whoever waits
        if failure.check(Refused, amp.RemoteAmpError):
            self._refuse(f"the peer refused the handshake: {failure.value}")
        else:
            self.log.failure("handshake with {address}", failure, address=self.address)
            self._refuse("handshake failed")

    @Hello.responder
    def _hello(self, node, nonce):
        if len(nonce) != NONCE_BYTES or node < 0 or node == self.node_id:
            reason = f"malformed Hello (node {node}, {len(nonce)}-byte nonce)"
            # Close once the error answer is out, so the dialer learns why.
            self._refuse(reason, node, close_after=0)
            raise Refused(reason)
        self._claimed = node
        self._dial_nonce = nonce
        self._accept_nonce = os.urandom(NONCE_BYTES)
        self._state = _CHALLENGED
        proof = _proof(self._key, b"accept", nonce, self._accept_nonce, self.node_id)
        return {"node": self.node_id, "nonce": self._accept_nonce, "proof": proof}

    @Prove.responder
    def _prove(self, proof):
        expected = _proof(
            self._key, b"dial", self._dial_nonce, self._accept_nonce, self._claimed
        )
        if hmac.compare_digest(expected, proof):
            self._authenticate(self._claimed)
        else:
            self._refuse("wrong proof (not our secret?)", self._claimed)
        return {}

    def _authenticate(self, peer):
        self._cancel_timer()
        self._state = _AUTHENTICATED
        self.peer_id = peer
        self.log.info(
            "{side} connection with node {peer} at {address} authenticated",
            side="dialed" if self.dialer else "accepted",
            peer=peer,
            address=self.address,
        )
        waiters, self._authenticated_waiters = self._authenticated_waiters, []
        for d in waiters:
            d.callback(peer)
        if self._owner is not None:
            self._owner.connection_authenticated(self)

    def _refuse(self, reason, claimed=None, close_after=None):
        """
        Refuse the connection: ignore everything it sends from now on and
        close it, after C{close_after} seconds if given (a network's dialer
        waits L{DIALER_REFUSED_HOLD}).
        """
        if self._state == _REFUSED or self._closed:
            return
        self._state = _REFUSED
        self._cancel_timer()
        self.log.warn(
            "refused {side} connection with {address} (claiming node {claimed}):"
            " {reason}",
            side="dialed" if self.dialer else "accepted",
            address=self.address,
            claimed=claimed if claimed is not None else self._claimed,
            reason=reason,
        )
        self._fail_waiters(AuthenticationFailed(reason))
        if close_after is None and self.dialer and self.peer_id is None:
            if self._owner is not None:  # a network's dial, which retries
                close_after = DIALER_REFUSED_HOLD
        if close_after is None:
            self.close()
        else:
            self._timer = self._clock.callLater(close_after, self.close)

    def _fail_waiters(self, exception):
        waiters, self._authenticated_waiters = self._authenticated_waiters, []
        for d in waiters:
            d.errback(exception)

    def _cancel_timer(self):
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    # Gatekeeping: what is parsed, and what runs

    def stringReceived(self, string):
        # Every key and value of a box passes here: count them, so no box
        # can grow without bound, and stop parsing a refused connection.
        if self._state == _REFUSED or self._closed:
            return
        self._box_bytes += len(string) + 2
        limit = MAX_BOX if self._state == _AUTHENTICATED else MAX_BOX_BEFORE_AUTH
        if self._box_bytes > limit:
            self._refuse(f"box larger than {limit} bytes")
            return
        super().stringReceived(string)

    def ampBoxReceived(self, box):
        self._box_bytes = 0
        if self._state == _AUTHENTICATED:
            super().ampBoxReceived(box)
        elif not self._expected_now(box):
            what = box.get(amp.COMMAND, b"an answer").decode("ascii", "replace")
            self._refuse(f"sent {what} before authenticating")
        elif (problem := self._malformed(box)) is not None:
            self._refuse(problem)
        else:
            super().ampBoxReceived(box)

    def _malformed(self, box):
        """
        Why a handshake box cannot be parsed, or None: AMP would raise out
        of dataReceived, or log a traceback, for a stranger's bad box.
        """
        if self.dialer:
            if amp.ANSWER not in box:
                missing = {amp.ERROR_CODE, amp.ERROR_DESCRIPTION} - set(box)
                if missing:
                    return "malformed error answer to Hello (no %s)" % (
                        ", ".join(sorted(k.decode() for k in missing)),
                    )
                return None
            what, parse = "answer to Hello", Hello.parseResponse
        else:
            command = Hello if self._state == _NEW else Prove
            what, parse = command.commandName.decode(), command.parseArguments
        try:
            parse(box, self)  # parses a copy
        except Exception as e:
            return f"malformed {what}: {e!r}"
        return None

    def _expected_now(self, box):
        """
        Whether C{box} is the next handshake step from an unauthenticated
        peer.
        """
        if self._state == _REFUSED:
            return False
        if self.dialer:
            tag = box.get(amp.ANSWER, box.get(amp.ERROR))
            return tag is not None and tag in self._outstandingRequests
        command = box.get(amp.COMMAND)
        if self._state == _NEW:
            return command == Hello.commandName and amp.ASK in box
        return self._state == _CHALLENGED and command == Prove.commandName

    def locateResponder(self, name):
        # Reached only for boxes ampBoxReceived let through.
        if self._state != _AUTHENTICATED:
            return super().locateResponder(name)
        command = COMMAND_FOR_NAME.get(name)
        if command is not None:
            return partial(self._receive_message, command)
        if name in _ADMIN_NAMES:
            return super().locateResponder(name)
        # Unknown here (a newer peer, or AMP's own StartTLS): say so rather
        # than let AMP log a failure and drop a good connection.
        return partial(self._unknown_command, name)

    def _receive_message(self, command, box):
        if self.peer_id == 0:
            self.log.warn(
                "admin tool at {address} sent {command}; ignored",
                address=self.address,
                command=command.commandName.decode("ascii"),
            )
        else:
            try:
                message = from_command(command, command.parseArguments(box, self))
            except Exception as e:
                self.log.warn(
                    "dropped an undecodable {command} from node {peer}: {error}",
                    command=command.commandName.decode("ascii"),
                    peer=self.peer_id,
                    error=repr(e),
                )
            else:
                if self._owner is not None:
                    self._owner.message_received(self, message)
        return amp.AmpBox()

    def _unknown_command(self, name, box):
        self.log.warn(
            "node {peer} sent unknown command {command}; ignored",
            peer=self.peer_id,
            command=name.decode("ascii", "replace"),
        )
        if amp.ASK in box:
            raise amp.RemoteAmpError(
                amp.UNHANDLED_ERROR_CODE, f"Unhandled Command: {name!r}"
            )
        return amp.AmpBox()

    # Admin commands

    async def _admin(self, command, call):
        """
        Run C{call(node)} for an admin command: its result (awaited if a
        L{Deferred}), or a L{ChatError} as the answer's C{error}.

        @return: C{(ok, error, result)}.
        """
        node = getattr(self._owner, "node", None)
        self.log.info(
            "admin command {command} from node {peer} at {address}",
            command=command,
            peer=self.peer_id,
            address=self.address,
        )
        if node is None:
            return False, "no server here to ask", None
        try:
            result = call(node)
            if isinstance(result, Deferred):
                result = await result
        except ChatError as e:
            return False, e.message, None
        except Exception:
            self.log.failure("admin command {command} failed", command=command)
            return False, "internal error; see the server's log", None
        return True, "", result

    @Status.responder
    async def _status(self):
        ok, error, status = await self._admin(
            "status", lambda node: json.dumps(node.status())
        )
        return {"ok": ok, "error": error, "status": status or ""}

    @Leave.responder
    async def _leave(self, node):
        ok, error, _ = await self._admin("leave", lambda n: n.leave(node))
        return {"ok": ok, "error": error}

    @ForceLead.responder
    async def _force_lead(self):
        ok, error, _ = await self._admin("force_lead", lambda node: node.force_lead())
        return {"ok": ok, "error": error}


_ADMIN_NAMES = {command.commandName for command in ADMIN_COMMANDS.values()}


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


class PeerNetwork(Service):
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

    # Dials

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

    def _notify(self, method, *args):
        if self._stopping:
            return
        try:
            getattr(self.node, method)(*args)
        except Exception:
            self.log.failure("node.{method}{args!r} failed", method=method, args=args)


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
