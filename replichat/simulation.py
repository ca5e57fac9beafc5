# -*- test-case-name: tests.test_cluster -*-
"""
A whole replichat cluster in one process: real L{replichat.node.Node}s on
in-memory storage, an in-memory network, one L{twisted.internet.task.Clock}.

The network behaves like TCP between processes: per pair of servers one
connection, messages in order, a message in flight lost when the connection
breaks; a crashed server's port refuses connections, so its peers learn at
once that it is gone (as they do on one host); a partition breaks
connections without refusing, so only the failure timeout tells.

The storage is L{replichat.testing.MemoryLog} and friends: a crash loses
what was not fsynced.  Everything is deterministic: the same calls give the
same run.
"""

from __future__ import annotations

from twisted.internet.task import Clock

from replichat.membership import ClusterConfig, Member
from replichat.metastore import MemoryMetaStore
from replichat.node import Node, Timing
from replichat.testing import MemoryLog, MemorySnapshotStore

#: One-way delay of every message, in seconds.
LATENCY = 0.0002


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


class SimNetwork:
    """
    Connections between simulated servers.
    """

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.nodes: dict[int, Node] = {}
        self.generation: dict[frozenset, int] = {}
        self.cut: set[frozenset] = set()
        self.sent = 0
        self.drop = None  # a test may set: (src, dst, message) -> bool
        self.paused: dict[int, list] = {}  # node -> deliveries held for it

    def endpoint(self, node_id: int) -> SimEndpoint:
        return SimEndpoint(self, node_id)

    def _up(self, a: int, b: int) -> bool:
        return (
            a in self.nodes
            and b in self.nodes
            and frozenset((a, b)) not in self.cut
            and not self.nodes[a].stopped
            and not self.nodes[b].stopped
        )

    def send(self, src: int, dst: int, message: object) -> None:
        if not self._up(src, dst):
            return
        if self.drop is not None and self.drop(src, dst, message):
            return
        self.sent += 1
        pair = frozenset((src, dst))
        generation = self.generation.get(pair, 0)

        def deliver() -> None:
            # What was sent before a clean stop still arrives; a crash or a
            # cut link (a new generation) loses it.
            node = self.nodes.get(dst)
            if node is not None and not node.stopped and self.generation.get(pair, 0) == generation:
                if dst in self.paused:
                    self.paused[dst].append(deliver)  # read when it wakes up
                else:
                    node.receive(src, message)

        self.clock.callLater(LATENCY, deliver)

    def attach(self, node: Node) -> None:
        """
        A server starts: connect it to every reachable peer.
        """
        self.nodes[node.node_id] = node
        for other in list(self.nodes):
            if other != node.node_id and self._up(node.node_id, other):
                self._connect(node.node_id, other)

    def _connect(self, a: int, b: int) -> None:
        pair = frozenset((a, b))
        self.generation[pair] = self.generation.get(pair, 0) + 1
        self.nodes[a].peer_connected(b)
        self.nodes[b].peer_connected(a)

    def _break(self, a: int, b: int, refused: int | None = None) -> None:
        pair = frozenset((a, b))
        self.generation[pair] = self.generation.get(pair, 0) + 1
        for me, other in ((a, b), (b, a)):
            if me in self.nodes and not self.nodes[me].stopped:
                self.nodes[me].peer_lost(other)
                if other == refused:
                    self.nodes[me].peer_refused(other)

    def detach(self, node_id: int) -> None:
        """
        A server's process dies: its connections break, its port refuses.
        """
        node = self.nodes.pop(node_id, None)
        if node is None:
            return
        for other in list(self.nodes):
            if frozenset((node_id, other)) not in self.cut:
                pair = frozenset((node_id, other))
                self.generation[pair] = self.generation.get(pair, 0) + 1
                self.nodes[other].peer_lost(node_id)
                self.nodes[other].peer_refused(node_id)

    def partition(self, *groups) -> None:
        """
        Cut every link between servers of different groups.
        """
        side = {node: i for i, group in enumerate(groups) for node in group}
        for a in list(side):
            for b in list(side):
                if a < b and side[a] != side[b]:
                    pair = frozenset((a, b))
                    if pair not in self.cut:
                        self.cut.add(pair)
                        self._break(a, b)

    def pause(self, node_id: int) -> None:
        """
        SIGSTOP: the process neither runs nor reads, but its connections
        stay up and what is sent to it waits in the socket buffers.
        """
        self.paused.setdefault(node_id, [])

    def resume(self, node_id: int) -> None:
        """
        SIGCONT: it reads everything that waited, in order.
        """
        for deliver in self.paused.pop(node_id, []):
            deliver()

    def heal(self) -> None:
        cut, self.cut = self.cut, set()
        for pair in cut:
            a, b = sorted(pair)
            if self._up(a, b):
                self._connect(a, b)


class SimEndpoint:
    def __init__(self, network: SimNetwork, node_id: int) -> None:
        self.network = network
        self.node_id = node_id

    def send(self, peer: int, message: object) -> None:
        self.network.send(self.node_id, peer, message)


class SimCluster:
    """
    N servers with ids 1..N, started together.
    """

    def __init__(self, size: int = 3, timing: Timing | None = None, snapshot_every=100_000) -> None:
        self.clock = Clock()
        self.network = SimNetwork(self.clock)
        self.timing = timing or Timing(0.1, 0.5)
        self.snapshot_every = snapshot_every
        self.members = {
            i: Member("127.0.0.1", 7000 + i, 7100 + i) for i in range(1, size + 1)
        }
        self.initial = ClusterConfig(members=dict(self.members), live=frozenset(self.members))
        self.disks: dict[int, Disk] = {}
        self.nodes: dict[int, Node] = {}
        self.fatal: list[tuple[int, str]] = []
        self._tickers: dict[int, object] = {}

    def start(self, node_id: int, joining: bool = False) -> Node:
        disk = self.disks.setdefault(node_id, Disk())
        member = self.members.setdefault(
            node_id, Member("127.0.0.1", 7000 + node_id, 7100 + node_id)
        )
        node = Node(
            node_id,
            disk.log,
            disk.snapshots,
            disk.meta,
            self.clock,
            snapshot_every=self.snapshot_every,
            on_fatal=lambda reason: self.fatal.append((node_id, reason)),
            network=self.network.endpoint(node_id),
            initial_cluster=self.initial,
            timing=self.timing,
            joining=member if joining else None,
        )
        self.nodes[node_id] = node
        node.start()
        self.network.attach(node)
        self._schedule_tick(node)
        return node

    def _schedule_tick(self, node: Node) -> None:
        def tick() -> None:
            if self.nodes.get(node.node_id) is node and not node.stopped:
                if node.node_id not in self.network.paused:
                    node.tick()
                self._tickers[node.node_id] = self.clock.callLater(
                    self.timing.heartbeat_interval, tick
                )

        # Stagger the servers' ticks, as separate processes would be.
        self._tickers[node.node_id] = self.clock.callLater(
            self.timing.heartbeat_interval * (0.3 + 0.1 * (node.node_id % 7)), tick
        )

    def start_all(self) -> None:
        for node_id in sorted(self.members):
            self.start(node_id)

    def crash(self, node_id: int) -> None:
        """
        SIGKILL: the process is gone, unsynced writes are lost.
        """
        node = self.nodes.pop(node_id)
        node.stopped = True
        self.network.detach(node_id)
        self.disks[node_id].crash()

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

    def leaders(self) -> list[Node]:
        return [n for n in self.nodes.values() if n.role == "leader"]

    def leader(self) -> Node | None:
        serving = [
            n for n in self.nodes.values() if n.serving and n.node_id not in self.network.paused
        ]
        return serving[0] if len(serving) == 1 else None
