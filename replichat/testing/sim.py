# -*- test-case-name: tests.test_simulate -*-
"""
A deterministic simulator of a whole replichat deployment, in the manner of
the FoundationDB and TigerBeetle simulators: the real servers (L{Node} and
L{ChatHandler}) on L{replichat.testing.simcluster.SimCluster}, several clients doing
every chat operation, and a nemesis injecting faults at random times, all
driven by one C{random.Random(seed)} per concern on one simulated clock.
The same seed gives the same run, byte for byte: L{run_seed} returns its
trace, whose digest a test compares.

A run:

  1. B{Faulty phase}: servers start; clients work while the nemesis crashes
     and restarts servers (also at the point of an fsync, and all of them
     at once), partitions them (any split; both ways or one way; breaking
     the connections or stalling them), resets connections, delays
     messages, stops servers (SIGSTOP) and makes their fsyncs slow.
  2. B{Heal}: every fault is undone; crashed servers restart.
  3. B{Quiet period}: clients finish what they started, the cluster is
     given time to converge.  In C{liveness} mode a fresh write must
     commit within a bound after the heal, and the servers must converge.
  4. B{Check}: the history of what clients saw and the servers' committed
     logs and states go to L{replichat.testing.history.check}.  In a
     scenario of crashes only, every server's committed entries as they
     were when it crashed must also still be the committed entries at their
     indexes at the end (nothing committed is ever cut).

The pieces:

  - L{replichat.testing.simsettings}: modes, scenarios (fault mixes) and
    L{Settings};
  - L{replichat.testing.simclients}: the workload, whose connections to the
    servers are L{replichat.testing.simclientconn};
  - L{replichat.testing.nemesis}: the faults, each kind described there;
  - L{replichat.testing.simcluster}: the servers, their processes and
    network;
  - this module: L{Simulation}, which runs the phases, and L{run_seed};
  - L{replichat.testing.simresults}: what a run found (L{RunResult}) and the
    totals over many (L{Summary});
  - L{replichat.testing.simcli}: C{bin/simulate}, which runs many seeds and
    prints a summary.

Determinism: no wall clock, no randomness but the seed's (password records
come from L{SimHasher}, session tokens from the seed), nothing iterated in
an order that depends on object ids.  Not modelled: steps of the wall clock
(the servers' reactors schedule on C{time.time}), disk errors (EIO, ENOSPC:
tested on real processes), and servers joining or leaving.
"""

from __future__ import annotations

import gc
import hashlib
import random
import time
from collections import Counter
from contextlib import contextmanager
from functools import partial
from typing import Any, Iterator

from attrs import evolve
from twisted.internet.defer import Deferred, succeed
from twisted.logger import globalLogPublisher

from replichat import failpoints
from replichat.config import parse_config
from replichat.handler import ChatHandler
from replichat.node import Timing
from replichat.testing import history as checker
from replichat.testing.nemesis import Nemesis
from replichat.testing.simclientconn import ClientConnection
from replichat.testing.simclients import SimClient
from replichat.testing.simcluster import SimCluster
from replichat.testing.simresults import RunResult, SimAnomaly
from replichat.testing.simsettings import SCENARIOS, SPLITTING, Settings


class SimHasher:
    """
    L{replichat.passwords.PasswordHasher}'s interface, synchronous and
    deterministic: a record is an unsalted digest, so that every run of a
    seed logs the same bytes (scrypt's salt is random, and slow).
    """

    @staticmethod
    def _digest(password: str) -> str:
        return hashlib.sha256(password.encode("utf-8")).hexdigest()

    def hash(self, password: str) -> Deferred:
        return succeed({"alg": "sim", "hash": self._digest(password)})

    def check(self, password: str, record: dict | None) -> Deferred:
        return succeed(record is not None and record.get("hash") == self._digest(password))


class _Trace:
    """
    A run's trace: one line per event, stamped with the simulated time.
    """

    def __init__(self, clock) -> None:
        self.clock = clock
        self.lines: list[str] = []

    def __call__(self, text: str) -> None:
        self.lines.append("%9.3f %s" % (self.clock.seconds(), text))


class Simulation:
    """
    One seed's run (see the module docstring); L{run_seed} drives it.
    """

    def __init__(self, seed: int, settings: Settings) -> None:
        self.seed = seed
        self.settings = settings
        self.net_rng = random.Random("replichat-sim-net:%d" % (seed,))
        self.cluster = SimCluster(
            settings.servers, timing=Timing(0.1, 0.5), snapshot_every=settings.snapshot_every)
        self.clock = self.cluster.clock
        self.server_ids = tuple(range(1, settings.servers + 1))
        self.history = checker.History()
        self.trace = _Trace(self.clock)
        self.faults: Counter = Counter()
        self.anomalies: list[SimAnomaly] = []
        self.stalls = 0
        self.heal_epoch = 0
        self.accepting = True
        self.handlers: dict[int, ChatHandler] = {}
        self.connections: dict[int, list[ClientConnection]] = {}
        self.names: list[str] = []  # usernames created, in order (clients send to them)
        self.ghosts: list = []  # Replicas of crashed servers, as they died
        self.strict = not (SPLITTING & set(SCENARIOS[settings.scenario]))
        self._serial = 0
        self._roles: dict[int, tuple] = {}
        self.config = parse_config({
            "nodes": {i: {"host": "127.0.0.%d" % (i,), "client_port": 7000 + i,
                          "peer_port": 7100 + i} for i in self.server_ids},
            "data_dir": "unused",
        })
        self.hasher = SimHasher()
        tokens = random.Random("replichat-sim-tokens:%d" % (seed,))
        # Session tokens from the seed, so the log (which holds their
        # hashes) is the same on every run.
        self.token = lambda nbytes: "tok-%032x" % (tokens.getrandbits(128),)
        self.nemesis = Nemesis(self, SCENARIOS[settings.scenario])
        per_client = max(1, settings.ops // settings.clients)
        self.clients = [SimClient(self, "c%d" % (i,), per_client)
                        for i in range(1, settings.clients + 1)]
        self._base_delay = {
            (a, b): self.net_rng.uniform(0.0001, 0.002)
            for a in self.server_ids for b in self.server_ids if a != b
        }
        network = self.cluster.network
        network.delay = self.peer_delay
        network.reconnect_delay = lambda: self.net_rng.uniform(0.02, 0.3)
        network.retransmit_delay = lambda: self.net_rng.uniform(0.0, 0.3)
        self.cluster.on_fatal = self._on_fatal

    # -- time ------------------------------------------------------------------------

    def sleep(self, seconds: float) -> Deferred:
        d: Deferred = Deferred()
        self.clock.callLater(seconds, d.callback, None)
        return d

    def peer_delay(self, src: int, dst: int) -> float:
        delay = self._base_delay.get((src, dst), 0.0005) + self.net_rng.expovariate(2000.0)
        if self.clock.seconds() < self.nemesis.slow_net_until:
            delay += self.net_rng.uniform(0.002, 0.04)
        return delay

    def client_delay(self) -> float:
        delay = self.net_rng.uniform(0.0001, 0.001)
        if self.clock.seconds() < self.nemesis.slow_net_until:
            delay += self.net_rng.uniform(0.001, 0.02)
        return delay

    # -- servers ---------------------------------------------------------------------

    def start(self, node_id: int) -> None:
        try:
            node = self.cluster.start(node_id)
        except Exception as error:
            self.flag("recovery", "node %d cannot start: %s" % (node_id, error))
            self.cluster.nodes.pop(node_id, None)
            self.cluster.processes.pop(node_id, None)
            self.cluster.network.detach(node_id)
            return
        self.handlers[node_id] = ChatHandler(
            node, self.hasher, self.config, self.config.limits, self.cluster.processes[node_id],
            token=self.token,
        )
        self.connections[node_id] = []
        self.update_sync_hook(node_id)

    def restart(self, node_id: int) -> None:
        if node_id not in self.cluster.nodes:
            self.trace("restart %d" % (node_id,))
            self.start(node_id)

    def crash(self, node_id: int) -> None:
        node = self.cluster.nodes.get(node_id)
        if node is not None:
            self.cluster.crash(node_id)
            self.crashed(node_id, node)

    def crashed(self, node_id: int, node) -> None:
        """
        A server died: its client connections die with it; remember what
        it had committed.
        """
        if self.strict:
            disk = self.cluster.disks[node_id]
            self.ghosts.append(checker.Replica.of_storage(
                node_id, disk.log, disk.snapshots, node.commit_index))
        self.handlers.pop(node_id, None)
        for conn in self.connections.pop(node_id, []):
            conn.server_died()
        self._roles.pop(node_id, None)

    def resume(self, node_id: int) -> None:
        if node_id in self.cluster.network.paused:
            self.trace("resume %d" % (node_id,))
            self.cluster.network.resume(node_id)

    def heal_network(self) -> None:
        network = self.cluster.network
        if network.blocked:
            self.trace("heal")
            network.heal()

    def update_sync_hook(self, node_id: int) -> None:
        if node_id in self.cluster.processes:
            self.cluster.set_sync_hook(node_id, partial(self.nemesis.at_sync, node_id))

    def _on_fatal(self, node_id: int, reason: str) -> None:
        # Called inside the node's own code: act in a turn of our own.  The
        # server exits; systemd starts it again.
        node = self.cluster.nodes.get(node_id)
        self.trace("fatal %d: %s" % (node_id, reason))
        self.flag("fatal", "node %d stopped itself: %s" % (node_id, reason))

        def exit_and_restart() -> None:
            if self.cluster.nodes.get(node_id) is node:
                self.crash(node_id)
                self.clock.callLater(1.0, self.restart, node_id)

        self.clock.callLater(0, exit_and_restart)

    def open_connection(self, client: SimClient, node_id: int) -> ClientConnection:
        self._serial += 1
        conn = ClientConnection(self, client, node_id, self._serial)
        self.connections[node_id].append(conn)
        return conn

    # -- observing -------------------------------------------------------------------

    def flag(self, kind: str, text: str) -> None:
        self.anomalies.append(SimAnomaly(kind, text))

    def observe(self) -> None:
        for node_id in sorted(self.cluster.nodes):
            node = self.cluster.nodes[node_id]
            seen = (node.role, node.epoch, node.leader_id)
            if self._roles.get(node_id) != seen:
                self._roles[node_id] = seen
                role, epoch, leader = seen
                if role == "follower":
                    what = "follower of %d" % (leader,)
                else:
                    what = role
                self.trace("node %d %s epoch %d" % (node_id, what, epoch))

    def converged(self) -> bool:
        """
        Every server runs, one leads and serves, and all have committed and
        applied its whole log.
        """
        nodes = self.cluster.nodes
        if sorted(nodes) != list(self.server_ids) or self.cluster.network.paused:
            return False
        leader = self.cluster.leader()
        if leader is None:
            return False
        target = leader.disk_log.last_index
        epoch = leader.disk_log.last_epoch
        if not all(
            n.failed is None and n.commit_index == target and n.state.applied_index == target
            and n.disk_log.last_epoch == epoch
            for n in nodes.values()
        ):
            return False
        # Equal indexes are not equal logs (a server can be stuck on a
        # divergent suffix of the same length): compare the states too.
        digest = leader.state.digest()
        return all(n.state.digest() == digest for n in nodes.values())

    def idle(self) -> bool:
        return all(c.done for c in self.clients)

    def run_until(self, limit: float, predicate=None) -> bool:
        """
        Run events until C{limit} or until C{predicate()} holds.
        """
        advance = self.cluster.advance_to_next
        observe = self.observe
        while True:
            if predicate is not None and predicate():
                return True
            try:
                if not advance(limit):
                    return predicate is not None and predicate()
            except Exception as error:
                # A real server survives an exception in a callback (AMP
                # and the reactor log it); here it is a bug found.
                self.trace("exception: %r" % (error,))
                self.flag("exception", "%s: %s" % (type(error).__name__, error))
            observe()

    # -- the phases --------------------------------------------------------------------

    def spawn(self, coroutine, what: str) -> Deferred:
        d = Deferred.fromCoroutine(coroutine)

        def failed(failure) -> None:
            self.flag("simulator", "%s failed: %s" % (what, failure.getTraceback()))

        d.addErrback(failed)
        return d

    def heal_all(self) -> None:
        self.heal_epoch += 1
        self.nemesis.heal()
        self.trace("heal all")
        self.cluster.network.heal()
        for node_id in sorted(self.cluster.network.paused):
            self.resume(node_id)
        for node_id in self.server_ids:
            self.restart(node_id)
            self.update_sync_hook(node_id)

    def run(self) -> tuple[bool, Any]:
        """
        The phases of a run; whether it converged, and the checker's report.
        """
        s = self.settings
        self.trace("start %d servers, %d clients, scenario %s, mode %s"
                   % (s.servers, s.clients, s.scenario, s.mode))
        for node_id in self.server_ids:
            self.start(node_id)
        for client in self.clients:
            self.spawn(client.run(), client.name)
        self.spawn(self.nemesis.run(s.faulty), "nemesis")
        self.run_until(s.faulty)
        self.accepting = False
        self.heal_all()
        healed = self.clock.seconds()
        if s.mode == "liveness":
            self.require_progress(healed + s.progress)
        converged = self.quiet(healed + s.quiet)
        self.trace("end: %s" % ("converged" if converged else "did not converge"))
        if not converged and s.mode == "liveness":
            self.flag("not-converged", "did not converge within %.1fs of the heal: %s" % (
                s.quiet, self._positions()))
        replicas = [checker.Replica.of_node(self.cluster.nodes[n])
                    for n in sorted(self.cluster.nodes)]
        # A read acknowledged on a side that lost is not re-proposed (see
        # replichat.merge); the checker expects that only if told.
        split = bool(SPLITTING & set(self.faults))
        report = checker.check(self.history, replicas, converged=converged, partitioned=split)
        if self.strict:
            self.check_never_cut(replicas)
        return converged, report

    def require_progress(self, deadline: float) -> None:
        """
        Liveness: a fresh write, retried as a client would, commits before
        C{deadline}.
        """
        probe = SimClient(self, "probe", 0)
        committed: list[bool] = []

        async def write() -> None:
            answer = await probe.call(
                "create_account", {"username": "probe", "password": "pw-probe"},
                rid=probe.next_rid(), attempts=1000, deadline=deadline)
            if answer.get("ok"):
                committed.append(True)

        self.spawn(write(), "probe")
        if not self.run_until(deadline, lambda: bool(committed)):
            self.flag("no-progress", "no write committed within %.1fs of the heal"
                      % (self.settings.progress,))

    def settled(self) -> bool:
        return self.idle() and self.converged()

    def quiet(self, deadline: float) -> bool:
        """
        Run until the clients are done and the servers converged (and still
        are a little later, for the last pushes and heartbeats), or until
        C{deadline}; whether they converged.
        """
        while self.run_until(deadline, self.settled):
            self.run_until(self.clock.seconds() + 0.5)
            if self.settled() or self.clock.seconds() >= deadline:
                break
        return self.converged()

    def check_never_cut(self, replicas: list) -> None:
        """
        Every entry a server had committed when it crashed is the entry at
        its index in every final replica that holds that index committed.
        """
        final: dict[int, tuple] = {}
        for replica in replicas:
            for entry in replica.entries:
                if entry.index <= replica.commit_index:
                    final.setdefault(entry.index, (replica.node_id, entry))
        for ghost in self.ghosts:
            for entry in ghost.entries:
                if entry.index > ghost.commit_index or entry.index not in final:
                    continue
                holder, kept = final[entry.index]
                if (kept.epoch, kept.data) != (entry.epoch, entry.data):
                    self.flag(checker.DIVERGED, (
                        "node %d had committed entry %d (epoch %d: %s) when it crashed, but "
                        "node %d ends with entry %d of epoch %d there: %s"
                        % (ghost.node_id, entry.index, entry.epoch, entry.data[:100].decode(
                            "utf-8", "replace"), holder, entry.index, kept.epoch,
                           kept.data[:100].decode("utf-8", "replace"))))
                    return

    def _positions(self) -> str:
        parts = []
        for node_id in self.server_ids:
            node = self.cluster.nodes.get(node_id)
            if node is None:
                parts.append("%d down" % (node_id,))
            else:
                parts.append("%d %s commit %d last %d" % (
                    node_id, node.role, node.commit_index, node.disk_log.last_index))
        return ", ".join(parts)


@contextmanager
def _capture_logged_failures(sim: Simulation) -> Iterator[None]:
    # A failure logged by a server (a loop callback that raised, a push
    # observer that failed) is a bug even when the run goes on.
    # "Unhandled error in Deferred" is logged when the Deferred is garbage
    # collected, so collect before (the previous run's garbage) and after
    # (this run's): each is blamed on the run that made it.
    def observe(event: dict) -> None:
        failure = event.get("log_failure")
        if failure is not None:
            unhandled = event.get("log_namespace") == "twisted.internet.defer"
            kind = "unhandled-error" if unhandled else "exception"
            sim.flag(kind, "logged: %s: %s" % (
                failure.type.__name__, failure.getErrorMessage()))

    gc.collect()
    globalLogPublisher.addObserver(observe)
    try:
        yield
        gc.collect()
    finally:
        globalLogPublisher.removeObserver(observe)


def run_seed(seed: int, settings: Settings | None = None, **overrides: Any) -> RunResult:
    """
    Run one seed; deterministic: the same seed and settings give the same
    trace.

    @param overrides: L{Settings} fields (C{mode}, C{scenario}, C{servers},
        C{ops}...), for convenience.
    """
    base = settings or Settings()
    if overrides:
        base = evolve(base, **overrides)
    settings = base.for_seed(seed)
    started = time.perf_counter()
    sim = Simulation(seed, settings)
    with _capture_logged_failures(sim):
        converged, report = sim.run()
    anomalies = tuple(report.anomalies) + tuple(sim.anomalies)
    for anomaly in anomalies:
        sim.trace("anomaly %s: %s" % (anomaly.kind, anomaly.text))
    ops = Counter()
    for op in sim.history.ops:
        ops["%s %s" % (op.op, op.status or "pending")] += 1
    return RunResult(
        seed=seed,
        settings=settings,
        anomalies=anomalies,
        trace=tuple(sim.trace.lines),
        faults=dict(sim.faults),
        ops=dict(ops),
        simulated=sim.clock.seconds(),
        wall=time.perf_counter() - started,
        converged=converged,
        stalls=sim.stalls,
        planted=tuple(sorted(failpoints.active)),
        report=report,
        history=sim.history,
    )


if __name__ == "__main__":
    # Older scripts ran the simulator as this module; bin/simulate runs simcli.
    import sys

    from replichat.testing.simcli import main

    sys.exit(main())
