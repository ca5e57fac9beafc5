# -*- test-case-name: tests.test_fuzz -*-
"""
Property-based fuzzing of the client line protocol: whatever a client sends,
the server does not crash, answers each line it can frame with one clear
answer, and changes no state it was not validly asked to change.
"""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from replichat.requests import OPS
from tests.test_lineproto import Server

CODES = {
    "bad_request", "unknown_op", "too_large", "not_leader", "unavailable",
    "not_logged_in", "bad_credentials", "username_taken", "no_such_user",
    "not_found", "rate_limited", "internal",
}

FUZZ = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=8,
)

arg_names = st.sampled_from(sorted({name for spec in OPS.values() for name in spec}
                                   | {"rid", "id", "op", "junk"}))
requests = st.fixed_dictionaries(
    {"op": st.sampled_from(sorted(OPS) + ["nope", ""]) | st.text(max_size=5)},
    optional={"id": json_values},
).flatmap(lambda base: st.dictionaries(arg_names, json_values, max_size=4).map(
    lambda extra: {**extra, **base}))


def check_answer(test: SynchronousTestCase, line: dict) -> None:
    test.assertIn("ok", line)
    if not line["ok"]:
        test.assertIn(line["error"]["code"], CODES)
        test.assertIsInstance(line["error"]["message"], str)
        test.assertTrue(line["error"]["message"])
        test.assertNotEqual(line["error"]["code"], "internal")


class ProtocolFuzzTests(SynchronousTestCase):
    """
    Random input on a client connection.
    """

    @FUZZ
    @given(chunks=st.lists(st.binary(max_size=300), max_size=8))
    def test_random_bytes(self, chunks: list[bytes]) -> None:
        """
        Arbitrary bytes in arbitrary pieces: no crash, only well-formed
        error answers, no state change, the connection still serves.
        """
        server = Server(max_line_bytes=1024)
        wire = server.connect()
        before = server.node.state.digest()
        for chunk in chunks:
            wire.send_raw(chunk)
        wire.send_raw(b"\n")
        for line in wire.lines():
            self.assertFalse(line["ok"])
            check_answer(self, line)
        self.assertEqual(server.node.state.digest(), before)
        wire.send_raw(b'\n{"id": "last", "op": "hello"}\n')
        self.assertEqual(wire.lines()[-1]["id"], "last")

    @FUZZ
    @given(batch=st.lists(requests, min_size=1, max_size=6))
    def test_random_requests(self, batch: list[dict]) -> None:
        """
        Structurally random requests, logged out: each gets exactly one
        answer, no error is internal, and the only state change a logged
        out client can make is creating an account.
        """
        server = Server()
        wire = server.connect()
        for i, request in enumerate(batch):
            request = dict(request, id=i)
            if request.get("op") == "login":
                continue  # a login would make it a logged-in client
            wire.send_raw(json.dumps(request).encode() + b"\n")
            answers = [line for line in wire.lines() if "event" not in line]
            self.assertEqual([a["id"] for a in answers], [i])
            check_answer(self, answers[0])
        for account in server.node.state.accounts.values():
            self.assertEqual(account.inbox, {})
            self.assertEqual(account.sent, {})

    @FUZZ
    @given(batch=st.lists(requests, min_size=1, max_size=6))
    def test_random_requests_logged_in(self, batch: list[dict]) -> None:
        """
        Random requests from a logged-in user never touch another account's
        mail and never fail internally.
        """
        server = Server()
        bob = server.user("bob")
        alice = server.user("alice")
        server.user("carol")
        alice.ok("send", to="carol", text="for carol only")
        carol_inbox = dict(server.node.state.account_named("carol").inbox)
        for i, request in enumerate(batch):
            request = dict(request, id=i)
            if request.get("op") == "delete_account":
                continue
            bob.send_raw(json.dumps(request).encode() + b"\n")
            for line in bob.lines():
                if "event" in line:
                    self.assertEqual(line["message"]["to"], "bob")
                    continue
                check_answer(self, line)
                self.assertNotIn("for carol only", json.dumps(line))
        self.assertEqual(server.node.state.account_named("carol").inbox, carol_inbox)
