# -*- test-case-name: tests.test_cli -*-
"""
Tests for the C{replichat} command: L{replichat.scripts.cli} (parsing,
configuration, passwords, exit statuses), L{replichat.scripts.output} (the
text it prints) and L{replichat.scripts.chat} (the interactive console).

The cluster is replaced by L{StubClient}, a fake C{query} function and a
fake C{admin_call}: what these tests check is the command line, not the
protocol (that is the job of C{tests.test_client} and C{tests.test_peer}).
L{AdminNetworkTests} runs the admin commands against a real L{PeerNetwork}
on 127.0.0.1.
"""

import io
import json
import os
import socket
import subprocess
import sys
import threading
import time

from twisted.internet import reactor
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase

from replichat.client import ChatError
from replichat.config import ConfigError, NodeAddress
from replichat.errors import NOT_FOUND, NOT_LEADER
from replichat.errors import ChatError as ServerChatError
from replichat.peercommands import ForceLead, Leave
from replichat.peerproto import DEFAULT_KEY, AdminCallFailed, PeerNetwork
from replichat.scripts import cli, output
from replichat.scripts.chat import COMMANDS, ChatConsole

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

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

    def test_admin_commands(self):
        """
        C{leave} and C{force-lead} take one positive node id.
        """
        self.assertEqual(self.parse("leave", "2").node, 2)
        self.assertEqual(self.parse("force-lead", "3").node, 3)
        for name in ["leave", "force-lead"]:
            self.assertUsageError(name)
            self.assertUsageError(name, "x")
            self.assertUsageError(name, "0")
            self.assertUsageError(name, "-1")
            self.assertUsageError(name, "1", "2")

    def test_force_lead_help(self):
        """
        C{force-lead --help} warns that commits may be lost and says which
        server to give it to.
        """
        self.patch(sys, "stdout", io.StringIO())
        self.assertRaises(SystemExit, self.parse, "force-lead", "--help")
        text = " ".join(sys.stdout.getvalue().split())
        self.assertIn("may lose commits held only by a missing member", text)
        self.assertIn("the survivor with the highest last index (shown by status)", text)

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

    def write_config(self, extra):
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(CONFIG + extra)
        return path

    def test_admin_key(self):
        """
        The admin commands read the peer secret named by C{secret_file},
        without its trailing newline, before anything runs.
        """
        secret = self.mktemp()
        with open(secret, "w") as f:
            f.write("s3cret-key\n")
        config = self.write_config("secret_file: {}\n".format(secret))
        for argv in [["leave", "2"], ["force-lead", "2"]]:
            invocation = cli.prepare(["--config", config, *argv], {}, never)
            self.assertEqual(invocation.key, b"s3cret-key")
            self.assertIsNone(invocation.password)
        self.assertIsNone(cli.prepare(["--config", config, "hello"], {}, never).key)

    def test_admin_default_key(self):
        """
        Without C{secret_file}, the admin commands use the public default
        key, as the servers do.
        """
        invocation = cli.prepare(["--config", self.config, "leave", "2"], {}, never)
        self.assertEqual(invocation.key, DEFAULT_KEY)

    def test_admin_missing_secret(self):
        """
        A C{secret_file} that cannot be read is a configuration error.
        """
        config = self.write_config("secret_file: {}\n".format(self.mktemp()))
        self.assertRaises(ConfigError, cli.prepare, ["--config", config, "leave", "2"], {}, never)

    def test_admin_config_required(self):
        """
        The admin commands need C{--config} (for the peer ports and the
        secret); C{--server} alone will not do.
        """
        for argv in [["leave", "2"], ["force-lead", "2"]]:
            error = self.assertRaises(
                cli.UsageFailure, cli.prepare, ["--server", "h:1", *argv], {}, never
            )
            self.assertEqual(str(error), "--config FILE is required")

    def test_force_lead_unknown_node(self):
        """
        C{force-lead} of a node the file does not list is a usage error: its
        peer port is unknown.  C{leave} of one is fine (the leader knows).
        """
        argv = ["--config", self.config, "force-lead", "4"]
        error = self.assertRaises(cli.UsageFailure, cli.prepare, argv, {}, never)
        self.assertEqual(
            str(error), "node 4 is not in {}, so its peer address is unknown".format(self.config)
        )
        invocation = cli.prepare(["--config", self.config, "leave", "4"], {}, never)
        self.assertEqual(invocation.args.node, 4)

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


class BrokenPipeTests(SynchronousTestCase):
    """
    A reader that stops reading (C{replichat status | head -1}) ends the
    command quietly, with status 1.
    """

    def run_closed_stdout(self, *argv):
        """
        Run C{replichat ARGV} with a standard output whose reader is gone.

        @return: the exit status and standard error.
        """
        read_end, write_end = os.pipe()
        os.close(read_end)
        try:
            child = subprocess.run(
                [sys.executable, "-m", "replichat.scripts.cli", *argv],
                stdout=write_end,
                stderr=subprocess.PIPE,
                cwd=ROOT,
                timeout=30,
            )
        finally:
            os.close(write_end)
        return child.returncode, child.stderr.decode("utf-8", "replace")

    def hello_server(self):
        """
        A server on 127.0.0.1 (in a thread) that answers every request with
        a C{hello} result.

        @return: its port.
        """
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(5)
        listener.settimeout(30)
        self.addCleanup(listener.close)
        result = {"node": 1, "role": "leader", "epoch": 1, "leader": None}

        def serve():
            try:
                while True:
                    connection, _ = listener.accept()
                    with connection, connection.makefile("rwb") as stream:
                        for line in stream:
                            request = json.loads(line)
                            answer = {"id": request["id"], "ok": True, "result": result}
                            stream.write(json.dumps(answer).encode("utf-8") + b"\n")
                            stream.flush()
            except OSError:
                pass  # closed at the end of the test

        threading.Thread(target=serve, daemon=True).start()
        return listener.getsockname()[1]

    def test_help(self):
        """
        C{--help} into a closed pipe prints no traceback.
        """
        status, err = self.run_closed_stdout("--help")
        self.assertEqual(err, "")

    def test_hello(self):
        """
        C{hello}, which prints from inside the reactor, exits 1 without a
        traceback when its output cannot be written (0 when it can).
        """
        port = self.hello_server()
        argv = ["--server", "127.0.0.1:{}".format(port), "hello"]
        self.assertEqual(self.run_closed_stdout(*argv), (1, ""))
        child = subprocess.run([sys.executable, "-m", "replichat.scripts.cli", *argv],
                               capture_output=True, cwd=ROOT, timeout=30)
        self.assertEqual((child.returncode, child.stdout, child.stderr),
                         (0, b"node 1: leader, epoch 1, no leader\n", b""))

    def test_in_main(self):
        """
        A broken pipe raised while L{cli.main} prints makes the status 1.
        """
        self.patch(sys, "stdout", io.StringIO())

        async def main(reactor, invocation):
            raise BrokenPipeError()

        running = cli._main_or_broken_pipe(Clock(), None, main)
        self.assertEqual(self.successResultOf(Deferred.fromCoroutine(running)), 1)


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
            ("leave", {"node": 2, "left": True, "leader": 1},
             "node 2 left the cluster; its id is retired"),
            ("force-lead", {"node": 3, "forced": True},
             "node 3 will lead without waiting for the missing members of its last live set;"
             " check with status"),
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


class FakeAdmin:
    """
    Stands in for L{replichat.peerproto.admin_call}: records each call as
    C{(host, port, key, command, timeout, kwargs)} and answers from
    C{answers}, a list of answer dicts or exceptions, one per call.
    """

    def __init__(self, *answers):
        self.answers = list(answers)
        self.calls = []

    def __call__(self, reactor, host, port, key, command, timeout=10.0, tls=None, **kwargs):
        self.calls.append((host, port, key, command, timeout, kwargs))
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            return fail(answer)
        return succeed(answer)


def hellos(answers):
    """
    A fake C{query} answering C{hello} from C{answers} (host -> answer, or
    an exception to fail with) and recording C{(host, port, op)} in
    C{query.asked}.
    """
    def query(reactor, host, port, op):
        query.asked.append((host, port, op))
        answer = answers[host]
        if callable(answer):
            answer = answer()
        if isinstance(answer, Exception):
            return fail(answer)
        return succeed(answer)

    query.asked = []
    return query


def hello(node, role, leader):
    """
    A C{hello} answer of C{node} naming C{leader} (an id, or L{None}).
    """
    if leader:
        leader = {"id": leader, "host": "10.0.0.%d" % leader, "port": 7000 + leader}
    return {"node": node, "role": role, "epoch": 3, "leader": leader}


OK = {"ok": True, "error": ""}
NOT_THE_LEADER = {"ok": False, "error": "node 1 is not the leader"}


class AdminMainTests(SynchronousTestCase):
    """
    Tests for C{leave} and C{force-lead} in L{cli.main}, with a fake
    C{admin_call}.
    """

    def setUp(self):
        self.out, self.err = io.StringIO(), io.StringIO()

    def main(self, argv, query=None, admin=None):
        args = cli.build_parser({}).parse_args(["--config", "c.yaml", *argv])
        invocation = cli.Invocation(
            args, NODES, [("10.0.0.1", 7001), ("10.0.0.2", 7002)], None, b"k"
        )
        running = cli.main(Clock(), invocation, self.out, self.err, query=query, admin=admin)
        return self.successResultOf(Deferred.fromCoroutine(running))

    def moving_leader(self, admin, later):
        """
        A C{query} for a cluster led by node 1 until the first admin call,
        after which node 1 answers C{later}.
        """
        return hellos({
            "10.0.0.1": lambda: later if admin.calls else hello(1, "leader", 1),
            "10.0.0.2": hello(2, "follower", 1),
        })

    def test_leave(self):
        """
        C{leave ID} finds the leader with C{hello} on the client ports (a
        server that says it leads is believed first) and sends C{Leave} to
        the leader's peer port with the key.
        """
        query = hellos({"10.0.0.1": hello(1, "follower", 1),
                        "10.0.0.2": hello(2, "leader", 2)})
        admin = FakeAdmin(OK)
        self.assertEqual(self.main(["leave", "1"], query, admin), 0)
        self.assertEqual(sorted(query.asked),
                         [("10.0.0.1", 7001, "hello"), ("10.0.0.2", 7002, "hello")])
        self.assertEqual(admin.calls, [("10.0.0.2", 7102, b"k", Leave, 10.0, {"node": 1})])
        self.assertEqual(self.out.getvalue(), "node 1 left the cluster; its id is retired\n")
        self.assertEqual(self.err.getvalue(), "")

    def test_leave_leader_named(self):
        """
        When no server says it leads, the leader a server names is asked;
        C{--timeout} bounds the admin call; C{--json} prints the result.
        """
        query = hellos({"10.0.0.1": ConnectionRefusedError(),
                        "10.0.0.2": hello(2, "follower", 1)})
        admin = FakeAdmin(OK)
        self.assertEqual(self.main(["--json", "--timeout", "3", "leave", "2"], query, admin), 0)
        self.assertEqual(admin.calls, [("10.0.0.1", 7101, b"k", Leave, 3.0, {"node": 2})])
        self.assertEqual(json.loads(self.out.getvalue()), {"node": 2, "left": True, "leader": 1})

    def test_leave_retry_at_named_leader(self):
        """
        A server that answers it is not the leader is asked (C{hello}, on
        its client port) which one is, and C{Leave} is sent once more there.
        """
        admin = FakeAdmin(NOT_THE_LEADER, OK)
        query = self.moving_leader(admin, hello(1, "follower", 2))
        self.assertEqual(self.main(["leave", "3"], query, admin), 0)
        self.assertEqual([call[:2] for call in admin.calls],
                         [("10.0.0.1", 7101), ("10.0.0.2", 7102)])
        self.assertEqual(query.asked[2:], [("10.0.0.1", 7001, "hello")])
        self.assertEqual(self.out.getvalue(), "node 3 left the cluster; its id is retired\n")

    def test_leave_retry_answer_names_leader(self):
        """
        A not-leader answer that names the leader (C{code} and C{leader}
        fields) is followed without asking C{hello} again.
        """
        query = hellos({"10.0.0.1": hello(1, "leader", 1), "10.0.0.2": hello(2, "follower", 1)})
        refused = {"ok": False, "error": "ask elsewhere", "code": NOT_LEADER, "leader": 2}
        admin = FakeAdmin(refused, OK)
        self.assertEqual(self.main(["leave", "3"], query, admin), 0)
        self.assertEqual([c[0] for c in admin.calls], ["10.0.0.1", "10.0.0.2"])
        self.assertEqual(len(query.asked), 2)

    def test_leave_retries_once(self):
        """
        The retry is made once: a second not-leader answer exits 1 with the
        server's message.
        """
        second = {"ok": False, "error": "node 2 is not the leader"}
        admin = FakeAdmin(NOT_THE_LEADER, second)
        query = self.moving_leader(admin, hello(1, "follower", 2))
        self.assertEqual(self.main(["leave", "3"], query, admin), 1)
        self.assertEqual(len(admin.calls), 2)
        self.assertEqual(self.err.getvalue(),
                         "error: refused: node 2 refused: node 2 is not the leader\n")
        self.assertEqual(self.out.getvalue(), "")

    def test_leave_not_leader_names_none(self):
        """
        A server that is not the leader and knows no other ends the command
        (status 1) without a second call.
        """
        admin = FakeAdmin(NOT_THE_LEADER)
        query = self.moving_leader(admin, hello(1, "candidate", None))
        self.assertEqual(self.main(["leave", "3"], query, admin), 1)
        self.assertEqual(len(admin.calls), 1)
        self.assertEqual(self.err.getvalue(), "error: unavailable: node 1 is not the leader and"
                         " names no other; retry shortly\n")

    def test_leave_refused(self):
        """
        Any other refusal exits 1 with the server's message.
        """
        query = hellos({"10.0.0.1": hello(1, "leader", 1), "10.0.0.2": hello(2, "follower", 1)})
        admin = FakeAdmin({"ok": False, "error": "node 7 is not a member"})
        self.assertEqual(self.main(["--json", "leave", "7"], query, admin), 1)
        self.assertEqual(len(admin.calls), 1)
        self.assertEqual(self.err.getvalue(),
                         "error: refused: node 1 refused: node 7 is not a member\n")
        self.assertEqual(self.out.getvalue(), "")

    def test_leave_no_server(self):
        """
        When no server answers C{hello}, the leader is unknown: exit 1.
        """
        refused = ConnectionRefusedError()
        query = hellos({"10.0.0.1": refused, "10.0.0.2": refused})
        admin = FakeAdmin()
        self.assertEqual(self.main(["leave", "2"], query, admin), 1)
        self.assertEqual(admin.calls, [])
        self.assertEqual(self.err.getvalue(),
                         "error: unreachable: no server answered, so the leader is unknown\n")

    def test_leave_no_leader(self):
        """
        When no server knows a leader (an election), exit 1 saying so.
        """
        query = hellos({"10.0.0.1": hello(1, "candidate", None),
                        "10.0.0.2": hello(2, "candidate", 0)})
        self.assertEqual(self.main(["leave", "2"], query, FakeAdmin()), 1)
        self.assertTrue(
            self.err.getvalue().startswith("error: unavailable: no server knows a leader")
        )

    def test_leave_leader_not_configured(self):
        """
        A leader that joined later and is not in the file has no known peer
        port: exit 1 saying so.
        """
        query = hellos({"10.0.0.1": hello(1, "follower", 4), "10.0.0.2": hello(2, "follower", 4)})
        admin = FakeAdmin()
        self.assertEqual(self.main(["leave", "2"], query, admin), 1)
        self.assertEqual(admin.calls, [])
        self.assertEqual(
            self.err.getvalue(),
            "error: unknown_node: node 4 (the leader) is not in c.yaml, so its peer port is"
            " unknown; add it to the file's nodes\n",
        )

    def test_leave_unreachable(self):
        """
        An admin call that gets no answer (refused, wrong secret, timeout)
        exits 1 with L{AdminCallFailed}'s explanation.
        """
        query = hellos({"10.0.0.1": hello(1, "leader", 1), "10.0.0.2": hello(2, "follower", 1)})
        admin = FakeAdmin(AdminCallFailed("cannot authenticate with 10.0.0.1:7101: bad proof"))
        self.assertEqual(self.main(["leave", "2"], query, admin), 1)
        self.assertEqual(self.err.getvalue(), "error: unreachable: node 1: cannot authenticate"
                         " with 10.0.0.1:7101: bad proof\n")

    def test_force_lead(self):
        """
        C{force-lead ID} sends C{ForceLead} to that server's peer port, and
        asks no client port.
        """
        query = hellos({})
        admin = FakeAdmin(OK)
        self.assertEqual(self.main(["force-lead", "2"], query, admin), 0)
        self.assertEqual(admin.calls, [("10.0.0.2", 7102, b"k", ForceLead, 10.0, {})])
        self.assertEqual(query.asked, [])
        self.assertEqual(
            self.out.getvalue(),
            "node 2 will lead without waiting for the missing members of its last live set;"
            " check with status\n",
        )

    def test_force_lead_json(self):
        """
        With C{--json}, C{force-lead} prints its result as JSON.
        """
        self.assertEqual(self.main(["--json", "force-lead", "1"], None, FakeAdmin(OK)), 0)
        self.assertEqual(json.loads(self.out.getvalue()), {"node": 1, "forced": True})

    def test_force_lead_refused(self):
        """
        A refusal exits 1 with the server's message.
        """
        admin = FakeAdmin({"ok": False, "error": "node 1 is not in its live set [2, 3]"})
        self.assertEqual(self.main(["force-lead", "1"], None, admin), 1)
        self.assertEqual(self.err.getvalue(),
                         "error: refused: node 1 refused: node 1 is not in its live set [2, 3]\n")

    def test_force_lead_unreachable(self):
        """
        A server that cannot be reached exits 1.
        """
        admin = FakeAdmin(AdminCallFailed("10.0.0.1:7101 refused the connection"))
        self.assertEqual(self.main(["force-lead", "1"], None, admin), 1)
        self.assertEqual(self.err.getvalue(),
                         "error: unreachable: node 1: 10.0.0.1:7101 refused the connection\n")


class AdminNode:
    """
    The node behind a real L{PeerNetwork}: records the admin calls; C{leave}
    of node 9 is refused.
    """

    def __init__(self):
        self.calls = []

    def leave(self, node_id):
        self.calls.append(("leave", node_id))
        if node_id == 9:
            raise ServerChatError(NOT_FOUND, "node 9 is not a member")

    def force_lead(self):
        self.calls.append(("force_lead",))

    def __getattr__(self, name):
        # peer_connected, peer_lost ...: never called without peers.
        return lambda *args: self.calls.append((name,) + args)


class AdminNetworkTests(TestCase):
    """
    C{leave} and C{force-lead} against a real L{PeerNetwork} on 127.0.0.1,
    through the real L{replichat.peerproto.admin_call}.
    """

    timeout = 10
    KEY = b"admin test key"

    def setUp(self):
        self.node = AdminNode()
        network = PeerNetwork(2, self.KEY, reactor, self.node)
        self.addCleanup(network.stopService)
        network.startService()
        return network.listen(0, "127.0.0.1").addCallback(self.listening)

    def listening(self, port):
        self.nodes = [NodeAddress(2, "127.0.0.1", 1, port.getHost().port)]

    def run_main(self, argv, key=KEY):
        args = cli.build_parser({}).parse_args(["--config", "c.yaml", *argv])
        invocation = cli.Invocation(args, self.nodes, [("127.0.0.1", 1)], None, key)
        self.out, self.err = io.StringIO(), io.StringIO()
        query = hellos({"127.0.0.1": hello(2, "leader", 2)})
        return Deferred.fromCoroutine(
            cli.main(reactor, invocation, self.out, self.err, query=query)
        )

    async def check_commands(self):
        self.assertEqual(await self.run_main(["leave", "3"]), 0)
        self.assertEqual(self.out.getvalue(), "node 3 left the cluster; its id is retired\n")
        self.assertEqual(await self.run_main(["leave", "9"]), 1)
        self.assertEqual(self.err.getvalue(),
                         "error: refused: node 2 refused: node 9 is not a member\n")
        self.assertEqual(await self.run_main(["force-lead", "2"]), 0)
        self.assertEqual(self.node.calls, [("leave", 3), ("leave", 9), ("force_lead",)])
        self.assertEqual(await self.run_main(["force-lead", "2"], key=b"wrong"), 1)
        self.assertIn("error: unreachable: node 2: cannot authenticate", self.err.getvalue())
        self.assertEqual(len(self.node.calls), 3)

    def test_commands(self):
        """
        The commands reach the node, report its refusals, and fail without
        the right secret.
        """
        return Deferred.fromCoroutine(self.check_commands())


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
