# -*- test-case-name: tests.test_chaos -*-
"""
A fault-injecting TCP proxy for the links between replichat servers.

L{FaultProxy} runs in the chaos driver's reactor.  For every I{directed
link} (server C{s} reaching server C{t}) it listens on a port of its own and
forwards bytes to C{t}'s real peer port, so every byte between two servers
passes through it and can be held back.  It knows nothing of the peer
protocol (the HMAC handshake and AMP boxes just pass through); it only
knows, for each connection, which server is at each end.

The faults act on I{flows}, one per ordered pair of servers: the bytes
C{a} sends to C{b} on any connection between them, whoever dialed it.  A
flow is:

  - L{OPEN}: forwarded, after the pair's delay if one is set (order kept);
  - L{STALL}: held, then delivered when the flow opens again, as TCP does
    when a partition heals before its connections time out (old messages
    arrive late: a test of epoch fencing);
  - L{DROP}: thrown away.  A stream with a hole in it cannot be resumed, so
    a connection that lost bytes is aborted when the flow opens again.

A connection whose two flows are both L{DROP} is aborted at once (both
servers see it fail, as after a reset), and one whose two flows are both
blocked when it arrives is accepted but never connected onwards: like a
real partition, it is silence, never a refusal, until it is aborted when
the partition heals.

A server whose process is gone refuses connections on a real network (its
host is up, its port is closed), which servers use to notice a crash at
once.  The driver says so with L{FaultProxy.target_down}: the proxy stops
listening on the links to that server, unless a cut hides it (then the
connection is silence, as above), and L{FaultProxy.target_up} listens again
on the same port.
"""

from __future__ import annotations

from collections import deque

from attrs import define, field
from twisted.internet import error
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger

#: Flow modes.
OPEN = "open"
STALL = "stall"
DROP = "drop"

#: Seconds the proxy waits for the real server to accept a connection.
UPSTREAM_TIMEOUT = 2.0

#: Seconds between attempts to listen again on a link's port, which the
#: kernel frees one reactor turn after the listener is stopped.
RELISTEN_INTERVAL = 0.02

#: Attempts before the proxy gives up listening again on a port (someone
#: else took it); the link then refuses for good and the driver reports it.
RELISTEN_ATTEMPTS = 250


@define(eq=False)
class Link:
    """
    One directed link: server C{source} reaching server C{target}.

    @ivar host: the address the proxy listens on for this link (the
        target's host, so that addresses look like the real ones).
    @ivar port: the proxy's port for this link, fixed for the whole run.
    @ivar upstream: the target's real C{(host, peer_port)}.
    @ivar source_host: the source's host, which the proxy binds its
        upstream connections to, so that the target's logs show who calls.
    @ivar broken: set when the port could not be listened on again.
    """

    source: int
    target: int
    host: str
    port: int
    upstream: tuple
    source_host: str | None = None
    listening: object = None
    pipes: set = field(factory=set)
    broken: bool = False
    wanted: bool = True
    _retrying: bool = False


class _Direction:
    """
    The bytes one end of a proxied connection sends to the other: a queue of
    C{(due, data)}, C{data} L{None} for the end of the stream.
    """

    def __init__(self, pipe: "_Pipe", sender: int, receiver: int) -> None:
        self.pipe = pipe
        self.sender = sender
        self.receiver = receiver
        self.queue: deque = deque()
        self.holed = False
        self.transport = None  # the receiving end's transport, once connected
        self._timer = None

    def received(self, data: bytes | None) -> None:
        proxy = self.pipe.proxy
        if proxy.mode(self.sender, self.receiver) == DROP:
            self.holed = True
            return
        due = proxy.reactor.seconds() + proxy.delay(self.sender, self.receiver)
        if self.queue:
            due = max(due, self.queue[-1][0])  # a delay never reorders
        self.queue.append((due, data))
        self.pump()

    def pump(self) -> None:
        proxy = self.pipe.proxy
        if self.transport is None or proxy.mode(self.sender, self.receiver) == STALL:
            return
        now = proxy.reactor.seconds()
        while self.queue and self.queue[0][0] <= now:
            _, data = self.queue.popleft()
            if data is None:
                self.pipe.abort() if self.holed else self.transport.loseConnection()
                self.queue.clear()
                return
            self.transport.write(data)
        if self.queue and (self._timer is None or not self._timer.active()):
            self._timer = proxy.reactor.callLater(
                max(0.0, self.queue[0][0] - now), self.pump
            )

    def cancel(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self.queue.clear()


class _End(Protocol):
    """
    One TCP end of a proxied connection; it only hands what it receives to
    its L{_Direction}.
    """

    def __init__(self, pipe: "_Pipe", outgoing: _Direction, accepted: bool) -> None:
        self.pipe = pipe
        self.outgoing = outgoing
        self.accepted = accepted

    def connectionMade(self) -> None:
        if self.accepted:
            self.pipe.start()

    def dataReceived(self, data: bytes) -> None:
        self.outgoing.received(data)

    def connectionLost(self, reason=None) -> None:
        self.pipe.end_lost(self)


class _Pipe:
    """
    One connection through a L{Link}: the end accepted from the source and,
    unless the connection is silent, the end dialed to the target.
    """

    def __init__(self, proxy: "FaultProxy", link: Link) -> None:
        self.proxy = proxy
        self.link = link
        self.to_target = _Direction(self, link.source, link.target)
        self.to_source = _Direction(self, link.target, link.source)
        self.down = _End(self, self.to_target, accepted=True)
        self.up: _End | None = None
        self.silent = False
        self.closed = False
        self._lost = 0

    def start(self) -> None:
        """
        The source's connection was accepted: dial the target, unless the
        pair is cut both ways (then say nothing until the heal aborts it).
        """
        self.to_source.transport = self.down.transport
        if self.proxy.silent(self.link.source, self.link.target):
            self.silent = True
            return
        host, port = self.link.upstream
        bind = (self.link.source_host, 0) if self.link.source_host else None
        endpoint = TCP4ClientEndpoint(
            self.proxy.reactor, host, port, timeout=UPSTREAM_TIMEOUT, bindAddress=bind
        )
        self.up = _End(self, self.to_source, accepted=False)
        connecting = connectProtocol(endpoint, self.up)
        connecting.addCallbacks(self._connected, self._failed)

    def _connected(self, _protocol) -> None:
        if self.closed:
            self.up.transport.abortConnection()
            return
        self.to_target.transport = self.up.transport
        self.update()

    def _failed(self, failure) -> None:
        # The target is gone (or stopped listening): the source sees its
        # connection fail, the nearest a proxy can come to a refusal.
        if not failure.check(error.ConnectError, error.ConnectingCancelledError):
            self.proxy.log.failure("proxy connect for link {source}->{target}", failure,
                                   source=self.link.source, target=self.link.target)
        self.up = None
        self.abort()

    def update(self) -> None:
        """
        The faults changed: apply them to this connection.
        """
        if self.closed:
            return
        proxy, source, target = self.proxy, self.link.source, self.link.target
        if self.silent:
            if not proxy.silent(source, target):
                self.abort()
            return
        if proxy.mode(source, target) == DROP and proxy.mode(target, source) == DROP:
            self.abort()
            return
        for direction in (self.to_target, self.to_source):
            if direction.holed and proxy.mode(direction.sender, direction.receiver) == OPEN:
                self.abort()
                return
        self.to_target.pump()
        self.to_source.pump()

    def end_lost(self, end: _End) -> None:
        self._lost += 1
        if self._lost == (1 if self.up is None or self.up.transport is None else 2):
            self.closed = True  # both ends are gone
        if self.closed:
            self.abort()
            return
        # The end of the stream travels like data: a cut hides a crash.
        if end is self.down:
            self.to_source.cancel()
            self.to_target.received(None)
        else:
            self.to_target.cancel()
            self.to_source.received(None)
        if self.silent or (self.up is None and end is self.down):
            self.abort()

    def abort(self) -> None:
        """
        Abort both ends (idempotent) and forget the connection.
        """
        self.closed = True
        self.link.pipes.discard(self)
        self.to_target.cancel()
        self.to_source.cancel()
        for end in (self.down, self.up):
            if end is not None and end.transport is not None:
                end.transport.abortConnection()


class _LinkFactory(Factory):
    noisy = False

    def __init__(self, proxy: "FaultProxy", link: Link) -> None:
        self.proxy = proxy
        self.link = link

    def buildProtocol(self, addr):
        pipe = _Pipe(self.proxy, self.link)
        self.link.pipes.add(pipe)
        return pipe.down


class FaultProxy:
    """
    The proxies of every directed link between a set of servers, and the
    faults on them.

    @param reactor: provides C{IReactorTCP} and C{IReactorTime}.
    """

    log = Logger()

    def __init__(self, reactor) -> None:
        self.reactor = reactor
        self.links: dict[tuple, Link] = {}
        self._modes: dict[tuple, str] = {}  # (sender, receiver) -> STALL or DROP
        self._delays: dict[frozenset, float] = {}
        self._down: set[int] = set()

    # -- links ---------------------------------------------------------------

    def add_link(self, source: int, target: int, host: str, upstream: tuple,
                 source_host: str | None = None) -> int:
        """
        Listen for C{source}'s connections to C{target}, forwarding them to
        C{upstream}, the target's real C{(host, peer_port)}.

        @return: the port the proxy listens on (chosen by the kernel).
        """
        link = Link(source, target, host, 0, tuple(upstream), source_host)
        link.listening = self.reactor.listenTCP(0, _LinkFactory(self, link), interface=host)
        link.port = link.listening.getHost().port
        self.links[(source, target)] = link
        return link.port

    def close(self) -> Deferred:
        """
        Stop listening and abort every connection.
        """
        waits = []
        for link in self.links.values():
            link.wanted = False
            for pipe in list(link.pipes):
                pipe.abort()
            if link.listening is not None:
                listening, link.listening = link.listening, None
                waits.append(maybeDeferred(listening.stopListening))
        return DeferredList(waits, consumeErrors=True)

    # -- what the faults say -----------------------------------------------------

    def mode(self, sender: int, receiver: int) -> str:
        """
        What happens to the bytes C{sender} sends C{receiver}.
        """
        return self._modes.get((sender, receiver), OPEN)

    def delay(self, sender: int, receiver: int) -> float:
        return self._delays.get(frozenset((sender, receiver)), 0.0)

    def blocked_both(self, a: int, b: int) -> bool:
        return self.mode(a, b) != OPEN and self.mode(b, a) != OPEN

    def hidden(self, a: int, b: int) -> bool:
        """
        Whether any flow between C{a} and C{b} is cut: then neither sees a
        refusal or a reset from the other (the packet saying so is lost).
        """
        return self.mode(a, b) != OPEN or self.mode(b, a) != OPEN

    def silent(self, source: int, target: int) -> bool:
        """
        Whether a new connection from C{source} to C{target} hears nothing:
        the pair is cut both ways, or the target is gone and a cut hides it.
        """
        return self.blocked_both(source, target) or (
            target in self._down and self.hidden(source, target)
        )

    # -- faults --------------------------------------------------------------

    def block(self, sender: int, receiver: int, mode: str = DROP) -> None:
        """
        Cut one flow: C{sender}'s bytes to C{receiver} are held (L{STALL})
        or thrown away (L{DROP}); the other way is untouched.
        """
        if mode not in (STALL, DROP):
            raise ValueError("mode must be STALL or DROP, not %r" % (mode,))
        self._modes[(sender, receiver)] = mode
        self._update()

    def cut(self, a: int, b: int, mode: str = DROP) -> None:
        """
        Cut both flows between C{a} and C{b}.
        """
        self.partition({a}, {b}, mode)

    def partition(self, side: set, other: set, mode: str = DROP) -> None:
        """
        Cut every pair with one server in C{side} and one in C{other}.
        """
        if mode not in (STALL, DROP):
            raise ValueError("mode must be STALL or DROP, not %r" % (mode,))
        for a in side:
            for b in other:
                self._modes[(a, b)] = self._modes[(b, a)] = mode
        self._update()

    def set_delay(self, a: int, b: int, seconds: float) -> None:
        """
        Delay every byte between C{a} and C{b} (both ways) by C{seconds}.
        """
        self._delays[frozenset((a, b))] = seconds
        self._update()

    def heal(self) -> None:
        """
        Open every flow and remove every delay (bytes already delayed still
        arrive in order).
        """
        self._modes.clear()
        self._delays.clear()
        self._update()

    # -- servers that are gone ------------------------------------------------

    def target_down(self, node: int) -> None:
        """
        C{node}'s process is gone: connections to it are refused (unless a
        cut hides that).
        """
        self._down.add(node)
        self._update()

    def target_up(self, node: int) -> None:
        """
        C{node} is running again: accept connections to it.
        """
        self._down.discard(node)
        self._update()

    def _update(self) -> None:
        for link in self.links.values():
            for pipe in list(link.pipes):
                pipe.update()
            self._want_listening(
                link, link.target not in self._down or self.hidden(link.source, link.target)
            )

    def _want_listening(self, link: Link, wanted: bool) -> None:
        link.wanted = wanted
        if not wanted and link.listening is not None:
            listening, link.listening = link.listening, None
            listening.stopListening()
        elif wanted and link.listening is None and not link.broken and not link._retrying:
            self._listen_again(link, RELISTEN_ATTEMPTS)

    def _listen_again(self, link: Link, attempts: int) -> None:
        link._retrying = False
        if not link.wanted or link.listening is not None:
            return
        try:
            link.listening = self.reactor.listenTCP(
                link.port, _LinkFactory(self, link), interface=link.host
            )
        except error.CannotListenError as failure:
            if attempts <= 1:
                link.broken = True
                self.log.error(
                    "cannot listen again on {host}:{port} for link {source}->{target}: {why}",
                    host=link.host, port=link.port, source=link.source,
                    target=link.target, why=failure,
                )
                return
            link._retrying = True
            self.reactor.callLater(RELISTEN_INTERVAL, self._listen_again, link, attempts - 1)

