# -*- test-case-name: tests.test_simulate -*-
"""
The simulator's nemesis: L{Nemesis} injects faults at random times during
a run's faulty phase, drawn with the weights of its scenario
(L{replichat.testing.simsettings.SCENARIOS}), and undoes them all at the
heal.

The faults, as L{replichat.testing.simcluster} models them (TCP:
per-connection FIFO, no duplication; a crash is a power loss):

  - C{crash}, C{crash-leader}: SIGKILL plus power loss; restart later.
  - C{crash-at-sync}: a server crashes in its next fsync, before it
    completes (the batch is lost) or just after (it is durable, but nothing
    the server did in that turn was sent); mostly the leader.
  - C{crash-soon-after-sync}: the leader crashes a few milliseconds after
    an fsync, while what it sent is partly delivered.
  - C{crash-after-ack}: the leader crashes the moment a client receives its
    answer to a write (what it sent that is still in flight dies with it).
  - C{full-outage}: every server crashes, one by one, then all restart in a
    random order.
  - C{partition}: a random split, both ways; C{one-way}: one direction of
    one pair; C{bridge}: two sides that only one server reaches both of.
    Each either resets the connections or leaves them stalled.
  - C{reset}: a peer connection is reset; C{client-reset}: a client's.
  - C{pause}: SIGSTOP for up to a few failure timeouts, then SIGCONT.
  - C{slow-fsync}: for a while, each fsync of a server blocks it for up
    to most of a second (a process blocked in fsync runs nothing).
  - C{slow-net}: for a while, messages take up to tens of milliseconds,
    with jitter (reordering across connections, never within one).
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

from replichat.testing import history as checker

if TYPE_CHECKING:
    from replichat.testing.sim import Simulation
    from replichat.testing.simclientconn import ClientConnection


class Nemesis:
    """
    Picks faults at random times during the faulty phase, and undoes them
    all at the heal.
    """

    def __init__(self, sim: Simulation, weights: dict[str, int]) -> None:
        self.sim = sim
        self.rng = random.Random("replichat-sim-nemesis:%d" % (sim.seed,))
        self.weights = weights
        self.slow_net_until = 0.0
        self.slow_sync: dict[int, float] = {}  # node -> until
        # node -> how it is to crash: at its next fsync ("before" or "after"
        # it completes, or "soon" after), or when a client gets an answer
        # of its to a write ("ack").
        self.armed: dict[int, str] = {}
        self.outage = False

    async def run(self, until: float) -> None:
        sim = self.sim
        kinds = sorted(self.weights)
        weights = [self.weights[k] for k in kinds]
        await sim.sleep(self.rng.uniform(0.8, 1.5))
        while sim.clock.seconds() < until:
            kind = self.rng.choices(kinds, weights)[0]
            getattr(self, "fault_" + kind.replace("-", "_"))()
            await sim.sleep(self.rng.uniform(0.2, 1.4))

    def count(self, kind: str, text: str) -> None:
        self.sim.faults[kind] += 1
        self.sim.trace(text)

    def running(self) -> list[int]:
        return sorted(self.sim.cluster.nodes)

    def later(self, seconds: float, f, *args) -> None:
        # Undo a fault later, unless the heal did already.
        epoch = self.sim.heal_epoch
        self.sim.clock.callLater(
            seconds, lambda: None if self.sim.heal_epoch != epoch else f(*args)
        )

    # -- crashes ---------------------------------------------------------------------

    def _restart_later(self, node_id: int) -> None:
        # Restart a crashed server in a while (unless the heal does first).
        self.later(self.rng.uniform(0.2, 3.0), self.sim.restart, node_id)

    def _crash(self, node_id: int, kind: str, how: str = "") -> None:
        self.count(kind, "crash %d%s" % (node_id, how))
        self.sim.crash(node_id)
        self._restart_later(node_id)

    def fault_crash(self) -> None:
        running = self.running()
        if running and not self.outage:
            self._crash(self.rng.choice(running), "crash")

    def fault_crash_leader(self) -> None:
        leaders = [n for n in self.running() if self.sim.cluster.nodes[n].role == "leader"]
        if leaders and not self.outage:
            self._crash(self.rng.choice(leaders), "crash-leader", " (leader)")

    def _target(self) -> int | None:
        running = self.running()
        leaders = [n for n in running if self.sim.cluster.nodes[n].role == "leader"]
        if leaders and self.rng.random() < 0.75:
            return self.rng.choice(leaders)
        return self.rng.choice(running) if running else None

    def fault_crash_at_sync(self) -> None:
        node = self._target()
        if node is None or self.outage or node in self.armed:
            return
        mode = self.rng.choice(("before", "after"))
        self.armed[node] = mode
        self.sim.trace("arm crash of %d at its next fsync (%s it completes)" % (node, mode))
        self.sim.update_sync_hook(node)
        self.later(1.0, self._disarm, node)

    def fault_crash_soon_after_sync(self) -> None:
        node = self._target()
        if node is None or self.outage or node in self.armed:
            return
        self.armed[node] = "soon"
        self.sim.trace("arm crash of %d just after its next fsync" % (node,))
        self.sim.update_sync_hook(node)
        self.later(1.0, self._disarm, node)

    def fault_crash_after_ack(self) -> None:
        leaders = [n for n in self.running() if self.sim.cluster.nodes[n].role == "leader"]
        if not leaders or self.outage:
            return
        node = self.rng.choice(leaders)
        if node in self.armed:
            return
        self.armed[node] = "ack"
        self.sim.trace("arm crash of %d when a client receives its next write's answer" % (node,))
        self.later(1.0, self._disarm, node)

    def acked(self, conn: ClientConnection, answer: dict) -> None:
        """
        A client just received C{answer} from C{conn}'s server.
        """
        node_id = conn.node_id
        if self.armed.get(node_id) != "ack" or not answer.get("ok"):
            return
        if conn.process is not self.sim.cluster.processes.get(node_id):
            return
        if conn.ops.get(answer.get("id")) not in checker.WRITES:
            return
        del self.armed[node_id]
        self._crash(node_id, "crash-after-ack", " (as a client receives its answer)")

    def _disarm(self, node_id: int) -> None:
        if self.armed.pop(node_id, None) is not None and node_id in self.sim.cluster.nodes:
            self.sim.update_sync_hook(node_id)

    def at_sync(self, node_id: int, sync) -> bool:
        """
        The sync hook: crash if armed, stall if slow; false to sync as usual.
        """
        sim = self.sim
        mode = self.armed.get(node_id)
        if mode in ("before", "after", "soon"):
            del self.armed[node_id]
        if mode in ("before", "after"):
            durable = mode == "after"
            how = "after its fsync (nothing sent)" if durable else "in its fsync (lost)"
            self.count("crash-at-sync", "crash %d %s" % (node_id, how))
            node = sim.cluster.nodes[node_id]
            sim.cluster.crash_at_sync(node_id, sync, durable=durable)
            sim.crashed(node_id, node)
            self._restart_later(node_id)
            return True
        if mode == "soon":
            sync()
            delay = self.rng.uniform(0.0, 0.003)
            self.sim.clock.callLater(delay, self._crash_soon, node_id, sim.cluster.nodes[node_id])
            return True
        until = self.slow_sync.get(node_id, 0.0)
        if sim.clock.seconds() < until:
            seconds = self.rng.choice((0.002, 0.02, 0.1, 0.3, 0.7)) * self.rng.uniform(0.5, 1.5)
            sim.stalls += 1
            sim.cluster.stall_sync(node_id, seconds, sync)
            return True
        return False

    def _crash_soon(self, node_id: int, node) -> None:
        if self.sim.cluster.nodes.get(node_id) is node:
            self._crash(node_id, "crash-soon-after-sync", " (just after an fsync)")

    def fault_full_outage(self) -> None:
        if self.outage:
            return
        self.outage = True
        self.count("full-outage", "full outage begins")
        order = self.running()
        self.rng.shuffle(order)
        at = 0.0
        for node in order:
            at += self.rng.uniform(0.02, 0.8)
            self.later(at, self._outage_crash, node)
        restart = sorted(self.sim.server_ids)
        self.rng.shuffle(restart)
        at += self.rng.uniform(0.3, 2.0)
        for node in restart:
            self.later(at, self.sim.restart, node)
            at += self.rng.uniform(0.0, 1.5)
        self.later(at, self._outage_over)

    def _outage_crash(self, node_id: int) -> None:
        if node_id in self.sim.cluster.nodes:
            self.sim.trace("crash %d (outage)" % (node_id,))
            self.sim.crash(node_id)

    def _outage_over(self) -> None:
        self.outage = False

    # -- the network ------------------------------------------------------------------------

    def _split(self) -> tuple[list[int], list[int]]:
        ids = list(self.sim.server_ids)
        self.rng.shuffle(ids)
        cut = self.rng.randint(1, len(ids) - 1)
        return sorted(ids[:cut]), sorted(ids[cut:])

    def _stalls(self) -> bool:
        return self.rng.random() < 0.5

    def fault_partition(self) -> None:
        left, right = self._split()
        reset = not self._stalls()
        self.count("partition", "partition {%s} | {%s} (%s)" % (
            ",".join(map(str, left)), ",".join(map(str, right)), "reset" if reset else "stalled"))
        self.sim.cluster.network.partition(left, right, reset=reset)
        self.later(self.rng.uniform(0.5, 4.0), self.sim.heal_network)

    def fault_one_way(self) -> None:
        a, b = self.rng.sample(list(self.sim.server_ids), 2)
        self.count("one-way", "block %d -> %d" % (a, b))
        self.sim.cluster.network.block(a, b)
        self.later(self.rng.uniform(0.3, 3.0), self.sim.heal_network)

    def fault_bridge(self) -> None:
        ids = list(self.sim.server_ids)
        if len(ids) < 3:
            return
        self.rng.shuffle(ids)
        bridge, rest = ids[0], ids[1:]
        cut = self.rng.randint(1, len(rest) - 1)
        left, right = sorted(rest[:cut]), sorted(rest[cut:])
        reset = not self._stalls()
        self.count("bridge", "partition {%s} | {%s}, %d reaches both (%s)" % (
            ",".join(map(str, left)), ",".join(map(str, right)), bridge,
            "reset" if reset else "stalled"))
        self.sim.cluster.network.partition(left, right, reset=reset)
        self.later(self.rng.uniform(0.5, 4.0), self.sim.heal_network)

    def fault_reset(self) -> None:
        a, b = sorted(self.rng.sample(list(self.sim.server_ids), 2))
        if self.sim.cluster.network.reset(a, b):
            self.count("reset", "reset %d-%d" % (a, b))

    def fault_client_reset(self) -> None:
        open_ = [c for c in self.sim.clients if c.conn is not None and c.conn.client_open]
        if open_:
            client = self.rng.choice(open_)
            self.count("client-reset", "reset %s@%d" % (client.name, client.conn.node_id))
            client.conn.reset()

    def fault_pause(self) -> None:
        running = [n for n in self.running() if n not in self.sim.cluster.network.paused]
        if not running:
            return
        node = self.rng.choice(running)
        seconds = self.rng.choice((0.2, 0.6, 1.2, 2.5)) * self.rng.uniform(0.7, 1.3)
        self.count("pause", "pause %d for %.2fs" % (node, seconds))
        self.sim.cluster.network.pause(node)
        self.later(seconds, self.sim.resume, node)

    def fault_slow_fsync(self) -> None:
        node = self._target()
        if node is None:
            return
        seconds = self.rng.uniform(1.0, 4.0)
        self.slow_sync[node] = self.sim.clock.seconds() + seconds
        self.count("slow-fsync", "slow fsync on %d for %.2fs" % (node, seconds))
        self.sim.update_sync_hook(node)

    def fault_slow_net(self) -> None:
        seconds = self.rng.uniform(1.0, 4.0)
        self.slow_net_until = self.sim.clock.seconds() + seconds
        self.count("slow-net", "slow network for %.2fs" % (seconds,))

    def heal(self) -> None:
        self.slow_net_until = 0.0
        self.slow_sync.clear()
        self.armed.clear()
        self.outage = False
