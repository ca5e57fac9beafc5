# -*- test-case-name: tests.test_process -*-
"""
The Twisted side of one server: opening the data directory, wiring the node
to its listeners, snapshots in a forked child, and telling systemd when it
is ready.

Recovery runs when the service is built (L{build_server}), before twistd
daemonizes and before anything listens: a data directory that cannot be
recovered intact stops the start with a message instead of a half-started
server.
"""

from __future__ import annotations

import ctypes
import os
import resource
import signal
import sys
import traceback

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError
from twisted.internet.task import LoopingCall, deferLater
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger, LogLevel, formatEvent, globalLogPublisher

from replichat import sdnotify
from replichat.entries import Snapshot
from replichat.fsutil import DataDirLock, DataDirLocked, make_directory
from replichat.handler import ChatHandler
from replichat.lineproto import ClientFactory
from replichat.log import LogCorruption, SegmentedLog
from replichat.metastore import MetaStore
from replichat.membership import ClusterConfig, Member
from replichat.node import Node, RecoveryError, Timing
from replichat.peerproto import PeerNetwork, key_is_default, load_key
from replichat.passwords import PasswordHasher
from replichat.snapshot import CORRUPT_SUFFIX, FileSnapshotStore

#: How often the parent looks for its snapshot child's exit, in seconds.
SNAPSHOT_POLL_INTERVAL = 0.05

#: Seconds after which a snapshot child is deemed stuck and killed.
SNAPSHOT_TIMEOUT = 600.0

#: prctl(2) option: signal to receive when the parent dies.
PR_SET_PDEATHSIG = 1


class SnapshotFailed(Exception):
    """
    A snapshot child exited with an error.
    """


class ForkingSnapshotWriter:
    """
    Writes a snapshot from a forked child, which sees the state frozen at
    the moment of the fork (copy-on-write), while the parent goes on serving.
    Encoding a million messages takes seconds; this keeps it off the reactor.
    """

    log = Logger()

    def __init__(self, store, clock) -> None:
        self.store = store
        self.clock = clock

    def write(self, state, index: int, epoch: int) -> Deferred:
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # pragma: no cover (runs in the child)
            self._child(state, index, epoch, parent)
        started = self.clock.seconds()
        d: Deferred = Deferred()

        def poll() -> None:
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done, status = pid, 1 << 8
            if done == 0:
                if self.clock.seconds() - started > SNAPSHOT_TIMEOUT:
                    self.log.error("snapshot child {pid} hangs; killing it", pid=pid)
                    os.kill(pid, signal.SIGKILL)
                return
            loop.stop()
            if os.waitstatus_to_exitcode(status) == 0:
                d.callback(None)
            else:
                d.errback(SnapshotFailed("snapshot child %d exited with %d" % (pid, status)))

        loop = LoopingCall(poll)
        loop.clock = self.clock
        loop.start(SNAPSHOT_POLL_INTERVAL, now=False)
        return d

    def _child(self, state, index: int, epoch: int, parent: int) -> None:  # pragma: no cover
        code = 1
        try:
            # Die with the parent, and let go of its descriptors (sockets,
            # the log, the data-dir lock's open file): a restarted server
            # must not find its port or its lock held by an orphan.
            _die_with_parent()
            if os.getppid() != parent:
                return  # the parent died before we asked to die with it
            os.closerange(3, _max_fd())
            self.store.save(Snapshot(index, epoch, state.to_snapshot()))
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            # Skip atexit handlers and buffered output inherited from the
            # parent: the child must not touch anything but its file.
            os._exit(code)


def _die_with_parent() -> None:
    """
    Ask Linux to SIGKILL this process when its parent dies.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


def _max_fd() -> int:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if 0 < soft < 2**20 else 65536


class ChatServer(MultiService):
    """
    One replichat server: the node and its client listener.
    """

    log = Logger()

    def __init__(
        self,
        config,
        node_id: int,
        data_dir: str,
        reactor,
        cut_corrupt_tail: bool = False,
        join: tuple[str, int] | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.node_id = node_id
        self.data_dir = data_dir
        self.reactor = reactor
        self.address = config.node(node_id)
        self.port = None
        self.join = join
        key = load_key(config)
        if key_is_default(key) and len(config.nodes) > 1:
            self.log.warn(
                "no secret_file in the config: peers authenticate with a "
                "well-known key, so anyone who can reach a peer port can "
                "act as a server; set secret_file in production"
            )
        make_directory(data_dir)
        # Two processes on one data directory would both append to the log.
        self.lock = DataDirLock(data_dir)
        self.lock.acquire()
        disk_log = None
        try:
            disk_log = SegmentedLog(
                os.path.join(data_dir, "log"),
                segment_bytes=config.log.segment_bytes,
                cut_corrupt_tail=cut_corrupt_tail,
            )
            self._open(config, node_id, disk_log, data_dir, reactor, join, key)
        except BaseException:
            # Refused: let go of the directory, as a process exit would.
            if disk_log is not None:
                disk_log.close()
            self.lock.release()
            raise

    def _open(self, config, node_id: int, disk_log, data_dir: str, reactor, join, key) -> None:
        snapshots = FileSnapshotStore(os.path.join(data_dir, "snapshots"))
        self.node = Node(
            node_id,
            disk_log,
            snapshots,
            MetaStore(os.path.join(data_dir, "meta.json")),
            reactor,
            snapshot_every=config.snapshot.every_entries,
            snapshot_every_bytes=config.snapshot.every_bytes,
            snapshot_writer=ForkingSnapshotWriter(snapshots, reactor),
            on_fatal=self._fatal,
            initial_cluster=ClusterConfig.initial(config),
            timing=Timing(config.timing.heartbeat_interval, config.timing.failure_timeout),
            joining=(
                Member(self.address.host, self.address.client_port, self.address.peer_port)
                if join
                else None
            ),
        )
        self.network = PeerNetwork(node_id, key, reactor, self.node)
        self.node.network = self.network
        self.node.start()
        self.network.setServiceParent(self)
        self.ticker = LoopingCall(self.node.tick)
        self.ticker.clock = reactor
        hasher = PasswordHasher(
            run=lambda f, *a: deferToThreadPool(reactor, reactor.getThreadPool(), f, *a)
        )
        self.handler = ChatHandler(self.node, hasher, config, config.limits, reactor)

    def startService(self) -> None:
        super().startService()
        factory = ClientFactory(self.handler, self.config.limits, self.reactor)
        try:
            self.port = self.reactor.listenTCP(
                self.address.client_port, factory, interface=self.address.host
            )
        except CannotListenError as error:
            self.log.critical("cannot listen for clients: {error}", error=error)
            raise SystemExit("replichat: cannot listen for clients: %s" % (error,))
        # Peers must reach this server before it can take part; the
        # listening Deferred has fired by now (TCP endpoints listen at once).
        listening = self.network.listen(self.address.peer_port, self.address.host)
        failures = []
        listening.addErrback(failures.append)
        if failures:
            error = failures[0].value
            self.log.critical("cannot listen for peers: {error}", error=error)
            raise SystemExit("replichat: cannot listen for peers: %s" % (error,))
        if self.join is not None:
            self.network.dial(*self.join)
        # The core's clock: heartbeats, failure detection, retries.
        self.ticker.start(self.config.timing.heartbeat_interval, now=False)
        self.log.info(
            "node {node} serving clients on {host}:{port} as {role} in epoch {epoch}",
            node=self.node_id,
            host=self.address.host,
            port=self.port.getHost().port,
            role=self.node.role,
            epoch=self.node.epoch,
        )
        sdnotify.notify("READY=1\nSTATUS=serving clients")

    def stopService(self) -> Deferred | None:
        sdnotify.notify("STOPPING=1")
        # A leader hands over, a follower leaves the live set, so the
        # others need not wait a failure timeout; give those messages a
        # moment on the wire before the connections close.
        self.node.shutdown()
        if self.ticker.running:
            self.ticker.stop()
        if self.port is not None:
            port, self.port = self.port, None
            port.stopListening()  # fires at once for a TCP port
        return deferLater(self.reactor, 0.05, super().stopService)

    def _fatal(self, reason: str) -> None:
        # Nothing more may be acknowledged, and a failed fsync cannot be
        # retried: leave at once, without running shutdown code that could.
        sys.stderr.write("replichat: fatal: %s\n" % (reason,))
        sys.stderr.flush()
        os._exit(1)


def _corrupt_snapshots(data_dir: str) -> list[str]:
    """
    The snapshot files an earlier start set aside as corrupt.
    """
    directory = os.path.join(data_dir, "snapshots")
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        return []
    return [os.path.join(directory, name) for name in names if name.endswith(CORRUPT_SUFFIX)]


def build_server(
    config,
    node_id: int,
    data_dir: str,
    reactor,
    cut_corrupt_tail: bool = False,
    join: tuple[str, int] | None = None,
) -> ChatServer:
    """
    Open and recover a node's data directory and return its service.

    twistd starts its log only once the service is built, so what recovery
    warned about (a corrupt snapshot set aside, a torn tail cut) would be
    lost with a refusal to start: those warnings are repeated in the
    message.

    @raise SystemExit: with a message, if the data cannot be recovered.
    """
    warnings: list[str] = []

    def collect(event: dict) -> None:
        if event.get("log_level", LogLevel.info) >= LogLevel.warn:
            warnings.append(formatEvent(event))

    globalLogPublisher.addObserver(collect)
    try:
        return ChatServer(config, node_id, data_dir, reactor, cut_corrupt_tail, join)
    except (RecoveryError, LogCorruption, DataDirLocked, ValueError, OSError) as error:
        message = "replichat: cannot start node %d: %s" % (node_id, error)
        if warnings:
            message += "\nwarned before that:\n" + "\n".join("  " + w for w in warnings)
        earlier = [
            path
            for path in _corrupt_snapshots(data_dir)
            if not any(path[: -len(CORRUPT_SUFFIX)] + ":" in w for w in warnings)
        ]
        if earlier:
            message += "\nsnapshots set aside as corrupt by an earlier start:\n" + "\n".join(
                "  " + path for path in earlier
            )
        raise SystemExit(message)
    finally:
        globalLogPublisher.removeObserver(collect)
