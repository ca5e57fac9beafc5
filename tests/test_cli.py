# -*- test-case-name: tests.test_cli -*-
"""
Tests for the C{replichat} command: L{replichat.scripts.cli} (parsing,
configuration, passwords, exit statuses), L{replichat.scripts.output} (the
text it prints) and L{replichat.scripts.chat} (the interactive console).

The cluster is replaced by L{StubClient} and a fake C{query} function: what
these tests check is the command line, not the protocol (that is
C{tests.test_client}'s job).
"""

import io
import json
import sys
import time

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from replichat.client import ChatError
from replichat.config import NodeAddress
from replichat.scripts import cli, output
from replichat.scripts.chat import COMMANDS, ChatConsole

CONFIG = """\
nodes:
  1: {host: 10.0.0.1, client_port: 7001, peer_port: 7101}
  2: {host: 10.0.0.2, client_port: 7002, peer_port: 7102}
data_dir: var/node-{node}
"""

NODES = [NodeAddress(1, "10.0.0.1", 7001, 7101), NodeAddress(2, "10.0.0.2", 7002, 7102)]


def never(prompt):
    raise AssertionError("prompted: " + prompt)


class StubClient:
    """
    Stands in for L{replichat.client.ChatClient}: records each call and
    answers from C{answers} (a dict, or an exception to fail with).
    """

    def __init__(self, answers=None):
        self.answers = answers or {}
        self.calls = []
        self.username = None
        self.address = ("10.0.0.1", 7001)
        self.on_message = self.on_status = None

    def _answer(self, name, *args):
        self.calls.append((name,) + args)
        answer = self.answers.get(name, {})
        if isinstance(answer, Deferred):
            return answer
        if isinstance(answer, Exception):
            return fail(answer)
        return succeed(answer)

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        return lambda *args: self._answer(name, *args)

    def login(self, username, password):
        self.username = username
        return self._answer("login", username, password)


class ParserTests(SynchronousTestCase):
    """
    Tests for L{cli.build_parser}.
    """

    def parse(self, *argv):
        return cli.build_parser({}).parse_args(["--config", "c.yaml", *argv])

    def assertUsageError(self, *argv):
        self.patch(sys, "stderr", io.StringIO())
        error = self.assertRaises(SystemExit, self.parse, *argv)
        self.assertEqual(error.code, 2)

    def test_global_options(self):
        """
        C{--config}, C{--server}, C{--json} and C{--timeout} come before the
        sub-command.
        """
        args = cli.build_parser({}).parse_args(
            ["--config", "c.yaml", "--server", "h:7002", "--json", "--timeout", "3", "hello"]
        )
        self.assertEqual(
            (args.config, args.server, args.json, args.timeout, args.command),
            ("c.yaml", ("h", 7002), True, 3.0, "hello"),
        )

    def test_config_from_environment(self):
        """
        Without C{--config}, C{$REPLICHAT_CONFIG} is used.
        """
        args = cli.build_parser({"REPLICHAT_CONFIG": "e.yaml"}).parse_args(["status"])
        self.assertEqual(args.config, "e.yaml")

    def test_simple_commands(self):
        """
        C{chat}, C{status}, C{hello} and C{cluster} take no arguments.
        """
        for name in ["chat", "status", "hello", "cluster"]:
            self.assertEqual(self.parse(name).command, name)
        self.assertUsageError("status", "extra")

    def test_account_commands(self):
        """
        C{create-account} and C{login} take the username, not a password.
        """
        self.assertEqual(self.parse("create-account", "alice").username, "alice")
        self.assertEqual(self.parse("login", "alice").username, "alice")
        self.assertUsageError("login", "alice", "s3cret")

    def test_session_token_commands(self):
        """
        C{resume} and C{logout} take exactly one session token.
        """
        self.assertEqual(self.parse("resume", "T0k").token, "T0k")
        self.assertEqual(self.parse("logout", "T0k").token, "T0k")
        for name in ["resume", "logout"]:
            self.assertUsageError(name)
            self.assertUsageError(name, "a", "b")
            self.assertUsageError(name, "--user", "a", "T0k")

    def test_list(self):
        """
        C{list} takes an optional pattern, C{--offset} and C{--limit}.
        """
        args = self.parse("list")
        self.assertEqual((args.pattern, args.offset, args.limit), ("*", 0, 50))
        args = self.parse("list", "a*", "--offset", "100", "--limit", "10")
        self.assertEqual((args.pattern, args.offset, args.limit), ("a*", 100, 10))
        self.assertUsageError("list", "--limit", "0")

    def test_send(self):
        """
        C{send} needs C{--user}, the recipient and the text's words.
        """
        args = self.parse("send", "--user", "alice", "bob", "hello", "there")
        self.assertEqual((args.user, args.to, args.text), ("alice", "bob", ["hello", "there"]))
        self.assertUsageError("send", "bob", "hi")
        self.assertUsageError("send", "--user", "alice", "bob")

    def test_read_history(self):
        """
        C{read} takes C{--limit}; C{history} takes C{--with}, C{--before}
        and C{--limit}.
        """
        self.assertEqual(self.parse("read", "--user", "a").limit, 10)
        self.assertEqual(self.parse("read", "--user", "a", "--limit", "3").limit, 3)
        args = self.parse("history", "--user", "a")
        self.assertEqual((args.with_, args.before, args.limit), (None, None, None))
        args = self.parse("history", "--user", "a", "--with", "bob", "--before", "17",
                          "--limit", "5")
        self.assertEqual((args.with_, args.before, args.limit), ("bob", 17, 5))
        self.assertUsageError("history", "--user", "a", "--before", "x")

    def test_delete(self):
        """
        C{delete} takes one or more numeric ids; C{delete-account} only
        C{--user}.
        """
        self.assertEqual(self.parse("delete", "--user", "a", "3", "4").ids, [3, 4])
        self.assertUsageError("delete", "--user", "a")
        self.assertUsageError("delete", "--user", "a", "x")
        self.assertEqual(self.parse("delete-account", "--user", "a").user, "a")
        self.assertUsageError("delete-account", "--user", "a", "pw")

    def test_parse_server(self):
        """
        C{--server} is C{HOST:PORT}, with brackets around an IPv6 address.
        """
        self.assertEqual(cli.parse_server("example.org:7001"), ("example.org", 7001))
        self.assertEqual(cli.parse_server("[::1]:7001"), ("::1", 7001))
        for bad in ["example.org", ":7001", "h:0", "h:70000", "h:x"]:
            self.assertRaises(Exception, cli.parse_server, bad)


class PrepareTests(SynchronousTestCase):
    """
    Tests for L{cli.prepare}: configuration and passwords.
    """

    def setUp(self):
        self.config = self.mktemp()
        with open(self.config, "w") as f:
            f.write(CONFIG)

    def test_addresses_from_config(self):
        """
        The configured nodes' client addresses are tried in id order.
        """
        invocation = cli.prepare(["--config", self.config, "hello"], {}, never)
        self.assertEqual(invocation.addresses, [("10.0.0.1", 7001), ("10.0.0.2", 7002)])
        self.assertEqual([n.id for n in invocation.nodes], [1, 2])
        self.assertIsNone(invocation.password)

    def test_server_first(self):
        """
        C{--server} goes first, once.
        """
        argv = ["--config", self.config, "--server", "10.0.0.2:7002", "hello"]
        invocation = cli.prepare(argv, {}, never)
        self.assertEqual(invocation.addresses, [("10.0.0.2", 7002), ("10.0.0.1", 7001)])
        invocation = cli.prepare(["--server", "h:1", "hello"], {}, never)
        self.assertEqual(invocation.addresses, [("h", 1)])

    def test_config_required(self):
        """
        Without C{--config} (or C{--server}, except for C{status}), the
        command cannot run.
        """
        self.assertRaises(cli.UsageFailure, cli.prepare, ["hello"], {}, never)
        self.assertRaises(cli.UsageFailure, cli.prepare, ["--server", "h:1", "status"], {}, never)

    def test_password_from_environment(self):
        """
        C{$REPLICHAT_PASSWORD} gives the password without a prompt.
        """
        environ = {"REPLICHAT_PASSWORD": "s3cret"}
        for argv in [["login", "a"], ["create-account", "a"], ["send", "--user", "a", "b", "hi"],
                     ["read", "--user", "a"], ["delete-account", "--user", "a"]]:
            invocation = cli.prepare(["--config", self.config, *argv], environ, never)
            self.assertEqual(invocation.password, "s3cret")

    def test_token_commands_no_password(self):
        """
        C{resume} and C{logout} need no password, so none is asked for.
        """
        for name in ["resume", "logout"]:
            invocation = cli.prepare(["--config", self.config, name, "T"], {}, never)
            self.assertIsNone(invocation.password)

    def test_password_prompt(self):
        """
        Without the variable, the password is asked for, naming the user.
        """
        prompts = []
        invocation = cli.prepare(["--config", self.config, "read", "--user", "alice"], {},
                                 lambda p: prompts.append(p) or "typed")
        self.assertEqual((invocation.password, prompts), ("typed", ["Password for alice: "]))

    def test_new_password_twice(self):
        """
        A new account's password is asked twice, and must match.
        """
        argv = ["--config", self.config, "create-account", "a"]
        answers = iter(["one", "two"])
        self.assertRaises(cli.UsageFailure, cli.prepare, argv, {}, lambda p: next(answers))
        answers = iter(["same", "same"])
        invocation = cli.prepare(argv, {}, lambda p: next(answers))
        self.assertEqual(invocation.password, "same")


class RunTests(SynchronousTestCase):
    """
    Tests for L{cli.run}'s handling of problems before the reactor starts.
    """

    def setUp(self):
        self.stderr = io.StringIO()
        self.patch(sys, "stderr", self.stderr)

    def test_config_error(self):
        """
        A bad configuration file exits with status 2 and one line per
        problem, naming the key, and no traceback.
        """
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("nodes:\n  1: {host: h, client_port: abc, peer_port: 7101}\nbogus: 1\n")
        error = self.assertRaises(SystemExit, cli.run, ["--config", path, "status"])
        self.assertEqual(error.code, 2)
        lines = self.stderr.getvalue().splitlines()
        self.assertEqual(len(lines), 3)
        self.assertTrue(all(line.startswith("replichat: config error: ") for line in lines))
        self.assertIn("nodes.1.client_port: expected an integer 1-65535, got 'abc'", lines[1])
        self.assertNotIn("Traceback", self.stderr.getvalue())

    def test_missing_config_file(self):
        """
        A configuration file that cannot be read exits with status 2.
        """
        error = self.assertRaises(SystemExit, cli.run, ["--config", self.mktemp(), "status"])
        self.assertEqual(error.code, 2)
        self.assertIn("cannot read", self.stderr.getvalue())

    def test_usage_failure(self):
        """
        A command line that parses but cannot work exits with status 2.
        """
        error = self.assertRaises(SystemExit, cli.run, ["hello"])
        self.assertEqual(error.code, 2)
        self.assertEqual(self.stderr.getvalue(),
                         "replichat: error: --config FILE is required (or --server)\n")


class OutputTests(SynchronousTestCase):
    """
    Tests for L{replichat.scripts.output}.
    """

    def test_format_message(self):
        """
        A message shows its id, sender, recipient (C{you} for the user),
        the local time (with the date when not today) and the text.
        """
        sent_at = time.mktime((2025, 11, 21, 12, 1, 3, 0, 0, -1))
        message = {"id": 17, "from": "bob", "to": "alice", "text": "yo", "sent_at": sent_at}
        self.assertEqual(output.format_message(message, "alice", now=sent_at + 60),
                         "[17] bob -> you (12:01:03): yo")
        self.assertEqual(output.format_message(message, None, now=sent_at + 3 * 86400),
                         "[17] bob -> alice (2025-11-21 12:01): yo")

    def test_status_table(self):
        """
        The status table has one aligned row per configured node: role and
        epoch from its own C{hello} (C{down} if it did not answer), indexes
        and liveness from the cluster's answer, C{-} for unknown values.
        """
        hellos = {1: {"role": "leader", "epoch": 4}, 2: None}
        cluster = {"leader": 1, "epoch": 4, "nodes": [
            {"id": 1, "host": "10.0.0.1", "client_port": 7001, "role": "leader", "live": True,
             "last_index": 120, "commit_index": 120},
            {"id": 2, "host": "10.0.0.2", "client_port": 7002, "role": "follower", "live": False,
             "last_index": 97, "commit_index": 97},
        ]}
        rows = output.status_rows(NODES, hellos, cluster)
        self.assertEqual(
            output.format_table(rows),
            "ID  ADDRESS        ROLE    EPOCH  LAST INDEX  COMMIT INDEX  LIVE\n"
            "1   10.0.0.1:7001  leader  4      120         120           yes\n"
            "2   10.0.0.2:7002  down    -      97          97            no",
        )

    def test_status_without_cluster(self):
        """
        With no node answering, every row is C{down} with unknown values.
        """
        rows = output.status_rows(NODES, {1: None, 2: None}, None)
        self.assertEqual([(r["role"], r["epoch"], r["last_index"], r["live"]) for r in rows],
                         [("down", None, None, None)] * 2)

    def test_status_extra_and_own(self):
        """
        A node the cluster knows but the configuration does not gets a row
        too, and a node's own report fills values the chosen cluster answer
        leaves null.
        """
        cluster = {"nodes": [
            {"id": 1, "host": "10.0.0.1", "client_port": 7001, "live": True,
             "last_index": 5, "commit_index": 5},
            {"id": 2, "host": "10.0.0.2", "client_port": 7002, "live": None, "last_index": None},
            {"id": 4, "host": "10.0.0.4", "client_port": 7004, "role": "learner", "live": True},
        ]}
        own = {2: {"nodes": [{"id": 2, "live": True, "last_index": 3, "commit_index": 2}]}}
        hellos = {1: {"role": "leader", "epoch": 2}, 2: {"role": "follower", "epoch": 2}}
        rows = output.status_rows(NODES, hellos, cluster, own)
        self.assertEqual(
            [(r["id"], r["role"], r["last_index"], r["commit_index"], r["live"]) for r in rows],
            [(1, "leader", 5, 5, True), (2, "follower", 3, 2, True),
             (4, "learner", None, None, True)],
        )
        self.assertEqual(rows[2]["address"], "10.0.0.4:7004")

    def test_status_any_role(self):
        """
        Roles are shown as the servers give them, including ones this
        version does not know; a missing role shows as C{-} and an answer
        that is not an object counts as no answer.
        """
        hellos = {1: {"role": "observer", "epoch": 2}, 2: {"epoch": 2}}
        rows = output.status_rows(NODES, hellos, None)
        self.assertEqual([r["role"] for r in rows], ["observer", None])
        table = output.format_table(rows).splitlines()
        self.assertEqual(table[1].split()[:3], ["1", "10.0.0.1:7001", "observer"])
        self.assertEqual(table[2].split()[:3], ["2", "10.0.0.2:7002", "-"])
        for role in ["leader", "follower", "candidate", "learner"]:
            rows = output.status_rows(NODES, {1: {"role": role}, 2: ["bogus"]}, None)
            self.assertEqual([r["role"] for r in rows], [role, "down"])

    def test_format_hello(self):
        """
        A C{hello} result reads as one line.
        """
        self.assertEqual(
            output.format_hello({"node": 2, "role": "follower", "epoch": 3,
                                 "leader": {"id": 1, "host": "h", "port": 7001}}),
            "node 2: follower, epoch 3, leader 1 (h:7001)",
        )
        hello = {"node": 2, "role": "candidate", "epoch": 3, "leader": None}
        self.assertEqual(output.format_hello(hello), "node 2: candidate, epoch 3, no leader")


class FormatResultTests(SynchronousTestCase):
    """
    Tests for L{cli.format_result}.
    """

    message = {"id": 9, "from": "alice", "to": "bob", "text": "hi", "sent_at": None}

    def test_results(self):
        """
        Each scripted command prints a short human sentence (the token
        alone for C{login}, so scripts can capture it).
        """
        cases = [
            ("create-account", {"username": "a"}, "created account a"),
            ("login", {"token": "T", "unread": 2}, "T"),
            ("resume", {"username": "bob", "unread": 2}, "bob (2 unread)"),
            ("logout", {}, "logged out"),
            ("list", {"accounts": ["a", "b"], "total": 5}, "a\nb\n(2 of 5 accounts)"),
            ("send", {"message": self.message}, "sent [9] you -> bob (?): hi"),
            ("read", {"messages": [self.message], "remaining": 3},
             "[9] you -> bob (?): hi\n(3 more unread)"),
            ("read", {"messages": [], "remaining": 0}, "no messages"),
            ("history", {"messages": [self.message]}, "[9] you -> bob (?): hi"),
            ("delete", {"deleted": 2}, "deleted 2 message(s)"),
            ("delete-account", {}, "deleted account alice"),
        ]
        for command, result, text in cases:
            self.assertEqual(cli.format_result(command, result, "alice"), text)


class MainTests(SynchronousTestCase):
    """
    Tests for L{cli.main} with a stub client.
    """

    def setUp(self):
        self.out, self.err = io.StringIO(), io.StringIO()
        self.made = []

    def main(self, argv, client=None, query=None, password="pw"):
        args = cli.build_parser({}).parse_args(argv)
        invocation = cli.Invocation(args, NODES, [("10.0.0.1", 7001), ("10.0.0.2", 7002)], password)
        client = client or StubClient()

        def make_client(addresses, reactor, timeout):
            self.made.append((addresses, timeout))
            return client

        running = cli.main(Clock(), invocation, self.out, self.err, make_client, query)
        return self.successResultOf(Deferred.fromCoroutine(running))

    def test_session_command(self):
        """
        A command that needs a session logs in, does its work, logs out
        and closes, then prints the result.
        """
        message = {"id": 3, "from": "alice", "to": "bob", "text": "hi there"}
        client = StubClient({"send": {"message": message}})
        self.assertEqual(self.main(["send", "--user", "alice", "bob", "hi", "there"], client), 0)
        self.assertEqual(client.calls, [("login", "alice", "pw"), ("send", "bob", "hi there"),
                                        ("logout",), ("close",)])
        self.assertEqual(self.out.getvalue(), "sent [3] you -> bob (?): hi there\n")
        self.assertEqual(self.made, [([("10.0.0.1", 7001), ("10.0.0.2", 7002)], 10.0)])

    def test_resume(self):
        """
        C{resume TOKEN} resumes the session, prints its user and unread
        count, and closes without logging out, so the session lives on.
        """
        client = StubClient({"resume": {"username": "bob", "unread": 4}})
        self.assertEqual(self.main(["resume", "T0k"], client, password=None), 0)
        self.assertEqual(client.calls, [("resume", "T0k"), ("close",)])
        self.assertEqual(self.out.getvalue(), "bob (4 unread)\n")

    def test_logout(self):
        """
        C{logout TOKEN} resumes the session by its token, then ends it.
        """
        client = StubClient({"resume": {"username": "bob", "unread": 0}})
        self.assertEqual(self.main(["logout", "T0k"], client, password=None), 0)
        self.assertEqual(client.calls, [("resume", "T0k"), ("logout",), ("close",)])
        self.assertEqual(self.out.getvalue(), "logged out\n")

    def test_logout_unknown_token(self):
        """
        C{logout} with a token the cluster does not know exits 1 with the
        server's error, without trying to log out.
        """
        client = StubClient({"resume": ChatError("bad_credentials", "unknown session token")})
        self.assertEqual(self.main(["--json", "logout", "T0k"], client, password=None), 1)
        self.assertEqual(client.calls, [("resume", "T0k"), ("close",)])
        self.assertEqual(self.err.getvalue(), "error: bad_credentials: unknown session token\n")
        self.assertEqual(self.out.getvalue(), "")

    def test_error_answer(self):
        """
        An error answer exits with status 1 and C{error: code: message} on
        standard error; the client is still closed.
        """
        client = StubClient({"login": ChatError("bad_credentials", "wrong password")})
        self.assertEqual(self.main(["read", "--user", "alice"], client), 1)
        self.assertEqual(self.err.getvalue(), "error: bad_credentials: wrong password\n")
        self.assertEqual(client.calls[-1], ("close",))
        self.assertEqual(self.out.getvalue(), "")

    def test_json(self):
        """
        With C{--json} the result is printed as JSON.
        """
        client = StubClient({"list_accounts": {"accounts": ["b\u00f6b"], "total": 1}})
        self.assertEqual(self.main(["--json", "list", "b*", "--limit", "5"], client), 0)
        self.assertEqual(json.loads(self.out.getvalue()), {"accounts": ["b\u00f6b"], "total": 1})
        self.assertEqual(client.calls, [("list_accounts", "b*", 0, 5), ("close",)])

    def test_hello_first_reachable(self):
        """
        C{hello} asks the first server that answers, without following
        the leader.
        """
        asked = []

        def query(reactor, host, port, op):
            asked.append((host, op))
            if host == "10.0.0.1":
                return fail(ConnectionRefusedError())
            return succeed({"node": 2, "role": "follower", "epoch": 1, "leader": None})

        self.assertEqual(self.main(["hello"], query=query), 0)
        self.assertEqual(asked, [("10.0.0.1", "hello"), ("10.0.0.2", "hello")])
        self.assertEqual(self.out.getvalue(), "node 2: follower, epoch 1, no leader\n")

    def test_hello_all_down(self):
        """
        When no server answers C{hello}, the command exits 1 saying so.
        """
        self.assertEqual(self.main(["hello"], query=lambda *a: fail(ConnectionRefusedError())), 1)
        self.assertTrue(self.err.getvalue().startswith(
            "error: unreachable: no server answered (last error: Connection was refused"))

    def test_status_partial_answer(self):
        """
        A node that answers C{hello} but not C{cluster} shows its role,
        with the other columns unknown.
        """
        def query(reactor, host, port, op):
            if op == "cluster":
                return fail(ChatError("internal", "oops"))
            return succeed({"node": 1, "role": "follower", "epoch": 2})

        self.assertEqual(self.main(["--json", "status"], query=query), 0)
        rows = json.loads(self.out.getvalue())
        self.assertEqual([(r["role"], r["epoch"], r["last_index"]) for r in rows],
                         [("follower", 2, None)] * 2)

    def test_status(self):
        """
        C{status} asks every node; the leader's C{cluster} answer is used
        and a node that does not answer is shown as C{down}.
        """
        def query(reactor, host, port, op):
            if host == "10.0.0.2":
                return fail(ConnectionRefusedError())
            if op == "hello":
                return succeed({"node": 1, "role": "leader", "epoch": 7})
            return succeed({"nodes": [
                {"id": 1, "live": True, "last_index": 8, "commit_index": 8},
                {"id": 2, "live": False, "last_index": 6, "commit_index": 6},
            ]})

        self.assertEqual(self.main(["--json", "status"], query=query), 0)
        rows = json.loads(self.out.getvalue())
        self.assertEqual(
            [(r["id"], r["role"], r["epoch"], r["last_index"], r["live"]) for r in rows],
            [(1, "leader", 7, 8, True), (2, "down", None, 6, False)],
        )

    def test_status_unknown_role(self):
        """
        A leader is recognised by its role alone; other roles, known or
        not, are printed as given.
        """
        def query(reactor, host, port, op):
            role = {"10.0.0.1": "witness", "10.0.0.2": "learner"}[host]
            if op == "hello":
                return succeed({"node": int(host[-1]), "role": role, "epoch": 3})
            return succeed({"nodes": [{"id": int(host[-1]), "live": True, "last_index": 1}]})

        self.assertEqual(self.main(["status"], query=query), 0)
        lines = self.out.getvalue().splitlines()
        self.assertEqual([line.split()[2] for line in lines[1:]], ["witness", "learner"])

    def test_status_all_down(self):
        """
        When no node answers, C{status} still prints the table but exits 1.
        """
        self.assertEqual(self.main(["status"], query=lambda *a: fail(ConnectionRefusedError())), 1)
        self.assertEqual(self.out.getvalue().count("down"), 2)
        self.assertEqual(self.err.getvalue(), "error: unreachable: no configured server answered\n")


class ChatConsoleTests(SynchronousTestCase):
    """
    Tests for L{ChatConsole} on a L{StringTransport}.
    """

    def setUp(self):
        self.client = StubClient()
        self.echo = []
        self.console = ChatConsole(self.client, interactive=False, set_echo=self.echo.append)
        self.transport = StringTransport()
        self.console.makeConnection(self.transport)
        self.transport.clear()

    def type(self, line):
        self.console.dataReceived(line.encode("utf-8") + b"\n")
        text = self.transport.value().decode("utf-8")
        self.transport.clear()
        return text

    def test_connects(self):
        """
        The console connects the client when it starts.
        """
        self.assertEqual(self.client.calls, [("connect",)])

    def test_help(self):
        """
        C{/help} lists every command, one line each.
        """
        lines = self.type("/help").splitlines()
        self.assertEqual([line.split()[0] for line in lines], ["/" + name for name in COMMANDS])

    def test_unknown(self):
        """
        An unknown command, or text before any C{/send}, gets a hint.
        """
        self.assertEqual(self.type("/frobnicate"),
                         "unknown command /frobnicate; type /help for the list\n")
        self.assertIn("/send USER TEXT", self.type("hello?"))
        self.assertEqual(self.client.calls, [("connect",)])

    def test_send_then_plain_lines(self):
        """
        C{/send USER TEXT} sends; later plain lines go to the same user.
        """
        message = {"id": 4, "from": "alice", "to": "bob", "text": "x"}
        self.client.answers["send"] = {"message": message}
        self.assertEqual(self.type("/send bob  hello  you"), "sent [4] alice -> bob (?): x\n")
        self.type("and more")
        self.assertEqual(self.client.calls[1:],
                         [("send", "bob", "hello  you"), ("send", "bob", "and more")])

    def test_push_printed(self):
        """
        A pushed message is printed on its own line as it arrives.
        """
        self.client.username = "alice"
        self.client.on_message({"id": 17, "from": "bob", "to": "alice", "text": "yo"})
        self.assertEqual(self.transport.value(), b"[17] bob -> you (?): yo\n")

    def test_login_asks_password(self):
        """
        C{/login USER} reads the next line as the password, with the
        terminal's echo turned off meanwhile.
        """
        self.assertEqual(self.type("/login alice"), "password: ")
        self.assertEqual(self.echo, [False])
        self.client.answers["login"] = {"token": "T", "unread": 2}
        self.assertEqual(self.type("s3cret"), "\nlogged in as alice (2 unread)\n")
        self.assertEqual(self.echo, [False, True])
        self.assertEqual(self.client.calls[-1], ("login", "alice", "s3cret"))

    def test_register(self):
        """
        C{/register USER PASSWORD} creates the account and logs in.
        """
        self.assertEqual(self.type("/register bob pw"), "registered; logged in as bob (0 unread)\n")
        self.assertEqual(self.client.calls[1:],
                         [("create_account", "bob", "pw"), ("login", "bob", "pw")])

    def test_error(self):
        """
        An error answer prints C{error: code: message}.
        """
        self.client.answers["read"] = ChatError("not_logged_in", "log in first")
        self.assertEqual(self.type("/read 5"), "error: not_logged_in: log in first\n")
        self.assertEqual(self.client.calls[-1], ("read", 5))

    def test_usage(self):
        """
        Bad arguments print the command's usage and send nothing.
        """
        self.assertEqual(self.type("/delete x"), "usage: /delete ID [ID...]\n")
        self.assertEqual(self.type("/history a b c"), "usage: /history [USER] [N]\n")
        self.assertEqual(self.client.calls, [("connect",)])

    def test_history_oldest_first(self):
        """
        C{/history USER N} shows the server's newest-first page oldest
        first, like a conversation.
        """
        self.client.answers["history"] = {"messages": [
            {"id": 2, "from": "a", "to": "b", "text": "second"},
            {"id": 1, "from": "b", "to": "a", "text": "first"},
        ]}
        self.assertEqual(self.type("/history bob 2"),
                         "[1] b -> a (?): first\n[2] a -> b (?): second\n")
        self.assertEqual(self.client.calls[-1], ("history", "bob", None, 2))

    def test_quit(self):
        """
        C{/quit} closes standard I/O, and the end of input fires C{done}.
        """
        self.type("/quit")
        self.assertTrue(self.transport.disconnecting)
        self.assertNoResult(self.console.done)
        self.console.connectionLost(None)
        self.assertIsNone(self.successResultOf(self.console.done))

    def test_one_at_a_time(self):
        """
        A line typed while a command runs waits for it, so outputs come in
        the order the commands were typed.
        """
        pending = self.client.answers["cluster"] = Deferred()
        self.type("/status")
        self.assertEqual(self.type("/who"), "")
        self.assertEqual(self.client.calls[-1], ("cluster",))
        pending.callback({"leader": None, "epoch": 1, "nodes": []})
        text = self.transport.value().decode("utf-8")
        expected = "connected to 10.0.0.1:7001 as nobody; no leader, epoch 1\n"
        self.assertTrue(text.startswith(expected))
        self.assertTrue(text.endswith("accounts (0 of None): \n"))
        self.assertEqual(self.client.calls[-1], ("list_accounts", "*", 0, 100))

    def test_typed_ahead_password(self):
        """
        A password line that arrived before it was asked for (piped input)
        is taken from the queue, not run as a command.
        """
        pending = self.client.answers["logout"] = Deferred()
        self.type("/logout")
        self.type("/login alice")
        self.type("s3cret")
        pending.callback({})
        self.assertEqual(self.client.calls[-1], ("login", "alice", "s3cret"))
        self.assertEqual(self.echo, [])

    def test_end_of_input(self):
        """
        At the end of input the queued commands are finished first, then
        the console closes.
        """
        pending = self.client.answers["read"] = Deferred()
        self.type("/read")
        self.type("/who")
        self.console.readConnectionLost()
        self.assertFalse(self.transport.disconnecting)
        pending.callback({"messages": [], "remaining": 0})
        self.assertEqual(self.client.calls[-1], ("list_accounts", "*", 0, 100))
        self.assertTrue(self.transport.disconnecting)
