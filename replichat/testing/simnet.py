# -*- test-case-name: tests.test_simulate,tests.test_cluster -*-
"""
The in-memory network between simulated servers: L{SimNetwork}, and the
L{SimEndpoint} each node sends through.

It behaves like TCP between processes; each property is what one TCP
connection guarantees or what one kind of failure does to it:

  - One connection per pair of servers (as L{replichat.peerproto} keeps).
    Each direction is a FIFO: a message arrives after a delay (the
    C{delay} function; L{LATENCY} by default) but never before one sent
    earlier on the same connection.  Messages on different connections may
    overtake each other.
  - No duplication and no corruption: TCP never delivers a byte twice
    within a connection; a resend after a reconnect is the node's business.
  - A message is lost only with its connection: a reset loses everything in
    flight on it, both ways; so does the crash of either end.  A crash is
    the harshest mix: the disk loses what was not fsynced and what was in
    flight is lost, as in a power loss, yet the port refuses at once, as
    when only the process died, so peers act on the loss at once.
  - A blocked direction (a partition) loses nothing while the connection
    lasts: what is sent waits, as TCP retransmits it, and arrives in order
    once the direction opens again (after a retransmission delay).  If the
    connection is reset meanwhile (a TCP timeout, a middlebox) it is lost.
    A one-way block C{a -> b} is what TCP makes of a link that loses every
    packet one way: C{b}'s messages still reach C{a} on the open connection,
    C{a}'s wait; once that connection breaks no new one can be made (the
    handshake needs both directions), so the pair stays apart until heal.
  - A crashed server's port refuses connections, so its peers learn at
    once that it is gone (as on one host, or when a process dies on a live
    host), unless the path to them is blocked: then they learn at heal.
  - A stopped server keeps its connections and what is sent to it waits in
    its socket buffers; a new connection to it completes only once it runs
    again (authentication needs the process).
"""

from __future__ import annotations

from collections import deque
from functools import partial
from typing import TYPE_CHECKING, Callable

from twisted.internet.task import Clock

if TYPE_CHECKING:
    from replichat.node import Node
    from replichat.testing.simprocess import Process

#: One-way delay of every message, in seconds, unless a delay function is set.
LATENCY = 0.0002


class _Link:
    """
    The connection between two servers (if any) and what travels on it.

    @ivar ends: the servers that believe it is open (told of it and not yet
        of its loss); while the path is blocked a server may believe in a
        connection that is already gone.
    """

    __slots__ = ("a", "b", "generation", "up", "ends", "queues", "timers", "last_due",
                 "resume_at", "reconnecting")

    def __init__(self, a: int, b: int) -> None:
        self.a, self.b = a, b
        self.generation = 0
        self.up = False
        self.ends: set[int] = set()
        self.queues = {a: deque(), b: deque()}  # by sender: (due, message)
        self.timers: dict[int, object] = {a: None, b: None}
        self.last_due = {a: 0.0, b: 0.0}
        self.resume_at = {a: 0.0, b: 0.0}
        self.reconnecting = False

    def other(self, node_id: int) -> int:
        return self.b if node_id == self.a else self.a


class SimNetwork:
    """
    Connections between simulated servers (see the module docstring).

    @ivar delay: C{delay(src, dst)}, the one-way delay of a message sent now.
    @ivar reconnect_delay: L{None} to reconnect a broken pair at once (when
        its path is open), or a function giving the delay.
    @ivar retransmit_delay: L{None}, or a function giving how long after a
        blocked direction opens its waiting messages start to arrive.
    @ivar drop: L{None}, or C{drop(src, dst, message)} returning true to
        lose a message without breaking its connection (not something TCP
        does: a test's scalpel).
    @ivar paused: the stopped (SIGSTOP) servers.
    """

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.nodes: dict[int, Node] = {}
        self.processes: dict[int, Process] = {}
        self.links: dict[tuple[int, int], _Link] = {}
        self.blocked: set[tuple[int, int]] = set()
        self.drop = None
        self.paused: dict[int, list] = {}  # node -> what waits for it (without a Process)
        self.delay: Callable[[int, int], float] = lambda src, dst: LATENCY
        self.reconnect_delay: Callable[[], float] | None = None
        self.retransmit_delay: Callable[[], float] | None = None

    def endpoint(self, node_id: int) -> SimEndpoint:
        return SimEndpoint(self, node_id)

    # -- helpers ---------------------------------------------------------------

    def _link(self, a: int, b: int) -> _Link:
        key = (a, b) if a < b else (b, a)
        link = self.links.get(key)
        if link is None:
            link = self.links[key] = _Link(*key)
        return link

    def _alive(self, node_id: int) -> bool:
        node = self.nodes.get(node_id)
        return node is not None and not node.stopped

    def _running(self, node_id: int) -> bool:
        return self._alive(node_id) and node_id not in self.paused

    def path_open(self, a: int, b: int) -> bool:
        return (a, b) not in self.blocked and (b, a) not in self.blocked

    def _to_node(self, node_id: int, thunk: Callable) -> None:
        """
        Hand the server something to read (through its process).
        """
        process = self.processes.get(node_id)
        if process is not None:
            process.receive(thunk)
        elif node_id in self.paused:
            self.paused[node_id].append(thunk)
        else:
            thunk()

    def _notify(self, node_id: int, method: str, peer: int) -> None:
        node = self.nodes.get(node_id)
        if node is None:
            return

        def tell() -> None:
            if not node.stopped:
                getattr(node, method)(peer)

        self._to_node(node_id, tell)

    # -- messages --------------------------------------------------------------

    def send(self, src: int, dst: int, message: object) -> None:
        process = self.processes.get(src)
        if process is None:
            self._transmit(src, dst, message)
        else:
            process.emit(partial(self._transmit, src, dst, message))

    def _transmit(self, src: int, dst: int, message: object) -> None:
        if not self._alive(src):
            return
        link = self.links.get((src, dst) if src < dst else (dst, src))
        if link is None or not link.up:
            return  # no connection: the peer network drops it
        if self.drop is not None and self.drop(src, dst, message):
            return
        due = max(self.clock.seconds() + self.delay(src, dst), link.last_due[src])
        link.last_due[src] = due
        link.queues[src].append((due, message))
        self._pump(link, src)

    def _pump(self, link: _Link, src: int) -> None:
        if link.timers[src] is not None or not link.queues[src]:
            return
        if (src, link.other(src)) in self.blocked:
            return  # it waits, as TCP retransmits it
        due = max(link.queues[src][0][0], link.resume_at[src])
        link.timers[src] = self.clock.callLater(
            max(0.0, due - self.clock.seconds()), self._arrive, link, link.generation, src
        )

    def _arrive(self, link: _Link, generation: int, src: int) -> None:
        link.timers[src] = None
        if link.generation != generation or not link.up:
            return
        dst = link.other(src)
        if (src, dst) in self.blocked:
            return
        _, message = link.queues[src].popleft()
        node = self.nodes.get(dst)
        if node is not None:
            self._to_node(dst, partial(self._receive, node, src, message))
        self._pump(link, src)

    @staticmethod
    def _receive(node: Node, src: int, message: object) -> None:
        if not node.stopped:
            node.receive(src, message)

    # -- connections -------------------------------------------------------------

    def _clear(self, link: _Link) -> None:
        link.generation += 1
        for end in (link.a, link.b):
            timer = link.timers[end]
            if timer is not None and timer.active():
                timer.cancel()
            link.timers[end] = None
            link.queues[end].clear()
            link.last_due[end] = 0.0
            link.resume_at[end] = 0.0

    def _connect(self, a: int, b: int) -> None:
        link = self._link(a, b)
        self._settle(link)
        self._clear(link)
        link.up = True
        link.ends = {a, b}
        self._notify(a, "peer_connected", b)
        self._notify(b, "peer_connected", a)

    def _break(self, link: _Link, told: tuple, refused: int | None = None) -> None:
        """
        The connection is gone with what was in flight; the servers in
        C{told} learn it now.
        """
        self._clear(link)
        link.up = False
        for me in sorted(told):
            if me in link.ends:
                link.ends.discard(me)
                other = link.other(me)
                self._notify(me, "peer_lost", other)
                if other == refused:
                    self._notify(me, "peer_refused", other)

    def _settle(self, link: _Link) -> None:
        """
        A server that still believes in a broken connection, and can now
        reach the other end, learns that it is gone (and, if the other end
        is down, that its port refuses).
        """
        if link.up:
            return
        for me in sorted(link.ends):
            other = link.other(me)
            if self.path_open(me, other):
                link.ends.discard(me)
                self._notify(me, "peer_lost", other)
                if not self._alive(other):
                    self._notify(me, "peer_refused", other)

    def _can_connect(self, a: int, b: int) -> bool:
        link = self.links.get((a, b) if a < b else (b, a))
        return (
            (link is None or not link.up)
            and self._running(a)
            and self._running(b)
            and self.path_open(a, b)
        )

    def _reconnect(self, a: int, b: int) -> None:
        """
        Connect C{a} and C{b} now or after the reconnect delay, if they can.
        """
        if not self._can_connect(a, b):
            self._settle(self._link(a, b))
            return
        if self.reconnect_delay is None:
            self._connect(a, b)
            return
        link = self._link(a, b)
        if link.reconnecting:
            return
        link.reconnecting = True

        def attempt() -> None:
            link.reconnecting = False
            if self._can_connect(a, b):
                self._connect(a, b)
            else:
                self._settle(link)

        self.clock.callLater(self.reconnect_delay(), attempt)

    def _reconnect_all(self, only: int | None = None) -> None:
        ids = sorted(self.nodes)
        for i, a in enumerate(ids):
            for b in ids[i + 1 :]:
                if only is None or only in (a, b):
                    self._reconnect(a, b)
        for key in sorted(self.links):
            if only is None or only in key:
                self._settle(self.links[key])

    # -- servers coming and going --------------------------------------------------

    def attach(self, node: Node, process: Process | None = None) -> None:
        """
        A server starts: connect it to every reachable peer.
        """
        self.nodes[node.node_id] = node
        if process is not None:
            self.processes[node.node_id] = process
        self._reconnect_all(only=node.node_id)

    def detach(self, node_id: int) -> None:
        """
        A server's process dies: its connections break, its port refuses;
        every peer it has an open path to learns so at once.
        """
        node = self.nodes.pop(node_id, None)
        self.processes.pop(node_id, None)
        self.paused.pop(node_id, None)
        if node is None:
            return
        for other in sorted(self.nodes):
            link = self._link(node_id, other)
            link.ends.discard(node_id)
            informed = self.path_open(node_id, other)
            if link.up:
                self._break(link, (other,) if informed else (), refused=node_id)
            elif informed:
                self._settle(link)
                self._notify(other, "peer_refused", node_id)

    # -- faults ----------------------------------------------------------------------

    def partition(self, *groups, reset: bool = True) -> None:
        """
        Block every path between servers of different groups, both ways.

        @param reset: break their connections at once (a switch reboot, a
            firewall's RST); otherwise the connections stay and what is sent
            waits, until L{heal} or a L{reset}.
        """
        side = {node: i for i, group in enumerate(groups) for node in group}
        for a in sorted(side):
            for b in sorted(side):
                if a < b and side[a] != side[b]:
                    self.blocked.add((a, b))
                    self.blocked.add((b, a))
                    link = self.links.get((a, b))
                    if reset and link is not None and link.up:
                        self._break(link, (a, b))

    def block(self, src: int, dst: int) -> None:
        """
        Lose every packet from C{src} to C{dst} (one way) until L{heal}.
        """
        self.blocked.add((src, dst))

    def reset(self, a: int, b: int) -> bool:
        """
        Reset the connection between C{a} and C{b}: what was in flight is
        lost, both learn it, and they reconnect when they can.

        @return: whether there was a connection.
        """
        link = self.links.get((a, b) if a < b else (b, a))
        if link is None or not link.up:
            return False
        self._break(link, (a, b))
        self._reconnect(a, b)
        return True

    def pause(self, node_id: int) -> None:
        """
        SIGSTOP: the process neither runs nor reads, but its connections
        stay up and what is sent to it waits in the socket buffers.
        """
        self.paused.setdefault(node_id, [])
        process = self.processes.get(node_id)
        if process is not None:
            process.stop("sigstop")

    def resume(self, node_id: int) -> None:
        """
        SIGCONT: it reads everything that waited, in order.
        """
        waiting = self.paused.pop(node_id, None)
        if waiting is None:
            return
        process = self.processes.get(node_id)
        if process is not None:
            process.cont("sigstop")
        for thunk in waiting:
            thunk()
        self._reconnect_all(only=node_id)

    def heal(self) -> None:
        """
        Open every blocked path: what waited arrives, in order, and broken
        pairs reconnect.
        """
        blocked, self.blocked = self.blocked, set()
        now = self.clock.seconds()
        for src, dst in sorted(blocked):
            link = self.links.get((src, dst) if src < dst else (dst, src))
            if link is not None and link.up:
                if self.retransmit_delay is not None:
                    link.resume_at[src] = now + self.retransmit_delay()
                self._pump(link, src)
        self._reconnect_all()


class SimEndpoint:
    """
    What one node sends its peer messages through (C{Node}'s C{network}).
    """

    def __init__(self, network: SimNetwork, node_id: int) -> None:
        self.network = network
        self.node_id = node_id

    def send(self, peer: int, message: object) -> None:
        self.network.send(self.node_id, peer, message)
