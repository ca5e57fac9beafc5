# -*- test-case-name: tests.test_simulate -*-
"""
Tests for the deterministic simulator: the pieces it adds to
L{replichat.simulation} (the heap clock, processes that stop and die, a
network that behaves like TCP under partitions, resets and jitter, slow and
fatal fsyncs), and L{replichat.testing.sim} itself: a seed replays byte for
byte, a sweep of seeds finds nothing on the current code, and each planted
bug (L{replichat.failpoints}) is found within a bounded number of seeds.
"""

from __future__ import annotations

import random

from twisted.trial.unittest import SynchronousTestCase

from replichat import failpoints
from replichat.testing.sim import run_seed
from replichat.testing.simclock import SimClock
from replichat.testing.simcluster import SimCluster
from replichat.testing.simnet import SimNetwork
from replichat.testing.simprocess import Process
from replichat.testing.simsettings import FAULTS, SCENARIOS, SPLITTING, Settings

PASSWORD = {"alg": "sim", "hash": ""}


def create(node, name, rid):
    return node.propose({"op": "create_account", "who": None, "username": name,
                         "password": PASSWORD, "ts": 1.0, "rid": rid, "fp": "fp-" + name})


class FakeNode:
    """
    What L{SimNetwork} calls on a server, recorded.
    """

    def __init__(self, node_id: int, clock) -> None:
        self.node_id = node_id
        self.clock = clock
        self.stopped = False
        self.events: list[tuple] = []

    def receive(self, src, message):
        self.events.append(("got", src, message, self.clock.seconds()))

    def peer_connected(self, peer):
        self.events.append(("connected", peer))

    def peer_lost(self, peer):
        self.events.append(("lost", peer))

    def peer_refused(self, peer):
        self.events.append(("refused", peer))

    def got(self, src=None) -> list:
        return [e[2] for e in self.events if e[0] == "got" and src in (None, e[1])]


class SimClockTests(SynchronousTestCase):
    def test_order(self):
        """
        Calls run by time, ties in the order they were scheduled, as with
        L{twisted.internet.task.Clock}; a cancelled call does not run and a
        reset one runs at its new time.
        """
        clock = SimClock()
        ran = []
        clock.callLater(2, ran.append, "c")
        clock.callLater(1, ran.append, "a")
        clock.callLater(1, ran.append, "b")
        clock.callLater(1.5, ran.append, "cancelled").cancel()
        moved = clock.callLater(0.5, ran.append, "moved")
        moved.reset(3)
        clock.advance(2.5)
        self.assertEqual(ran, ["a", "b", "c"])
        self.assertEqual([c.getTime() for c in clock.getDelayedCalls()], [3.0])
        clock.advance(1)
        self.assertEqual(ran, ["a", "b", "c", "moved"])
        self.assertIsNone(clock.next_time())


class ProcessTests(SynchronousTestCase):
    def test_stopped_process_waits(self):
        """
        A stopped process runs no timer and reads and writes nothing; when
        it runs again it writes first, then runs its overdue timers, then
        reads.  A dead one never does any of it.
        """
        clock = SimClock()
        process = Process(clock)
        done = []
        process.stop("sigstop")
        process.callLater(1, done.append, "timer")
        process.receive(lambda: done.append("read"))
        process.emit(lambda: done.append("write"))
        clock.advance(5)
        self.assertEqual(done, [])
        process.cont("sigstop")
        self.assertEqual(done, ["write", "timer", "read"])
        process.kill()
        process.callLater(0, done.append, "late")
        process.receive(lambda: done.append("late read"))
        clock.advance(1)
        self.assertEqual(done, ["write", "timer", "read"])

    def test_stops_nest(self):
        """
        A process stopped for two reasons runs only when both are over.
        """
        clock = SimClock()
        process = Process(clock)
        done = []
        process.stop("sigstop")
        process.stop("fsync")
        process.receive(lambda: done.append("read"))
        process.cont("fsync")
        self.assertEqual(done, [])
        process.cont("sigstop")
        self.assertEqual(done, ["read"])


class NetworkTests(SynchronousTestCase):
    def network(self, n=3, jitter=False):
        clock = SimClock()
        network = SimNetwork(clock)
        if jitter:
            rng = random.Random(7)
            network.delay = lambda src, dst: rng.uniform(0.0001, 0.05)
        nodes = {}
        for i in range(1, n + 1):
            nodes[i] = FakeNode(i, clock)
            network.attach(nodes[i])
        return clock, network, nodes

    def test_fifo_per_connection(self):
        """
        With random delays, each connection delivers in the order sent,
        while messages on different connections overtake each other.
        """
        clock, network, nodes = self.network(jitter=True)
        for i in range(50):
            network.send(1, 3, ("from 1", i))
            network.send(2, 3, ("from 2", i))
            clock.advance(0.001)
        clock.advance(1)
        got = nodes[3].got()
        self.assertEqual([m for m in got if m[0] == "from 1"], [("from 1", i) for i in range(50)])
        self.assertEqual([m for m in got if m[0] == "from 2"], [("from 2", i) for i in range(50)])
        self.assertNotEqual(got, [m for i in range(50) for m in (("from 1", i), ("from 2", i))])

    def test_one_way_block(self):
        """
        With 1 -> 2 blocked, 2's messages still reach 1 on the open
        connection; 1's wait and arrive, in order, at heal.
        """
        clock, network, nodes = self.network()
        network.block(1, 2)
        network.send(1, 2, "a")
        network.send(2, 1, "b")
        network.send(1, 2, "c")
        clock.advance(1)
        self.assertEqual(nodes[1].got(2), ["b"])
        self.assertEqual(nodes[2].got(1), [])
        network.heal()
        clock.advance(1)
        self.assertEqual(nodes[2].got(1), ["a", "c"])

    def test_stalled_partition_then_reset(self):
        """
        Across a stalled partition nothing is delivered and nobody is told
        of a loss; a reset then loses what waited, and the pair stays apart
        until heal, when it reconnects.
        """
        clock, network, nodes = self.network()
        network.partition([1], [2, 3], reset=False)
        network.send(1, 2, "lost")
        network.send(2, 3, "fine")
        clock.advance(1)
        self.assertEqual(nodes[2].got(1), [])
        self.assertEqual(nodes[3].got(2), ["fine"])
        self.assertNotIn(("lost", 1), nodes[2].events)
        network.reset(1, 2)
        self.assertIn(("lost", 1), nodes[2].events)
        network.send(1, 2, "no connection")
        network.heal()
        clock.advance(1)
        self.assertEqual(nodes[2].got(1), [])
        self.assertEqual(nodes[2].events[-1], ("connected", 1))
        network.send(1, 2, "after")
        clock.advance(1)
        self.assertEqual(nodes[2].got(1), ["after"])

    def test_crash_behind_partition(self):
        """
        A server that dies behind a partition is learnt dead (lost, refused)
        only at heal; one that dies in plain sight, at once.
        """
        clock, network, nodes = self.network()
        network.partition([1], [2, 3], reset=False)
        network.detach(1)
        self.assertNotIn(("refused", 1), nodes[2].events)
        network.detach(3)
        self.assertIn(("refused", 3), nodes[2].events)
        network.heal()
        self.assertEqual(nodes[2].events[-2:], [("lost", 1), ("refused", 1)])

    def test_paused_server_reads_late(self):
        """
        What is sent to a stopped server waits for it, in order.
        """
        clock, network, nodes = self.network()
        network.pause(2)
        network.send(1, 2, "a")
        network.send(3, 2, "b")
        clock.advance(1)
        self.assertEqual(nodes[2].got(), [])
        network.resume(2)
        self.assertEqual(nodes[2].got(), ["a", "b"])


class SyncFaultTests(SynchronousTestCase):
    def cluster(self):
        cluster = SimCluster(3)
        cluster.start_all()
        cluster.run_until(lambda: cluster.leader() is not None, 5.0)
        return cluster, cluster.leader()

    def test_slow_fsync_blocks_the_process(self):
        """
        A leader whose fsync takes a second answers nothing, and sends
        nothing, until it is done.
        """
        cluster, leader = self.cluster()
        stalls = []

        def hook(sync):
            stalls.append(cluster.clock.seconds())
            cluster.stall_sync(leader.node_id, 1.0, sync)
            return True

        cluster.set_sync_hook(leader.node_id, hook)
        d = create(leader, "slow", "r1")
        cluster.run(0.5)
        self.assertNoResult(d)
        self.assertEqual(len(stalls), 1)
        cluster.run(0.6)
        self.assertEqual(self.successResultOf(d).result, {"username": "slow"})

    def test_crash_at_sync(self):
        """
        A crash before an fsync completes loses the batch; just after, the
        batch is durable but nothing of that turn was sent.
        """
        for durable in (False, True):
            cluster, leader = self.cluster()
            node_id = leader.node_id
            cluster.set_sync_hook(
                node_id, lambda sync: cluster.crash_at_sync(node_id, sync, durable) or True
            )
            before = cluster.disks[node_id].log.last_index
            d = create(leader, "doomed", "r1")
            cluster.run(0.01)
            self.assertNotIn(node_id, cluster.nodes)
            self.assertNoResult(d)
            kept = cluster.disks[node_id].log.last_index
            self.assertEqual(kept, before + 1 if durable else before)


class SimTestCase(SynchronousTestCase):
    def run_seed(self, seed, settings, **overrides):
        """
        L{run_seed}, with the errors it logged flushed: a Deferred's error
        that nothing handled, logged when it is collected, is one of the
        run's anomalies already (C{unhandled-error}), for the test to judge.
        """
        result = run_seed(seed, settings, **overrides)
        self.flushLoggedErrors()
        return result


class DeterminismTests(SimTestCase):
    def test_same_seed_same_trace(self):
        """
        A seed replays byte for byte; another seed does something else.
        """
        settings = Settings(mode="both", ops=40, faulty=4.0)
        first = self.run_seed(3, settings)
        again = self.run_seed(3, settings)
        self.assertEqual(first.digest, again.digest)
        self.assertEqual(first.trace, again.trace)
        self.assertGreater(len(first.trace), 50)
        self.assertNotEqual(self.run_seed(4, settings).digest, first.digest)

    def test_replay_command(self):
        """
        The replay command names the seed and every setting drawn from it.
        """
        result = self.run_seed(5, Settings(ops=30, faulty=2.0))
        s = result.settings
        self.assertEqual(
            result.replay_command(),
            "bin/simulate --seed 5 --trace --mode safety --scenario %s --servers %d "
            "--ops 30 --faulty 2.0" % (s.scenario, s.servers),
        )

    def test_everything_happens(self):
        """
        Over a few seeds, every fault kind is injected and every chat
        operation is done.
        """
        faults, ops, stalls = set(), set(), 0
        for seed in range(12):
            scenario = sorted(SCENARIOS)[seed % len(SCENARIOS)]
            result = self.run_seed(seed, Settings(scenario=scenario, ops=80, faulty=6.0))
            faults.update(result.faults)
            ops.update(key.split()[0] for key in result.ops)
            stalls += result.stalls
        self.assertEqual(faults, FAULTS)
        # The slow fsync hooks the node's fsync turn (Node._sync): if that
        # changed, no fsync would stall.
        self.assertGreater(stalls, 0)
        self.assertEqual(ops, {"create_account", "login", "resume", "logout", "send", "read",
                               "delete_messages", "delete_account", "history",
                               "list_accounts"})


#: The CI sweep's runs: small enough that its 300 seeds take about 20
#: seconds.
SWEEP = Settings(mode="both", ops=60, faulty=5.0)


class SweepTests(SimTestCase):
    def sweep(self, seeds, scenarios):
        """
        Run C{seeds}, each with the next of C{scenarios}, and fail with the
        description (anomalies, trace tail, replay command) of the first
        seeds that found an anomaly.
        """
        found = []
        for seed in seeds:
            scenario = scenarios[seed % len(scenarios)]
            result = self.run_seed(seed, SWEEP, scenario=scenario)
            if result.anomalies:
                found.append(result.describe(tail=20))
        self.assertEqual(found, [], "%d seeds found anomalies; the first:\n%s"
                         % (len(found), "\n\n".join(found[:3])))

    def test_crashes(self):
        """
        Crashes of every kind (a committed entry must then never be cut),
        in both modes: no anomaly.
        """
        strict = sorted(s for s, kinds in SCENARIOS.items() if not SPLITTING & set(kinds))
        self.sweep(range(0, 150), strict)

    def test_all_faults(self):
        """
        Every fault mix, partitions and pauses too, in both modes: no
        anomaly.
        """
        self.sweep(range(1000, 1150), sorted(SCENARIOS))


class PlantedBugTests(SimTestCase):
    """
    Each planted bug is found within a bounded number of seeds of the
    commit-path scenario (crashes at every point of the commit path): a
    seed reports an anomaly with the bug on, and none with it off.
    """

    LIMIT = 100

    def find(self, bug):
        """
        The first seed under C{LIMIT} that finds an anomaly with C{bug} on
        and none with it off.
        """
        settings = Settings(mode="both", ops=60, faulty=5.0, scenario="commit-path")
        for seed in range(self.LIMIT):
            with failpoints.planted(bug):
                found = self.run_seed(seed, settings)
            if found.anomalies and not self.run_seed(seed, settings).anomalies:
                self.assertEqual(found.planted, (bug,))
                self.assertIn("--plant " + bug, found.replay_command())
                return found
        self.fail("%s not found in %d seeds" % (bug, self.LIMIT))

    def test_ack_before_followers_fsync(self):
        """
        A leader that acknowledges before its followers fsync loses the
        write when it crashes right after the answer leaves.
        """
        self.find(failpoints.ACK_BEFORE_FOLLOWERS_FSYNC)

    def test_skip_suffix_truncation(self):
        """
        A follower that keeps its divergent suffix ends with another log.
        """
        self.find(failpoints.SKIP_SUFFIX_TRUNCATION)

    def test_forget_rid_dedupe(self):
        """
        A retry after a failover is applied twice.
        """
        self.find(failpoints.FORGET_RID_DEDUPE)

    def test_stale_leader_after_restart(self):
        """
        After a full outage a stale server leads and cuts what was
        committed.
        """
        self.find(failpoints.STALE_LEADER_AFTER_RESTART)
