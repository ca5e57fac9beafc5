# -*- test-case-name: tests.test_replication_process -*-
"""
Real-process tests of a replicated cluster: three (or four) C{twistd
replichat} servers on 127.0.0.1, 127.0.0.2, ... with the same ports on each
address, as on separate hosts; servers are SIGKILLed, SIGTERMed, restarted
and joined while a client writes, and every survivor is then checked to hold
every acknowledged write exactly once.

A failing test's message ends with the tail of every server's log.
"""

from __future__ import annotations

import functools
import itertools
import json
import signal
import sys
import time
import traceback
from collections import Counter, deque

from twisted.trial.unittest import TestCase

from tests.realserver import ClusterSession, RealCluster

#: Messages sent before a server joins (pipelined, WINDOW in flight).
JOIN_MESSAGES = 10_000

#: Sends in flight on one connection (the server allows 256).
WINDOW = 200


def showing_logs(method):
    """
    On failure, add the tail of every server's log of the test's clusters
    to the message (unless it is there already).
    """

    @functools.wraps(method)
    def wrapper(self):
        try:
            return method(self)
        except BaseException as error:
            text = str(error)
            if "---- node" in text or not self.clusters:
                raise
            logs = "\n".join(cluster.logs() for cluster in self.clusters)
            raise self.failureException("%s\n%s" % (traceback.format_exc(), logs)) from error

    return wrapper


class Stream:
    """
    One client streaming sends from alice to bob, each with its own rid,
    C{window} of them in flight on one connection to the leader.  It
    follows the leader, and after C{not_leader}, C{unavailable} or a lost
    connection it sends again, with the same rid, everything not yet
    acknowledged.

    @ivar acked: rid -> message id of its acknowledgement.
    """

    def __init__(self, cluster: RealCluster, token: str, rids: list[str],
                 window: int = WINDOW) -> None:
        self.cluster = cluster
        self.session = ClusterSession(cluster, token)
        self.pending = deque(rids)
        self.window = window
        self.inflight: dict[int, str] = {}
        self.acked: dict[str, int] = {}
        self.request_id = 0
        self.losses = 0
        self.refusals: Counter = Counter()
        self.target: int | None = None
        self.turn = 0

    @staticmethod
    def text(rid: str) -> str:
        return "text of " + rid

    def _requeue(self) -> None:
        self.pending.extendleft(reversed(list(self.inflight.values())))
        self.inflight.clear()

    def _lost(self) -> None:
        self._requeue()
        self.session.close()
        self.losses += 1

    def run(self, timeout: float, on_ack=None, until_loss: bool = False) -> None:
        """
        Stream until every rid is acknowledged (or, with C{until_loss},
        until the first lost connection).  C{on_ack(stream)} is called after
        each acknowledgement.
        """
        deadline = time.monotonic() + timeout
        while self.pending or self.inflight:
            if time.monotonic() > deadline:
                raise AssertionError(
                    "%d sends not acknowledged within %ss (%d acked, refusals %r)\n%s"
                    % (len(self.pending) + len(self.inflight), timeout, len(self.acked),
                       dict(self.refusals), self.cluster.logs()))
            client = self.session.client
            if client is None:
                # The server named by the last not_leader, or else the next
                # running server in turn: not necessarily the leader.
                running = self.cluster.running()
                target, self.target = self.target, None
                if target not in running:
                    self.turn += 1
                    target = running[self.turn % len(running)]
                try:
                    client = self.session.connect(target)
                except (OSError, ValueError, AssertionError):
                    self.session.close()
                    time.sleep(0.05)
                    continue
            lines = []
            while self.pending and len(self.inflight) < self.window:
                rid = self.pending.popleft()
                self.request_id += 1
                self.inflight[self.request_id] = rid
                lines.append(json.dumps({"id": self.request_id, "op": "send", "to": "bob",
                                         "text": self.text(rid), "rid": rid}).encode() + b"\n")
            try:
                if lines:
                    client.file.write(b"".join(lines))
                    client.file.flush()
                line = client.file.readline()
                if not line:
                    raise ConnectionError("connection closed")
            except (OSError, ConnectionError):
                self._lost()
                if until_loss:
                    return
                continue
            answer = json.loads(line)
            rid = self.inflight.pop(answer.get("id"), None)
            if rid is None:
                continue  # a pushed event
            if answer["ok"]:
                message = answer["result"]["message"]
                assert message["text"] == self.text(rid), (rid, answer)
                first = self.acked.setdefault(rid, message["id"])
                assert first == message["id"], ("acknowledged twice", rid, first, answer)
                if on_ack is not None:
                    on_ack(self)
                continue
            code = answer["error"]["code"]
            self.refusals[code] += 1
            if code not in ("not_leader", "unavailable"):
                raise AssertionError("send refused: %r" % (answer,))
            # This server does not lead (now): everything in flight goes
            # again, to the leader it names, or after a pause to any server.
            self.pending.appendleft(rid)
            self._lost()
            leader = answer["error"].get("leader")
            if code == "not_leader" and leader:
                self.target = leader["id"]
            else:
                time.sleep(0.05)


class ReplicationProcessTests(TestCase):
    """
    Crashes, clean stops, a full outage and a join, on real processes.
    """

    def setUp(self) -> None:
        self.clusters: list[RealCluster] = []
        self.started = time.monotonic()
        # Runs last: the test's wall time, servers stopped included.
        self.addCleanup(lambda: sys.stderr.write(
            "  [total %.1fs] " % (time.monotonic() - self.started,)))

    def cluster(self, start: bool = True, **options: object) -> RealCluster:
        cluster = RealCluster(self.mktemp(), **options)
        self.clusters.append(cluster)
        self.addCleanup(cluster.stop_all)
        if start:
            cluster.start()
        return cluster

    def users(self, cluster: RealCluster) -> tuple[ClusterSession, str, str]:
        """
        Create alice and bob and log both in: alice's session (following
        the leader) and both tokens.
        """
        setup = ClusterSession(cluster)
        setup.write("create_account", username="alice", password="pw", rid="acct-alice")
        setup.write("create_account", username="bob", password="pw", rid="acct-bob")
        alice = setup.write("login", username="alice", password="pw")["token"]
        bob = setup.write("login", username="bob", password="pw")["token"]
        setup.close()
        return ClusterSession(cluster, alice), alice, bob

    def history(self, cluster: RealCluster, node_id: int, token: str) -> list[dict]:
        """
        Every message in the token's account's history as node C{node_id}
        serves it from its own applied state, newest first.
        """
        client = cluster[node_id].client(timeout=10)
        try:
            client.ok("resume", token=token)
            messages: list[dict] = []
            before = None
            while True:
                args = {"limit": 1000}
                if before is not None:
                    args["before"] = before
                page = client.ok("history", **args)["messages"]
                messages.extend(page)
                if len(page) < 1000:
                    return messages
                before = page[-1]["id"]
        finally:
            client.close()

    def assertExactlyOnce(self, messages: list[dict], acked: dict[str, int],
                          text=Stream.text, where: str = "") -> None:
        """
        Each acknowledged rid's text is in C{messages} once, with the
        acknowledged message id, and no text is there twice.
        """
        counts = Counter(m["text"] for m in messages)
        twice = {t: n for t, n in counts.items() if n > 1}
        self.assertEqual(twice, {}, "duplicated %s" % (where,))
        ids = {m["text"]: m["id"] for m in messages}
        missing = [rid for rid in acked if text(rid) not in ids]
        self.assertEqual(missing, [], "acknowledged but missing %s" % (where,))
        wrong = {rid: (acked[rid], ids[text(rid)]) for rid in acked
                 if ids[text(rid)] != acked[rid]}
        self.assertEqual(wrong, {}, "other message ids than acknowledged %s" % (where,))

    def elapsed(self, label: str) -> None:
        sys.stderr.write("  [%s: %.1fs] " % (label, time.monotonic() - self.started))

    # -- 1 ---------------------------------------------------------------------

    @showing_logs
    def test_sigkill_leader_during_stream(self) -> None:
        """
        SIGKILL the leader while 300 pipelined sends stream to it: every
        send it acknowledged is on each survivor once; the client follows
        the new leader and sends the rest again under the same rids, and
        then every send is on each survivor once, with the message id of
        its one acknowledgement.
        """
        cluster = self.cluster()
        leader = cluster.wait_for_leader()
        _, alice, bob = self.users(cluster)
        leader = cluster.wait_for_leader()
        rids = ["s1-%d" % (i,) for i in range(300)]
        stream = Stream(cluster, alice, rids)
        killed = []

        def kill_mid_stream(stream: Stream) -> None:
            if not killed and len(stream.acked) >= 100:
                killed.append(stream.session.node)
                cluster.kill(stream.session.node)

        stream.run(timeout=20, on_ack=kill_mid_stream, until_loss=True)
        self.assertEqual(killed, [leader])
        before_kill = dict(stream.acked)
        self.assertLess(len(before_kill), 300, "the kill came too late to test anything")
        survivors = cluster.running()
        cluster.wait_for_leader(timeout=10)
        cluster.wait_converged(survivors)
        for node in survivors:
            messages = self.history(cluster, node, bob)
            self.assertExactlyOnce(messages, before_kill, where="on node %d" % (node,))
        # Sends in flight at the kill may have committed unacknowledged.
        unacked_committed = len(messages) - len(before_kill)
        stream.run(timeout=20)
        self.assertEqual(sorted(stream.acked), sorted(rids))
        # A send retried after its acknowledgement gets the same message.
        retry = ClusterSession(cluster, alice)
        again = retry.write("send", to="bob", text=Stream.text(rids[0]), rid=rids[0])
        retry.close()
        self.assertEqual(again["message"]["id"], stream.acked[rids[0]])
        cluster.wait_converged(survivors)
        histories = {node: self.history(cluster, node, bob) for node in survivors}
        for node, messages in histories.items():
            self.assertEqual(len(messages), 300, "on node %d" % (node,))
            self.assertExactlyOnce(messages, stream.acked, where="on node %d" % (node,))
        self.assertEqual(histories[survivors[0]], histories[survivors[1]])
        self.elapsed("%d acked before the kill, %d more committed unacknowledged, refusals %r"
                     % (len(before_kill), unacked_committed, dict(stream.refusals)))

    # -- 2 ---------------------------------------------------------------------

    @showing_logs
    def test_kill_two_in_every_order(self) -> None:
        """
        For each of the 6 orders of killing two of three servers, with a
        write after each kill: each write is acknowledged (by whichever
        server leads then), and the last survivor has all of them.
        """
        for order in itertools.permutations((1, 2, 3), 2):
            started = time.monotonic()
            cluster = self.cluster()
            session, alice, bob = self.users(cluster)
            acked = {}
            for step, victim in enumerate((None, *order)):
                if victim is not None:
                    cluster.kill(victim)
                rid = "order-%d%d-%d" % (order + (step,))
                result = session.write("send", to="bob", text=Stream.text(rid), rid=rid)
                acked[rid] = result["message"]["id"]
            (survivor,) = cluster.running()
            cluster.wait_converged([survivor])
            messages = self.history(cluster, survivor, bob)
            self.assertEqual(len(messages), 3, "order %r" % (order,))
            self.assertExactlyOnce(messages, acked, where="on node %d" % (survivor,))
            session.close()
            cluster.stop_all()
            sys.stderr.write("  [order %r: %.1fs] " % (order, time.monotonic() - started))

    # -- 3 ---------------------------------------------------------------------

    def assertNoLeaderFor(self, cluster: RealCluster, seconds: float) -> None:
        """
        For C{seconds}, no running server says it leads or takes a write.
        """
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for node in cluster.running():
                hello = cluster.ask(node, "hello")
                self.assertIsNotNone(hello, "node %d does not answer" % (node,))
                self.assertNotEqual(hello["result"]["role"], "leader", hello)
                self.assertFalse(cluster.accepts_writes(node), "node %d takes writes" % (node,))
            time.sleep(0.1)

    @showing_logs
    def test_full_outage(self) -> None:
        """
        Kill 1, write; kill 2, write; kill 3.  Started again stalest first,
        neither 1 alone nor 1 and 2 may serve writes (3 may hold commits
        they lack); once 3 is back it leads, and all three servers hold the
        same history, with every write.
        """
        cluster = self.cluster()
        session, alice, bob = self.users(cluster)
        acked = {}

        def write(rid: str) -> None:
            result = session.write("send", to="bob", text=Stream.text(rid), rid=rid)
            acked[rid] = result["message"]["id"]

        write("outage-0")
        cluster.kill(1)
        write("outage-1")
        cluster.kill(2)
        write("outage-2")
        cluster.kill(3)
        session.close()
        cluster.start(1)
        self.assertNoLeaderFor(cluster, 2.0)
        cluster.start(2)
        self.assertNoLeaderFor(cluster, 1.5)
        cluster.start(3)
        self.assertEqual(cluster.wait_for_leader(timeout=10), 3)
        cluster.wait_converged([1, 2, 3])
        histories = {node: self.history(cluster, node, bob) for node in (1, 2, 3)}
        for node, messages in histories.items():
            self.assertEqual(len(messages), 3, "on node %d" % (node,))
            self.assertExactlyOnce(messages, acked, where="on node %d" % (node,))
        self.assertEqual(histories[1], histories[2])
        self.assertEqual(histories[1], histories[3])
        # And the cluster goes on.
        write("outage-3")
        cluster.wait_converged([1, 2, 3])
        for node in (1, 2, 3):
            self.assertExactlyOnce(self.history(cluster, node, bob), acked,
                                   where="on node %d" % (node,))

    # -- 4 ---------------------------------------------------------------------

    @showing_logs
    def test_join_after_many_messages(self) -> None:
        """
        A fourth server joins (through a follower) after JOIN_MESSAGES
        messages, with snapshots frequent enough that the leader has
        compacted its log and must send a snapshot; it catches up and
        becomes live, and with two of the originals killed, writes still
        succeed and the fourth has every message.
        """
        cluster = self.cluster(spare=1, snapshot={"every_entries": 3000})
        leader = cluster.wait_for_leader()
        _, alice, bob = self.users(cluster)
        rids = ["j-%d" % (i,) for i in range(JOIN_MESSAGES)]
        stream = Stream(cluster, alice, rids)
        started = time.monotonic()
        stream.run(timeout=40)
        self.elapsed("%d sends in %.1fs" % (len(rids), time.monotonic() - started))
        leader = cluster.wait_for_leader()
        member = min(i for i in (1, 2, 3) if i != leader)
        started = time.monotonic()
        cluster.start(4, join=member)
        deadline = time.monotonic() + 20
        while True:
            rows = None
            answer = cluster.ask(leader, "cluster")
            if answer is not None and answer["ok"]:
                rows = {row["id"]: row for row in answer["result"]["nodes"]}
                if (4 in rows and rows[4]["live"] and rows[4]["role"] == "follower"
                        and rows[4]["commit_index"] == rows[leader]["commit_index"]
                        and cluster.status(4)["commit_index"] == rows[leader]["commit_index"]):
                    break
            if time.monotonic() > deadline:
                raise AssertionError("node 4 did not catch up within 20s: %r\n%s"
                                     % (rows, cluster.logs()))
            time.sleep(0.1)
        self.elapsed("node 4 caught up in %.1fs" % (time.monotonic() - started,))
        # Two originals go, the leader among them.
        victims = [leader, member]
        for victim in victims:
            cluster.kill(victim)
        more = ["j-after-%d" % (i,) for i in range(20)]
        stream = Stream(cluster, alice, more)
        stream.run(timeout=20)
        acked = dict(stream.acked)
        survivors = cluster.running()
        self.assertIn(4, survivors)
        cluster.wait_converged(survivors)
        messages = self.history(cluster, 4, bob)
        self.assertEqual(len(messages), JOIN_MESSAGES + len(more))
        self.assertExactlyOnce(messages, acked, where="on node 4")
        texts = {m["text"] for m in messages}
        self.assertEqual(texts, {Stream.text(rid) for rid in rids + more})
        self.assertEqual(messages, self.history(cluster, survivors[0], bob))

    # -- 5 ---------------------------------------------------------------------

    @showing_logs
    def test_sigterm_leader_hands_over(self) -> None:
        """
        SIGTERM of the leader is a clean stop: it exits 0, another server
        leads within a second, and writes go on with nothing lost.
        """
        cluster = self.cluster()
        session, alice, bob = self.users(cluster)
        acked = {}
        for i in range(5):
            rid = "term-%d" % (i,)
            acked[rid] = session.write("send", to="bob", text=Stream.text(rid),
                                       rid=rid)["message"]["id"]
        leader = cluster.wait_for_leader()
        stopped = time.monotonic()
        # twistd stops cleanly, then exits by the signal it got.
        self.assertIn(cluster.stop(leader), (0, -signal.SIGTERM))
        self.assertIn("Server Shut Down", cluster[leader].output())
        new = cluster.wait_for_leader(timeout=5)
        took = time.monotonic() - stopped
        self.assertNotEqual(new, leader)
        self.assertLess(took, 1.0, "no new leader within 1s of SIGTERM")
        for i in range(5, 10):
            rid = "term-%d" % (i,)
            acked[rid] = session.write("send", to="bob", text=Stream.text(rid),
                                       rid=rid)["message"]["id"]
        session.close()
        survivors = cluster.running()
        cluster.wait_converged(survivors)
        for node in survivors:
            messages = self.history(cluster, node, bob)
            self.assertEqual(len(messages), 10)
            self.assertExactlyOnce(messages, acked, where="on node %d" % (node,))
        self.elapsed("new leader %d %.2fs after SIGTERM of %d" % (new, took, leader))


    # -- the live-set change that waits for a dead follower ----------------------

    @showing_logs
    def test_follower_dies_during_live_set_change(self) -> None:
        """
        Both followers die, one shortly after the other: a is frozen (SIGSTOP,
        so it acknowledges nothing more), b is SIGKILLed 0.2 s later, and
        the leader's first live-set change takes out only one of them (a
        after its failure timeout, or b once its port refuses); then a is
        SIGKILLed too.  That change can only commit with the other one's
        acknowledgement, which never comes; the leader, alone, must still
        take both out of its live set and acknowledge writes.
        """
        cluster = self.cluster()
        session, alice, bob = self.users(cluster)
        session.write("send", to="bob", text="before", rid="pending-0")
        leader = cluster.wait_for_leader()
        cluster.wait_converged()
        a, b = [i for i in (1, 2, 3) if i != leader]
        cluster[a].process.send_signal(signal.SIGSTOP)
        time.sleep(0.2)
        cluster.kill(b)
        deadline = time.monotonic() + 5
        while "are down" not in cluster[leader].output():
            self.assertLess(time.monotonic(), deadline, "no live-set change in 5s")
            time.sleep(0.02)
        cluster.kill(a)
        try:
            result = session.write("send", to="bob", text="after", rid="pending-1", timeout=5)
        except AssertionError as error:
            raise AssertionError("leader %d's cluster answer: %r\n%s"
                                 % (leader, cluster.ask(leader, "cluster"), error))
        self.assertEqual(result["message"]["text"], "after")
        changes = [line for line in cluster[leader].output().splitlines()
                   if "configuration change" in line]
        self.assertTrue(changes, "the leader logged no configuration change")



if sys.platform != "linux":  # pragma: no cover
    ReplicationProcessTests.skip = "real-process tests need Linux (127.0.0.x addresses)"
