#!/usr/bin/env python3
"""
Benchmark a replicated cluster of three real replichat servers (fsync on).

    .venv/bin/python bench/bench_cluster.py [--runs 3] [--seconds 10]
        [--inflight 64 256] [--failovers 5] [--catchup-entries 50000]
        [--soak 60] [--data DIR] [--skip-failover] [--skip-catchup]
        [--skip-soak] [--json FILE]

Three C{twistd -n replichat} processes run as on three hosts: node N
listens on 127.0.0.N, all with the same client port and the same peer
port, with a random peer secret, C{timing: {heartbeat_interval: 0.1,
failure_timeout: 0.5}} (override with C{--heartbeat}/C{--failure-timeout})
and their data directories and logs under C{--data DIR} (default: a
temporary directory; the data directories are removed at the end unless
C{--keep}, the logs are always kept).  The benchmark process and its client
processes are separate from the servers.  Every send carries a C{rid} and a
100-byte text; the recipient is never logged in.

What it measures:

1. C{sequential}: one connection, one C{send} at a time, to the leader:
   acknowledged sends/s, p50/p99 latency (C{--runs} times, fresh cluster).
2. C{inflight K}: K requests in flight (C{--inflight}, default 64 and 256):
   K/C{--pipeline} connections, each with C{--pipeline} requests in flight
   (default 1: K connections), from C{--procs} client processes: sends/s,
   p50/p99/p99.9 (C{--runs} times, fresh cluster).
3. C{failover}: a client process sends sequentially; the leader is
   SIGKILLed; the figure is the time from the kill to the first
   acknowledgement of that client's next write by another server.  The
   client follows C{not_leader}, retries C{unavailable} and connection
   errors (after C{--retry-delay}, default 10 ms) with the same rid, at
   whatever server leads.  The killed server is restarted and the next kill
   waits until the leader's C{cluster} shows it live and caught up.
   C{--failovers} kills (default 5): median and max.
4. C{catch-up}: SIGKILL a follower, write C{--catchup-entries} (default
   50,000) pipelined sends, start the follower again and time until its
   own commit index reaches the leader's (from its C{cluster} answer):
   entries/s, from the spawn and from its first C{hello}.
5. C{soak}: full load (C{--soak-clients} connections, default 64) for
   C{--soak} seconds (default 60) while C{hello} is polled on every server
   once a second; every epoch increase is spurious (nothing is killed).

An epoch watcher (C{hello} on every server once a second) runs during every
measurement, so an election during a throughput run is reported too, and
the server logs are searched after each phase for the lines that tell of
trouble (see L{TROUBLE}).

Profiling: C{--cprofile DIR} runs every server of the throughput runs under
cProfile (L{bench/cprofile_twistd.py}); C{--py-spy DIR} samples the leader
during each throughput window (py-spy must be in the virtualenv).

Everything waits with a deadline; every server and client process started
is stopped by its PID, also on errors and on SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import functools
import json
import multiprocessing
import os
import platform
import random
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from array import array

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from benchload import (  # noqa: E402  (bench/benchload.py: what bench_single.py shares)
    PASSWORD,
    PYTHON,
    ROOT,
    SENDER,
    SINK,
    TEXT,
    TWISTD,
    BlockingClient,
    TwistdProcess,
    cprofile_command,
    drive_load,
    finish_py_spy,
    latency_figures,
    log,
    machine,
    percentile,
    start_py_spy,
    stat_row,
    summary,
    wait_idle,
    write_table,
)

HOSTS = ("127.0.0.1", "127.0.0.2", "127.0.0.3")

#: Server log lines worth reporting (node.py, peerproto.py).
TROUBLE = re.compile(
    r"steps down|is silent|no tick|configuration change|is gone|no longer leads"
    r"|#warn\]|#error\]|#critical\]|Traceback|Unhandled"
)

#: Every server started, so that the last `finally` can stop what is left.
ALL_SERVERS: list["NodeServer"] = []


# -- the servers ----------------------------------------------------------------


def port_free_on_all(hosts, low: int = 20000, high: int = 32000) -> int:
    """
    A TCP port below the ephemeral range that nothing listens on at any of
    C{hosts}.
    """
    for _ in range(500):
        port = random.randint(low, high)
        socks = []
        try:
            for host in hosts:
                s = socket.socket()
                socks.append(s)
                s.bind((host, port))
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
        return port
    raise RuntimeError("no free port on %s" % (hosts,))


def query(host: str, port: int, op: str, timeout: float = 2.0) -> dict | None:
    """
    One C{op} on a new connection; L{None} if the server does not answer.
    """
    try:
        client = BlockingClient.connect(port, timeout, host=host)
    except OSError:
        return None
    try:
        answer = client.call(op)
    except (OSError, ConnectionError, ValueError):
        return None
    finally:
        client.close()
    return answer.get("result") if answer.get("ok") else None


class NodeServer(TwistdProcess):
    """
    One C{twistd -n replichat --node N} process, stopped by its PID.
    """

    QUIET_S = 60.0
    TERM_S = 15.0
    KILL_S = 30.0

    def __init__(self, cluster: "Cluster", node_id: int, prefix=None) -> None:
        self.cluster = cluster
        self.node_id = node_id
        self.host = HOSTS[node_id - 1]
        self.port = cluster.client_port
        self.log_path = os.path.join(cluster.logdir, "node-%d.log" % (node_id,))
        self.command = prefix(node_id) if prefix else [PYTHON, TWISTD]

    @property
    def name(self) -> str:
        return "node %d (pid %d)" % (self.node_id, self.pid)

    def spawn(self) -> None:
        self.spawn_twistd(self.cluster.config_path, self.node_id, self.cluster.workdir, ROOT)
        ALL_SERVERS.append(self)

    def hello(self, timeout: float = 1.0) -> dict | None:
        return query(self.host, self.port, "hello", timeout)

    def cluster_view(self, timeout: float = 1.0) -> dict | None:
        return query(self.host, self.port, "cluster", timeout)

    def kill(self) -> int:
        """
        SIGKILL, then wait (bounded) until it is gone; return the
        C{time.monotonic_ns()} just before the signal.
        """
        at = time.monotonic_ns()
        if self.running():
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=30)
        return at

    def log_size(self) -> int:
        try:
            return os.path.getsize(self.log_path)
        except OSError:
            return 0

    def log_since(self, offset: int) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(offset)
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""


class Cluster:
    """
    Three servers on 127.0.0.1-3 sharing one config file, in
    C{root/label}: C{config.yaml}, C{secret}, C{node-N/} (data) and
    C{logs/node-N.log}.
    """

    def __init__(self, args, root: str, label: str, prefix=None) -> None:
        self.workdir = os.path.join(root, label)
        os.makedirs(self.workdir)
        self.logdir = os.path.join(self.workdir, "logs")
        os.makedirs(self.logdir)
        self.client_port = port_free_on_all(HOSTS)
        self.peer_port = port_free_on_all(HOSTS)
        while self.peer_port == self.client_port:
            self.peer_port = port_free_on_all(HOSTS)
        secret = os.path.join(self.workdir, "secret")
        fd = os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32) + "\n")
        self.config_path = os.path.join(self.workdir, "config.yaml")
        with open(self.config_path, "w") as f:
            f.write("nodes:\n")
            for i, host in enumerate(HOSTS, 1):
                f.write("  %d: {host: %s, client_port: %d, peer_port: %d}\n"
                        % (i, host, self.client_port, self.peer_port))
            f.write("data_dir: %s\n" % (json.dumps(os.path.join(self.workdir, "node-{node}")),))
            f.write("timing: {heartbeat_interval: %s, failure_timeout: %s}\n"
                    % (args.heartbeat, args.failure_timeout))
            f.write("snapshot: {every_entries: %d}\n" % (args.snapshot_every,))
            f.write("secret_file: %s\n" % (json.dumps(secret),))
        self.servers = [NodeServer(self, i, prefix) for i in range(1, len(HOSTS) + 1)]
        self.watcher: EpochWatcher | None = None

    def start(self, timeout: float = 60.0) -> "NodeServer":
        for server in self.servers:
            server.spawn()
        leader = self.wait_ready(timeout=timeout)
        log("cluster %s: leader node %d, client port %d, peer port %d"
            % (os.path.basename(self.workdir), leader.node_id, self.client_port, self.peer_port))
        return leader

    def find_leader(self, exclude=(), timeout: float = 30.0) -> "NodeServer":
        """
        Poll C{hello} on each running server until one says it leads.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for server in self.servers:
                if server.node_id in exclude or not server.running():
                    continue
                hello = server.hello()
                if hello and hello.get("role") == "leader":
                    return server
            time.sleep(0.005)
        raise RuntimeError("no leader within %ss" % (timeout,))

    def wait_ready(self, timeout: float = 60.0) -> "NodeServer":
        """
        Wait until a leader serves and its C{cluster} shows every running
        server live, as a follower, with the leader's commit index.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for server in self.servers:
                if server.process is not None and server.process.poll() is not None:
                    raise RuntimeError("node %d exited with %s:\n%s" % (
                        server.node_id, server.process.returncode, server.output()[-3000:]))
            try:
                leader = self.find_leader(timeout=max(0.1, deadline - time.monotonic()))
            except RuntimeError:
                break
            view = leader.cluster_view()
            if view and self.all_live(view, leader):
                return leader
            time.sleep(0.02)
        raise RuntimeError("cluster not ready within %ss" % (timeout,))

    def all_live(self, view: dict, leader: "NodeServer") -> bool:
        rows = {row["id"]: row for row in view["nodes"]}
        mine = rows.get(leader.node_id)
        if mine is None or mine.get("role") != "leader":
            return False
        for server in self.servers:
            if not server.running():
                continue
            row = rows.get(server.node_id)
            if row is None or not row.get("live"):
                return False
            if server is not leader and (row.get("role") != "follower"
                                         or row.get("commit_index") != mine["commit_index"]):
                return False
        return True

    def log_marks(self) -> list[int]:
        return [server.log_size() for server in self.servers]

    def trouble_since(self, marks: list[int]) -> dict:
        """
        The log lines matching L{TROUBLE} written since C{marks}, per node.
        """
        found = {}
        for server, mark in zip(self.servers, marks):
            lines = [line.strip() for line in server.log_since(mark).splitlines()
                     if TROUBLE.search(line)]
            if lines:
                found[str(server.node_id)] = lines
        return found

    def stop(self) -> None:
        if self.watcher is not None:
            self.watcher.stop()
        errors = []
        for server in self.servers:
            try:
                server.stop()
            except Exception as error:  # keep stopping the others
                errors.append(error)
                if server.running():
                    server.process.kill()
                    server.process.wait(timeout=30)
        if errors:
            log("errors while stopping: %r" % (errors,))

    def remove_data(self) -> None:
        for server in self.servers:
            shutil.rmtree(os.path.join(self.workdir, "node-%d" % (server.node_id,)),
                          ignore_errors=True)


class EpochWatcher:
    """
    A thread polling C{hello} on every server every C{interval} seconds,
    recording each (time, node, epoch, role); C{changes()} counts the
    increases of the highest epoch seen.
    """

    def __init__(self, cluster: Cluster, interval: float = 1.0) -> None:
        self.cluster = cluster
        self.interval = interval
        self.samples: list[tuple[float, int, int | None, str | None]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            for server in self.cluster.servers:
                hello = server.hello(timeout=1.0) if server.running() else None
                self.samples.append((time.monotonic(), server.node_id,
                                     hello.get("epoch") if hello else None,
                                     hello.get("role") if hello else None))
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - started)))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def changes(self, since: float = 0.0, until: float = float("inf")) -> dict:
        top = None
        increases = []
        unanswered = 0
        for at, node, epoch, _ in list(self.samples):
            if at < since or at > until:
                continue
            if epoch is None:
                unanswered += 1
                continue
            if top is None:
                top = epoch
            elif epoch > top:
                increases.append({"t": at, "node": node, "from": top, "to": epoch})
                top = epoch
        return {"epoch_changes": len(increases), "increases": increases,
                "unanswered_polls": unanswered, "last_epoch": top}


def setup_accounts(leader: NodeServer, timeout: float = 30.0) -> str:
    """
    Create the sender and the never logged-in recipient (retrying
    C{unavailable}); return a session token of the sender.
    """
    deadline = time.monotonic() + timeout
    client = BlockingClient.connect(leader.port, 10.0, host=leader.host)
    try:
        for op, args in (("create_account", {"username": SENDER, "password": PASSWORD,
                                             "rid": "setup-1"}),
                         ("create_account", {"username": SINK, "password": PASSWORD,
                                             "rid": "setup-2"}),
                         ("login", {"username": SENDER, "password": PASSWORD})):
            while True:
                answer = client.call(op, **args)
                if answer.get("ok"):
                    break
                if answer["error"]["code"] != "unavailable" or time.monotonic() > deadline:
                    raise RuntimeError("%s failed: %r" % (op, answer))
                time.sleep(0.02)
        return answer["result"]["token"]
    finally:
        client.close()


# -- load (client processes) -----------------------------------------------------


def run_load(cluster: Cluster, leader: NodeServer, token: str, inflight: int, procs: int,
             depth: int, warmup: float, seconds: float, tag: str, total: int | None = None,
             tolerate: bool = False) -> dict:
    """
    Drive the leader with C{inflight} requests in flight (C{inflight //
    depth} connections of C{depth}) from C{procs} processes; figures for
    the window [go + warmup, go + warmup + seconds].
    """
    load = drive_load(leader.host, leader.port, token, max(1, inflight // depth), procs, depth,
                      warmup, seconds, tag, lambda: [s.cpu_seconds() for s in cluster.servers],
                      total=total, fill_limit=1800, tolerate=tolerate, stamp_tags=True)
    results = load.results
    server_cpu = {}
    for server, a, b in zip(cluster.servers, load.sample0, load.sample1):
        server_cpu[server.node_id] = ((b[0] - a[0]) + (b[1] - a[1])) / load.elapsed
    leader_cpu = server_cpu[leader.node_id]
    followers_cpu = [v for k, v in server_cpu.items() if k != leader.node_id]
    result = latency_figures(results, seconds or 1e-9)
    rate = result["sends_per_s"]
    result.update({
        "client_cpu": load.client_cpu,
        "leader_cpu": leader_cpu,
        "follower_cpu_max": max(followers_cpu) if followers_cpu else float("nan"),
        "servers_cpu": sum(server_cpu.values()),
        "leader_us_per_send": leader_cpu * 1e6 / rate if rate else float("nan"),
        "other_cpu": max(0.0, load.busy - sum(server_cpu.values()) - load.client_cpu),
        "steal_cpu": load.steal,
        "busiest_others": load.busiest_others({s.pid for s in cluster.servers if s.process}),
        "unanswered": sum(r.get("unanswered", 0) for r in results),
        "sent": sum(r.get("sent", r["completed"]) for r in results),
        "client_failures": load.failures,
    })
    return result


# -- failover client ---------------------------------------------------------------


class _Refused(Exception):
    def __init__(self, answer: dict) -> None:
        super().__init__(answer)
        self.answer = answer


def _open_session(host: str, port: int, token: str, timeout: float) -> BlockingClient:
    client = BlockingClient.connect(port, timeout, host=host)
    try:
        answer = client.call("resume", token=token)
    except BaseException:
        client.close()
        raise
    if not answer.get("ok"):
        client.close()
        raise _Refused(answer)
    return client


def _failover_worker(pipe, hosts, port: int, token: str, tag: str, first: int,
                     retry_delay: float, answer_timeout: float, shared) -> None:
    """
    Send sequentially with a rid; on C{not_leader} go to the named leader,
    on C{unavailable} or a failed connect wait C{retry_delay}, on a lost
    connection try the next server at once; retry with the same rid until
    acknowledged.  C{shared} = [last ack ns, node index of the last ack,
    stop flag, acks]; the full record is sent back when stopped.
    """
    done_ns, first_ns, node_of, tries_of = array("q"), array("q"), array("q"), array("q")
    counts: dict[str, int] = {}
    failed = []
    current = first
    client = None
    n = 0
    now_ns = time.monotonic_ns
    try:
        pipe.send("ready")
        while not shared[2]:
            n += 1
            rid = "%s-%d" % (tag, n)
            started = now_ns()
            tries = 0
            while True:
                if now_ns() - started > 60e9:
                    failed.append({"rid": rid, "why": "not acknowledged within 60 s"})
                    break
                tries += 1
                connected = client is not None
                try:
                    if client is None:
                        client = _open_session(hosts[current], port, token, answer_timeout)
                    answer = client.call("send", to=SINK, text=TEXT, rid=rid)
                except _Refused as refused:
                    answer = refused.answer
                except (OSError, ConnectionError, ValueError) as error:
                    counts["connection: %s" % (type(error).__name__,)] = counts.get(
                        "connection: %s" % (type(error).__name__,), 0) + 1
                    if client is not None:
                        client.close()
                        client = None
                    current = (current + 1) % len(hosts)
                    if not connected:
                        time.sleep(retry_delay)
                    continue
                if answer.get("ok"):
                    at = now_ns()
                    done_ns.append(at)
                    first_ns.append(started)
                    node_of.append(current)
                    tries_of.append(tries)
                    with shared.get_lock():
                        shared[0] = at
                        shared[1] = current
                        shared[3] += 1
                    break
                error = answer.get("error") or {}
                code = error.get("code", "?")
                counts[code] = counts.get(code, 0) + 1
                if code == "not_leader":
                    leader = error.get("leader") or {}
                    target = hosts.index(leader["host"]) if leader.get("host") in hosts else None
                    if target is not None and target != current:
                        if client is not None:
                            client.close()
                            client = None
                        current = target
                        continue
                    time.sleep(retry_delay)
                    continue
                if code == "unavailable":
                    if client is None:  # the resume was refused
                        current = (current + 1) % len(hosts)
                    time.sleep(retry_delay)
                    continue
                failed.append({"rid": rid, "answer": answer})
                break
        pipe.send({"done_ns": done_ns.tobytes(), "first_ns": first_ns.tobytes(),
                   "node": node_of.tobytes(), "tries": tries_of.tobytes(),
                   "counts": counts, "failed": failed[:20], "n_failed": len(failed)})
    except BaseException as error:
        pipe.send({"error": "%s: %s" % (type(error).__name__, error)})
    finally:
        if client is not None:
            client.close()
        pipe.close()


# -- measurements -------------------------------------------------------------------


def cprofile_prefix(args, label: str):
    if not args.cprofile:
        return None
    return lambda node_id: cprofile_command(args.cprofile, "%s-node%d" % (label, node_id))


class Session:
    """
    A fresh cluster for one measurement, stopped (and its data removed
    unless --keep) on leaving the C{with}.
    """

    def __init__(self, args, root: str, label: str, profile: bool = False) -> None:
        self.args = args
        self.cluster = Cluster(args, root, label, cprofile_prefix(args, label) if profile else None)

    def __enter__(self):
        try:
            self.leader = self.cluster.start()
            self.token = setup_accounts(self.leader)
            self.cluster.watcher = EpochWatcher(self.cluster)
            self.marks = self.cluster.log_marks()
            self.started = time.monotonic()
        except BaseException:
            self.cluster.stop()
            raise
        return self

    def __exit__(self, *exc):
        self.cluster.stop()
        if not self.args.keep:
            self.cluster.remove_data()
        return False

    def finish(self, result: dict, since: float | None = None) -> dict:
        """
        Add the epoch changes and the log lines of trouble seen so far.
        """
        changes = self.cluster.watcher.changes(since=since or self.started)
        result["epoch_changes"] = changes["epoch_changes"]
        result["epoch_increases"] = changes["increases"]
        result["trouble"] = self.cluster.trouble_since(self.marks)
        return result


def measure_throughput(args, root: str, inflight: int, label: str, run: int) -> dict:
    idle = wait_idle(args.settle)
    with Session(args, root, "%s-run%d" % (label, run), profile=True) as s:
        depth = 1 if inflight == 1 else args.pipeline
        spy = start_py_spy(args.py_spy, s.leader.pid, "%s-node%d" % (label, s.leader.node_id),
                           args.warmup + args.seconds)
        try:
            result = run_load(s.cluster, s.leader, s.token, inflight, args.procs, depth,
                              args.warmup, args.seconds, label)
        finally:
            finish_py_spy(spy)
        result["busy_before"] = idle
        result["leader"] = s.leader.node_id
        result["snapshots_in_run"] = len(re.findall(r"snapshot at \d+ written",
                                                    s.leader.output()))
        return s.finish(result)


def measure_failover(args, root: str) -> dict:
    wait_idle(args.settle)
    with Session(args, root, "failover") as s:
        cluster, token = s.cluster, s.token
        ctx = multiprocessing.get_context("fork")
        shared = ctx.Array("q", 4)
        parent, child = ctx.Pipe()
        process = ctx.Process(
            target=_failover_worker,
            args=(child, list(HOSTS), cluster.client_port, token, "failover-%d" % time.time_ns(),
                  s.leader.node_id - 1, args.retry_delay, args.answer_timeout, shared),
            daemon=True,
        )
        kills = []
        record = None
        try:
            process.start()
            child.close()
            if not parent.poll(30) or parent.recv() != "ready":
                raise RuntimeError("the failover client did not start")
            deadline = time.monotonic() + 30
            while shared[3] < 100:
                if time.monotonic() > deadline:
                    raise RuntimeError("the failover client is not acknowledged")
                time.sleep(0.01)
            for k in range(args.failovers):
                time.sleep(args.failover_gap)
                leader = cluster.find_leader()
                acks_before = shared[3]
                killed_at = leader.kill()
                log("failover %d: SIGKILLed leader node %d (acks so far %d)"
                    % (k + 1, leader.node_id, acks_before))
                deadline = time.monotonic() + 60
                while True:
                    with shared.get_lock():
                        last, node = shared[0], shared[1]
                    if last > killed_at and node != leader.node_id - 1:
                        break
                    if time.monotonic() > deadline:
                        raise RuntimeError("no write acknowledged within 60 s of the kill")
                    time.sleep(0.001)
                seen = (last - killed_at) / 1e9
                new_leader = cluster.find_leader(exclude=(leader.node_id,))
                log("failover %d: acknowledged by node %d %.3f s after the kill (about; exact "
                    "figure from the client's record); node %d leads"
                    % (k + 1, node + 1, seen, new_leader.node_id))
                view = new_leader.cluster_view() or {}
                target = next((r["commit_index"] for r in view.get("nodes", [])
                               if r["id"] == new_leader.node_id), None)
                restarted = time.monotonic()
                leader.spawn()
                deadline = time.monotonic() + args.rejoin_timeout
                rejoined = None
                while time.monotonic() < deadline:
                    if not leader.running():
                        raise RuntimeError("restarted node %d exited:\n%s"
                                           % (leader.node_id, leader.output()[-3000:]))
                    current = cluster.find_leader()
                    view = current.cluster_view()
                    row = None
                    if view:
                        row = next((r for r in view["nodes"] if r["id"] == leader.node_id), None)
                    if (row and row.get("live") and row.get("commit_index") is not None
                            and target is not None and row["commit_index"] >= target):
                        rejoined = time.monotonic() - restarted
                        break
                    time.sleep(0.01)
                if rejoined is None:
                    raise RuntimeError("node %d not live again within %ss"
                                       % (leader.node_id, args.rejoin_timeout))
                log("failover %d: node %d restarted, live and caught up after %.2f s"
                    % (k + 1, leader.node_id, rejoined))
                kills.append({"killed": leader.node_id, "killed_at_ns": killed_at,
                              "new_leader": new_leader.node_id, "observed_s": seen,
                              "rejoin_s": rejoined})
            shared[2] = 1
            if not parent.poll(90):
                raise RuntimeError("the failover client did not report")
            record = parent.recv()
            if "error" in record:
                raise RuntimeError("failover client failed: %s" % (record["error"],))
        finally:
            shared[2] = 1
            process.join(10)
            if process.is_alive():
                os.kill(process.pid, signal.SIGKILL)
                process.join(10)
            parent.close()
        done = array("q")
        done.frombytes(record["done_ns"])
        first = array("q")
        first.frombytes(record["first_ns"])
        nodes = array("q")
        nodes.frombytes(record["node"])
        tries = array("q")
        tries.frombytes(record["tries"])
        for kill in kills:
            killed_index = kill["killed"] - 1
            for i in range(len(done)):
                if done[i] > kill["killed_at_ns"] and nodes[i] != killed_index:
                    kill["failover_s"] = (done[i] - kill["killed_at_ns"]) / 1e9
                    kill["request_s"] = (done[i] - first[i]) / 1e9
                    kill["tries"] = tries[i]
                    kill["first_ack_node"] = nodes[i] + 1
                    # the last ack before the kill, to show the client was busy
                    j = i - 1
                    while j >= 0 and done[j] > kill["killed_at_ns"]:
                        j -= 1
                    kill["last_ack_before_s"] = ((kill["killed_at_ns"] - done[j]) / 1e9
                                                 if j >= 0 else None)
                    break
        lat = sorted(done[i] - first[i] for i in range(len(done)))
        values = [k.get("failover_s") for k in kills]
        result = {
            "kills": kills,
            "failover_s": summary(values),
            "rejoin_s": summary([k["rejoin_s"] for k in kills]),
            "acks": len(done),
            "client_answers": record["counts"],
            "failed_requests": record["n_failed"],
            "failed_examples": record["failed"],
            "sequential_p50_ms": percentile(lat, 50) / 1e6,
            "retry_delay_s": args.retry_delay,
        }
        return s.finish(result)


def measure_catchup(args, root: str) -> dict:
    wait_idle(args.settle)
    with Session(args, root, "catchup") as s:
        cluster, leader = s.cluster, s.leader
        follower = next(x for x in cluster.servers if x is not leader)
        view = follower.cluster_view()
        before = next(r["commit_index"] for r in view["nodes"] if r["id"] == follower.node_id)
        follower.kill()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            view = leader.cluster_view()
            row = next(r for r in view["nodes"] if r["id"] == follower.node_id)
            if not row["live"]:
                break
            time.sleep(0.01)
        else:
            raise RuntimeError("the leader still counts node %d live 10 s after its kill"
                               % (follower.node_id,))
        log("catch-up: node %d killed at commit index %d; writing %d entries pipelined "
            "(%d connections x %d)" % (follower.node_id, before, args.catchup_entries,
                                       args.fill_conns, args.fill_depth))
        started = time.monotonic()
        load = run_load(cluster, leader, s.token, args.fill_conns * args.fill_depth, 1,
                        args.fill_depth, 0.0, 0.0, "catchup", total=args.catchup_entries)
        write_s = time.monotonic() - started
        if load["errors"] or load["unanswered"]:
            raise RuntimeError("catch-up writes failed: %r" % (load,))
        view = leader.cluster_view()
        target = next(r["commit_index"] for r in view["nodes"] if r["id"] == leader.node_id)
        log("catch-up: %d entries written in %.1f s (%.0f/s with 2 live); leader commit index "
            "%d; restarting node %d" % (args.catchup_entries, write_s,
                                        args.catchup_entries / write_s, target, follower.node_id))
        follower.spawn()
        spawned = time.monotonic()
        first_hello = caught_up = live = None
        deadline = spawned + args.rejoin_timeout
        client = None
        try:
            while time.monotonic() < deadline:
                if not follower.running():
                    raise RuntimeError("node %d exited:\n%s"
                                       % (follower.node_id, follower.output()[-3000:]))
                if client is None:
                    try:
                        client = BlockingClient.connect(follower.port, 2, host=follower.host)
                    except OSError:
                        time.sleep(0.005)
                        continue
                try:
                    answer = client.call("cluster")
                except (OSError, ConnectionError, ValueError):
                    client.close()
                    client = None
                    continue
                now = time.monotonic()
                if answer.get("ok"):
                    if first_hello is None:
                        first_hello = now
                    row = next(r for r in answer["result"]["nodes"]
                               if r["id"] == follower.node_id)
                    if row["commit_index"] is not None and row["commit_index"] >= target:
                        caught_up = now
                        break
                time.sleep(0.005)
        finally:
            if client is not None:
                client.close()
        if caught_up is None:
            raise RuntimeError("node %d did not catch up within %ss"
                               % (follower.node_id, args.rejoin_timeout))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            view = leader.cluster_view()
            row = next(r for r in view["nodes"] if r["id"] == follower.node_id)
            if row["live"]:
                live = time.monotonic()
                break
            time.sleep(0.005)
        entries = target - before
        output = follower.output()
        result = {
            "follower": follower.node_id,
            "entries": entries,
            "write_s": write_s,
            "write_per_s": args.catchup_entries / write_s,
            "to_first_answer_s": first_hello - spawned,
            "to_caught_up_s": caught_up - spawned,
            "caught_up_after_first_answer_s": caught_up - first_hello,
            "to_live_on_leader_s": (live - spawned) if live else None,
            "entries_per_s": entries / (caught_up - spawned),
            "entries_per_s_after_first_answer": entries / max(1e-9, caught_up - first_hello),
            "snapshot_installed": "installed snapshot" in output,
        }
        log("catch-up: %d entries in %.2f s from the spawn (%.0f/s), %.2f s after its first "
            "answer (%.0f/s); live on the leader after %.2f s"
            % (entries, result["to_caught_up_s"], result["entries_per_s"],
               result["caught_up_after_first_answer_s"],
               result["entries_per_s_after_first_answer"],
               result["to_live_on_leader_s"] or -1))
        return s.finish(result)


def measure_soak(args, root: str) -> dict:
    wait_idle(args.settle)
    with Session(args, root, "soak") as s:
        since = time.monotonic()
        log("soak: %d connections in flight for %.0f s" % (args.soak_clients, args.soak))
        result = run_load(s.cluster, s.leader, s.token, args.soak_clients, args.procs,
                          1, 0.0, args.soak, "soak", tolerate=True)
        result["polls"] = sum(1 for at, *_ in s.cluster.watcher.samples if at >= since)
        result = s.finish(result, since=since)
        result["spurious_elections"] = result["epoch_changes"]
        return result


# -- main ----------------------------------------------------------------------------


def git_state() -> dict:
    def run(*cmd):
        try:
            return subprocess.run(["git", "-C", ROOT] + list(cmd), stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None
    return {"head": run("rev-parse", "--short", "HEAD"),
            "dirty": run("status", "--short", "--untracked-files=no", "--", "replichat")}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3,
                        help="repeat the throughput measurements (default 3)")
    parser.add_argument("--seconds", type=float, default=10.0,
                        help="measured window of each throughput run (default 10)")
    parser.add_argument("--warmup", type=float, default=2.0,
                        help="load before each window that is not counted (default 2)")
    parser.add_argument("--inflight", type=int, nargs="+", default=[64, 256],
                        help="requests in flight for the concurrent runs (default 64 256)")
    parser.add_argument("--pipeline", type=int, default=1,
                        help="requests in flight per connection in the concurrent runs "
                             "(default 1: one connection per request in flight)")
    parser.add_argument("--procs", type=int, default=1, help="client processes (default 1)")
    parser.add_argument("--failovers", type=int, default=5, help="leader kills (default 5)")
    parser.add_argument("--failover-gap", type=float, default=1.0,
                        help="seconds of steady sending before each kill (default 1)")
    parser.add_argument("--retry-delay", type=float, default=0.01,
                        help="the failover client's pause before retrying unavailable or a "
                             "refused connect (default 0.01 s)")
    parser.add_argument("--answer-timeout", type=float, default=2.0,
                        help="the failover client's socket timeout (default 2 s)")
    parser.add_argument("--rejoin-timeout", type=float, default=120.0,
                        help="longest wait for a restarted server to catch up (default 120 s)")
    parser.add_argument("--catchup-entries", type=int, default=50_000)
    parser.add_argument("--fill-conns", type=int, default=4)
    parser.add_argument("--fill-depth", type=int, default=128,
                        help="requests in flight per connection for the catch-up writes")
    parser.add_argument("--soak", type=float, default=60.0,
                        help="seconds of full load watched for spurious elections (default 60)")
    parser.add_argument("--soak-clients", type=int, default=64)
    parser.add_argument("--skip-sequential", action="store_true")
    parser.add_argument("--skip-inflight", action="store_true")
    parser.add_argument("--skip-failover", action="store_true")
    parser.add_argument("--skip-catchup", action="store_true")
    parser.add_argument("--skip-soak", action="store_true")
    parser.add_argument("--heartbeat", type=float, default=0.1)
    parser.add_argument("--failure-timeout", type=float, default=0.5)
    parser.add_argument("--snapshot-every", type=int, default=100_000)
    parser.add_argument("--data", metavar="DIR",
                        help="where the clusters' data directories and logs go "
                             "(default: a new temporary directory)")
    parser.add_argument("--keep", action="store_true", help="keep the data directories")
    parser.add_argument("--settle", type=float, default=30.0, metavar="SECONDS",
                        help="before each measurement, wait up to this long for the machine "
                             "to be idle (default 30; 0 to start at once)")
    parser.add_argument("--json", nargs="?", const="-", metavar="FILE",
                        help="write the results as JSON to FILE (or stdout)")
    parser.add_argument("--cprofile", metavar="DIR",
                        help="run the servers of the throughput runs under cProfile")
    parser.add_argument("--py-spy", metavar="DIR",
                        help="sample the leader of each throughput run with py-spy")
    args = parser.parse_args(argv)
    if not os.path.exists(TWISTD):
        raise SystemExit("no twistd at %s: create the virtualenv first" % (TWISTD,))

    def terminate(signum, frame):
        raise SystemExit("stopped by signal %d" % (signum,))
    signal.signal(signal.SIGTERM, terminate)

    root = os.path.abspath(args.data) if args.data else tempfile.mkdtemp(prefix="replichat-cluster-")
    os.makedirs(root, exist_ok=True)
    root = tempfile.mkdtemp(prefix="bench-%s-" % time.strftime("%Y%m%d-%H%M%S"), dir=root)
    log("clusters, data and logs under %s" % (root,))
    try:
        return run_all(args, root)
    finally:
        for server in ALL_SERVERS:
            if server.running():
                log("stopping node %d (pid %d) left running" % (server.node_id, server.pid))
                server.process.kill()
                server.process.wait(timeout=30)
        log("server logs kept under %s/*/logs" % (root,))


def run_all(args, root: str) -> int:
    started = time.monotonic()
    report = {"machine": machine(), "code": git_state(),
              "settings": {k: v for k, v in vars(args).items() if k not in ("json",)},
              "text_bytes": len(TEXT), "root": root, "results": {}}
    results = report["results"]

    def save():
        report["elapsed_s"] = time.monotonic() - started
        if args.json and args.json != "-":
            with open(args.json, "w") as f:
                f.write(json.dumps(report, indent=2, sort_keys=True) + "\n")

    plan = []
    if not args.skip_sequential:
        plan.append(("sequential", 1))
    if not args.skip_inflight:
        plan.extend(("inflight-%d" % k, k) for k in args.inflight)
    runs = {label: [] for label, _ in plan}
    # Interleave the runs (run 1 of each, then run 2 ...): a slow minute of
    # the shared machine then spreads over every measurement.
    for run in range(args.runs):
        for label, inflight in plan:
            r = measure_throughput(args, root, inflight, label, run + 1)
            runs[label].append(r)
            log("%s run %d: %.0f sends/s, p50 %.3f ms, p99 %.3f ms, leader (node %d) %.0f%%, "
                "busiest follower %.0f%%, client %.0f%%, else %.0f%%, steal %.0f%%, errors %d, "
                "epoch changes %d%s"
                % (label, run + 1, r["sends_per_s"], r["p50_ms"], r["p99_ms"], r["leader"],
                   100 * r["leader_cpu"], 100 * r["follower_cpu_max"], 100 * r["client_cpu"],
                   100 * r["other_cpu"], 100 * r["steal_cpu"], r["errors"], r["epoch_changes"],
                   ("; log: %s" % (r["trouble"],)) if r["trouble"] else ""))
    for label, _ in plan:
        rs = runs[label]
        if not rs:
            continue
        results[label] = {key: summary([r[key] for r in rs]) for key in rs[0]
                          if key not in ("trouble", "epoch_increases", "busiest_others",
                                         "client_failures")}
        results[label]["trouble"] = [r["trouble"] for r in rs]
        results[label]["busiest_others"] = [r["busiest_others"] for r in rs]
    save()
    if not args.skip_failover and args.failovers > 0:
        results["failover"] = measure_failover(args, root)
        save()
    if not args.skip_catchup:
        results["catchup"] = measure_catchup(args, root)
        save()
    if not args.skip_soak:
        results["soak"] = measure_soak(args, root)
        save()
    report["elapsed_s"] = time.monotonic() - started
    print_table(report, args)
    if args.json == "-":
        print(json.dumps(report, indent=2, sort_keys=True))
    else:
        save()
    return 0


def print_table(report: dict, args) -> None:
    out = sys.stdout if args.json != "-" else sys.stderr
    m = report["machine"]
    out.write("\nreplichat 3-node cluster benchmark: %s, %d CPUs (%s), Python %s, load average "
              "at start %s\n" % (platform.node(), m["nproc"], m["cpu"], m["python"],
                                 " ".join(m["loadavg_at_start"])))
    out.write("code: HEAD %s%s; servers on %s, heartbeat %.2f s, failure timeout %.2f s, "
              "fsync on, %d-byte texts with rid\n"
              % (report["code"]["head"], " + uncommitted changes" if report["code"]["dirty"] else "",
                 ", ".join(HOSTS), args.heartbeat, args.failure_timeout, len(TEXT)))
    out.write("runs=%d (%.0f s windows after %.0f s warm-up, a fresh cluster each); "
              "data and logs under %s\n\n" % (args.runs, args.seconds, args.warmup, report["root"]))
    rows = []
    row = functools.partial(stat_row, rows)

    r = report["results"]
    for label in [k for k in r if k == "sequential" or k.startswith("inflight-")]:
        s = r[label]
        name = "sequential" if label == "sequential" else "%s in flight" % label.split("-")[1]
        row("%s: acknowledged sends/s" % name, s["sends_per_s"], "/s")
        row("%s: latency p50" % name, s["p50_ms"], "ms", fmt="%.2f")
        row("%s: latency p99" % name, s["p99_ms"], "ms", fmt="%.2f")
        if label != "sequential":
            row("%s: latency p99.9" % name, s["p999_ms"], "ms", fmt="%.1f")
        row("%s: leader CPU" % name, s["leader_cpu"], "% core", 100)
        row("%s: busiest follower CPU" % name, s["follower_cpu_max"], "% core", 100)
        row("%s: leader CPU per send" % name, s["leader_us_per_send"], "us")
        row("%s: client CPU" % name, s["client_cpu"], "% core", 100)
        row("%s: everything else's CPU" % name, s["other_cpu"], "% core", 100)
        row("%s: CPU stolen by the hypervisor" % name, s["steal_cpu"], "% core", 100)
        row("%s: errors" % name, s["errors"], "")
        row("%s: epoch changes" % name, s["epoch_changes"], "")
    if "failover" in r:
        f = r["failover"]
        row("failover: kill -> next ack (%d kills)" % len(f["kills"]), f["failover_s"], "ms", 1000)
        row("failover: restart -> live, caught up", f["rejoin_s"], "s", fmt="%.2f")
        rows.append(("failover: each kill (ms)",
                     ", ".join("%.0f" % (1000 * k["failover_s"]) if k.get("failover_s") is not None
                               else "?" for k in f["kills"]), "", ""))
        rows.append(("failover: client answers seen",
                     ", ".join("%s %d" % kv for kv in sorted(f["client_answers"].items())) or "none",
                     "", ""))
    if "catchup" in r:
        c = r["catchup"]
        rows.append(("catch-up: entries behind", "%d" % c["entries"], "", ""))
        rows.append(("catch-up: spawn -> caught up", "%.2f s" % c["to_caught_up_s"], "", ""))
        rows.append(("catch-up: entries/s from the spawn", "%.0f" % c["entries_per_s"], "", ""))
        rows.append(("catch-up: entries/s after its first answer",
                     "%.0f (%.2f s)" % (c["entries_per_s_after_first_answer"],
                                        c["caught_up_after_first_answer_s"]), "", ""))
        rows.append(("catch-up: the writes, 2 live, pipelined", "%.0f /s" % c["write_per_s"], "", ""))
    if "soak" in r:
        s = r["soak"]
        rows.append(("soak (%.0f s, %d in flight): sends/s" % (args.soak, args.soak_clients),
                     "%.0f" % s["sends_per_s"], "", ""))
        rows.append(("soak: latency p50 / p99 / p99.9 / max",
                     "%.2f / %.2f / %.1f / %.1f ms" % (s["p50_ms"], s["p99_ms"], s["p999_ms"],
                                                       s["max_ms"]), "", ""))
        rows.append(("soak: errors / unanswered", "%d / %d" % (s["errors"], s["unanswered"]), "", ""))
        rows.append(("soak: spurious elections (epoch changes)",
                     "%d (%d polls)" % (s["spurious_elections"], s["polls"]), "", ""))
    write_table(out, rows)
    trouble = []
    for label, value in r.items():
        items = value.get("trouble") if isinstance(value, dict) else None
        if isinstance(items, list):
            for run, found in enumerate(items, 1):
                for node, lines in found.items():
                    trouble.extend("%s run %d node %s: %s" % (label, run, node, line)
                                   for line in lines)
        elif isinstance(items, dict):
            for node, lines in items.items():
                trouble.extend("%s node %s: %s" % (label, node, line) for line in lines)
    if trouble:
        out.write("\nserver log lines of note (%d):\n" % (len(trouble),))
        for line in trouble[:60]:
            out.write("  %s\n" % (line,))
        if len(trouble) > 60:
            out.write("  ... %d more in the JSON\n" % (len(trouble) - 60,))
    out.write("\ntotal time %.0f s\n" % (report["elapsed_s"],))
    out.flush()


if __name__ == "__main__":
    sys.exit(main())
