# -*- test-case-name: tests.test_state -*-
"""
Tests for L{replichat.state}: every command, every refusal, exactly-once by
request id, and snapshots that rebuild exactly the replayed state.
"""

from __future__ import annotations

import gc
import random

from twisted.trial.unittest import SynchronousTestCase

from replichat import errors, state as state_module
from replichat.state import ChatState, origin_id

PASSWORD = {"alg": "scrypt", "n": 16, "r": 8, "p": 1, "salt": "c2FsdA==", "hash": "aGFzaA=="}


class Driver:
    """
    Applies commands to a state at consecutive indexes, remembering them so
    a test can replay them into a fresh state.
    """

    def __init__(self) -> None:
        self.state = ChatState()
        self.commands: list[dict] = []
        self.ts = 1000.0

    def apply(self, command: dict):
        self.ts += 1
        command = {"ts": self.ts, **command}
        self.commands.append(command)
        return self.state.apply(self.state.applied_index + 1, command)

    def create(self, name: str, rid: str | None = None):
        command = {"op": "create_account", "who": None, "username": name, "password": PASSWORD}
        if rid:
            command.update(rid=rid, fp="fp-" + name)
        return self.apply(command)

    def uid(self, name: str) -> int:
        return self.state.uids_by_name[name]

    def send(self, sender: str, recipient: str, text: str, rid: str | None = None):
        command = {"op": "send", "who": self.uid(sender), "to": self.uid(recipient), "text": text}
        if rid:
            command.update(rid=rid, fp="fp-" + text)
        return self.apply(command)


class AccountTests(SynchronousTestCase):
    """
    Creating, logging into and deleting accounts.
    """

    def test_create(self) -> None:
        """
        A new account gets the next uid and is found by name.
        """
        d = Driver()
        outcome = d.create("alice")
        self.assertEqual(outcome.result, {"username": "alice"})
        self.assertIsNone(outcome.error)
        self.assertEqual(d.state.account_named("alice").uid, 1)
        self.assertEqual(d.create("bob").result, {"username": "bob"})
        self.assertEqual(d.uid("bob"), 2)

    def test_taken(self) -> None:
        """
        A taken name is refused with C{username_taken} and changes nothing.
        """
        d = Driver()
        d.create("alice")
        before = d.state.to_snapshot()
        outcome = d.create("alice")
        self.assertEqual(outcome.error.code, errors.USERNAME_TAKEN)
        self.assertIsNone(outcome.result)
        self.assertEqual(len(d.state.accounts), 1)
        self.assertEqual(list(d.state.accounts), [1])
        self.assertNotEqual(before, d.state.to_snapshot())  # only applied_index moved
        self.assertEqual(d.state.applied_index, 2)

    def test_login_sessions(self) -> None:
        """
        Logging in records the session's token hash; logging out removes it;
        only the newest sessions of an account are kept.
        """
        d = Driver()
        d.create("alice")
        outcome = d.apply({"op": "login", "who": 1, "token_hash": "t1"})
        self.assertEqual(outcome.result, {"username": "alice", "unread": 0})
        self.assertIs(d.state.session("t1"), d.state.account_named("alice"))
        d.apply({"op": "logout", "who": 1, "token_hash": "t1"})
        self.assertIsNone(d.state.session("t1"))
        for i in range(state_module.SESSIONS_PER_ACCOUNT + 3):
            d.apply({"op": "login", "who": 1, "token_hash": "s%d" % i})
        self.assertIsNone(d.state.session("s0"))
        self.assertIsNone(d.state.session("s2"))
        self.assertIsNotNone(d.state.session("s3"))
        self.assertEqual(len(d.state.sessions), state_module.SESSIONS_PER_ACCOUNT)

    def test_login_deleted(self) -> None:
        """
        A login for an account deleted meanwhile is refused.
        """
        d = Driver()
        d.create("alice")
        d.apply({"op": "delete_account", "who": 1})
        outcome = d.apply({"op": "login", "who": 1, "token_hash": "t"})
        self.assertEqual(outcome.error.code, errors.NOT_LOGGED_IN)

    def test_delete_account(self) -> None:
        """
        Deleting an account frees its name (a new account gets a new uid),
        discards its mail and sessions, and keeps what it sent with the
        recipients.
        """
        d = Driver()
        d.create("alice")
        d.create("bob")
        d.send("alice", "bob", "from alice")
        d.send("bob", "alice", "to alice")
        d.apply({"op": "login", "who": 1, "token_hash": "ta"})
        self.assertEqual(d.apply({"op": "delete_account", "who": 1}).result, {})
        self.assertIsNone(d.state.account_named("alice"))
        self.assertIsNone(d.state.session("ta"))
        self.assertEqual(d.state.list_accounts("*", 0, 10), {"accounts": ["bob"], "total": 1})
        bob = d.state.account_named("bob")
        self.assertEqual([d.state.message(i).text for i in bob.inbox], ["from alice"])
        d.create("alice")
        # Named after the creating entry, never reused.
        self.assertEqual(d.uid("alice"), d.state.applied_index)
        self.assertNotIn(d.uid("alice"), (1, 2))
        self.assertEqual(d.state.account_named("alice").inbox, {})


class MessageTests(SynchronousTestCase):
    """
    Sending, reading, history and deleting.
    """

    def setUp(self) -> None:
        self.d = Driver()
        for name in ("alice", "bob", "carol"):
            self.d.create(name)

    def test_send_pushes(self) -> None:
        """
        A sent message gets an id named after its entry, lands unread in
        the recipient's inbox and is to be pushed to the recipient's uid.
        """
        outcome = self.d.send("alice", "bob", "hi")
        message = outcome.result["message"]
        index = self.d.state.applied_index
        self.assertEqual(
            message, {"id": index, "from": "alice", "to": "bob", "text": "hi", "sent_at": message["sent_at"]}
        )
        self.assertEqual(message["sent_at"], self.d.ts)
        self.assertEqual(outcome.pushes, ((self.d.uid("bob"), message),))
        self.assertEqual(list(self.d.state.account_named("bob").unread), [index])

    def test_send_to_deleted(self) -> None:
        """
        Mail addressed to a uid that no longer exists is refused, even if a
        new account took the name: it can never reach the wrong account.
        """
        old_bob = self.d.uid("bob")
        self.d.apply({"op": "delete_account", "who": old_bob})
        self.d.create("bob")
        outcome = self.d.apply({"op": "send", "who": 1, "to": old_bob, "text": "x"})
        self.assertEqual(outcome.error.code, errors.NO_SUCH_USER)
        self.assertEqual(self.d.state.account_named("bob").inbox, {})

    def test_read_oldest_first(self) -> None:
        """
        Reading takes the oldest unread messages, N at a time, and marks
        them read; what is left is counted.
        """
        for i in range(5):
            self.d.send("alice", "bob", "m%d" % i)
        bob = self.d.uid("bob")
        first = self.d.apply({"op": "read", "who": bob, "limit": 2}).result
        self.assertEqual([m["text"] for m in first["messages"]], ["m0", "m1"])
        self.assertEqual(first["remaining"], 3)
        rest = self.d.apply({"op": "read", "who": bob, "limit": 10}).result
        self.assertEqual([m["text"] for m in rest["messages"]], ["m2", "m3", "m4"])
        self.assertEqual(rest["remaining"], 0)
        empty = self.d.apply({"op": "read", "who": bob, "limit": 10}).result
        self.assertEqual(empty, {"messages": [], "remaining": 0})
        self.assertEqual(len(self.d.state.account_named("bob").inbox), 5)

    def test_history(self) -> None:
        """
        History lists sent and received messages newest first, filtered by
        the other party and by C{before}, limited.
        """
        self.d.send("alice", "bob", "1")
        self.d.send("bob", "alice", "2")
        third = self.d.send("carol", "alice", "3").result["message"]["id"]
        self.d.send("alice", "bob", "4")
        alice, bob = self.d.uid("alice"), self.d.uid("bob")
        texts = lambda ms: [m["text"] for m in ms]
        self.assertEqual(texts(self.d.state.history(alice, None, None, 10)), ["4", "3", "2", "1"])
        self.assertEqual(texts(self.d.state.history(alice, bob, None, 10)), ["4", "2", "1"])
        self.assertEqual(texts(self.d.state.history(alice, None, third, 10)), ["2", "1"])
        self.assertEqual(texts(self.d.state.history(alice, None, None, 2)), ["4", "3"])
        self.assertEqual(texts(self.d.state.history(bob, None, None, 10)), ["4", "2", "1"])

    def test_message_to_self(self) -> None:
        """
        A message to oneself is listed once in history.
        """
        self.d.send("alice", "alice", "note")
        alice = self.d.uid("alice")
        self.assertEqual(len(self.d.state.history(alice, None, None, 10)), 1)

    def test_delete_own(self) -> None:
        """
        Deleting received messages removes them from the deleter's view,
        read or not; the sender keeps its copy.
        """
        ids = [self.d.send("alice", "bob", str(i)).result["message"]["id"] for i in range(3)]
        bob = self.d.uid("bob")
        outcome = self.d.apply({"op": "delete_messages", "who": bob, "ids": [ids[0], ids[2], ids[2]]})
        self.assertEqual(outcome.result, {"deleted": 2})
        account = self.d.state.account_named("bob")
        self.assertEqual(list(account.inbox), [ids[1]])
        self.assertEqual(list(account.unread), [ids[1]])
        self.assertEqual(len(self.d.state.account_named("alice").sent), 3)

    def test_forgotten_when_nobody_has_it(self) -> None:
        """
        A message is kept while its sender or its recipient still has it,
        and dropped once neither does (deleted, or the account is gone).
        """
        first = self.d.send("alice", "bob", "a").result["message"]["id"]
        second = self.d.send("alice", "bob", "b").result["message"]["id"]
        alice, bob = self.d.uid("alice"), self.d.uid("bob")
        self.d.apply({"op": "delete_messages", "who": bob, "ids": [first]})
        self.assertIn(first, self.d.state.messages)
        self.d.apply({"op": "delete_messages", "who": alice, "ids": [first]})
        self.assertNotIn(first, self.d.state.messages)
        self.d.apply({"op": "delete_account", "who": alice})
        self.assertIn(second, self.d.state.messages)
        self.d.apply({"op": "delete_account", "who": bob})
        self.assertEqual(self.d.state.messages, {})

    def test_delete_others_refused(self) -> None:
        """
        Deleting a message of another account (or one that does not exist)
        is refused as C{not_found}, and nothing is deleted.
        """
        between = self.d.send("alice", "bob", "private").result["message"]["id"]
        mine = self.d.send("alice", "carol", "mine").result["message"]["id"]
        carol = self.d.uid("carol")
        outcome = self.d.apply({"op": "delete_messages", "who": carol, "ids": [mine, between]})
        self.assertEqual(outcome.error.code, errors.NOT_FOUND)
        self.assertIn(str(between), outcome.error.message)
        self.assertIn(mine, self.d.state.account_named("carol").inbox)
        self.assertIn(between, self.d.state.account_named("bob").inbox)
        outcome = self.d.apply({"op": "delete_messages", "who": carol, "ids": [999]})
        self.assertEqual(outcome.error.code, errors.NOT_FOUND)


class GarbageCollectorTests(SynchronousTestCase):
    """
    The bulk of the state is invisible to the cyclic garbage collector, so
    its full collections do not slow down as messages accumulate.
    """

    def test_untracked(self) -> None:
        """
        After a collection, stored messages and remembered rids are no
        longer tracked.
        """
        d = Driver()
        d.create("alice")
        d.create("bob")
        first = d.send("alice", "bob", "hello", rid="r1").result["message"]["id"]
        gc.collect()
        self.assertFalse(gc.is_tracked(d.state.messages[first]))
        self.assertFalse(gc.is_tracked(d.state.rids["r1"]))


class ListTests(SynchronousTestCase):
    """
    Listing accounts with a pattern, paged.
    """

    def test_patterns(self) -> None:
        """
        Globs match whole names; results are sorted and paged with a total.
        """
        d = Driver()
        for name in ("bob", "alice", "albert", "xbob1", "bobby", "al"):
            d.create(name)
        lst = d.state.list_accounts
        self.assertEqual(lst("*", 0, 50)["accounts"], ["al", "albert", "alice", "bob", "bobby", "xbob1"])
        self.assertEqual(lst("a*", 0, 50), {"accounts": ["al", "albert", "alice"], "total": 3})
        self.assertEqual(lst("*bob?", 0, 50), {"accounts": ["xbob1"], "total": 1})
        self.assertEqual(lst("bob", 0, 50)["accounts"], ["bob"])
        self.assertEqual(lst("*", 2, 2), {"accounts": ["alice", "bob"], "total": 6})
        self.assertEqual(lst("*", 10, 2), {"accounts": [], "total": 6})
        self.assertEqual(lst("z*", 0, 5), {"accounts": [], "total": 0})

    def test_many(self) -> None:
        """
        Paging through many accounts visits each name once.
        """
        d = Driver()
        names = ["user%05d" % i for i in range(2000)]
        for name in random.Random(4).sample(names, len(names)):
            d.create(name)
        seen = []
        offset = 0
        while True:
            page = d.state.list_accounts("user*", offset, 300)
            self.assertEqual(page["total"], 2000)
            if not page["accounts"]:
                break
            seen.extend(page["accounts"])
            offset += 300
        self.assertEqual(seen, names)


class ExactlyOnceTests(SynchronousTestCase):
    """
    Request ids make retries harmless.
    """

    def test_repeat_returns_first(self) -> None:
        """
        A repeated rid returns the first result and sends nothing again.
        """
        d = Driver()
        d.create("alice")
        d.create("bob")
        first = d.send("alice", "bob", "once", rid="r1")
        again = d.send("alice", "bob", "once", rid="r1")
        self.assertEqual(again.result, first.result)
        self.assertTrue(again.duplicate)
        self.assertEqual(again.pushes, ())
        self.assertEqual(len(d.state.account_named("bob").inbox), 1)

    def test_repeat_error(self) -> None:
        """
        A retried create_account whose first attempt succeeded answers with
        that success, not C{username_taken}; a first error is repeated too.
        """
        d = Driver()
        self.assertIsNone(d.create("alice", rid="c1").error)
        self.assertEqual(d.create("alice", rid="c1").result, {"username": "alice"})
        self.assertEqual(d.create("alice", rid="c2").error.code, errors.USERNAME_TAKEN)
        self.assertEqual(d.create("alice", rid="c2").error.code, errors.USERNAME_TAKEN)

    def test_rid_reuse_by_another(self) -> None:
        """
        A rid reused by another account (or for another request) is refused
        and reveals nothing of the first result.
        """
        d = Driver()
        d.create("alice")
        d.create("bob")
        d.send("alice", "bob", "secret", rid="r")
        outcome = d.apply({"op": "send", "who": 2, "to": 1, "text": "secret",
                           "rid": "r", "fp": "fp-secret"})
        self.assertEqual(outcome.error.code, errors.BAD_REQUEST)
        self.assertNotIn("secret", outcome.error.message)
        self.assertEqual(len(d.state.account_named("alice").inbox), 0)

    def test_capacity(self) -> None:
        """
        Only the newest RID_CAPACITY rids are remembered.
        """
        self.patch(state_module, "RID_CAPACITY", 3)
        d = Driver()
        for i in range(5):
            d.apply({"op": "noop", "rid": "n%d" % i})
        self.assertEqual(list(d.state.rids), ["n2", "n3", "n4"])

    def test_apply_in_order(self) -> None:
        """
        Applying at any index but the next one is a bug and is refused.
        """
        state = ChatState()
        self.assertRaises(ValueError, state.apply, 2, {"op": "noop"})
        state.apply(1, {"op": "noop"})
        self.assertRaises(ValueError, state.apply, 1, {"op": "noop"})


class SnapshotTests(SynchronousTestCase):
    """
    A snapshot rebuilds exactly the state that replay builds.
    """

    def random_workload(self, seed: int, steps: int) -> Driver:
        rng = random.Random(seed)
        d = Driver()
        names = ["u%d" % i for i in range(8)]
        for step in range(steps):
            live = sorted(d.state.uids_by_name.values())
            kind = rng.random()
            if kind < 0.15 or not live:
                d.create(rng.choice(names), rid="c%d" % step if rng.random() < 0.5 else None)
            elif kind < 0.6:
                d.apply({"op": "send", "who": rng.choice(live), "to": rng.choice(live),
                         "text": "t%d" % step, "rid": "s%d" % rng.randrange(steps), "fp": "x"})
            elif kind < 0.75:
                d.apply({"op": "read", "who": rng.choice(live), "limit": rng.randint(1, 3)})
            elif kind < 0.85:
                uid = rng.choice(live)
                account = d.state.accounts[uid]
                mine = list(account.inbox) + list(account.sent)
                if mine:
                    d.apply({"op": "delete_messages", "who": uid,
                             "ids": rng.sample(mine, min(2, len(mine)))})
            elif kind < 0.93:
                d.apply({"op": "login", "who": rng.choice(live), "token_hash": "h%d" % step})
            else:
                d.apply({"op": "delete_account", "who": rng.choice(live)})
        return d

    def test_round_trip_equals_replay(self) -> None:
        """
        For random workloads, from_snapshot(to_snapshot()) equals the state,
        and replaying the same commands into a new state gives the same bytes.
        """
        for seed in range(20):
            d = self.random_workload(seed, 300)
            data = d.state.to_snapshot()
            restored = ChatState.from_snapshot(data)
            self.assertEqual(restored.to_snapshot(), data)
            replayed = ChatState()
            for index, command in enumerate(d.commands, 1):
                replayed.apply(index, command)
            self.assertEqual(replayed.digest(), d.state.digest())
            # The restored state goes on exactly like the original.
            more = {"op": "create_account", "who": None, "username": "zz", "password": PASSWORD, "ts": 1.0}
            a = d.state.apply(d.state.applied_index + 1, dict(more))
            b = restored.apply(restored.applied_index + 1, dict(more))
            self.assertEqual(a, b)
            self.assertEqual(d.state.digest(), restored.digest())

    def test_restored_queries(self) -> None:
        """
        Queries on a restored state answer like the original's.
        """
        d = self.random_workload(7, 400)
        restored = ChatState.from_snapshot(d.state.to_snapshot())
        for uid in d.state.accounts:
            self.assertEqual(restored.history(uid, None, None, 1000),
                             d.state.history(uid, None, None, 1000))
        self.assertEqual(restored.list_accounts("*", 0, 1000), d.state.list_accounts("*", 0, 1000))
        self.assertEqual(restored.sessions, d.state.sessions)

    def test_unknown_format(self) -> None:
        """
        A snapshot of an unknown format is refused, not misread.
        """
        self.assertRaises(ValueError, ChatState.from_snapshot, b'{"format": 99}')


class MergeTests(SynchronousTestCase):
    """
    Commands re-proposed after a partition healed (L{replichat.merge}):
    they keep the ids of their origin, apply once, and never fail for
    what the other side did meanwhile.
    """

    def test_ids_named_after_origin(self) -> None:
        """
        An entry's uid or message id is C{epoch * ORIGIN_BASE + index}, or
        its origin's when it carries one.
        """
        state = ChatState()
        state.apply(1, {"op": "create_account", "who": None, "username": "a",
                        "password": PASSWORD, "ts": 1.0}, epoch=2003)
        self.assertEqual(state.uids_by_name["a"], origin_id(2003, 1))
        state.apply(2, {"op": "create_account", "who": None, "username": "b",
                        "password": PASSWORD, "ts": 1.0, "origin": [1001, 7],
                        "merged": True}, epoch=2003)
        self.assertEqual(state.uids_by_name["b"], origin_id(1001, 7))

    def test_merged_twice_applies_once(self) -> None:
        """
        The same origin handed in twice (without a rid memory to catch it)
        creates one account and one message.
        """
        d = Driver()
        d.create("alice")
        for _ in range(2):
            d.apply({"op": "create_account", "who": None, "username": "bob",
                     "password": PASSWORD, "origin": [5, 5], "merged": True})
        for _ in range(2):
            d.apply({"op": "send", "who": d.uid("alice"), "to": d.uid("bob"), "text": "x",
                     "origin": [5, 6], "merged": True})
        self.assertEqual(sorted(d.state.uids_by_name), ["alice", "bob"])
        self.assertEqual(len(d.state.messages), 1)

    def test_name_taken_renames(self) -> None:
        """
        A merged account whose name is taken is kept as "<name>~2", "~3"...;
        a client's create of a taken name is still refused.
        """
        d = Driver()
        d.create("bob")
        for origin in ([5, 5], [6, 5]):
            outcome = d.apply({"op": "create_account", "who": None, "username": "bob",
                               "password": PASSWORD, "origin": origin, "merged": True})
            self.assertIsNone(outcome.error)
        self.assertEqual(sorted(d.state.uids_by_name), ["bob", "bob~2", "bob~3"])
        self.assertEqual(d.create("bob").error.code, errors.USERNAME_TAKEN)

    def test_merged_delete_skips_missing(self) -> None:
        """
        A merged delete removes what is still there; a client's delete of a
        missing id is still refused whole.
        """
        d = Driver()
        d.create("alice")
        d.create("bob")
        kept = d.send("alice", "bob", "kept").result["message"]["id"]
        outcome = d.apply({"op": "delete_messages", "who": d.uid("bob"), "ids": [kept, 999],
                           "merged": True, "origin": [9, 9]})
        self.assertEqual(outcome.result, {"deleted": 1})
        other = d.send("alice", "bob", "other").result["message"]["id"]
        outcome = d.apply({"op": "delete_messages", "who": d.uid("bob"), "ids": [other, 999]})
        self.assertEqual(outcome.error.code, errors.NOT_FOUND)

    def test_history_with_older_merged_ids(self) -> None:
        """
        A merged message keeps its older id, so an inbox is no longer in id
        order; history still lists newest id first, and after a snapshot.
        """
        d = Driver()
        d.create("alice")
        d.create("bob")
        d.apply({"op": "noop"})
        d.send("alice", "bob", "new")
        d.apply({"op": "send", "who": d.uid("alice"), "to": d.uid("bob"), "text": "old",
                 "origin": [0, 3], "merged": True})
        bob = d.uid("bob")
        texts = lambda state: [m["text"] for m in state.history(bob, None, None, 10)]
        self.assertEqual(texts(d.state), ["new", "old"])
        again = ChatState.from_snapshot(d.state.to_snapshot())
        self.assertEqual(texts(again), ["new", "old"])
        self.assertEqual(again.out_of_order, {d.uid("alice"), bob})  # sent, inbox

    def test_applied_on_both_sides_aliases(self) -> None:
        """
        A merged request the winner also applied (same rid) is not applied
        again; the loser's id becomes an alias of the winner's, for later
        commands and across a snapshot.
        """
        d = Driver()
        d.create("alice")
        d.create("bob", rid="r-bob")
        winner_uid = d.uid("bob")
        loser_uid = origin_id(7001, 3)
        d.apply({"op": "create_account", "who": None, "username": "bob", "password": PASSWORD,
                 "rid": "r-bob", "fp": "fp-bob", "origin": [7001, 3], "merged": True})
        self.assertEqual(sorted(d.state.uids_by_name), ["alice", "bob"])
        self.assertEqual(d.state.aliases, {loser_uid: winner_uid})
        again = ChatState.from_snapshot(d.state.to_snapshot())
        outcome = again.apply(again.applied_index + 1, {
            "op": "send", "who": d.uid("alice"), "to": loser_uid, "text": "hi", "ts": 1.0,
            "origin": [7001, 4], "merged": True, "rid": "r-hi", "fp": "x"})
        self.assertIsNone(outcome.error)
        self.assertEqual([again.message(i).text for i in again.accounts[winner_uid].inbox], ["hi"])

    def test_refused_by_winner_applied_once_merged(self) -> None:
        """
        A request the winning side refused (no effect) but the losing side
        committed is applied when merged, once: one of the two answers was
        lost, and the one that said it took effect must hold.  One the
        losing side did not know committed is not; one refused only for
        want of an account not there yet is tried again when handed in.
        """
        d = Driver()
        d.create("bob")
        refused = d.create("bob", rid="r-x")
        self.assertEqual(refused.error.code, errors.USERNAME_TAKEN)
        merged = {"op": "create_account", "who": None, "username": "bob", "password": PASSWORD,
                  "rid": "r-x", "fp": "fp-bob", "origin": [7001, 9], "merged": True}
        self.assertEqual(d.apply(dict(merged)).error.code, errors.USERNAME_TAKEN)
        self.assertEqual(sorted(d.state.uids_by_name), ["bob"])
        self.assertIsNone(d.apply({**merged, "committed": True}).error)
        self.assertTrue(d.apply({**merged, "committed": True}).duplicate)
        self.assertEqual(sorted(d.state.uids_by_name), ["bob", "bob~2"])

        waiting = {"op": "send", "who": d.uid("bob"), "to": origin_id(7001, 20), "text": "x",
                   "rid": "r-w", "fp": "fp", "origin": [7001, 21], "merged": True}
        self.assertEqual(d.apply(dict(waiting)).error.code, errors.NO_SUCH_USER)
        d.apply({"op": "create_account", "who": None, "username": "carol",
                 "password": PASSWORD, "origin": [7001, 20], "merged": True})
        self.assertIsNone(d.apply(dict(waiting)).error)
        self.assertEqual(len(d.state.messages), 1)
