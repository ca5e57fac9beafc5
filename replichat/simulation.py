# -*- test-case-name: tests.test_cluster,tests.test_simulate -*-
"""
A whole replichat cluster in one process: real L{replichat.node.Node}s on
in-memory storage, an in-memory network, one clock (L{SimClock}, a faster
L{twisted.internet.task.Clock}).

B{Processes.}  Each server runs in a L{Process}, which is the reactor time
its node is given: the shared clock, except that while the process is
stopped (SIGSTOP, or blocked in a slow fsync) its timers, its reads and its
writes wait, and once it is dead (crashed) none of them ever happens.  When
it runs again it first sends what it had computed, then runs its overdue
timers (Twisted runs timed calls before it polls for I/O), then reads what
arrived meanwhile.

B{The network behaves like TCP between processes}; each property is what
one TCP connection guarantees or what one kind of failure does to it:

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

The storage is L{replichat.testing.MemoryLog} and friends: a crash loses
what was not fsynced.  A node fsyncs its log in a reactor turn of its own
(C{Node._sync}, scheduled after each batch), and fsync blocks the whole
process, so a slow fsync is modelled as the process stopping for that long
with the fsync completing at the end (L{SimCluster.stall_sync}), and a
crash in an fsync as one before it completes or just after, before the
turn's writes leave (L{SimCluster.crash_at_sync}).

Everything is deterministic: the same calls give the same run (no wall
clock, no iteration over unordered objects); L{SimClock} runs calls due at
one time in the order they were scheduled.
"""

from __future__ import annotations

import heapq
from collections import deque
from functools import partial
from typing import Callable

from twisted.internet.base import DelayedCall
from twisted.internet.task import Clock

from replichat.membership import ClusterConfig, Member
from replichat.metastore import MemoryMetaStore
from replichat.node import Node, Timing
from replichat.testing import MemoryLog, MemorySnapshotStore

#: One-way delay of every message, in seconds, unless a delay function is set.
LATENCY = 0.0002


class SimClock(Clock):
    """
    A L{Clock} on a heap: calls run in the same order (by time, ties in the
    order they were scheduled) but scheduling one costs O(log n), not a
    sort of every pending call, which dominated a long simulation.

    A cancelled call, or one reset to an earlier time, leaves a stale entry
    that is dropped when it comes up; one reset to a later time (Twisted
    then only notes the delay) is pushed again at its new time.
    """

    def __init__(self) -> None:
        self._heap: list = []
        self._seq = 0

    @property
    def calls(self) -> list:
        """
        The pending calls, soonest first (as L{Clock.calls}).
        """
        pending: list = []
        for _, _, call in sorted(self._heap):
            if not call.cancelled and not call.called and call not in pending:
                pending.append(call)
        return sorted(pending, key=lambda call: call.getTime())

    def callLater(self, delay: float, f: Callable, *args: object, **kw: object):
        call = DelayedCall(
            self.rightNow + delay, f, args, kw, self._cancelled, self._push, self.seconds
        )
        self._push(call)
        return call

    def _push(self, call: DelayedCall) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (call.getTime(), self._seq, call))

    def _cancelled(self, call: DelayedCall) -> None:
        pass  # left in the heap; dropped when it comes up

    def getDelayedCalls(self) -> list:
        return self.calls

    def _top(self) -> DelayedCall | None:
        """
        The entry due first that still stands for its call, or L{None}.
        """
        heap = self._heap
        while heap:
            when, _, call = heap[0]
            if call.cancelled or call.called:
                heapq.heappop(heap)
            elif call.getTime() > when:
                heapq.heappop(heap)
                if call.delayed_time:
                    call.activate_delay()
                self._push(call)
            elif call.getTime() < when:
                heapq.heappop(heap)  # moved earlier: its new entry stands
            else:
                return call
        return None

    def next_time(self) -> float | None:
        """
        When the soonest pending call is due, or L{None}.
        """
        call = self._top()
        return None if call is None else call.getTime()

    def advance(self, amount: float) -> None:
        self.rightNow += amount
        while True:
            call = self._top()
            if call is None or call.getTime() > self.rightNow:
                return
            heapq.heappop(self._heap)
            call.called = 1
            call.func(*call.args, **call.kw)


class Disk:
    """
    One server's storage, surviving its crashes.
    """

    def __init__(self) -> None:
        self.log = MemoryLog()
        self.snapshots = MemorySnapshotStore()
        self.meta = MemoryMetaStore()

    def crash(self) -> None:
        self.log.crash()


class Process:
    """
    One server process: its reactor time (an C{IReactorTime} for the node
    and its client handler) and the gate its input and output pass.

    @ivar dead: it crashed; nothing of it runs again.
    @ivar timer_hook: L{None}, or C{hook(function, thunk)} called when a
        timer comes due, before it runs; it returns true if it took the call
        over (L{SimCluster} uses it to make a node's fsync slow, or crash
        around it).
    """

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self.dead = False
        self.timer_hook: Callable[[object, Callable], bool] | None = None
        self._stops: dict[str, int] = {}
        self._outbound: deque = deque()
        self._timers: deque = deque()
        self._inbound: deque = deque()

    @property
    def running(self) -> bool:
        return not self.dead and not self._stops

    # -- IReactorTime --------------------------------------------------------

    def seconds(self) -> float:
        return self._clock.seconds()

    def callLater(self, delay: float, f: Callable, *args: object, **kw: object):
        # The shared clock's DelayedCall, so the caller can cancel it; what
        # fires while the process is stopped waits for it to run again.
        return self._clock.callLater(delay, self._fire, f, partial(f, *args, **kw))

    def getDelayedCalls(self) -> list:
        return []

    def _fire(self, f: Callable, thunk: Callable) -> None:
        if self.dead:
            return
        if self._stops:
            self._timers.append((f, thunk))
        else:
            self._run_timer(f, thunk)

    def _run_timer(self, f: object, thunk: Callable) -> None:
        if f is not None and self.timer_hook is not None and self.timer_hook(f, thunk):
            return
        thunk()

    # -- input and output ------------------------------------------------------

    def receive(self, thunk: Callable) -> None:
        """
        Something arrived for the process: it reads it now or when it runs.
        """
        if self.dead:
            return
        if self._stops:
            self._inbound.append(thunk)
        else:
            thunk()

    def emit(self, thunk: Callable) -> None:
        """
        The process writes something: it leaves now, or when the process
        runs again (a stopped process writes nothing).
        """
        if self.dead:
            return
        if self._stops:
            self._outbound.append(thunk)
        else:
            thunk()

    # -- stopping, running, dying ------------------------------------------------

    def stop(self, reason: str) -> None:
        """
        Stop running for C{reason} ("sigstop", "fsync", ...) until L{cont}
        with the same reason; stops for several reasons nest.
        """
        self._stops[reason] = self._stops.get(reason, 0) + 1

    def cont(self, reason: str) -> None:
        count = self._stops.get(reason, 0) - 1
        if count > 0:
            self._stops[reason] = count
        else:
            self._stops.pop(reason, None)
        self._wake()

    def stopped_for(self, reason: str) -> bool:
        return reason in self._stops

    def hold_first(self, thunk: Callable) -> None:
        """
        Run C{thunk} first when the process runs again (the rest of a call
        it was blocked in).
        """
        self._timers.appendleft((None, thunk))

    def _wake(self) -> None:
        while self.running and (self._outbound or self._timers or self._inbound):
            if self._outbound:
                self._outbound.popleft()()
            elif self._timers:
                self._run_timer(*self._timers.popleft())
            else:
                self._inbound.popleft()()

    def kill(self) -> None:
        self.dead = True
        self._outbound.clear()
        self._timers.clear()
        self._inbound.clear()


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
        self.sent = 0
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

    def _links_of(self, node_id: int) -> list[_Link]:
        return [self.links[key] for key in sorted(self.links) if node_id in key]

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
        self.sent += 1
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
    def __init__(self, network: SimNetwork, node_id: int) -> None:
        self.network = network
        self.node_id = node_id

    def send(self, peer: int, message: object) -> None:
        self.network.send(self.node_id, peer, message)


class SimCluster:
    """
    N servers with ids 1..N, started together.

    @ivar processes: the running servers' L{Process}es.
    @ivar fatal: C{(node id, reason)} for every server that stopped itself.
    @ivar on_fatal: L{None}, or called with C{(node id, reason)} as well.
    """

    def __init__(self, size: int = 3, timing: Timing | None = None, snapshot_every=100_000) -> None:
        self.clock = SimClock()
        self.network = SimNetwork(self.clock)
        self.timing = timing or Timing(0.1, 0.5)
        self.snapshot_every = snapshot_every
        self.members = {
            i: Member("127.0.0.1", 7000 + i, 7100 + i) for i in range(1, size + 1)
        }
        self.initial = ClusterConfig(members=dict(self.members), live=frozenset(self.members))
        self.disks: dict[int, Disk] = {}
        self.nodes: dict[int, Node] = {}
        self.processes: dict[int, Process] = {}
        self.fatal: list[tuple[int, str]] = []
        self.on_fatal: Callable[[int, str], None] | None = None

    def start(self, node_id: int, joining: bool = False) -> Node:
        disk = self.disks.setdefault(node_id, Disk())
        member = self.members.setdefault(
            node_id, Member("127.0.0.1", 7000 + node_id, 7100 + node_id)
        )
        process = Process(self.clock)
        node = Node(
            node_id,
            disk.log,
            disk.snapshots,
            disk.meta,
            process,
            snapshot_every=self.snapshot_every,
            on_fatal=partial(self._fatal, node_id),
            network=self.network.endpoint(node_id),
            initial_cluster=self.initial,
            timing=self.timing,
            joining=member if joining else None,
        )
        self.nodes[node_id] = node
        self.processes[node_id] = process
        node.start()
        self.network.attach(node, process)
        self._schedule_tick(node, process)
        return node

    def _fatal(self, node_id: int, reason: str) -> None:
        self.fatal.append((node_id, reason))
        if self.on_fatal is not None:
            self.on_fatal(node_id, reason)

    def _schedule_tick(self, node: Node, process: Process) -> None:
        # On the process's time, like the server's LoopingCall: a stopped
        # process does not tick, and ticks once, late, when it runs again.
        def tick() -> None:
            if self.nodes.get(node.node_id) is node and not node.stopped:
                node.tick()
                process.callLater(self.timing.heartbeat_interval, tick)

        # Stagger the servers' ticks, as separate processes would be.
        process.callLater(self.timing.heartbeat_interval * (0.3 + 0.1 * (node.node_id % 7)), tick)

    def start_all(self) -> None:
        for node_id in sorted(self.members):
            self.start(node_id)

    def crash(self, node_id: int) -> None:
        """
        SIGKILL: the process is gone, unsynced writes are lost.
        """
        node = self.nodes.pop(node_id)
        node.stopped = True
        process = self.processes.pop(node_id, None)
        if process is not None:
            process.kill()
        self.network.detach(node_id)
        self.disks[node_id].crash()

    # -- slow and fatal fsyncs ---------------------------------------------------------

    def set_sync_hook(self, node_id: int, hook: Callable[[Callable], bool] | None) -> None:
        """
        Call C{hook(sync)} when the running server C{node_id} is about to
        fsync its log in a reactor turn of its own (what a node does after
        appending a batch, leader or follower), instead of fsyncing: the hook
        calls C{sync()} (the rest of that turn, fsync first) itself, then or
        later, and returns true; or returns false to let it run as usual.
        See L{stall_sync} and L{crash_at_sync}.
        """
        process = self.processes[node_id]
        if hook is None:
            process.timer_hook = None
            return

        def timer_hook(f: object, thunk: Callable) -> bool:
            if getattr(f, "__func__", None) is not _NODE_SYNC:
                return False
            return hook(thunk)

        process.timer_hook = timer_hook

    def stall_sync(self, node_id: int, seconds: float, sync: Callable) -> None:
        """
        The fsync of C{node_id} takes C{seconds}: its process is blocked
        (runs nothing, reads nothing, sends nothing) and the fsync completes
        at the end, followed by the rest of its turn.  If the server crashes
        meanwhile, the fsync never completed.
        """
        process = self.processes[node_id]
        process.stop("fsync")
        process.hold_first(sync)
        self.clock.callLater(seconds, process.cont, "fsync")

    def crash_at_sync(self, node_id: int, sync: Callable, durable: bool) -> None:
        """
        Crash C{node_id} in its fsync: before it completes (C{durable}
        false: the batch is lost), or just after, with the rest of the turn
        done but nothing it produced sent (Twisted writes to sockets only
        when the turn is over).
        """
        if durable:
            process = self.processes[node_id]
            process.stop("dying")
            sync()
        self.crash(node_id)

    # -- running -----------------------------------------------------------------------

    def run(self, seconds: float, step: float = 0.001) -> None:
        end = self.clock.seconds() + seconds
        while self.clock.seconds() < end:
            self.clock.advance(0)
            self.clock.advance(step)
        self.clock.advance(0)

    def run_until(self, predicate, timeout: float = 10.0, step: float = 0.001) -> float:
        """
        Run until C{predicate()} holds; the simulated seconds it took.

        @raise AssertionError: if it does not within C{timeout}.
        """
        start = self.clock.seconds()
        while not predicate():
            if self.clock.seconds() - start > timeout:
                raise AssertionError("not reached within %s simulated seconds" % (timeout,))
            self.clock.advance(0)
            self.clock.advance(step)
        return self.clock.seconds() - start

    def advance_to_next(self, limit: float) -> bool:
        """
        Run everything due at the next scheduled time, if that is not after
        C{limit}; otherwise move the clock to C{limit}.  Event by event, so
        a quiet cluster costs nothing to run for a long while.

        @return: whether anything ran.
        """
        clock = self.clock
        due = clock.next_time()
        if due is None or due > limit:
            if limit > clock.rightNow:
                clock.rightNow = limit
            return False
        if due > clock.rightNow:
            # Set, not added: no float drift past (or short of) the call.
            clock.rightNow = due
        clock.advance(0)
        return True

    def leaders(self) -> list[Node]:
        return [n for n in self.nodes.values() if n.role == "leader"]

    def leader(self) -> Node | None:
        serving = [
            n for n in self.nodes.values() if n.serving and n.node_id not in self.network.paused
        ]
        return serving[0] if len(serving) == 1 else None


#: The node's fsync turn, which L{SimCluster.set_sync_hook} intercepts.
_NODE_SYNC = Node._sync
