# -*- test-case-name: tests.test_disk_faults -*-
"""
Disk faults, end to end (DESIGN.md §6, items 9 and 10): a torn write at the
tail, a flipped bit in a segment, a snapshot or the meta file, a failing
fsync (EIO) or write (ENOSPC).

What must hold: a server never acknowledges what is not durable; it cuts
only what a crash in the middle of a write can have left; otherwise it stops
or refuses to start with a message naming the file, and it never starts
serving silently without data it had acknowledged.

The start-up cases run the server's own wiring (L{build_server}: the real
log, snapshot store and meta file in a data directory) in this process, on a
fake clock, with snapshots written inline instead of by a forked child.  The
failing-disk cases run a real C{twistd replichat} under C{strace}, which
makes one system call fail on the log segment only (C{-P PATH}), while a
client sends with rids; the byte-level cases of the log format are in
L{tests.test_log_recovery}.

Why C{strace -P} and not an C{LD_PRELOAD} shim or a tiny file system: the
log writes with C{pwrite} and syncs with C{fdatasync} (sockets use
C{send}), and C{-P} limits both tracing and injection to the calls on that
one file, so nothing else (the twistd log, sockets, the meta file) is
disturbed; a tiny file system needs root to mount.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess

import yaml
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from replichat.config import load_config
from replichat.log import SegmentedLog
from replichat.metastore import MetaCorruption, MetaStore
from replichat.node import InlineSnapshotWriter
from replichat.server import build_server
from tests.realserver import ROOT, TWISTD, RealServer

PASSWORD = {"alg": "scrypt", "n": 16, "r": 8, "p": 1, "salt": "", "hash": ""}

FIRST_SEGMENT = "%020d.seg" % (1,)


def records(path: str) -> list[tuple[int, int]]:
    """
    The (offset, end) of each record in a segment file, read independently
    of L{replichat.segment}: a 28-byte header, then C{<II} length and CRC
    and the payload.
    """
    with open(path, "rb") as f:
        buf = f.read()
    found, pos = [], 28
    while pos + 8 <= len(buf):
        (length,) = struct.unpack_from("<I", buf, pos)
        end = pos + 8 + length
        if end > len(buf):
            break
        found.append((pos, end))
        pos = end
    return found


def flip(path: str, offset: int, bit: int = 0) -> None:
    """
    Flip one bit of the byte at C{offset} of C{path}.
    """
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ (1 << bit)]))


def content(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


class DataDir:
    """
    A one-server config and its node's data directory, opened with the
    server's own L{build_server} on a fake clock.
    """

    def __init__(self, test: SynchronousTestCase, **extra: object) -> None:
        self.test = test
        directory = os.path.abspath(test.mktemp())
        os.makedirs(directory)
        path = os.path.join(directory, "replichat.yaml")
        document = {
            "nodes": {1: {"host": "127.0.0.1", "client_port": 7001, "peer_port": 7101}},
            "data_dir": os.path.join(directory, "node-{node}"),
            **extra,
        }
        with open(path, "w") as f:
            yaml.safe_dump(document, f)
        self.config = load_config(path)
        self.data_dir = self.config.data_dir_for(1)

    def path(self, *parts: str, data_dir: str | None = None) -> str:
        return os.path.join(data_dir or self.data_dir, *parts)

    def start(self, data_dir: str | None = None, cut_corrupt_tail: bool = False):
        """
        Build the server as twistd would, and close it in the cleanup.
        """
        server = build_server(
            self.config, 1, data_dir or self.data_dir, Clock(), cut_corrupt_tail=cut_corrupt_tail
        )
        server.node.snapshot_writer = InlineSnapshotWriter(server.node.snapshots)
        self.test.addCleanup(self.close, server)
        return server

    def close(self, server) -> None:
        server.node.disk_log.close()
        server.lock.release()

    def refused(self, data_dir: str | None = None, cut_corrupt_tail: bool = False) -> str:
        """
        Starting fails as twistd shows it: the message of a L{SystemExit}.
        """
        error = self.test.assertRaises(
            SystemExit,
            build_server,
            self.config,
            1,
            data_dir or self.data_dir,
            Clock(),
            cut_corrupt_tail=cut_corrupt_tail,
        )
        message = str(error.code)
        self.test.assertIn("cannot start node 1", message)
        return message

    def create(self, server, names: list[str], batch: bool = False) -> list[str]:
        """
        Create accounts, one batch (one write, one fsync) each, or all in
        one batch; return the names acknowledged.
        """
        node = server.node
        done = []
        for name in names:
            d = node.propose(
                {"op": "create_account", "who": None, "username": name,
                 "password": PASSWORD, "ts": 1.0}
            )
            d.addCallback(lambda _, name=name: done.append(name))
            if not batch:
                node.clock.advance(0)
        node.clock.advance(0)
        return done

    def copy(self) -> str:
        copy = os.path.abspath(self.test.mktemp())
        shutil.copytree(self.data_dir, copy)
        return copy


class TornTailTests(SynchronousTestCase):
    """
    A write torn by a crash at the end of the log is cut, and the server
    starts with everything acknowledged before it.
    """

    def test_torn_last_batch(self) -> None:
        """
        The last batch, three records written with one C{pwrite}, cut at
        every byte, as a crash leaves a batch before its fsync (so before
        any of it was acknowledged): recovery keeps every earlier entry and
        the complete records before the cut, and the server starts, leads,
        takes writes and restarts.
        """
        data = DataDir(self)
        server = data.start()
        acked = data.create(server, ["user%d" % i for i in range(10)])
        self.assertEqual(len(acked), 10)
        last_acked = server.node.disk_log.last_index
        data.create(server, ["late%d" % i for i in range(3)], batch=True)
        entries = server.node.disk_log.read(1)
        data.close(server)
        segment = data.path("log", FIRST_SEGMENT)
        batch = records(segment)[-3:]
        start, end = batch[0][0], batch[-1][1]
        self.assertEqual(os.path.getsize(segment), end)
        starts = [b for b, _ in batch]
        samples = {start + 1, starts[1] - 1, starts[1], starts[1] + 5, starts[2] + 20, end - 1}
        for cut in range(start, end):
            copy = data.copy()
            os.truncate(data.path("log", FIRST_SEGMENT, data_dir=copy), cut)
            complete = sum(1 for _, e in batch if e <= cut)
            log = SegmentedLog(data.path("log", data_dir=copy))
            self.assertEqual(log.read(1), entries[: last_acked + complete])
            log.close()
            if cut not in samples:
                continue
            server = data.start(copy)
            names = set(server.node.state.uids_by_name)
            self.assertEqual(names - {"late0", "late1", "late2"}, set(acked))
            self.assertEqual(len(names), 10 + complete)
            self.assertEqual(server.node.role, "leader")
            self.assertEqual(data.create(server, ["after"]), ["after"])
            data.close(server)
            server = data.start(copy)
            self.assertIn("after", server.node.state.uids_by_name)
            self.assertEqual(len(server.node.state.uids_by_name), 11 + complete)


class CorruptLogTests(SynchronousTestCase):
    """
    A flipped bit in the log where an acknowledged entry may live stops the
    start, naming the file and offset, and cuts nothing.
    """

    def setUp(self) -> None:
        self.data = DataDir(self)
        server = self.data.start()
        self.acked = self.data.create(server, ["user%d" % i for i in range(8)])
        self.data.close(server)
        self.segment = self.data.path("log", FIRST_SEGMENT)

    def test_flipped_bit_mid_segment(self) -> None:
        """
        A bit flipped anywhere in a record followed by valid ones (its
        length, CRC, index, epoch or data) is refused, also when the
        operator allows cutting a corrupt tail; the file is left as it was.
        """
        offset, end = records(self.segment)[4]
        for where in (0, 3, 5, 8, 12, 16, 24, 30, end - offset - 1):
            copy = self.data.copy()
            path = self.data.path("log", FIRST_SEGMENT, data_dir=copy)
            flip(path, offset + where, where % 8)
            before = content(path)
            for cut in (False, True):
                message = self.data.refused(copy, cut_corrupt_tail=cut)
                self.assertIn(path, message)
                self.assertIn("at offset %d" % (offset,), message)
                self.assertIn("refusing to start", message)
                self.assertNotIn("--cut-corrupt-tail", message)
            self.assertEqual(content(path), before)

    def test_flipped_bit_last_record(self) -> None:
        """
        A flipped bit in the complete last record, which may be an
        acknowledged entry, is refused with the way to accept its loss;
        with C{--cut-corrupt-tail} the server starts without that entry
        only.
        """
        offset, end = records(self.segment)[-1]
        flip(self.segment, offset + 30, 3)
        message = self.data.refused()
        self.assertIn(self.segment, message)
        self.assertIn("at offset %d" % (offset,), message)
        self.assertIn("--cut-corrupt-tail", message)
        self.assertEqual(os.path.getsize(self.segment), end)
        server = self.data.start(cut_corrupt_tail=True)
        self.assertEqual(set(server.node.state.uids_by_name), set(self.acked[:-1]))


class SnapshotFaultTests(SynchronousTestCase):
    """
    A flipped bit in the newest snapshot falls back to the older one and
    the log after it; with no intact snapshot covering the log's start the
    server refuses to start, naming the snapshots it set aside.
    """

    def setUp(self) -> None:
        self.events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        self.data = DataDir(self, snapshot={"every_entries": 100}, log={"segment_bytes": 4096})

    def fill(self, count: int) -> list[str]:
        server = self.data.start()
        acked = self.data.create(server, ["user%d" % i for i in range(count)])
        self.assertEqual(len(acked), count)
        self.data.close(server)
        return acked

    def snapshots(self) -> list[str]:
        directory = self.data.path("snapshots")
        return sorted(os.path.join(directory, name) for name in os.listdir(directory))

    def segments(self) -> dict[str, bytes]:
        directory = self.data.path("log")
        return {name: content(os.path.join(directory, name)) for name in os.listdir(directory)}

    def test_newest_corrupt(self) -> None:
        """
        Wherever the bit is (magic, index, epoch, length, CRC, data), the
        newest snapshot is set aside, with a warning naming it, and the
        server starts from the older one plus the log, with every
        acknowledged entry.
        """
        acked = self.fill(250)
        older, newest = self.snapshots()
        self.assertTrue(newest.endswith("%020d.snap" % (200,)))
        first = int(sorted(os.listdir(self.data.path("log")))[0].split(".")[0])
        self.assertGreater(first, 1)  # compacted: the log alone is not enough
        size = os.path.getsize(newest)
        for offset in (0, 9, 17, 25, 33, 36, size // 2, size - 1):
            copy = self.data.copy()
            path = os.path.join(copy, "snapshots", os.path.basename(newest))
            flip(path, offset, offset % 8)
            server = self.data.start(copy)
            self.assertEqual(set(server.node.state.uids_by_name), set(acked))
            self.assertEqual(server.node.role, "leader")
            self.assertFalse(os.path.exists(path))
            self.assertTrue(os.path.exists(path + ".corrupt"))
            warned = [e for e in self.events if e["log_level"] == LogLevel.warn]
            self.assertEqual(warned[-1]["path"], path)
            self.assertEqual(self.data.create(server, ["after"]), ["after"])

    def test_all_corrupt(self) -> None:
        """
        With both snapshots corrupt and the log compacted past the start,
        the server refuses to start rather than serve without the
        compacted entries, and says which snapshots failed.
        """
        self.fill(250)
        paths = self.snapshots()
        for path in paths:
            flip(path, os.path.getsize(path) // 2)
        segments = self.segments()
        message = self.data.refused()
        self.assertIn("no intact snapshot", message)
        for path in paths:
            self.assertIn(path, message)
            self.assertIn("CRC mismatch", message)
        self.assertEqual(self.segments(), segments)
        # Set aside by the first attempt, they are still named by the next.
        message = self.data.refused()
        self.assertIn("no intact snapshot", message)
        for path in paths:
            self.assertIn(path + ".corrupt", message)

    def test_only_snapshot_corrupt(self) -> None:
        """
        A corrupt lone snapshot, before any compaction, leaves the whole
        log: the server starts from it.
        """
        acked = self.fill(150)
        (path,) = self.snapshots()
        self.assertEqual(sorted(os.listdir(self.data.path("log")))[0], FIRST_SEGMENT)
        flip(path, 40)
        server = self.data.start()
        self.assertEqual(set(server.node.state.uids_by_name), set(acked))


class MetaFaultTests(SynchronousTestCase):
    """
    A damaged C{meta.json} (node, epoch, vote) is refused: starting with a
    wrong epoch could reuse it for other entries or follow two leaders in it.
    """

    def setUp(self) -> None:
        self.data = DataDir(self)
        server = self.data.start()
        self.data.create(server, ["alice", "bob"])
        self.epoch = server.node.epoch
        self.data.close(server)
        self.meta = self.data.path("meta.json")

    def test_every_bit(self) -> None:
        """
        Any single flipped bit of the file is refused.
        """
        original = content(self.meta)
        for offset in range(len(original)):
            for bit in range(8):
                damaged = bytearray(original)
                damaged[offset] ^= 1 << bit
                with open(self.meta, "wb") as f:
                    f.write(damaged)
                self.assertRaises(MetaCorruption, MetaStore(self.meta).load)

    def test_refused(self) -> None:
        """
        Each kind of damage stops the start with a message naming the file
        and what is wrong, and the log is left alone.
        """
        document = json.loads(content(self.meta))
        epoch = document["epoch"]
        cases = [
            (content(self.meta).replace(b'"epoch":%d' % epoch, b'"epoch":%d' % (epoch ^ 1)),
             "checksum mismatch"),
            (content(self.meta)[:20], "not valid JSON"),
            (b"", "not valid JSON"),
            (b"[1, 2]", "not a JSON object"),
            (b'{"node": 1, "epoch": "3", "leader": 1}', "epoch: expected a non-negative integer"),
            (b'{"node": 1, "epoch": -1, "leader": 1}', "epoch: expected a non-negative integer"),
            (b'{"node": 1, "epoch": 3, "leaded": 1}', "unknown keys leaded"),
        ]
        segment = content(self.data.path("log", FIRST_SEGMENT))
        for data, problem in cases:
            with open(self.meta, "wb") as f:
                f.write(data)
            message = self.data.refused()
            self.assertIn(self.meta, message)
            self.assertIn(problem, message)
            self.assertIn("refusing to start", message)
        self.assertEqual(content(self.data.path("log", FIRST_SEGMENT)), segment)

    def test_by_hand(self) -> None:
        """
        A file without a checksum, as an operator repairs it by hand (or as
        written before the checksum), is taken, and written back with one.
        """
        epoch = self.epoch + 5000
        with open(self.meta, "w") as f:
            f.write('{"node": 1, "epoch": %d, "leader": 0}' % (epoch,))
        server = self.data.start()
        self.assertGreater(server.node.epoch, epoch)
        self.assertEqual(set(server.node.state.uids_by_name), {"alice", "bob"})
        self.assertIn(b'"crc32":', content(self.meta))
        self.assertEqual(
            MetaStore(self.meta).load(), {"node": 1, "epoch": server.node.epoch, "leader": 1}
        )


class StracedServer(RealServer):
    """
    A L{RealServer} run under C{strace -f}, which makes one system call on
    the first log segment fail from its C{when}-th call on, while
    C{inject} is set.
    """

    inject: tuple[str, str, int] | None = None

    @property
    def segment(self) -> str:
        return os.path.realpath(os.path.join(self.data_dir, "log", FIRST_SEGMENT))

    @property
    def trace_path(self) -> str:
        return os.path.join(self.directory, "strace.log")

    def spawn(self, env: dict | None = None) -> subprocess.Popen:
        prefix: list[str] = []
        if self.inject is not None:
            syscall, error, when = self.inject
            prefix = [
                "strace", "-f", "-qq", "-e", "signal=none", "-o", self.trace_path,
                "-P", self.segment, "-e", "trace=" + syscall,
                "-e", "inject=%s:error=%s:when=%d+" % (syscall, error, when),
            ]
        environment = dict(os.environ, PYTHONPATH=ROOT, **(env or {}))
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                prefix + [TWISTD, "-n", "--pidfile=", "replichat", "--config", self.config_path,
                          "--node", str(self.node_id)],
                stdout=log, stderr=subprocess.STDOUT, env=environment, cwd=self.directory,
            )
        return self.process

    def server_pid(self) -> int | None:
        """
        The twistd process's id, as its data directory lock records it.
        """
        try:
            with open(os.path.join(self.data_dir, "lock")) as f:
                return int(f.read().strip())
        except (OSError, ValueError):
            return None

    def stop(self) -> None:
        # Killing strace detaches twistd, which would go on running.
        pid = self.server_pid() if self.running else None
        super().stop()
        if pid is not None:
            try:
                with open("/proc/%d/cmdline" % (pid,), "rb") as f:
                    ours = self.config_path.encode() in f.read()
            except OSError:
                ours = False
            if ours:
                os.kill(pid, signal.SIGKILL)


class FailingDiskTests(TestCase):
    """
    A real server whose log fsync or write fails acknowledges nothing more
    and exits with a message; restarted on a working disk, it has every
    send it acknowledged, and a retried rid is applied once.
    """

    def setUp(self) -> None:
        if shutil.which("strace") is None:
            raise SkipTest("strace is not installed")
        probe = subprocess.run(
            ["strace", "-f", "-qq", "-o", os.devnull, "-e", "trace=fdatasync", "true"],
            capture_output=True, timeout=30,
        )
        if probe.returncode != 0:
            raise SkipTest("strace cannot trace here: %s" % (probe.stderr.decode().strip(),))

    def check_failure(self, syscall: str, error: str, when: int, reason: str) -> None:
        """
        Send with rids, one at a time, until the injected failure stops the
        server; then check what it said and what a restart has.
        """
        server = StracedServer(self.mktemp())
        self.addCleanup(server.stop)
        server.inject = (syscall, error, when)
        server.start(timeout=40)
        setup = server.client()
        for name in ("alice", "bob"):
            setup.ok("create_account", username=name, password="pw", rid="ca-" + name)
        setup.close()
        alice = server.client()
        alice.ok("login", username="alice", password="pw")
        acked: dict[str, dict] = {}
        failed = None
        for n in range(40):
            rid = "send-%d" % (n,)
            try:
                answer = alice.call("send", to="bob", text="text %d" % (n,), rid=rid)
            except (OSError, ValueError):
                failed = n  # the server went away without answering
                break
            if not answer["ok"]:
                failed = n
                break
            acked[rid] = answer["result"]["message"]
        alice.close()
        self.assertIsNotNone(failed, "every send was acknowledged:\n" + server.tail())
        self.assertGreaterEqual(len(acked), 2, server.tail())
        code = server.wait_exit(timeout=30)
        self.assertNotEqual(code, 0, server.tail())
        output = server.output()
        self.assertIn("fatal: writing the log failed: [Errno", output)
        self.assertIn(reason, output)
        with open(server.trace_path) as f:
            trace = f.read()
        self.assertIn("= -1 %s (%s) (INJECTED)" % (error, reason), trace)

        server.inject = None
        server.start()
        bob = server.client()
        bob.ok("login", username="bob", password="pw")
        history = bob.ok("history", limit=1000)["messages"]
        texts = [m["text"] for m in history]
        for rid, message in acked.items():
            self.assertIn(message, history)
            self.assertEqual(texts.count(message["text"]), 1)
        # The send that failed, retried with its rid, is there once.
        alice = server.client()
        alice.ok("login", username="alice", password="pw")
        alice.ok("send", to="bob", text="text %d" % (failed,), rid="send-%d" % (failed,))
        texts = [m["text"] for m in bob.ok("history", limit=1000)["messages"]]
        self.assertEqual(texts.count("text %d" % (failed,)), 1)
        self.assertEqual(len(texts), len(acked) + 1)
        alice.close()
        bob.close()

    def test_fdatasync_eio(self) -> None:
        """
        C{fdatasync} of the log fails with EIO from the 10th call on (the
        marker, two accounts and a login before the sends): the send whose
        batch it was is not acknowledged, the process exits at once.
        """
        self.check_failure("fdatasync", "EIO", 10, "Input/output error")

    def test_pwrite_enospc(self) -> None:
        """
        C{pwrite} of the log fails with ENOSPC from the 11th call on (the
        header, the marker, two accounts and a login before the sends).
        """
        self.check_failure("pwrite64", "ENOSPC", 11, "No space left on device")
