# -*- test-case-name: tests.test_history -*-
"""
Tests for L{replichat.testing.history}, L{replichat.testing.replicas} and
L{replichat.testing.checker}: recording what clients saw, and the checker
finding each kind of anomaly in a run built to have it (and none in a run
without).  The names that moved out of C{history} are imported from it, as
its older importers do (L{MovedNamesTests}).

Most runs are built by L{Run}, which commits commands to one log the way a
leader would and records in a L{History} what its clients were answered;
a test then breaks one thing (drops an entry, changes an answer) and asks
the checker to notice.  L{SimulatedClusterTests} check runs of a real
in-memory cluster.
"""

from __future__ import annotations

import importlib
import json
import os

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from replichat import errors, failpoints
from replichat.entries import Entry, Snapshot
from replichat.errors import ChatError
from replichat.handler import token_hash
from replichat.jsonwire import COMPACT
from replichat.state import ChatState
from replichat.testing import MemoryLog, MemorySnapshotStore
from replichat.testing import history as H
from replichat.testing.history import FAIL, OK, UNKNOWN, History, RecordingClient, Replica, check

PASSWORD = {"alg": "scrypt", "n": 16, "r": 8, "p": 1, "salt": "c2FsdA==", "hash": "aGFzaA=="}


def encode(command: dict) -> bytes:
    return COMPACT.encode(command).encode("utf-8")


def replay(entries, upto=None) -> ChatState:
    """
    A fresh state with C{entries} applied (up to index C{upto}).
    """
    state = ChatState()
    for entry in entries:
        if upto is not None and entry.index > upto:
            break
        state.apply(entry.index, decode(entry.data), entry.epoch)
    return state


def decode(data: bytes) -> dict:
    return json.loads(data)


def message_with_text(state: ChatState, text: str) -> dict:
    """
    The wire form of the message saying C{text}.
    """
    [found] = [m for m in state.messages if state.message(m).text == text]
    return state.message(found).to_wire()


class Run:
    """
    A leader's committed log and the history of its clients, built together.

    @ivar users: client name -> the username it is logged in as.
    @ivar tokens: client name -> its session token.
    """

    def __init__(self) -> None:
        self.history = History()
        self.entries: list[Entry] = []
        self.state = ChatState()
        self.epoch = 1
        self.now = 0.0
        self.users: dict[str, str] = {}
        self.tokens: dict[str, str] = {}
        self._rids = 0

    def tick(self) -> float:
        self.now += 1.0
        return self.now

    def rid(self) -> str:
        self._rids += 1
        return "r%d" % (self._rids,)

    def commit(self, command: dict, epoch: int | None = None):
        index = len(self.entries) + 1
        epoch = self.epoch if epoch is None else epoch
        self.entries.append(Entry(index, epoch, encode(command)))
        return self.state.apply(index, command, epoch)

    def uid(self, name: str) -> int:
        return self.state.uids_by_name[name]

    def write(self, client, op, args, command, rid=True, answer=True, commit=True):
        """
        C{client} invokes C{op}; C{command} is committed (unless not
        C{commit}) and its outcome answered (unless not C{answer}).

        @return: the L{H.Op} and the outcome.
        """
        rid = self.rid() if rid is True else rid
        record = self.history.invoke(
            client, op, args, rid=rid, user=self.users.get(client),
            token=self.tokens.get(client), at=self.tick(),
        )
        command = {**command, "ts": self.now}
        if rid is not None:
            command.update(rid=rid, fp="fp-" + rid)
        outcome = self.commit(command) if commit else None
        if answer and outcome is not None:
            if outcome.error is not None:
                self.history.fail(record, outcome.error.code, self.tick())
            else:
                self.history.ok(record, outcome.result, self.tick())
        return record, outcome

    def create(self, client, name, **kw):
        return self.write(
            client, "create_account", {"username": name, "password": "pw"},
            {"op": "create_account", "who": None, "username": name, "password": PASSWORD}, **kw,
        )

    def login(self, client, name):
        token = "token-%s-%d" % (client, len(self.entries))
        record, outcome = self.write(
            client, "login", {"username": name, "password": "pw"},
            {"op": "login", "who": self.uid(name), "token_hash": token_hash(token)},
            rid=None, answer=False,
        )
        self.history.ok(record, {"token": token, "unread": outcome.result["unread"]}, self.tick())
        self.users[client], self.tokens[client] = name, token
        return token

    def account(self, client, name):
        """
        Create an account and log C{client} in to it.
        """
        self.create(client, name)
        return self.login(client, name)

    def send(self, client, to, text, **kw):
        return self.write(
            client, "send", {"to": to, "text": text},
            {"op": "send", "who": self.uid(self.users[client]),
             "to": self.state.uids_by_name.get(to), "text": text}, **kw,
        )

    def read(self, client, limit=10, **kw):
        return self.write(
            client, "read", {"limit": limit},
            {"op": "read", "who": self.uid(self.users[client]), "limit": limit}, **kw,
        )

    def delete_account(self, client, **kw):
        return self.write(
            client, "delete_account", {"password": "pw"},
            {"op": "delete_account", "who": self.uid(self.users[client])}, **kw,
        )

    def push(self, client, message):
        return self.history.pushed(
            client, message, user=self.users.get(client), token=self.tokens.get(client),
            at=self.tick(),
        )

    def replica(self, node_id=1, upto=None, entries=None, state=True) -> Replica:
        """
        A server holding this log (committed up to C{upto}), with its state.
        """
        entries = self.entries if entries is None else entries
        upto = len(entries) if upto is None else upto
        return Replica(
            node_id, upto, tuple(e for e in entries if e.index <= upto),
            state=replay(entries, upto) if state else None,
        )

    def replicas(self, count=3):
        return [self.replica(i) for i in range(1, count + 1)]

    def check(self, replicas=None, **kw):
        return check(self.history, self.replicas() if replicas is None else replicas, **kw)


def busy_run() -> Run:
    """
    Three clients that create accounts, log in, send, read and get pushes.
    """
    run = Run()
    run.account("a", "alice")
    run.account("b", "bob")
    run.account("c", "carol")
    for n in range(3):
        _, outcome = run.send("a", "bob", "hello %d" % (n,))
        run.push("b", outcome.result["message"])
        run.send("c", "alice", "hi %d" % (n,))
    run.read("b", limit=2)
    run.read("b")
    run.read("a")
    run.history.ok(
        run.history.invoke("c", "list_accounts", {}, user="carol", at=run.tick()),
        {"accounts": ["alice", "bob", "carol"], "total": 3},
        run.tick(),
    )
    run.history.ok(
        run.history.invoke("a", "history", {}, user="alice", token=run.tokens["a"], at=run.tick()),
        {"messages": run.state.history(run.uid("alice"), None, None, 50)},
        run.tick(),
    )
    return run


class HistoryTests(SynchronousTestCase):
    """
    L{History} records invocations, completions and pushes.
    """

    def test_statuses(self):
        """
        An answer is C{ok}; a definite error C{fail}; an indefinite error
        (C{unavailable}, the client library's C{unreachable}) or giving up
        C{unknown}; an op never completed stays pending.
        """
        history = History()
        ops = [history.invoke("c", "send", {"text": str(n)}, rid=str(n)) for n in range(5)]
        history.ok(ops[0], {"message": {}})
        history.fail(ops[1], errors.NO_SUCH_USER)
        history.fail(ops[2], errors.UNAVAILABLE)
        history.unknown(ops[3], why="timeout")
        self.assertEqual([op.status for op in ops], [OK, FAIL, UNKNOWN, UNKNOWN, None])
        self.assertEqual([op.error for op in ops[1:4]], ["no_such_user", "unavailable", "timeout"])
        self.assertEqual([op.number for op in ops], [1, 2, 3, 4, 5])

    def test_complete_once(self):
        """
        An operation completes once; a rid names one operation, whose
        retries are attempts of it.
        """
        history = History()
        op = history.invoke("c", "read", {"limit": 1, "rid": "x"}, rid="x")
        self.assertEqual(op.args, {"limit": 1})
        history.attempt(op)
        self.assertEqual(op.attempts, 2)
        history.ok(op, {})
        self.assertRaises(ValueError, history.fail, op, errors.NOT_FOUND)
        self.assertRaises(ValueError, history.invoke, "d", "read", {}, rid="x")

    def test_user_and_session(self):
        """
        A login's or a new account's user is the name it names; a session
        token is kept only hashed.
        """
        history = History()
        login = history.invoke("c", "login", {"username": "ann", "password": "pw"})
        send = history.invoke("c", "send", {}, user="ann", token="tok")
        self.assertEqual(login.user, "ann")
        self.assertEqual(send.session, token_hash("tok"))
        self.assertEqual(history.pushed("c", {"id": 1}, token="tok").session, token_hash("tok"))

    def test_describe(self):
        """
        The trace shows each event on a line, without passwords.
        """
        history = History()
        op = history.invoke("c1", "login", {"username": "ann", "password": "secret"}, at=1.5)
        history.ok(op, {"unread": 0}, at=2.0)
        history.pushed("c1", {"id": 7}, user="ann", at=3.0)
        history.invoke("c2", "read", {"limit": 1}, rid="r1", user="bob")
        text = history.describe()
        self.assertEqual(
            text.splitlines(),
            [
                '#1 c1 as ann login {"username": "ann"} at 1.5000 -> ok {"unread": 0} at 2.0000',
                '#2 c1 as ann was pushed {"id": 7} at 3.0000',
                '#3 c2 as bob read {"limit": 1} rid=r1 -> pending',
            ],
        )
        self.assertNotIn("secret", text)
        self.assertEqual(history.describe([2]), '#2 c1 as ann was pushed {"id": 7} at 3.0000')

    def test_json_round_trip(self):
        """
        A history written to a file reads back the same, and checks the
        same.
        """
        run = busy_run()
        path = self.mktemp()
        run.history.dump(path)
        loaded = History.load(path)
        self.assertEqual(loaded.to_json(), run.history.to_json())
        self.assertEqual(loaded.describe(), run.history.describe())
        self.assertRaises(ValueError, loaded.invoke, "x", "read", {}, rid="r1")
        self.assertEqual(check(loaded, run.replicas()).summary(), run.check().summary())


class FakeChatClient:
    """
    The parts of L{replichat.client.ChatClient} that L{RecordingClient}
    uses; answers are queued by the test.
    """

    def __init__(self) -> None:
        self.username = None
        self.token = None
        self.on_message = None
        self.sent: list[tuple[str, dict]] = []
        self.answers: list[Deferred] = []

    def request(self, op, **args):
        self.sent.append((op, args))
        return self.answers.pop(0)


class RecordingClientTests(SynchronousTestCase):
    """
    L{RecordingClient} records what a L{replichat.client.ChatClient} did.
    """

    def setUp(self):
        self.clock = Clock()
        self.history = History()
        self.fake = FakeChatClient()
        self.client = RecordingClient(self.history, "c1", self.fake, self.clock)

    def test_write_gets_rid(self):
        """
        A write is sent with a rid made for it, which the history knows; a
        login and a read-only op get none.
        """
        self.fake.answers = [succeed({"token": "t", "unread": 0}), succeed({"message": {"id": 1}}),
                             succeed({"accounts": []})]
        self.client.request("login", username="ann", password="pw")
        self.fake.username, self.fake.token = "ann", "t"
        self.clock.advance(1)
        result = self.successResultOf(self.client.request("send", to="bob", text="hi"))
        self.client.request("list_accounts")
        self.assertEqual(result, {"message": {"id": 1}})
        self.assertEqual(
            self.fake.sent,
            [("login", {"username": "ann", "password": "pw"}),
             ("send", {"to": "bob", "text": "hi", "rid": "c1-1"}),
             ("list_accounts", {})],
        )
        login, send, listing = self.history.ops
        self.assertEqual((login.rid, send.rid, listing.rid), (None, "c1-1", None))
        self.assertEqual((send.user, send.session, send.invoked_at), ("ann", token_hash("t"), 1.0))
        self.assertEqual([op.status for op in self.history.ops], [OK, OK, OK])

    def test_errors(self):
        """
        A L{ChatError} is a failure (unknown if indefinite), anything else
        unknown; either way the caller gets the error.
        """
        self.fake.answers = [
            fail(ChatError(errors.NOT_FOUND, "no")),
            fail(ChatError("unreachable", "gone")),
            fail(ConnectionError("reset")),
        ]
        for _ in range(3):
            self.failureResultOf(self.client.request("delete_messages", ids=[1]))
        self.assertEqual(
            [(op.status, op.error) for op in self.history.ops],
            [(FAIL, "not_found"), (UNKNOWN, "unreachable"), (UNKNOWN, "ConnectionError")],
        )

    def test_given_rid(self):
        """
        A rid given by the caller is used and recorded.
        """
        self.fake.answers = [Deferred()]
        self.client.request("read", limit=2, rid="mine")
        self.assertEqual(self.fake.sent, [("read", {"limit": 2, "rid": "mine"})])
        self.assertEqual(self.history.ops[0].rid, "mine")
        self.assertIsNone(self.history.ops[0].status)

    def test_pushes(self):
        """
        Messages pushed to the client are recorded with its session.
        """
        self.fake.username, self.fake.token = "bob", "tk"
        self.clock.advance(2)
        self.fake.on_message({"id": 3, "to": "bob"})
        [push] = self.history.pushes
        self.assertEqual(
            (push.client, push.user, push.session, push.message, push.at),
            ("c1", "bob", token_hash("tk"), {"id": 3, "to": "bob"}, 2.0),
        )


class CleanRunTests(SynchronousTestCase):
    """
    Runs without a fault have no anomalies.
    """

    def test_clean(self):
        """
        A busy run checks clean, and the summary counts what was checked.
        """
        run = busy_run()
        report = run.check(converged=True)
        self.assertEqual(report.anomalies, [], report.describe(run.history))
        self.assertTrue(report.ok)
        self.assertEqual(report.stats["replicas"], 3)
        self.assertEqual(report.stats["entries"], len(run.entries))
        self.assertEqual(report.stats["messages"], 6)
        self.assertTrue(report.summary().endswith(": no anomalies"))

    def test_lagging_replica(self):
        """
        A server that has committed less is fine, unless the run ended
        converged.
        """
        run = busy_run()
        replicas = [run.replica(1), run.replica(2, upto=10), run.replica(3, upto=0)]
        self.assertTrue(run.check(replicas).ok)
        report = run.check(replicas, converged=True)
        self.assertEqual(list(report.kinds()), [H.NOT_CONVERGED])
        self.assertIn("node 2 at 10", report.anomalies[0].text)

    def test_unknown_outcomes(self):
        """
        A write with an unknown outcome may have taken effect once, or not.
        """
        run = Run()
        run.account("a", "alice")
        record, _ = run.send("a", "alice", "maybe", answer=False)
        run.history.unknown(record, why="timeout")
        record, _ = run.send("a", "alice", "maybe not", answer=False, commit=False)
        run.history.fail(record, errors.UNAVAILABLE)
        self.assertTrue(run.check().ok)

    def test_retry_deduplicated(self):
        """
        A retry by rid committed again is answered with the first result,
        and is no duplicate.
        """
        run = Run()
        run.account("a", "alice")
        record, first = run.send("a", "alice", "once", answer=False)
        again = run.commit(dict(decode(run.entries[-1].data)))
        self.assertTrue(again.duplicate)
        run.history.ok(record, again.result)
        self.assertTrue(run.check().ok)

    def test_definite_failure(self):
        """
        A write refused by the state machine is committed without effect,
        and checks clean.
        """
        run = Run()
        run.account("a", "alice")
        run.create("a", "alice")
        self.assertEqual(run.history.ops[-1].error, errors.USERNAME_TAKEN)
        self.assertTrue(run.check().ok)


class WriteAnomalyTests(SynchronousTestCase):
    """
    The checker finds lost, duplicated, misanswered and phantom writes.
    """

    def test_lost(self):
        """
        An acknowledged write that no server committed is lost.
        """
        run = busy_run()
        record, _ = run.send("a", "carol", "gone")
        entries = run.entries[:-1]
        report = run.check([run.replica(i, entries=entries) for i in (1, 2)])
        self.assertEqual(list(report.kinds()), [H.LOST])
        self.assertEqual(report.anomalies[0].ops, (record.number,))
        self.assertIn("acknowledged send rid=%s" % (record.rid,), report.anomalies[0].text)

    def test_lost_login(self):
        """
        An acknowledged login must be committed too.
        """
        run = Run()
        run.account("a", "alice")
        report = run.check([run.replica(entries=run.entries[:-1])])
        self.assertEqual(list(report.kinds()), [H.LOST])

    def test_lost_read_after_partition(self):
        """
        An acknowledged read missing from the log is lost, unless the run had
        partitions: a read on the side that lost is undone by the heal.
        """
        run = Run()
        run.account("a", "alice")
        run.send("a", "alice", "x")
        run.read("a")
        replicas = [run.replica(entries=run.entries[:-1])]
        self.assertEqual(list(run.check(replicas).kinds()), [H.LOST])
        self.assertTrue(run.check(replicas, partitioned=True).ok)

    def test_applied_twice(self):
        """
        A retry applied again (rid deduplication forgotten) is a duplicate
        when checked with the bug in place, and a state that is not the
        replay of the log when checked without it; the retry's answer is
        also wrong.
        """
        run = Run()
        run.account("a", "alice")
        record, _ = run.send("a", "alice", "twice", answer=False)
        with failpoints.planted(failpoints.FORGET_RID_DEDUPE):
            again = run.commit(dict(decode(run.entries[-1].data)))
            run.history.ok(record, again.result)
            replicas = [run.replica(1, state=False)]
            replicas.append(Replica(2, len(run.entries), tuple(run.entries), state=run.state))
            report = run.check(replicas)
        self.assertIn(H.DUPLICATE, report.kinds())
        self.assertIn(H.WRONG_ANSWER, report.kinds())
        report = run.check(replicas)
        self.assertEqual(sorted(report.kinds()), [H.STATE, H.WRONG_ANSWER])

    def test_wrong_answer(self):
        """
        A client answered something other than what its committed entry
        gave was misled.
        """
        run = busy_run()
        record, outcome = run.send("a", "bob", "what")
        record.result = {"message": {**outcome.result["message"], "text": "else"}}
        report = run.check()
        self.assertEqual(list(report.kinds()), [H.WRONG_ANSWER])
        self.assertIn("else", report.anomalies[0].text)

    def test_acknowledged_but_failed(self):
        """
        A write acknowledged whose committed entry failed was misanswered.
        """
        run = Run()
        run.account("a", "alice")
        record, _ = run.send("a", "nobody", "x", answer=False)
        run.history.ok(record, {"message": {"id": 9}})
        self.assertEqual(list(run.check().kinds()), [H.WRONG_ANSWER])

    def test_failed_but_applied(self):
        """
        A write refused with an error that proves it had no effect, and that
        did take effect, is flagged; a refusal that proves nothing (a retry
        can be refused after a first attempt applied) is not.
        """
        run = Run()
        run.account("a", "alice")
        record, _ = run.send("a", "alice", "x", answer=False)
        run.history.fail(record, errors.NO_SUCH_USER)
        other, _ = run.send("a", "alice", "y", answer=False)
        run.history.fail(other, errors.NOT_LOGGED_IN)
        report = run.check()
        self.assertEqual(list(report.kinds()), [H.FAILED_BUT_APPLIED])
        self.assertEqual(report.anomalies[0].ops, (record.number,))

    def test_phantom(self):
        """
        A committed entry that no client asked for is a phantom: a rid
        nobody sent, a rid of another request, a rid-less send nobody made.
        """
        run = Run()
        run.account("a", "alice")
        run.commit({"op": "send", "who": run.uid("alice"), "to": run.uid("alice"),
                    "text": "forged", "ts": 1.0, "rid": "zz", "fp": "f"})
        record, _ = run.send("a", "alice", "real")
        run.commit({"op": "send", "who": run.uid("alice"), "to": run.uid("alice"),
                    "text": "other", "ts": 1.0, "rid": "r4", "fp": "g"})
        run.commit({"op": "send", "who": run.uid("alice"), "to": run.uid("alice"),
                    "text": "nobody", "ts": 1.0})
        report = run.check()
        self.assertEqual([a.kind for a in report.anomalies], [H.PHANTOM] * 3)
        self.assertEqual([a.indexes for a in report.anomalies], [(3,), (5,), (6,)])

    def test_rid_less_writes(self):
        """
        Writes without a rid are matched by what they ask: a send by sender,
        recipient and text; an acknowledged one must be committed as
        answered.
        """
        run = Run()
        run.account("a", "alice")
        record, outcome = run.send("a", "alice", "plain", rid=None)
        self.assertTrue(run.check().ok)
        record.result = {"message": {**outcome.result["message"], "id": 999}}
        self.assertEqual(list(run.check().kinds()), [H.UNCOMMITTED_READ])

    def test_realtime(self):
        """
        A write sent after another was acknowledged must come after it in
        the log.
        """
        run = Run()
        run.account("a", "alice")
        first, _ = run.send("a", "alice", "first")
        second, _ = run.send("a", "alice", "second")
        # Swap their entries: the log says the second came first.
        entries = run.entries
        entries[-2:] = [Entry(entries[-2].index, 1, entries[-1].data),
                        Entry(entries[-1].index, 1, entries[-2].data)]
        run.state = replay(entries)
        first.result = {"message": message_with_text(run.state, "first")}
        second.result = {"message": message_with_text(run.state, "second")}
        report = run.check()
        self.assertEqual(list(report.kinds()), [H.REALTIME])
        self.assertEqual(report.anomalies[0].ops, (first.number, second.number))


class ReadAnomalyTests(SynchronousTestCase):
    """
    The checker finds reads of lost writes and of another account's mail.
    """

    def test_read_of_lost_write(self):
        """
        A message read or pushed that the committed log does not hold was a
        read of a write later lost.
        """
        run = Run()
        run.account("a", "alice")
        run.account("b", "bob")
        send, outcome = run.send("a", "bob", "vanishing")
        push = run.push("b", outcome.result["message"])
        read = run.history.invoke("b", "history", {}, user="bob", token=run.tokens["b"])
        run.history.ok(read, {"messages": [outcome.result["message"]]})
        report = run.check([run.replica(entries=run.entries[:4])])
        self.assertEqual(
            [(a.kind, a.ops) for a in report.anomalies],
            [(H.LOST, (send.number,)), (H.UNCOMMITTED_READ, (push.number,)),
             (H.UNCOMMITTED_READ, (read.number,))],
        )

    def test_shown_altered(self):
        """
        A message shown with other content than committed is flagged.
        """
        run = Run()
        run.account("a", "alice")
        _, outcome = run.send("a", "alice", "true")
        run.push("a", {**outcome.result["message"], "text": "false"})
        self.assertEqual(list(run.check().kinds()), [H.UNCOMMITTED_READ])

    def test_account_shown(self):
        """
        An account listed must have been created by a committed entry.
        """
        run = busy_run()
        run.history.ok(run.history.invoke("c", "list_accounts", {}), {"accounts": ["mallory"]})
        self.assertEqual(list(run.check().kinds()), [H.UNCOMMITTED_READ])

    def test_misdelivered_by_name(self):
        """
        A client shown mail addressed to another name got another's mail.
        """
        run = Run()
        run.account("a", "alice")
        run.account("b", "bob")
        _, outcome = run.send("a", "alice", "private")
        push = run.push("b", outcome.result["message"])
        report = run.check()
        self.assertEqual(
            [(a.kind, a.ops) for a in report.anomalies], [(H.MISDELIVERED, (push.number,))]
        )

    def test_misdelivered_by_account_id(self):
        """
        Mail for a deleted account never reaches a new account of the same
        name: the session's account id tells them apart.
        """
        run = Run()
        run.account("a", "alice")
        run.account("b", "bob")
        _, outcome = run.send("a", "bob", "for the first bob")
        run.delete_account("b")
        run.account("b2", "bob")
        push = run.push("b2", outcome.result["message"])
        report = run.check()
        self.assertEqual(
            [(a.kind, a.ops) for a in report.anomalies], [(H.MISDELIVERED, (push.number,))]
        )
        self.assertIn("account id", report.anomalies[0].text)

    def test_history_shows_sent_mail(self):
        """
        History shows what one sent as well as what one received.
        """
        run = busy_run()
        self.assertTrue(run.check().ok)
        record = run.history.ops[-1]
        self.assertTrue(any(m["from"] == "alice" for m in record.result["messages"]))

    def test_read_twice(self):
        """
        Two acknowledged reads never return one message.
        """
        run = Run()
        run.account("a", "alice")
        run.send("a", "alice", "once")
        first, _ = run.read("a")
        second, _ = run.read("a")
        second.result = first.result
        report = run.check()
        self.assertIn(H.READ_TWICE, report.kinds())
        [anomaly] = [a for a in report.anomalies if a.kind == H.READ_TWICE]
        self.assertEqual(anomaly.ops, (first.number, second.number))


class ReplicaAnomalyTests(SynchronousTestCase):
    """
    The checker compares the servers with each other and with the log.
    """

    def test_diverged(self):
        """
        Two servers that committed different entries at one index diverged.
        """
        run = busy_run()
        other = list(run.entries)
        other[7] = Entry(8, 2, encode({"op": "noop", "ts": 0}))
        report = run.check([run.replica(1), run.replica(2, entries=other, state=False)])
        self.assertEqual(report.anomalies[0].kind, H.DIVERGED)
        self.assertEqual(report.anomalies[0].indexes, (8,))
        self.assertEqual(report.anomalies[0].nodes, (1, 2))

    def test_uncommitted_tails_may_differ(self):
        """
        Entries past a server's commit index are not compared.
        """
        run = busy_run()
        other = list(run.entries)
        other[-1] = Entry(len(other), 2, encode({"op": "noop", "ts": 0}))
        self.assertTrue(
            run.check([run.replica(1), run.replica(2, upto=len(other) - 1, entries=other)]).ok
        )

    def test_state_differs_from_log(self):
        """
        A server whose state is not its committed log replayed is flagged.
        """
        run = busy_run()
        replica = run.replica(2)
        replica.state.accounts[run.uid("bob")].created_at = 0.5
        report = run.check([run.replica(1), replica])
        self.assertEqual([(a.kind, a.nodes) for a in report.anomalies], [(H.STATE, (2,))])

    def test_order(self):
        """
        A recipient's messages in another order on two servers are flagged.
        """
        run = busy_run()
        replica = run.replica(2)
        inbox = replica.state.accounts[run.uid("bob")].inbox
        ids = list(inbox)
        inbox.clear()
        inbox.update(dict.fromkeys(reversed(ids)))
        report = run.check([run.replica(1), replica])
        self.assertIn((H.ORDER, (1, 2)), [(a.kind, a.nodes) for a in report.anomalies])

    def test_converged_states(self):
        """
        After a quiet period every server has one state.
        """
        run = busy_run()
        replica = run.replica(2)
        replica.state.accounts[run.uid("bob")].created_at = 0.5
        report = run.check([run.replica(1), replica], converged=True)
        self.assertIn(H.NOT_CONVERGED, report.kinds())

    def test_missing_entries(self):
        """
        Entries no server holds (and no snapshot covers) leave only the
        logs' agreement checked, and say so.
        """
        run = busy_run()
        report = run.check([Replica(1, len(run.entries), tuple(run.entries[5:]))])
        self.assertTrue(report.ok)
        self.assertEqual(len(report.notes), 1)
        self.assertIn("1-5", report.notes[0])


class SnapshotTests(SynchronousTestCase):
    """
    A server whose log was compacted is checked from its snapshot.
    """

    def compacted(self, run, at):
        state = replay(run.entries, at)
        snapshot = Snapshot(at, 1, state.to_snapshot())
        return Replica(1, len(run.entries), tuple(run.entries[at:]), snapshot, replay(run.entries))

    def test_replay_from_snapshot(self):
        """
        The replay starts at the snapshot, and what clients saw before it is
        checked against the snapshot's state as far as it can be.
        """
        run = busy_run()
        report = run.check([self.compacted(run, 12)])
        self.assertEqual(report.anomalies, [], report.describe(run.history))
        self.assertEqual(report.stats["entries"], len(run.entries) - 12)

    def test_applied_again_after_snapshot(self):
        """
        A rid applied before the snapshot and again after it was applied
        twice.
        """
        run = Run()
        run.account("a", "alice")
        record, _ = run.send("a", "alice", "x")
        with failpoints.planted(failpoints.FORGET_RID_DEDUPE):
            run.commit(dict(decode(run.entries[-1].data)))
            report = check(run.history, [self.compacted(run, 3)])
        self.assertIn(H.DUPLICATE, report.kinds())

    def test_snapshot_differs(self):
        """
        A snapshot that is not the replay of the log before it is flagged.
        """
        run = busy_run()
        good = self.compacted(run, 12)
        bad = ChatState.from_snapshot(good.base.data)
        bad.accounts.clear()
        forged = Replica(2, len(run.entries), (), Snapshot(12, 1, bad.to_snapshot()))
        report = run.check([run.replica(1), forged])
        self.assertEqual([(a.kind, a.nodes) for a in report.anomalies], [(H.STATE, (2,))])


class MergeTests(SynchronousTestCase):
    """
    Commands re-proposed after a partition (L{replichat.merge}) answer in
    the documented other ways, which are not anomalies.
    """

    def test_renamed_account(self):
        """
        An account both sides created is kept as C{name~2}: the client that
        was told C{name} was not misanswered, and its mail is its own.
        """
        run = Run()
        run.account("a", "alice")
        record, _ = run.create("x", "dup", commit=False, answer=False)
        run.history.ok(record, {"username": "dup"})
        run.create("y", "dup")
        run.commit({"op": "create_account", "who": None, "username": "dup", "password": PASSWORD,
                    "ts": 1.0, "rid": record.rid, "fp": "fp-" + record.rid,
                    "origin": [1, 99], "merged": True})
        self.assertEqual(sorted(run.state.uids_by_name), ["alice", "dup", "dup~2"])
        run.users["x"] = "dup~2"
        run.login("x", "dup~2")
        run.users["x"] = "dup"
        _, outcome = run.send("a", "dup~2", "to the renamed one")
        run.push("x", outcome.result["message"])
        report = run.check()
        self.assertEqual(report.anomalies, [], report.describe(run.history))

    def test_dropped_with_account(self):
        """
        A send acknowledged on the losing side to an account the winning
        side deleted is dropped with the account, not lost.
        """
        run = Run()
        run.account("a", "alice")
        run.account("b", "bob")
        bob = run.uid("bob")
        record, _ = run.send("a", "bob", "late", commit=False, answer=False)
        message = {"id": 1 * 10**10 + 50, "from": "alice", "to": "bob", "text": "late",
                   "sent_at": 1.0}
        run.history.ok(record, {"message": message})
        run.push("b", message)
        run.delete_account("b")
        run.commit({"op": "send", "who": run.uid("alice"), "to": bob, "text": "late", "ts": 1.0,
                    "rid": record.rid, "fp": "fp-" + record.rid, "origin": [1, 50],
                    "merged": True})
        report = run.check()
        self.assertEqual(report.anomalies, [], report.describe(run.history))
        self.assertEqual(report.stats["merged writes dropped with their account"], 1)

    def test_merged_write_is_no_realtime_anomaly(self):
        """
        A write acknowledged on the losing side is ordered after what the
        winning side acknowledged meanwhile.
        """
        run = Run()
        run.account("a", "alice")
        early, _ = run.send("a", "alice", "minority", commit=False, answer=False)
        run.history.ok(early, {"message": {"id": 10**10 + 40, "from": "alice", "to": "alice",
                                           "text": "minority", "sent_at": 3.0}})
        run.send("a", "alice", "majority")
        run.commit({"op": "send", "who": run.uid("alice"), "to": run.uid("alice"),
                    "text": "minority", "ts": 3.0, "rid": early.rid, "fp": "fp-" + early.rid,
                    "origin": [1, 40], "merged": True})
        report = run.check()
        self.assertEqual(report.anomalies, [], report.describe(run.history))

    def test_merged_rid_less_command(self):
        """
        A rid-less command re-proposed under a rid named after its origin is
        matched as rid-less.
        """
        run = Run()
        run.account("a", "alice")
        run.commit({"op": "login", "who": run.uid("alice"), "token_hash": "h", "ts": 1.0,
                    "rid": "~origin:1.9", "fp": "merged", "origin": [1, 9], "merged": True})
        self.assertTrue(run.check().ok)


class ReportTests(SynchronousTestCase):
    """
    L{H.Report} reads well.
    """

    def test_describe(self):
        """
        The report names each anomaly and the client events it involves.
        """
        run = busy_run()
        record, _ = run.send("a", "carol", "gone")
        report = run.check([run.replica(entries=run.entries[:-1])])
        text = report.describe(run.history)
        self.assertIn("1 anomalies (lost 1)", text.splitlines()[0])
        self.assertIn("    " + record.describe(), text)


class SimulatedClusterTests(SynchronousTestCase):
    """
    Runs of a real in-memory cluster (L{replichat.simulation}) check clean,
    through a leader crash and restart.
    """

    def test_failover(self):
        from replichat.simulation import SimCluster

        cluster = SimCluster(3)
        cluster.start_all()
        history = History()
        uids = {}

        def write(client, args, command, user=None):
            cluster.run_until(lambda: cluster.leader() is not None, 10)
            rid = "%s-%d" % (client, len(history.events))
            op = history.invoke(client, command["op"], args, rid=rid, user=user,
                                at=cluster.clock.seconds())
            d = cluster.leader().propose({**command, "rid": rid, "fp": rid,
                                          "ts": cluster.clock.seconds()})
            cluster.run_until(lambda: d.called, 5)
            outcome = self.successResultOf(d)
            if outcome.error is not None:
                history.fail(op, outcome.error.code, cluster.clock.seconds())
            else:
                history.ok(op, outcome.result, cluster.clock.seconds())
            return outcome

        for name in ("ann", "ben"):
            write(name, {"username": name, "password": "pw"},
                  {"op": "create_account", "who": None, "username": name, "password": PASSWORD})
            uids[name] = cluster.leader().state.uids_by_name[name]
        for n in range(5):
            write("ann", {"to": "ben", "text": str(n)},
                  {"op": "send", "who": uids["ann"], "to": uids["ben"], "text": str(n)}, "ann")
            if n == 2:
                cluster.crash(cluster.leader().node_id)
        write("ben", {"limit": 3}, {"op": "read", "who": uids["ben"], "limit": 3}, "ben")
        for node_id in sorted(set(cluster.members) - set(cluster.nodes)):
            cluster.start(node_id)
        cluster.run(3.0)
        replicas = [Replica.of_node(node) for node in cluster.nodes.values()]
        report = check(history, replicas, converged=True)
        self.assertEqual(report.anomalies, [], report.describe(history))
        self.assertEqual(report.stats["ops ok"], 8)
        self.assertEqual(report.stats["messages"], 5)


class StorageTests(SynchronousTestCase):
    """
    L{Replica} reads a server's storage.
    """

    def test_of_storage_compacted(self):
        """
        A compacted log is read from its base, with the snapshot it starts
        from.
        """
        run = busy_run()
        log, snapshots = MemoryLog(), MemorySnapshotStore()
        log.append(run.entries)
        log.sync()
        snapshots.save(Snapshot(5, 1, replay(run.entries, 5).to_snapshot()))
        snapshots.save(Snapshot(9, 1, replay(run.entries, 9).to_snapshot()))
        log.compact(5)
        replica = Replica.of_storage(1, log, snapshots, commit_index=len(run.entries))
        self.assertEqual(replica.base.index, 5)
        self.assertEqual([e.index for e in replica.entries], list(range(6, 16)))
        self.assertTrue(run.check([replica]).ok)

    def test_of_data_dir(self):
        """
        A stopped server's data directory is read like its storage.
        """
        from replichat.log import SegmentedLog

        run = busy_run()
        data_dir = self.mktemp()
        log = SegmentedLog(os.path.join(data_dir, "log"))
        log.append(run.entries)
        log.sync()
        log.close()
        replica = Replica.of_data_dir(3, data_dir)
        self.assertEqual((replica.node_id, replica.commit_index), (3, len(run.entries)))
        self.assertEqual(list(replica.entries), run.entries)
        self.assertTrue(run.check([replica]).ok)
        self.assertEqual(Replica.of_data_dir(3, data_dir, commit_index=4).commit_index, 4)


class RecordedWire:
    """
    A client connection to a real handler (L{tests.test_lineproto.Server})
    whose requests, answers and pushes go into a L{History}.
    """

    def __init__(self, server, history: History, name: str) -> None:
        self.server = server
        self.wire = server.connect()
        self.history = history
        self.name = name
        self.user = self.token = None
        self._seen = 0

    def call(self, op: str, **args) -> dict:
        record = self.history.invoke(
            self.name, op, args, rid=args.get("rid"), user=self.user, token=self.token,
            at=self.server.clock.seconds(),
        )
        answer = self.wire.call(op, **args)
        self.take_pushes()
        if answer["ok"]:
            self.history.ok(record, answer["result"], self.server.clock.seconds())
            if op == "login":
                self.user, self.token = args["username"], answer["result"]["token"]
        else:
            self.history.fail(record, answer["error"]["code"], self.server.clock.seconds())
        return answer

    def take_pushes(self) -> None:
        self.wire.lines()
        for line in self.wire.seen[self._seen :]:
            if line.get("event") == "message":
                self.history.pushed(self.name, line["message"], user=self.user,
                                    token=self.token, at=self.server.clock.seconds())
        self._seen = len(self.wire.seen)


class RealHandlerTests(SynchronousTestCase):
    """
    What clients of the real handler and node see checks clean against the
    node's log and state, and a tampered record does not.
    """

    def run_chat(self):
        from tests.test_lineproto import Server

        server = Server()
        history = History()
        alice = RecordedWire(server, history, "c1")
        bob = RecordedWire(server, history, "c2")
        for client, name in ((alice, "alice"), (bob, "bob")):
            client.call("create_account", username=name, password="pw", rid=name + "-create")
            client.call("login", username=name, password="pw")
        for n in range(3):
            alice.call("send", to="bob", text="m%d" % (n,), rid="a-%d" % (n,))
        # A retry out of the history's sight, as the client library makes.
        first = history.ops[-3]
        history.attempt(first)
        self.assertEqual(alice.wire.ok("send", to="bob", text="m0", rid="a-0"), first.result)
        alice.call("send", to="nobody", text="x", rid="a-9")
        bob.take_pushes()
        read = bob.call("read", limit=2, rid="b-1")
        bob.call("history", limit=10)
        bob.call("list_accounts")
        ids = [m["id"] for m in read["result"]["messages"]]
        bob.call("delete_messages", ids=ids[:1], rid="b-2")
        bob.call("delete_account", password="pw", rid="b-3")
        again = RecordedWire(server, history, "c3")
        again.call("create_account", username="bob", password="pw", rid="bob2-create")
        again.call("login", username="bob", password="pw")
        alice.call("send", to="bob", text="for the new bob", rid="a-10")
        again.take_pushes()
        again.call("read", rid="b2-1")
        return server, history

    def test_clean(self):
        """
        Accounts, logins, sends (one retried, one refused), pushes, reads,
        history, deletions and a name taken again check clean.
        """
        server, history = self.run_chat()
        report = check(history, [Replica.of_node(server.node)], converged=True)
        self.assertEqual(report.anomalies, [], report.describe(history))
        self.assertEqual(report.stats["ops fail"], 1)
        self.assertEqual(len(history.pushes), 4)

    def test_tampered(self):
        """
        The old bob's mail shown to the new bob is misdelivered.
        """
        server, history = self.run_chat()
        old = history.pushes[0]
        new_bob = [op for op in history.ops if op.client == "c3"][-1]
        history.events.append(
            H.Push(len(history.events) + 1, "c3", old.message, "bob", new_bob.session)
        )
        report = check(history, [Replica.of_node(server.node)])
        self.assertEqual([a.kind for a in report.anomalies], [H.MISDELIVERED])


class MailboxTests(SynchronousTestCase):
    """
    No account holds or is shown another's mail.
    """

    def test_inbox_of_another(self):
        """
        A server whose state files a message in the inbox of an account it
        was not addressed to misdelivered it, whatever the clients saw.
        """
        run = busy_run()
        replica = run.replica(2)
        state = replica.state
        carol = state.accounts[run.uid("carol")]
        stolen = next(iter(state.accounts[run.uid("bob")].inbox))
        carol.inbox[stolen] = None
        report = run.check([run.replica(1), replica])
        self.assertIn((H.MISDELIVERED, (2,)), [(a.kind, a.nodes) for a in report.anomalies])

    def test_read_of_another_by_entry(self):
        """
        A committed read shows mail of the account it was applied to, even
        where the client's session is not known.
        """
        run = Run()
        run.account("a", "alice")
        run.account("b", "bob")
        _, outcome = run.send("a", "alice", "mine")
        del run.tokens["b"]
        record, _ = run.read("b")
        record.result = {"messages": [outcome.result["message"]], "remaining": 0}
        record.user = None
        kinds = run.check().kinds()
        self.assertIn(H.MISDELIVERED, kinds)


def compacted(run: Run, at: int, node_id: int = 1) -> Replica:
    """
    A server whose log was compacted up to C{at}: it holds the snapshot
    there and the entries after it.
    """
    snapshot = Snapshot(at, 1, replay(run.entries, at).to_snapshot())
    return Replica(
        node_id, len(run.entries), tuple(run.entries[at:]), snapshot, replay(run.entries)
    )


def origin_id(epoch: int, index: int) -> int:
    return epoch * 10**10 + index


class Heal:
    """
    Builds, on a L{Run} (the winning side's log), what a partition's losing
    side did: ops answered there (and not committed on the winner), and the
    commands it hands in when the partition heals.
    """

    def __init__(self, run: Run, epoch: int = 2) -> None:
        self.run = run
        self.epoch = epoch

    def answered(self, client, op, args, result=None, error=None, rid=True, user=None):
        """
        C{client}'s C{op}, answered C{result} (or refused C{error}) by the
        losing side.
        """
        run = self.run
        rid = run.rid() if rid is True else rid
        record = run.history.invoke(
            client, op, args, rid=rid, user=run.users.get(client) if user is None else user,
            token=run.tokens.get(client), at=run.tick(),
        )
        if error is not None:
            run.history.fail(record, error, run.tick())
        else:
            run.history.ok(record, result, run.tick())
        return record

    def merge(self, command: dict, index: int, record=None):
        """
        Commit the command the losing side had committed at C{index},
        re-proposed.
        """
        command = {**command, "ts": command.get("ts", 1.0), "origin": [self.epoch, index],
                   "merged": True, "committed": True}
        if record is not None and record.rid is not None:
            command.update(rid=record.rid, fp="fp-" + record.rid)
        elif command.get("rid") is None:
            command.update(rid="~origin:%d.%d" % (self.epoch, index), fp="merged")
        return self.run.commit(command)

    def message(self, index: int, sender: str, to: str, text: str) -> dict:
        return {"id": origin_id(self.epoch, index), "from": sender, "to": to, "text": text,
                "sent_at": 1.0}

    def send(self, client, to: str, text: str, index: int):
        """
        C{client}'s send of C{text} to C{to}, answered by the losing side
        with the message its entry at C{index} made.
        """
        message = self.message(index, self.run.users[client], to, text)
        return self.answered(client, "send", {"to": to, "text": text}, {"message": message})

    def merge_send(self, record, index: int, to: int, who: int | None = None):
        """
        L{merge} the losing side's send at C{index} of C{record} (a send):
        its text to the account id C{to}, as the account id C{who} (by
        default, that of the account C{record}'s client was logged in as).
        """
        who = self.run.uid(record.user) if who is None else who
        command = {"op": "send", "who": who, "to": to, "text": record.args["text"]}
        return self.merge(command, index, record)


class PartitionTests(SynchronousTestCase):
    """
    What a partition's heal does (L{replichat.merge}, L{replichat.state}) is
    not an anomaly, and what it does not do still is.
    """

    def test_dropped_with_deleted_account_by_alias(self):
        """
        A merged send to the losing side's id of an account that is an alias
        of the winner's, which the winner deleted before, is dropped with
        it.
        """
        run = Run()
        run.account("a", "alice")
        heal = Heal(run)
        record, _ = run.create("b", "bob")
        # The losing side applied a retry of the same create: its uid is an
        # alias of the winner's.
        heal.merge({"op": "create_account", "who": None, "username": "bob",
                    "password": PASSWORD}, 30, record)
        bob_here = origin_id(2, 30)
        self.assertEqual(run.state.aliases, {bob_here: run.uid("bob")})
        send = heal.send("a", "bob", "late", 31)
        run.login("b", "bob")
        run.delete_account("b")
        outcome = heal.merge_send(send, 31, bob_here)
        self.assertEqual(outcome.error.code, errors.NO_SUCH_USER)
        report = run.check(partitioned=True)
        self.assertEqual(report.anomalies, [], report.describe(run.history))
        self.assertEqual(report.stats["merged writes dropped with their account"], 1)

    def test_account_gone_but_never_deleted(self):
        """
        A merged write that fails with an "account gone" error is a
        misanswered write unless a committed delete_account of that account
        came before it: never deleted, or deleted only after.
        """
        run = Run()
        run.account("a", "alice")
        heal = Heal(run)
        # Its own account id is one that never existed.
        nowhere = heal.send("a", "alice", "x", 20)
        outcome = heal.merge_send(nowhere, 20, run.uid("alice"), who=12345)
        self.assertEqual(outcome.error.code, errors.NOT_LOGGED_IN)
        # The recipient's account is merged only after the send, and
        # deleted later still.
        heal.answered("z", "create_account", {"username": "zed", "password": "pw"},
                      {"username": "zed"})
        early = heal.send("a", "zed", "y", 22)
        outcome = heal.merge_send(early, 22, origin_id(2, 21))
        self.assertEqual(outcome.error.code, errors.NO_SUCH_USER)
        heal.merge({"op": "create_account", "who": None, "username": "zed",
                    "password": PASSWORD}, 21, run.history.ops[-2])
        run.users["z"] = "zed"
        run.delete_account("z")
        report = run.check(partitioned=True)
        self.assertEqual(
            [(a.kind, a.ops) for a in report.anomalies],
            [(H.WRONG_ANSWER, (nowhere.number,)), (H.WRONG_ANSWER, (early.number,))],
        )

    def test_login_dropped_with_account(self):
        """
        A login acknowledged on the losing side, re-proposed after the
        winner deleted the account, fails with it and was not lost; one
        whose account was never deleted was.
        """
        run = Run()
        run.account("b", "bob")
        heal = Heal(run)
        login = heal.answered("x", "login", {"username": "bob", "password": "pw"},
                              {"token": "tok-x", "unread": 0}, rid=None)
        bob = run.uid("bob")
        run.delete_account("b")
        outcome = heal.merge({"op": "login", "who": bob,
                              "token_hash": token_hash("tok-x")}, 40)
        self.assertEqual(outcome.error.code, errors.NOT_LOGGED_IN)
        report = run.check(partitioned=True)
        self.assertEqual(report.anomalies, [], report.describe(run.history))
        self.assertEqual(report.stats["merged logins dropped with their account"], 1)

        run.entries[-1] = Entry(
            run.entries[-1].index, 1,
            encode({**decode(run.entries[-1].data), "who": 777}),
        )
        run.state = replay(run.entries)
        report = run.check(partitioned=True)
        self.assertEqual([(a.kind, a.ops) for a in report.anomalies],
                         [(H.WRONG_ANSWER, (login.number,))])

    def test_retried_on_both_sides(self):
        """
        A send committed by the winner and retried on the losing side,
        which answered with its own message id: that id is an alias of the
        winner's, and what its client was shown under it is the same
        message.  Without the alias it would not be.
        """
        run = Run()
        run.account("a", "alice")
        run.account("b", "bob")
        heal = Heal(run)
        record, winner = run.send("a", "bob", "both", answer=False)
        theirs = {**heal.message(60, "alice", "bob", "both"), "sent_at": 7.5}
        run.history.ok(record, {"message": theirs}, run.tick())
        run.push("b", theirs)
        history = run.history.invoke("a", "history", {}, user="alice", token=run.tokens["a"],
                                     at=run.tick())
        run.history.ok(history, {"messages": [theirs]}, run.tick())
        unaliased = run.check(partitioned=True).kinds()
        self.assertEqual(unaliased, {H.WRONG_ANSWER: 1, H.UNCOMMITTED_READ: 2})

        heal.merge_send(record, 60, run.uid("bob"))
        self.assertEqual(run.state.aliases, {theirs["id"]: winner.result["message"]["id"]})
        report = run.check(partitioned=True)
        self.assertEqual(report.anomalies, [], report.describe(run.history))
        self.assertEqual(report.stats["answers with an aliased id"], 1)
        self.assertEqual(report.stats["messages shown by an aliased id"], 2)

        # An alias stands for a message that says the same.
        run.history.pushed("b", {**theirs, "text": "else"}, user="bob", token=run.tokens["b"])
        self.assertEqual(list(run.check(partitioned=True).kinds()), [H.UNCOMMITTED_READ])

    def test_refused_by_the_losing_side(self):
        """
        A retry refused by the losing side (username_taken: it had not seen
        the winner apply the first attempt) proves nothing during a
        partition; without partitions the refusal was definite.
        """
        run = Run()
        record, _ = run.create("c", "carol", answer=False)
        run.history.fail(record, errors.USERNAME_TAKEN, run.tick())
        report = run.check(partitioned=True)
        self.assertEqual(report.anomalies, [], report.describe(run.history))
        self.assertEqual(report.stats["refused during a partition, applied"], 1)
        self.assertEqual(list(run.check().kinds()), [H.FAILED_BUT_APPLIED])

    def test_refused_by_winner_applied_when_merged(self):
        """
        A request the winner refused and the losing side applied takes
        effect once when merged: no duplicate.  Its client, if the losing
        side answered it, was answered right; if the winner did, then
        without partitions (an orphan of a crashed leader's log, never
        acknowledged) the refusal was definite and the effect breaks it.
        """
        run = Run()
        run.account("a", "alice")
        _, sent = run.send("a", "alice", "doomed")
        message_id = sent.result["message"]["id"]
        heal = Heal(run)
        # Winner: not_found (the id is not the client's yet, say); loser:
        # deleted it.
        record, refused = run.write(
            "a", "delete_messages", {"ids": [message_id, 999]},
            {"op": "delete_messages", "who": run.uid("alice"), "ids": [message_id, 999]},
            answer=False,
        )
        self.assertEqual(refused.error.code, errors.NOT_FOUND)
        merged = heal.merge({"op": "delete_messages", "who": run.uid("alice"),
                             "ids": [message_id, 999]}, 70, record)
        self.assertEqual(merged.result, {"deleted": 1})
        self.assertFalse(merged.duplicate)

        run.history.ok(record, {"deleted": 2}, run.tick())  # the losing side's answer
        report = run.check(partitioned=True)
        self.assertEqual(report.anomalies, [], report.describe(run.history))

        record.status, record.result, record.error = H.FAIL, None, errors.NOT_FOUND
        self.assertTrue(run.check(partitioned=True).ok)
        self.assertEqual(list(run.check().kinds()), [H.FAILED_BUT_APPLIED])

    def test_two_effects_are_a_duplicate(self):
        """
        Both applications of a rid taking effect is still a duplicate,
        merged or not.
        """
        run = Run()
        run.account("a", "alice")
        record, _ = run.send("a", "alice", "x")
        with failpoints.planted(failpoints.FORGET_RID_DEDUPE):
            Heal(run).merge_send(record, 50, run.uid("alice"))
            kinds = run.check(partitioned=True).kinds()
        self.assertIn(H.DUPLICATE, kinds)

    def test_read_answered_by_losing_side(self):
        """
        A read retried on the losing side, whose rid the winner committed
        too, may be answered otherwise (reads are not re-proposed: its
        messages come back unread, and are read again) during a partition,
        not without.
        """
        run = Run()
        run.account("a", "alice")
        run.account("b", "bob")
        heal = Heal(run)
        sent = heal.send("a", "bob", "hi", 80)
        first, outcome = run.read("b", answer=False)
        self.assertEqual(outcome.result, {"messages": [], "remaining": 0})
        run.history.ok(first, {"messages": [heal.message(80, "alice", "bob", "hi")],
                               "remaining": 0}, run.tick())
        heal.merge_send(sent, 80, run.uid("bob"))
        again, outcome = run.read("b")
        self.assertEqual(len(outcome.result["messages"]), 1)
        report = run.check(partitioned=True)
        self.assertEqual(report.anomalies, [], report.describe(run.history))
        self.assertEqual(report.stats["reads answered by a losing side"], 1)
        kinds = run.check().kinds()
        self.assertIn(H.WRONG_ANSWER, kinds)
        self.assertIn(H.READ_TWICE, kinds)

    def test_realtime_after_reproposed(self):
        """
        A write acknowledged by a losing side and committed by the winner
        too (the same rid) may come after what its client did next,
        during a partition.
        """
        run = Run()
        run.account("a", "alice")
        heal = Heal(run)
        early = heal.send("a", "alice", "one", 90)
        run.send("a", "alice", "two")
        # The first's retry reached the winner late, and the loser's entry
        # was handed in.
        run.commit({"op": "send", "who": run.uid("alice"), "to": run.uid("alice"),
                    "text": "one", "ts": run.tick(), "rid": early.rid, "fp": "fp-" + early.rid})
        heal.merge_send(early, 90, run.uid("alice"))
        report = run.check(partitioned=True)
        self.assertEqual(report.anomalies, [], report.describe(run.history))
        self.assertIn(H.REALTIME, run.check().kinds())


class CompactedPartitionTests(SynchronousTestCase):
    """
    A run with partitions checks the same from a snapshot taken after its
    heals as from the whole log: what came before it is judged from the
    snapshot's rid memory (first answers, ids made) and aliases.
    """

    def partitioned_run(self) -> Run:
        run = Run()
        run.account("a", "alice")
        run.account("b", "bob")
        run.account("y", "dup")
        heal = Heal(run)
        # Created on both sides: the loser's becomes dup~2.
        dup = heal.answered("x", "create_account", {"username": "dup", "password": "pw"},
                            {"username": "dup"}, user="dup")
        heal.merge({"op": "create_account", "who": None, "username": "dup",
                    "password": PASSWORD}, 20, dup)
        # Sent to dup~2 on the losing side.
        to_dup = heal.send("a", "dup", "for dup", 21)
        heal.merge_send(to_dup, 21, origin_id(2, 20))
        # Refused by the losing side, applied by the winner.
        record, _ = run.create("c", "carol", answer=False)
        run.history.fail(record, errors.USERNAME_TAKEN, run.tick())
        # Refused by the winner, applied by the losing side, then merged.
        _, sent = run.send("a", "alice", "doomed")
        doomed = sent.result["message"]["id"]
        delete, _ = run.write(
            "a", "delete_messages", {"ids": [doomed, 999]},
            {"op": "delete_messages", "who": run.uid("alice"), "ids": [doomed, 999]},
        )
        self.merge_delete = lambda: heal.merge(
            {"op": "delete_messages", "who": run.uid("alice"), "ids": [doomed, 999]},
            22, delete,
        )
        # Sent, shown, and gone with both accounts.
        run.account("e", "eve")
        _, sent = run.send("b", "eve", "short-lived")
        run.push("e", sent.result["message"])
        run.delete_account("e")
        # Dropped with bob's account, deleted by the winner.
        late = heal.send("a", "bob", "late", 23)
        bob = run.uid("bob")
        run.delete_account("b")
        heal.merge_send(late, 23, bob)
        # Listed while it existed.
        listing = run.history.invoke("x", "list_accounts", {}, at=run.tick())
        run.history.ok(listing, {"accounts": ["alice", "dup", "dup~2", "eve"], "total": 4},
                       run.tick())
        return run

    def test_clean_whole_and_compacted(self):
        """
        The run checks clean from its whole log and from a snapshot at its
        end; the merged delete handed in after the snapshot is no duplicate.
        """
        run = self.partitioned_run()
        at = len(run.entries)
        self.merge_delete()
        for replicas in ([run.replica(1)], [compacted(run, at)]):
            report = run.check(replicas, partitioned=True)
            self.assertEqual(report.anomalies, [], report.describe(run.history))
        self.assertEqual(report.stats["entries"], 1)

    def test_login_repeated_after_snapshot(self):
        """
        A login acknowledged on the losing side, merged before the snapshot
        (its session since ended) and handed in again after it, was
        committed: the repeat says so.
        """
        run = Run()
        run.account("b", "bob")
        heal = Heal(run)
        heal.answered("x", "login", {"username": "bob", "password": "pw"},
                      {"token": "tok-x", "unread": 0}, rid=None)
        login = {"op": "login", "who": run.uid("bob"), "token_hash": token_hash("tok-x")}
        heal.merge(login, 40)
        run.commit({"op": "logout", "who": run.uid("bob"), "token_hash": token_hash("tok-x"),
                    "ts": 2.0})
        at = len(run.entries)
        self.assertTrue(heal.merge(login, 40).duplicate)
        report = run.check([compacted(run, at)], partitioned=True)
        self.assertEqual(report.anomalies, [], report.describe(run.history))

    def test_still_checked_before_snapshot(self):
        """
        From a snapshot, a misanswered write before it, a message shown
        altered that was made and deleted before it, and an account listed
        that nothing created are still found.
        """
        run = self.partitioned_run()
        run.history.ops[-1].result = {"accounts": ["mallory"], "total": 1}
        shown = run.history.pushes[0]
        run.history.events[shown.number - 1] = H.Push(
            shown.number, shown.client, {**shown.message, "text": "forged"}, shown.user,
            shown.session, shown.at,
        )
        carol = next(op for op in run.history.ops if op.args.get("username") == "carol")
        carol.status, carol.result, carol.error = H.OK, {"username": "carol2"}, None
        report = run.check([compacted(run, len(run.entries))], partitioned=True)
        self.assertEqual(
            sorted((a.kind, a.ops) for a in report.anomalies),
            [(H.UNCOMMITTED_READ, (shown.number,)),
             (H.UNCOMMITTED_READ, (run.history.ops[-1].number,)),
             (H.WRONG_ANSWER, (carol.number,))],
        )


class StaleReadTests(SynchronousTestCase):
    """
    Without partitions or pauses a read sees every send acknowledged
    before it was invoked.
    """

    def stale_run(self):
        """
        A send acknowledged by a leader that died before its followers had
        it: the new leader commits a read that misses it, and the send
        comes back later (re-proposed from the old leader's log).
        """
        run = Run()
        run.account("a", "alice")
        run.account("b", "bob")
        heal = Heal(run)
        sent = heal.send("a", "bob", "acked", 9)
        read, _ = run.read("b")
        heal.merge_send(sent, 9, run.uid("bob"))
        return run, sent, read

    def test_stale(self):
        """
        The read is stale; the checker says so unless told that the run
        may read stale (partitions, paused servers).
        """
        run, sent, read = self.stale_run()
        report = run.check()
        self.assertEqual([(a.kind, a.ops) for a in report.anomalies],
                         [(H.STALE_READ, (sent.number, read.number))])
        self.assertTrue(run.check(linearizable=False).ok)
        self.assertTrue(run.check(partitioned=True).ok)
        self.assertIn(H.STALE_READ, run.check(partitioned=True, linearizable=True).kinds())

    def test_read_before_or_deleted(self):
        """
        A message taken by an earlier committed read (whose client never
        heard back) or deleted by its recipient is not missed; nor is one
        a read that did not empty the unread messages left out.
        """
        run = Run()
        run.account("a", "alice")
        run.account("b", "bob")
        _, sent = run.send("a", "bob", "taken")
        lost, _ = run.read("b", answer=False)
        run.history.unknown(lost, run.tick(), "timeout")
        _, sent = run.send("a", "bob", "deleted")
        run.write("b", "delete_messages", {"ids": [sent.result["message"]["id"]]},
                  {"op": "delete_messages", "who": run.uid("bob"),
                   "ids": [sent.result["message"]["id"]]})
        run.read("b")
        run.send("a", "bob", "one")
        run.send("a", "bob", "two")
        run.read("b", limit=1)
        self.assertTrue(run.check().ok)
        self.assertGreaterEqual(run.check().stats["reads checked for staleness"], 1)

    def test_from_snapshot(self):
        """
        A message sent before the snapshot and still unread there is
        checked too.
        """
        run = Run()
        run.account("a", "alice")
        run.account("b", "bob")
        heal = Heal(run)
        sent = heal.send("a", "bob", "acked", 9)
        heal.merge_send(sent, 9, run.uid("bob"))
        at = len(run.entries)
        read, outcome = run.read("b", answer=False)
        run.history.ok(read, {"messages": [], "remaining": 0}, run.tick())
        report = run.check([compacted(run, at)])
        self.assertIn((H.STALE_READ, (sent.number, read.number)),
                      [(a.kind, a.ops) for a in report.anomalies])


class MovedNamesTests(SynchronousTestCase):
    """
    The replay and the checker moved out of L{replichat.testing.history},
    and their public names can still be imported from it.
    """

    def test_all(self):
        """
        Every name in C{history.__all__} is an attribute of it, and one that
        moved is the very object its new module defines.
        """
        for name in H.__all__:
            value = getattr(H, name)
            where = H._MOVED.get(name)
            if where is not None:
                self.assertIs(value, getattr(importlib.import_module(where), name))

    def test_from_import(self):
        """
        C{from replichat.testing.history import ...} finds a moved name.
        """
        from replichat.testing import checker, replicas
        from replichat.testing.history import Anomaly, Applied, Report

        self.assertIs(Anomaly, checker.Anomaly)
        self.assertIs(Report, checker.Report)
        self.assertIs(Applied, replicas.Applied)
        self.assertIs(check, checker.check)
        self.assertIs(Replica, replicas.Replica)

    def test_unknown_name(self):
        """
        Any other name is missing, as from any module.
        """
        self.assertRaises(AttributeError, getattr, H, "no_such_name")
        self.assertNotIn("no_such_name", dir(H))
        self.assertIn("check", dir(H))
