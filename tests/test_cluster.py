# -*- test-case-name: tests.test_cluster -*-
"""
Whole clusters of real L{replichat.node.Node}s in one process, on a
C{task.Clock} and an in-memory network (L{replichat.simulation}): elections,
commit, failover, catch-up, fencing, full restarts, membership.
"""

from __future__ import annotations

from itertools import permutations

from twisted.trial.unittest import SynchronousTestCase

from replichat import election
from replichat.errors import ChatError
from replichat.peermessages import Append, AppendReply
from replichat.testing.simcluster import SimCluster

PASSWORD = {"alg": "scrypt", "n": 16, "r": 8, "p": 1, "salt": "", "hash": ""}


def create(node, name, rid=None):
    command = {"op": "create_account", "who": None, "username": name,
               "password": PASSWORD, "ts": 1.0}
    if rid is not None:
        command.update(rid=rid, fp="fp-" + name)
    return node.propose(command)


def names(node):
    return sorted(node.state.uids_by_name)


class ClusterTestCase(SynchronousTestCase):
    def cluster(self, size=3, **kwargs) -> SimCluster:
        cluster = SimCluster(size, **kwargs)
        self.addCleanup(lambda: self.assertEqual(cluster.fatal, []))
        return cluster

    def elect(self, cluster, timeout=5.0):
        cluster.run_until(lambda: cluster.leader() is not None, timeout)
        return cluster.leader()

    def write(self, cluster, name, rid=None):
        """
        Commit one account through the current leader; its outcome.
        """
        leader = self.elect(cluster)
        d = create(leader, name, rid)
        cluster.run_until(lambda: d.called, 2.0)
        return self.successResultOf(d)

    def settle(self, cluster, seconds=1.0):
        cluster.run(seconds)

    def assertConverged(self, cluster):
        """
        Every running server has applied the same entries to the same
        state, and their logs agree.
        """
        nodes = list(cluster.nodes.values())
        commit = max(n.commit_index for n in nodes)
        for node in nodes:
            self.assertEqual(node.commit_index, commit, "node %d lags" % (node.node_id,))
            self.assertEqual(node.state.to_snapshot(), nodes[0].state.to_snapshot())
        for node in nodes[1:]:
            ours = [(e.index, e.epoch, e.data) for e in node.disk_log.read(node.disk_log.first_index)]
            theirs = {(e.index, e.epoch, e.data) for e in nodes[0].disk_log.read(nodes[0].disk_log.first_index)}
            self.assertTrue(all(e in theirs for e in ours if e[0] <= commit))


class ElectionTests(ClusterTestCase):
    def test_every_start_order(self):
        """
        Whatever order three servers start in, exactly one leads, the one
        with the highest id (their logs are equal), and the others follow it.
        """
        for order in permutations([1, 2, 3]):
            cluster = self.cluster()
            for node_id in order:
                cluster.start(node_id)
                cluster.run(0.05)
            leader = self.elect(cluster)
            self.assertEqual(leader.node_id, 3, order)
            cluster.run(0.5)
            self.assertEqual([n.node_id for n in cluster.leaders()], [3])
            self.assertEqual({n.leader_id for n in cluster.nodes.values()}, {3})
            self.assertEqual(self.write(cluster, "a").result, {"username": "a"})

    def test_waits_for_every_member_at_first(self):
        """
        A server that has not heard from every member of its live set since
        it started does not lead: one of them may hold newer commits.
        """
        cluster = self.cluster()
        cluster.start(1)
        cluster.start(2)
        cluster.run(3.0)
        self.assertEqual(cluster.leaders(), [])
        self.assertEqual({n.role for n in cluster.nodes.values()}, {"candidate"})

    def test_freshest_wins(self):
        """
        The rank is (last epoch, last index, id): a fresher log beats a
        higher id.
        """
        Rank = election.Rank
        self.assertGreater(Rank(2, 1, 1), Rank(1, 9, 3))
        self.assertGreater(Rank(2, 5, 1), Rank(2, 4, 3))
        self.assertGreater(Rank(2, 5, 3), Rank(2, 5, 1))

    def test_outcome(self):
        """
        An election finishes when every live member answered or is known
        down, and not while a member never heard from is missing (unless
        forced).
        """
        Rank, View = election.Rank, election.PeerView
        me = Rank(1, 5, 1)
        live = {1, 2, 3}
        self.assertIsNone(election.outcome(1, me, live, {}, {}))
        self.assertEqual(
            election.outcome(1, me, live, {2: Rank(1, 5, 2)},
                             {3: View(heard=True, down=True)}), 2)
        self.assertIsNone(
            election.outcome(1, me, live, {2: Rank(1, 4, 2)}, {3: View(heard=False, down=True)}))
        self.assertEqual(
            election.outcome(1, me, live, {2: Rank(1, 4, 2)}, {3: View(heard=False, down=True)},
                             forced=True), 1)
        self.assertIsNone(election.outcome(4, me, live, {}, {}), "not in the live set")

    def test_outcome_skips_a_waiting_contender(self):
        """
        The freshest contender that cannot finish an election itself (it
        waits to hear from a member since it restarted) is passed over for
        one as fresh that can; never for a less fresh one.
        """
        Rank, View = election.Rank, election.PeerView
        me = Rank(1, 5, 1)
        live = {1, 2, 3}
        down = {3: View(heard=True, down=True)}
        self.assertEqual(election.outcome(1, me, live, {2: Rank(1, 5, 2)}, down), 2)
        self.assertEqual(
            election.outcome(1, me, live, {2: Rank(1, 5, 2)}, down, waiting={2}), 1)
        self.assertIsNone(
            election.outcome(1, me, live, {2: Rank(1, 6, 2)}, down, waiting={2}))

    def test_returning_server_does_not_depose(self):
        """
        A server that restarts with a higher id joins the healthy leader as
        a follower; the leader and its epoch stay.
        """
        cluster = self.cluster()
        cluster.start_all()
        first = self.elect(cluster)
        self.assertEqual(first.node_id, 3)
        cluster.crash(3)
        second = self.elect(cluster)
        self.write(cluster, "x")
        epoch = second.epoch
        cluster.start(3)
        cluster.run(2.0)
        self.assertIs(cluster.leader(), second)
        self.assertEqual(second.epoch, epoch)
        self.assertEqual(cluster.nodes[3].role, "follower")
        self.assertEqual(sorted(second.cluster.live), [1, 2, 3])
        self.assertConverged(cluster)


class CommitTests(ClusterTestCase):
    def test_commit_waits_for_every_live_follower(self):
        """
        A write is acknowledged only once every live follower has it
        durable; all replicas then apply the same state.
        """
        cluster = self.cluster()
        cluster.start_all()
        leader = self.elect(cluster)
        cluster.run(0.2)
        held = []
        cluster.network.drop = lambda src, dst, m: dst == 1 and isinstance(m, Append) and (held.append(m) or True)
        d = create(leader, "alice")
        cluster.run(0.2)
        self.assertNoResult(d)  # node 1 has not got it
        self.assertTrue(held)
        cluster.network.drop = None
        cluster.run_until(lambda: d.called, 2.0)
        self.assertEqual(self.successResultOf(d).result, {"username": "alice"})
        self.settle(cluster)
        self.assertConverged(cluster)
        for node in cluster.nodes.values():
            self.assertIn("alice", names(node))

    def test_pipelined_batches(self):
        """
        Batches go out without waiting for earlier ones to be answered, one
        Append per batch per follower.
        """
        cluster = self.cluster()
        cluster.start_all()
        leader = self.elect(cluster)
        cluster.run(0.3)
        appends = []
        cluster.network.drop = lambda src, dst, m: isinstance(m, Append) and m.entries and appends.append((dst, len(m.entries))) and False
        ds = []
        for batch in range(5):
            ds += [create(leader, "u%d-%d" % (batch, i)) for i in range(10)]
            cluster.clock.advance(0)
            cluster.clock.advance(0)
        # All five batches are out before any answer came back.
        self.assertEqual(sorted(appends), sorted([(1, 10), (2, 10)] * 5))
        cluster.run_until(lambda: all(d.called for d in ds))
        self.settle(cluster)
        self.assertConverged(cluster)
        self.assertEqual(len(names(cluster.nodes[1])), 50)


class FailoverTests(ClusterTestCase):
    def test_leader_crash_before_followers_fsync(self):
        """
        A leader crashes after its own fsync but before any follower got the
        batch: the write was never acknowledged, the new leader does not have
        it, and the old leader's copy is dropped when it returns; a retry by
        rid then applies it once.
        """
        cluster = self.cluster()
        cluster.start_all()
        old = self.elect(cluster)
        self.write(cluster, "before")
        cluster.network.drop = lambda src, dst, m: src == old.node_id and isinstance(m, Append)
        d = create(old, "lost", rid="r1")
        cluster.run(0.01)
        self.assertNoResult(d)
        self.assertEqual(old.disk_log.synced_index, old.disk_log.last_index)
        cluster.network.drop = None
        cluster.crash(old.node_id)
        new = self.elect(cluster)
        self.assertNotIn("lost", names(new))
        self.assertEqual(self.write(cluster, "lost", rid="r1").result, {"username": "lost"})
        cluster.start(old.node_id)
        self.settle(cluster, 2.0)
        self.assertConverged(cluster)
        self.assertEqual(names(cluster.nodes[old.node_id]), ["before", "lost"])

    def test_leader_crash_after_followers_fsync(self):
        """
        A leader crashes after every follower fsynced a batch but before it
        answered: the new leader commits the batch, and the client's retry
        with the same rid gets the first result without applying it twice.
        """
        cluster = self.cluster()
        cluster.start_all()
        old = self.elect(cluster)
        self.write(cluster, "before")
        cluster.network.drop = lambda src, dst, m: dst == old.node_id and isinstance(m, AppendReply)
        d = create(old, "carol", rid="r2")
        cluster.run(0.05)
        self.assertNoResult(d)
        cluster.network.drop = None
        cluster.crash(old.node_id)
        self.elect(cluster)
        outcome = self.write(cluster, "carol", rid="r2")
        self.assertTrue(outcome.duplicate)
        self.assertEqual(outcome.result, {"username": "carol"})
        self.settle(cluster)
        for node in cluster.nodes.values():
            self.assertEqual(names(node), ["before", "carol"])

    def test_kill_two_in_every_order(self):
        """
        Kill two of three servers in each of the six orders, with a write
        after each kill: every write is acknowledged and survives on the
        last server.
        """
        for order in permutations([1, 2, 3], 2):
            cluster = self.cluster()
            cluster.start_all()
            self.write(cluster, "w0")
            written = ["w0"]
            for step, victim in enumerate(order, 1):
                cluster.crash(victim)
                name = "w%d" % (step,)
                self.assertEqual(self.write(cluster, name).result, {"username": name}, order)
                written.append(name)
            [survivor] = cluster.nodes.values()
            self.assertEqual(names(survivor), written, order)
            self.assertEqual(sorted(survivor.cluster.live), [survivor.node_id])

    def test_follower_dies_during_live_set_change(self):
        """
        A second follower dies before it acknowledged the change that takes
        out the first: the leader takes it out too rather than wait forever
        for a change that needs it.
        """
        cluster = self.cluster()
        cluster.start_all()
        leader = self.elect(cluster)
        self.write(cluster, "w0")
        cluster.network.drop = lambda src, dst, m: src == 1 and isinstance(m, AppendReply)
        cluster.crash(2)
        cluster.run_until(lambda: 2 not in leader.cluster.live, 1.0)
        cluster.crash(1)
        cluster.network.drop = None
        self.assertEqual(self.write(cluster, "w1").result, {"username": "w1"})
        self.assertEqual(sorted(leader.cluster.live), [3])

    def test_failover_is_fast_when_the_port_refuses(self):
        """
        A killed leader's port refuses connections, so its followers elect a
        new one within milliseconds, not a failure timeout.
        """
        cluster = self.cluster()
        cluster.start_all()
        self.write(cluster, "a")
        cluster.crash(cluster.leader().node_id)
        took = cluster.run_until(lambda: cluster.leader() is not None)
        self.assertLess(took, 0.05)

    def test_silent_leader_detected_after_failure_timeout(self):
        """
        A leader cut off by a partition (no refused port) is replaced once
        the failure timeout passes.
        """
        cluster = self.cluster()
        cluster.start_all()
        old = self.elect(cluster)
        self.write(cluster, "a")
        cluster.network.partition([old.node_id], [n for n in (1, 2, 3) if n != old.node_id])
        took = cluster.run_until(
            lambda: any(n.serving and n is not old for n in cluster.nodes.values()))
        self.assertGreater(took, 0.4)
        self.assertLess(took, 1.5)


class FencingTests(ClusterTestCase):
    def test_stale_leader_steps_down_and_commits_nothing(self):
        """
        A leader whose messages stop reaching the others (one-way) is
        replaced; its proposals meanwhile are never acknowledged, it steps
        down on hearing the newer epoch, and its divergent entries are cut
        and handed in: the request whose outcome was unknown (and that no
        retry was answered for) is applied once.
        """
        cluster = self.cluster()
        cluster.start_all()
        old = self.elect(cluster)
        self.write(cluster, "a")
        cluster.network.drop = lambda src, dst, m: src == old.node_id
        d = create(old, "stale", rid="s1")
        cluster.run_until(
            lambda: any(n.serving and n is not old for n in cluster.nodes.values()), 3.0)
        cluster.network.drop = None
        cluster.run_until(lambda: old.role != "leader", 2.0)
        failure = self.failureResultOf(d, ChatError)
        self.assertEqual(failure.value.code, "unavailable")
        self.settle(cluster, 2.0)
        self.assertConverged(cluster)
        self.assertIn("stale", names(old))
        self.assertEqual(old._orphans, [])

    def test_paused_leader_acknowledges_nothing_more(self):
        """
        A leader stopped (SIGSTOP) past the failure timeout is replaced; when
        it runs again it does not take its own pause for its followers'
        deaths, acknowledges nothing more, and steps down.
        """
        cluster = self.cluster()
        cluster.start_all()
        old = self.elect(cluster)
        self.write(cluster, "a")
        cluster.network.pause(old.node_id)
        new = cluster.run_until(
            lambda: any(n.serving and n is not old for n in cluster.nodes.values()), 3.0)
        self.write(cluster, "b")
        cluster.run(1.0)
        # It wakes up: its overdue tick first, then what waited for it.
        old.tick()
        self.assertEqual(sorted(old.cluster.live), [1, 2, 3], "it dropped live members")
        d = create(old, "late", rid="late")
        cluster.network.resume(old.node_id)
        cluster.run(1.0)
        self.assertNotEqual(old.role, "leader")
        self.assertEqual(self.failureResultOf(d, ChatError).value.code, "unavailable")
        self.settle(cluster)
        self.assertConverged(cluster)
        self.assertNotIn("late", names(cluster.leader()))

    def test_paused_follower_returns_as_follower(self):
        """
        A follower stopped past the failure timeout is taken out of the live
        set; when it runs again it does not start an election against the
        healthy leader, and it is put back once caught up.
        """
        cluster = self.cluster()
        cluster.start_all()
        leader = self.elect(cluster)
        epoch = leader.epoch
        cluster.network.pause(1)
        cluster.run_until(lambda: 1 not in leader.cluster.live, 2.0)
        self.write(cluster, "while-paused")
        cluster.network.resume(1)
        cluster.run_until(lambda: 1 in leader.cluster.live, 3.0)
        self.assertIs(cluster.leader(), leader)
        self.assertEqual(leader.epoch, epoch)
        self.settle(cluster)
        self.assertConverged(cluster)

    def test_old_epoch_refused(self):
        """
        A follower refuses an Append from an epoch older than its own and
        answers with its epoch.
        """
        cluster = self.cluster()
        cluster.start_all()
        leader = self.elect(cluster)
        follower = cluster.nodes[1]
        replies = []
        cluster.network.drop = lambda src, dst, m: replies.append(m) and False
        follower.receive(2, Append(leader.epoch - 1, 0, 0, (), 0))
        self.assertIn(AppendReply(follower.epoch, False, 0), replies)


class RestartTests(ClusterTestCase):
    def test_full_outage_stale_server_first(self):
        """
        1 dies, a write; 2 dies, a write; 3 dies.  Started again stalest
        first, 1 and then 2 wait (their last live sets hold 3); once 3 is
        back it leads, and nothing is lost or forked.
        """
        cluster = self.cluster()
        cluster.start_all()
        self.write(cluster, "w0")
        cluster.crash(1)
        self.write(cluster, "w1")
        cluster.crash(2)
        self.write(cluster, "w2")
        cluster.crash(3)
        cluster.start(1)
        cluster.run(2.0)
        cluster.start(2)
        cluster.run(2.0)
        self.assertEqual(cluster.leaders(), [])
        cluster.start(3)
        leader = self.elect(cluster)
        self.assertEqual(leader.node_id, 3)
        self.write(cluster, "w3")
        self.settle(cluster, 2.0)
        self.assertConverged(cluster)
        for node in cluster.nodes.values():
            self.assertEqual(names(node), ["w0", "w1", "w2", "w3"])
        self.assertEqual(sorted(leader.cluster.live), [1, 2, 3])

    def test_force_lead(self):
        """
        When a member of the last live set is gone for good, an operator
        makes a survivor lead.
        """
        cluster = self.cluster()
        cluster.start_all()
        self.write(cluster, "w0")
        for node_id in (1, 2, 3):
            cluster.crash(node_id)
        cluster.start(1)
        cluster.start(2)
        cluster.run(2.0)
        self.assertEqual(cluster.leaders(), [])
        cluster.nodes[2].force_lead()
        leader = self.elect(cluster)
        self.assertEqual(leader.node_id, 2)
        self.write(cluster, "w1")
        self.settle(cluster)
        self.assertEqual(names(cluster.nodes[1]), ["w0", "w1"])

    def test_follower_catches_up_then_counts(self):
        """
        A restarted follower gets the suffix it missed and is put back in
        the live set only once it has it.
        """
        cluster = self.cluster()
        cluster.start_all()
        leader = self.elect(cluster)
        cluster.crash(1)
        for i in range(30):
            self.write(cluster, "m%d" % (i,))
        self.assertEqual(sorted(leader.cluster.live), [2, 3])
        cluster.start(1)
        cluster.run_until(lambda: 1 in leader.cluster.live and leader.commit_index > 0)
        self.assertGreaterEqual(cluster.nodes[1].disk_log.last_index, leader.commit_index - 1)
        self.settle(cluster)
        self.assertConverged(cluster)

    def test_compaction_waits_for_every_member(self):
        """
        While a member is down the servers snapshot but keep the log from
        where it went down (an entry not on every member may yet diverge,
        and must then be handed in), and catch it up by suffix; once it has
        everything, the log is compacted.
        """
        cluster = self.cluster(snapshot_every=20)
        cluster.start_all()
        leader = self.elect(cluster)
        self.write(cluster, "first")
        self.settle(cluster, 0.5)
        cluster.crash(1)
        stable = cluster.disks[1].log.last_index
        for i in range(80):
            self.write(cluster, "s%d" % (i,))
        self.assertTrue(leader.snapshots.indexes())
        self.assertLessEqual(leader.disk_log.base_index, stable)
        cluster.start(1)
        cluster.run_until(lambda: 1 in leader.cluster.live)
        for i in range(60):
            self.write(cluster, "t%d" % (i,))
        self.settle(cluster)
        self.assertConverged(cluster)
        self.assertEqual(len(names(cluster.nodes[1])), 141)
        self.assertGreater(leader.disk_log.base_index, 80)


class MembershipTests(ClusterTestCase):
    def test_join_and_leave(self):
        """
        A 4th server joins as a learner, catches up, becomes a live member;
        it keeps serving after two originals die; a member leaves for good
        and its id cannot come back.
        """
        cluster = self.cluster()
        cluster.start_all()
        for i in range(50):
            self.write(cluster, "j%d" % (i,))
        joiner = cluster.start(4, joining=True)
        self.assertEqual(joiner.role, "learner")
        leader = self.elect(cluster)
        cluster.run_until(lambda: 4 in leader.cluster.live)
        cluster.run_until(lambda: joiner.role == "follower", 1.0)
        self.settle(cluster)
        self.assertConverged(cluster)
        cluster.crash(3)
        cluster.crash(2)
        self.assertEqual(self.write(cluster, "after").result, {"username": "after"})
        self.assertIn("after", names(cluster.nodes[4]))
        leader = self.elect(cluster)
        d = leader.leave(1 if leader.node_id == 4 else 4)
        cluster.run_until(lambda: d.called)
        self.successResultOf(d)

    def test_leader_leaves_and_hands_over(self):
        """
        A leaving leader commits its own removal, then hands over.
        """
        cluster = self.cluster()
        cluster.start_all()
        leader = self.elect(cluster)
        d = leader.leave(leader.node_id)
        cluster.run_until(lambda: d.called)
        self.successResultOf(d)
        new = self.elect(cluster)
        self.assertNotEqual(new.node_id, leader.node_id)
        self.assertNotIn(leader.node_id, new.cluster.members)
        self.assertIn(leader.node_id, new.cluster.retired)
        self.write(cluster, "after")
        cluster.run(2.0)
        self.assertNotEqual(leader.role, "leader")

    def test_retired_id_refused(self):
        cluster = self.cluster()
        cluster.start_all()
        leader = self.elect(cluster)
        d = leader.leave(1)
        cluster.run_until(lambda: d.called)
        cluster.crash(1)
        cluster.disks.pop(1)
        cluster.start(1, joining=True)
        cluster.run(2.0)
        self.assertEqual(cluster.nodes[1].role, "learner")
        self.assertNotIn(1, leader.cluster.members)

    def test_shutdown_of_follower_leaves_live_set_at_once(self):
        cluster = self.cluster()
        cluster.start_all()
        leader = self.elect(cluster)
        cluster.run(0.3)
        cluster.nodes[1].shutdown()
        cluster.run(0.05)
        self.assertEqual(sorted(leader.cluster.live), [2, 3])


class PartitionTests(ClusterTestCase):
    """
    Both sides of a partition may acknowledge writes (replication waits for
    the live set, not a majority); when it heals, the losing side hands its
    cut commands to the winner and nothing acknowledged is lost or doubled.
    """

    def commit(self, cluster, node, command):
        d = node.propose(command)
        cluster.run_until(lambda: d.called, 2.0)
        return self.successResultOf(d)

    def send(self, cluster, node, sender, to, text, rid):
        state = node.state
        return self.commit(cluster, node, {
            "op": "send", "who": state.uids_by_name[sender],
            "to": state.uids_by_name[to], "text": text, "ts": 2.0,
            "rid": rid, "fp": "fp-" + rid,
        })

    def texts(self, node, name):
        state = node.state
        account = state.accounts[state.uids_by_name[name]]
        return [state.message(i).text for i in account.inbox]

    def split(self, cluster, minority_is_leader=True, snapshot_every=100_000, pre=0):
        cluster.start_all()
        leader = self.elect(cluster)
        for name in ["alice", "bob"] + ["x%d" % (i,) for i in range(pre)]:
            self.write(cluster, name, rid="c-" + name)
        self.settle(cluster, 0.5)
        lonely = leader.node_id if minority_is_leader else min(
            n for n in cluster.nodes if n != leader.node_id)
        others = [n for n in cluster.nodes if n != lonely]
        cluster.network.partition([lonely], others)
        # Each side takes the other out of its live set and serves.
        cluster.run_until(lambda: cluster.nodes[lonely].serving
                          and cluster.nodes[lonely].cluster.live == {lonely}, 5.0)
        cluster.run_until(lambda: any(cluster.nodes[n].serving for n in others), 5.0)
        winner = next(cluster.nodes[n] for n in others if cluster.nodes[n].serving)
        return cluster.nodes[lonely], winner

    def test_heal_keeps_both_sides_writes(self):
        """
        An isolated leader and the majority both acknowledge sends and an
        account each; after the heal every replica holds all of them once,
        ids the losing side gave stay valid, and the majority's newer epoch
        leads.
        """
        cluster = self.cluster()
        lonely, winner = self.split(cluster)
        self.assertNotEqual(lonely.epoch, winner.epoch)
        lost_side = self.send(cluster, lonely, "alice", "bob", "from the minority", "m1")
        create(lonely, "carol", rid="c-carol")
        cluster.run(0.1)
        self.send(cluster, winner, "alice", "bob", "from the majority", "w1")
        message_id = lost_side.result["message"]["id"]
        cluster.network.heal()
        self.settle(cluster, 3.0)
        self.assertConverged(cluster)
        for node in cluster.nodes.values():
            self.assertEqual(
                sorted(self.texts(node, "bob")), ["from the majority", "from the minority"])
            self.assertIn("carol", names(node))
            self.assertEqual(node.state.message(message_id).text, "from the minority")
            self.assertEqual(node._orphans, [])
        self.assertEqual(cluster.leader().epoch, max(lonely.epoch, winner.epoch))

    def test_name_taken_on_both_sides(self):
        """
        An account name given away on both sides: the losing side's account,
        and the mail sent to it there, survive under "<name>~2".
        """
        cluster = self.cluster()
        lonely, winner = self.split(cluster)
        create(lonely, "dave", rid="l-dave")
        cluster.run(0.1)
        self.send(cluster, lonely, "alice", "dave", "to the minority's dave", "m2")
        create(winner, "dave", rid="w-dave")
        cluster.run(0.1)
        self.send(cluster, winner, "alice", "dave", "to the majority's dave", "w2")
        losing, winning = sorted([lonely, winner], key=lambda n: n.epoch)
        cluster.network.heal()
        self.settle(cluster, 3.0)
        self.assertConverged(cluster)
        node = cluster.leader()
        expected = {"dave": [], "dave~2": []}
        if winning is winner:
            expected = {"dave": ["to the majority's dave"], "dave~2": ["to the minority's dave"]}
        else:
            expected = {"dave": ["to the minority's dave"], "dave~2": ["to the majority's dave"]}
        self.assertEqual({n: self.texts(node, n) for n in expected}, expected)

    def test_retry_on_the_other_side_is_applied_once(self):
        """
        A send acknowledged by the minority and retried (same rid) on the
        majority is there once after the heal.
        """
        cluster = self.cluster()
        lonely, winner = self.split(cluster)
        self.send(cluster, lonely, "alice", "bob", "once", "r1")
        self.send(cluster, winner, "alice", "bob", "once", "r1")
        cluster.network.heal()
        self.settle(cluster, 3.0)
        self.assertConverged(cluster)
        self.assertEqual(self.texts(cluster.leader(), "bob"), ["once"])

    def test_losing_side_snapshot_is_not_trusted(self):
        """
        A losing server that snapshotted during the partition (past the
        point where its log diverges) sets that snapshot aside, rebuilds,
        hands its writes in, and stays right across a restart.
        """
        cluster = self.cluster(snapshot_every=10)
        lonely, winner = self.split(cluster)
        losing = lonely if lonely.epoch < winner.epoch else winner
        for i in range(25):
            self.send(cluster, lonely, "alice", "bob", "m%d" % (i,), "m%d" % (i,))
        self.send(cluster, winner, "alice", "bob", "w", "w")
        self.assertTrue(losing.snapshots.indexes())
        cluster.network.heal()
        self.settle(cluster, 3.0)
        self.assertConverged(cluster)
        expected = sorted(["w"] + ["m%d" % (i,) for i in range(25)])
        self.assertEqual(sorted(self.texts(cluster.leader(), "bob")), expected)
        # Restarted from disk, every server still agrees.
        for node_id in sorted(cluster.nodes):
            cluster.crash(node_id)
        cluster.start_all()
        self.elect(cluster)
        self.settle(cluster, 2.0)
        self.assertConverged(cluster)
        self.assertEqual(sorted(self.texts(cluster.leader(), "bob")), expected)

    def test_handed_in_commands_survive_a_crash(self):
        """
        A losing server that crashes after cutting its log but before the
        leader committed what it handed in still has the commands (they are
        durable in its meta file) and hands them in after its restart.
        """
        cluster = self.cluster()
        lonely, winner = self.split(cluster)
        losing = lonely if lonely.epoch < winner.epoch else winner
        self.send(cluster, losing, "alice", "bob", "kept", "k1")
        cluster.network.drop = lambda src, dst, m: type(m).__name__ == "Repropose"
        cluster.network.heal()
        cluster.run_until(lambda: losing._orphans, 3.0)
        cluster.crash(losing.node_id)
        cluster.network.drop = None
        restarted = cluster.start(losing.node_id)
        self.assertTrue(restarted._orphans)
        self.settle(cluster, 3.0)
        self.assertConverged(cluster)
        self.assertIn("kept", self.texts(cluster.leader(), "bob"))
        self.assertEqual(restarted._orphans, [])

    def test_one_request_applied_on_both_sides(self):
        """
        An account created by one request on both sides (a retry across the
        split) exists once after the heal, and what the losing side's
        clients did with their copy (sends from it and to it) reaches it.
        """
        cluster = self.cluster()
        lonely, winner = self.split(cluster)
        losing, winning = sorted([lonely, winner], key=lambda n: n.epoch)
        for node in (winning, losing):
            create(node, "erin", rid="c-erin")
            cluster.run(0.1)
        self.send(cluster, losing, "erin", "alice", "from erin", "e1")
        self.send(cluster, losing, "alice", "erin", "to erin", "e2")
        cluster.network.heal()
        self.settle(cluster, 3.0)
        self.assertConverged(cluster)
        node = cluster.leader()
        self.assertEqual([n for n in names(node) if n.startswith("erin")], ["erin"])
        self.assertEqual(self.texts(node, "erin"), ["to erin"])
        self.assertIn("from erin", self.texts(node, "alice"))


    def test_winner_compacted_past_the_losers_epoch(self):
        """
        The winning side's leader (new since the split, and restarted) has
        compacted past the start of the losing side's epoch: the loser is
        probed at the log's base and its divergent suffix cut and handed in,
        not wiped by a snapshot.
        """
        cluster = self.cluster(snapshot_every=10)
        lonely, winner = self.split(cluster, pre=8)
        for i in range(3):
            self.send(cluster, lonely, "alice", "bob", "m%d" % (i,), "m%d" % (i,))
        for i in range(25):
            self.send(cluster, winner, "alice", "bob", "w%d" % (i,), "w%d" % (i,))
        cluster.crash(winner.node_id)
        cluster.start(winner.node_id)
        self.settle(cluster, 2.0)
        cluster.network.heal()
        self.settle(cluster, 5.0)
        self.assertConverged(cluster)
        leader = cluster.leader()
        self.assertGreater(leader.disk_log.base_index, 0)
        self.assertEqual(sorted(t for t in self.texts(leader, "bob") if t.startswith("m")),
                         ["m0", "m1", "m2"])


class StaleServerTests(ClusterTestCase):
    def test_stale_member_never_leads(self):
        """
        DESIGN 6.2: a server taken out of the live set while it was down
        comes back, hears (but cannot yet fetch) what the others committed,
        and they die: it does not lead on its stale log, until forced.
        """
        cluster = self.cluster()
        cluster.start_all()
        leader = self.elect(cluster)
        stale = min(n for n in cluster.nodes if n != leader.node_id)
        cluster.crash(stale)
        cluster.run_until(lambda: stale not in leader.cluster.live, 3.0)
        for i in range(5):
            self.write(cluster, "w%d" % (i,))
        cluster.network.drop = lambda src, dst, m: dst == stale and type(m).__name__ in (
            "Append", "SnapshotChunk", "Coordinator")
        node = cluster.start(stale)
        cluster.run(0.5)
        for other in [n for n in list(cluster.nodes) if n != stale]:
            cluster.crash(other)
        cluster.network.drop = None
        cluster.run(3.0)
        self.assertFalse(node.serving)
        self.assertEqual(node.role, "candidate")
        node.force_lead()
        cluster.run_until(lambda: node.serving, 3.0)
