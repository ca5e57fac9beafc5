# -*- test-case-name: tests.test_process -*-
"""
Real-process tests: C{twistd replichat} on 127.0.0.1, driven over TCP,
killed with SIGKILL and restarted, with its files damaged on purpose.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile

from twisted.trial.unittest import TestCase

from tests.realserver import ROOT, TWISTD, RealServer

# Fast scrypt would be a different product; these tests create few accounts.


class Workload:
    """
    A record of everything the server acknowledged, to check after restarts.
    """

    def __init__(self, server: RealServer) -> None:
        self.server = server
        self.accounts: list[str] = []
        self.sent: dict[int, tuple[str, str, str]] = {}
        self.read_upto: dict[str, int] = {}
        self.rids: dict[str, dict] = {}

    def run(self, users: int, messages: int, seed: int = 0) -> None:
        rng = random.Random(seed)
        client = self.server.client()
        for i in range(users):
            name = "user%d" % (i,)
            client.ok("create_account", username=name, password="pw-%d" % i, rid="ca-%d" % i)
            self.accounts.append(name)
        sessions = {}
        for i, name in enumerate(self.accounts):
            sessions[name] = self.server.client()
            sessions[name].ok("login", username=name, password="pw-%d" % i)
        for n in range(messages):
            sender, recipient = rng.choice(self.accounts), rng.choice(self.accounts)
            rid = "m-%d-%d" % (seed, n)
            result = sessions[sender].ok("send", to=recipient, text="text %d" % n, rid=rid)
            message = result["message"]
            self.sent[message["id"]] = (sender, recipient, message["text"])
            self.rids[rid] = (sender, result)
        for name in self.accounts[::2]:
            read = sessions[name].ok("read", limit=3)
            self.read_upto[name] = len(read["messages"])
        for session in sessions.values():
            session.close()
        client.close()

    def check(self, test: TestCase) -> None:
        """
        Every acknowledged account, message and read mark is there, once.
        """
        client = self.server.client()
        listed = client.ok("list_accounts", limit=1000)
        test.assertEqual(sorted(listed["accounts"]), sorted(self.accounts))
        found: dict[int, tuple] = {}
        for i, name in enumerate(self.accounts):
            session = self.server.client()
            login = session.ok("login", username=name, password="pw-%d" % i)
            received = [m for m in self.sent.values() if m[1] == name]
            test.assertEqual(login["unread"], len(received) - self.read_upto.get(name, 0))
            history = session.ok("history", limit=1000)["messages"]
            for message in history:
                found[message["id"]] = (message["from"], message["to"], message["text"])
            session.close()
        test.assertEqual(found, self.sent)
        # A send retried with its rid after the restart is not applied again.
        rid, (sender, first) = next(iter(self.rids.items()))
        session = self.server.client()
        session.ok("login", username=sender, password="pw-%d" % self.accounts.index(sender))
        again = session.ok("send", to=first["message"]["to"], text=first["message"]["text"], rid=rid)
        test.assertEqual(again, first)
        session.close()
        client.close()


class CrashRecoveryTests(TestCase):
    """
    SIGKILL loses nothing acknowledged.
    """

    def server(self, **extra: object) -> RealServer:
        server = RealServer(self.mktemp(), **extra)
        self.addCleanup(server.stop)
        return server

    def test_sigkill_restart(self) -> None:
        """
        Every acknowledged account, message and read mark survives SIGKILL,
        twice, and rids still dedupe after the restart.
        """
        server = self.server().start()
        workload = Workload(server)
        workload.run(users=4, messages=60)
        server.kill()
        server.start()
        workload.check(self)
        server.kill()
        server.start()
        workload.check(self)

    def test_sigkill_under_load(self) -> None:
        """
        SIGKILL while 300 pipelined sends are in flight: after the restart
        every acknowledged send is there once, every unanswered one at most
        once, and retrying the unanswered ones by rid completes each exactly
        once.
        """
        server = self.server().start()
        setup = server.client()
        for name in ("alice", "bob"):
            setup.ok("create_account", username=name, password="pw")
        sender = server.client()
        sender.ok("login", username="alice", password="pw")
        count = 300
        lines = b"".join(
            json.dumps({"id": i, "op": "send", "to": "bob", "text": "load %d" % i,
                        "rid": "load-%d" % i}).encode() + b"\n"
            for i in range(count)
        )
        sender.file.write(lines)
        sender.file.flush()
        acked = set()
        while len(acked) < 40:
            answer = json.loads(sender.file.readline())
            if answer.get("ok"):
                acked.add(answer["id"])
        server.kill()
        for line in sender.file:  # answers already on their way count too
            answer = json.loads(line)
            if answer.get("ok"):
                acked.add(answer["id"])
        server.start()
        bob = server.client()
        bob.ok("login", username="bob", password="pw")
        texts = [m["text"] for m in bob.ok("history", limit=1000)["messages"]]
        for i in acked:
            self.assertEqual(texts.count("load %d" % i), 1, i)
        self.assertLessEqual(max(texts.count(t) for t in texts), 1)
        retry = server.client()
        retry.ok("login", username="alice", password="pw")
        for i in range(count):
            if i not in acked:
                retry.ok("send", to="bob", text="load %d" % i, rid="load-%d" % i)
        texts = [m["text"] for m in bob.ok("history", limit=1000)["messages"]]
        self.assertEqual(sorted(texts), sorted("load %d" % i for i in range(count)))

    def test_snapshots_and_compaction(self) -> None:
        """
        With frequent snapshots and small segments, old segments are removed
        and a restart from snapshot plus log still has everything.
        """
        server = self.server(snapshot={"every_entries": 100}, log={"segment_bytes": 4096})
        server.start()
        workload = Workload(server)
        workload.run(users=3, messages=400, seed=1)
        server.kill()
        snapshots = server.files("snapshots")
        self.assertEqual(len(snapshots), 2, snapshots)
        segments = server.files("log")
        first_segment = int(os.path.basename(segments[0]).split(".")[0])
        self.assertGreater(first_segment, 1)  # the log was compacted
        server.start()
        workload.check(self)
        self.assertIn("after snapshot", server.output())

    def test_garbage_tail(self) -> None:
        """
        Garbage appended to the newest log segment (a torn write) is cut at
        start-up, logged, and everything acknowledged is still served.
        """
        server = self.server().start()
        workload = Workload(server)
        workload.run(users=2, messages=20, seed=2)
        server.kill()
        newest = server.files("log")[-1]
        with open(newest, "ab") as f:
            f.write(random.Random(3).randbytes(1000))
        server.start()
        workload.check(self)
        self.assertIn("cut", server.output().lower())

    def test_corrupt_middle_refuses(self) -> None:
        """
        A flipped bit in an entry with valid entries after it stops the
        server with a message naming the file, instead of dropping data.
        """
        server = self.server().start()
        Workload(server).run(users=2, messages=30, seed=4)
        server.kill()
        segment = server.files("log")[0]
        with open(segment, "r+b") as f:
            f.seek(os.path.getsize(segment) // 2)
            byte = f.read(1)
            f.seek(-1, os.SEEK_CUR)
            f.write(bytes([byte[0] ^ 0x10]))
        server.spawn()
        code = server.wait_exit()
        self.assertNotEqual(code, 0)
        output = server.output()
        self.assertIn(os.path.basename(segment), output)
        self.assertIn("cannot start", output)
        self.assertRaises(OSError, socket.create_connection, ("127.0.0.1", server.port), 1)

    def test_data_dir_locked(self) -> None:
        """
        A second server on the same data directory refuses to start.
        """
        first = self.server().start()
        second = RealServer(first.directory)
        second.port = first.port
        process = second.spawn()
        self.addCleanup(second.stop)
        self.assertNotEqual(process.wait(timeout=20), 0)
        self.assertIn("lock", second.output().lower())
        first.client().ok("hello")

    def test_ready_notification(self) -> None:
        """
        Under systemd (NOTIFY_SOCKET set) the server sends READY=1 once it
        listens.
        """
        server = self.server()
        # AF_UNIX paths are short; trial's temp paths are not.
        short = tempfile.mkdtemp(prefix="rc-")
        self.addCleanup(shutil.rmtree, short)
        path = os.path.join(short, "notify.sock")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        sock.settimeout(20)
        self.addCleanup(sock.close)
        server.spawn(env={"NOTIFY_SOCKET": path})
        message = sock.recv(4096)
        self.assertIn(b"READY=1", message)
        server.client().ok("hello")


class StartupErrorTests(TestCase):
    """
    Bad configs and options stop twistd with a message, before listening.
    """

    def run_twistd(self, config_text: str, *args: str) -> tuple[int, str]:
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        path = os.path.join(directory, "bad.yaml")
        with open(path, "w") as f:
            f.write(config_text)
        result = subprocess.run(
            [TWISTD, "-n", "--pidfile=", "replichat", "--config", path, *args],
            capture_output=True, text=True, timeout=60,
            env=dict(os.environ, PYTHONPATH=ROOT), cwd=directory,
        )
        return result.returncode, result.stdout + result.stderr

    def test_bad_config(self) -> None:
        """
        Every problem is named by its key path, and there is no traceback.
        """
        code, output = self.run_twistd(
            "nodes:\n  1: {host: 127.0.0.1, client_port: 7001, peer_port: abc}\n"
            "data_dir: x\ntiming: {heartbeat_interval: 0.1, bogus: 1}\n",
            "--node", "1",
        )
        self.assertNotEqual(code, 0)
        self.assertIn("nodes.1.peer_port: expected an integer 1-65535, got 'abc'", output)
        self.assertIn("timing.bogus", output)
        self.assertNotIn("Traceback", output)

    def test_unknown_node(self) -> None:
        """
        A node id the config does not list is refused.
        """
        code, output = self.run_twistd(
            "nodes:\n  1: {host: 127.0.0.1, client_port: 7001, peer_port: 7101}\ndata_dir: x\n",
            "--node", "5",
        )
        self.assertNotEqual(code, 0)
        self.assertIn("node 5 is not in", output)
        self.assertNotIn("Traceback", output)


if sys.platform != "linux":  # pragma: no cover
    CrashRecoveryTests.skip = "real-process tests need Linux"
