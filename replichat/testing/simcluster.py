# -*- test-case-name: tests.test_cluster,tests.test_simulate -*-
"""
A whole replichat cluster in one process: L{SimCluster}, real
L{replichat.node.Node}s on in-memory storage (L{Disk}), each in a simulated
L{replichat.testing.simprocess.Process}, connected by an in-memory network
that behaves like TCP (L{replichat.testing.simnet}), all on one clock
(L{replichat.testing.simclock.SimClock}).

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

from functools import partial
from typing import Callable

from replichat.membership import ClusterConfig, Member
from replichat.metastore import MemoryMetaStore
from replichat.node import Node, Timing
from replichat.testing import MemoryLog, MemorySnapshotStore
from replichat.testing.simclock import SimClock
from replichat.testing.simnet import SimNetwork
from replichat.testing.simprocess import Process


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
