#!/usr/bin/env python3
"""
Benchmark one real replichat server (fsync on, the real twistd process).

    .venv/bin/python bench/bench_single.py [--runs 3] [--seconds 10]
        [--clients 64] [--procs 1] [--data DIR] [--skip-restart]
        [--rev REV | --source DIR] [--json [FILE]]

What it measures (see docs/performance.rst for how to read the figures):

1. C{sequential}: one connection, one C{send} of a 100-byte text at a time:
   acknowledged sends/s, p50/p99 latency.
2. C{concurrent}: C{--clients} connections (default 64), each with one
   request in flight at a time, driven by C{--procs} client processes (raw
   non-blocking sockets on C{selectors}/epoll): sends/s, p50/p99, and the
   CPU used by the client processes, the server and everything else on the
   machine during the measured window, so a saturated client is visible.
3. C{restart}: a data directory holding C{--messages} (default 1,000,000)
   acknowledged 100-byte messages is filled once (pipelined sends on
   C{--fill-conns} connections), kept under C{--data DIR} for later runs,
   and then the time from spawning twistd until the first C{hello} is
   answered is measured C{--runs} times: as filled (the newest snapshot
   plus the log entries after it, up to one snapshot interval), and with
   the newest snapshot set aside (as if it were unreadable: the previous
   snapshot plus up to two intervals of log).  A start on an empty data
   directory is the baseline (interpreter, imports, twistd).

Every throughput run uses a fresh server and a fresh data directory, a
warm-up, then a window of C{--seconds}; every wait is bounded; every
process started is stopped by its PID.  Before each run the script waits
(at most C{--settle} seconds) for the machine to be idle.  Sends carry a
C{rid} like the client library's (C{--no-rid} to leave it out).  The
recipient is never logged in, so no message events are pushed.

Profiling: C{--cprofile DIR} runs every server under cProfile
(L{bench/cprofile_twistd.py}); C{--py-spy DIR} samples each throughput
server with py-spy (C{pip install py-spy} into the virtualenv first).
"""

from __future__ import annotations

import argparse
import gc
import json
import multiprocessing
import os
import platform
import re
import resource
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from array import array

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV_BIN = os.path.join(ROOT, ".venv", "bin")
PYTHON = os.path.join(VENV_BIN, "python") if os.path.exists(os.path.join(VENV_BIN, "python")) else sys.executable
TWISTD = os.path.join(VENV_BIN, "twistd")

TEXT = ("replichat benchmark message, exactly one hundred bytes of text: "
        "0123456789abcdefghijklmnopqrstuvwxyz")[:100]
assert len(TEXT.encode()) == 100

SENDER, SINK, PASSWORD = "bench_sender", "bench_sink", "bench password"
CLK_TCK = os.sysconf("SC_CLK_TCK")
#: The source tree the server runs from (PYTHONPATH); see --rev and --source.
SOURCE = ROOT
RECOVERED = re.compile(r"recovered (\d+) log entries after snapshot (\d+) in ([\d.]+)s")


def log(message: str) -> None:
    sys.stderr.write("[bench] %s\n" % (message,))
    sys.stderr.flush()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- the server under test ------------------------------------------------------


class Server:
    """
    One C{twistd -n replichat} process on 127.0.0.1, stopped by its PID.

    @param prefix: the command that runs twistd, before twistd's arguments
        (default C{[python, twistd]}; C{[python, bench/cprofile_twistd.py,
        OUT]} to profile); the process started is the server itself.
    """

    def __init__(self, workdir: str, data_dir: str, snapshot_every: int, prefix=None) -> None:
        self.workdir = workdir
        self.data_dir = data_dir
        self.port = free_port()
        self.config_path = os.path.join(workdir, "replichat-%d.yaml" % (self.port,))
        self.log_path = os.path.join(workdir, "twistd-%d.log" % (self.port,))
        with open(self.config_path, "w") as f:
            f.write(
                "nodes:\n"
                "  1: {host: 127.0.0.1, client_port: %d, peer_port: %d}\n"
                "data_dir: %s\n"
                "snapshot: {every_entries: %d}\n"
                % (self.port, free_port(), json.dumps(data_dir), snapshot_every)
            )
        self.command = prefix or [PYTHON, TWISTD]
        self.process: subprocess.Popen | None = None
        self.spawned_at = 0.0

    @property
    def pid(self) -> int:
        return self.process.pid

    def spawn(self) -> None:
        env = dict(os.environ, PYTHONPATH=SOURCE)
        with open(self.log_path, "ab") as out:
            self.spawned_at = time.monotonic()
            self.process = subprocess.Popen(
                self.command + ["-n", "--pidfile=", "replichat",
                               "--config", self.config_path, "--node", "1"],
                stdout=out, stderr=subprocess.STDOUT, env=env, cwd=self.workdir,
            )

    def wait_serving(self, timeout: float = 120.0) -> float:
        """
        Poll (every 2 ms) until a C{hello} is answered; return the seconds
        since the spawn.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError("server exited with %s:\n%s"
                                   % (self.process.returncode, self.output()[-3000:]))
            try:
                sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
            except OSError:
                time.sleep(0.002)
                continue
            try:
                answer = BlockingClient(sock).call("hello")
            finally:
                sock.close()
            if answer.get("ok"):
                return time.monotonic() - self.spawned_at
            time.sleep(0.002)
        raise RuntimeError("server did not serve within %ss:\n%s" % (timeout, self.output()[-3000:]))

    def start(self) -> float:
        self.spawn()
        return self.wait_serving()

    def children(self) -> list[int]:
        try:
            with open("/proc/%d/task/%d/children" % (self.pid, self.pid)) as f:
                return [int(p) for p in f.read().split()]
        except OSError:
            return []

    def wait_quiet(self, timeout: float = 300.0) -> None:
        """
        Wait (bounded) until no snapshot child is running, so that a stop
        never leaves one writing into the data directory.
        """
        deadline = time.monotonic() + timeout
        while self.children() and time.monotonic() < deadline:
            time.sleep(0.05)

    def stop(self, timeout: float = 60.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.wait_quiet()
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            log("server %d ignored SIGTERM; killing it" % (self.pid,))
            self.process.kill()
            self.process.wait(timeout=timeout)

    def cpu_seconds(self) -> tuple[float, float]:
        """
        User and system CPU seconds of the server and its reaped children
        (snapshot writers) so far.
        """
        try:
            with open("/proc/%d/stat" % (self.pid,)) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            return float("nan"), float("nan")
        # fields[0] is field 3 (state): utime=14, stime=15, cutime=16, cstime=17
        user = (int(fields[11]) + int(fields[13])) / CLK_TCK
        system = (int(fields[12]) + int(fields[14])) / CLK_TCK
        return user, system

    def memory(self) -> dict:
        result = {}
        try:
            with open("/proc/%d/status" % (self.pid,)) as f:
                for line in f:
                    if line.startswith(("VmRSS:", "VmHWM:")):
                        key, value = line.split(":")
                        result[key] = int(value.split()[0]) / 1024.0
        except OSError:
            pass
        return result

    def output(self) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""


def system_cpu() -> dict:
    """
    Machine-wide CPU seconds since boot (all cores): C{busy} (user, nice,
    system, irq, softirq) and C{steal} (taken by the hypervisor).
    """
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    return {"busy": (values[0] + values[1] + values[2] + values[5] + values[6]) / CLK_TCK,
            "steal": values[7] / CLK_TCK}


def process_cpu() -> dict:
    """
    CPU seconds of every process now: pid -> (name, seconds).
    """
    result = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % (name,)) as f:
                text = f.read()
        except OSError:
            continue
        comm = text[text.index("(") + 1:text.rindex(")")]
        fields = text.rsplit(")", 1)[1].split()
        result[int(name)] = (comm, (int(fields[11]) + int(fields[12])) / CLK_TCK)
    return result


def busiest_others(before: dict, after: dict, exclude: set, elapsed: float, top: int = 3) -> list:
    """
    The processes other than C{exclude} that used the most CPU between two
    L{process_cpu} samples, as C{"name(pid) NN%"}.
    """
    used = []
    for pid, (comm, seconds) in after.items():
        if pid in exclude:
            continue
        delta = seconds - before.get(pid, (comm, 0.0))[1]
        if delta > 0:
            used.append((delta / elapsed, "%s(%d)" % (comm, pid)))
    used.sort(reverse=True)
    return ["%s %.0f%%" % (name, 100 * share) for share, name in used[:top]]


class BlockingClient:
    """
    A blocking JSON-lines client for setup and probes.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""
        self.next_id = 0

    @classmethod
    def connect(cls, port: int, timeout: float = 30.0) -> "BlockingClient":
        sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(sock)

    def call(self, op: str, **args) -> dict:
        self.next_id += 1
        self.sock.sendall(json.dumps({"id": self.next_id, "op": op, **args}).encode() + b"\n")
        while True:
            while b"\n" not in self.buffer:
                data = self.sock.recv(65536)
                if not data:
                    raise ConnectionError("server closed the connection")
                self.buffer += data
            line, self.buffer = self.buffer.split(b"\n", 1)
            answer = json.loads(line)
            if answer.get("id") == self.next_id:
                return answer

    def ok(self, op: str, **args) -> dict:
        answer = self.call(op, **args)
        if not answer.get("ok"):
            raise RuntimeError("%s failed: %r" % (op, answer))
        return answer["result"]

    def close(self) -> None:
        self.sock.close()


def setup_accounts(port: int) -> str:
    """
    Create the sender and the (never logged in) recipient; return a session
    token of the sender, which the load connections C{resume}.
    """
    client = BlockingClient.connect(port)
    try:
        client.ok("create_account", username=SENDER, password=PASSWORD)
        client.ok("create_account", username=SINK, password=PASSWORD)
        return client.ok("login", username=SENDER, password=PASSWORD)["token"]
    finally:
        client.close()


# -- the load generator (runs in worker processes) -------------------------------


def _load_worker(pipe, port: int, token: str, nconns: int, depth: int, tag: str,
                 use_rid: bool, total: int | None) -> None:
    """
    One client process: C{nconns} connections, each keeping C{depth}
    requests in flight.  Talks to the parent over C{pipe}: sends
    C{"ready"}, receives C{(go, measure_start, measure_end, hard_end)} in
    C{time.monotonic_ns()} units, sends back its results.
    """
    try:
        socks = []
        for _ in range(nconns):
            client = BlockingClient.connect(port)
            client.ok("resume", token=token)
            socks.append(client.sock)
        pipe.send("ready")
        go, m_start, m_end, hard_end = pipe.recv()
        # The loop makes no reference cycles: keep the collector out of the
        # client's CPU figures.
        gc.freeze()
        gc.disable()
        if nconns == 1 and depth == 1 and total is None:
            result = _run_blocking(socks[0], tag, use_rid, go, m_start, m_end, hard_end)
        else:
            result = _run_selector(socks, depth, tag, use_rid, go, m_start, m_end, hard_end, total)
        for sock in socks:
            sock.close()
        pipe.send(result)
    except BaseException as error:  # report instead of hanging the parent
        pipe.send({"error": "%s: %s" % (type(error).__name__, error)})
    finally:
        pipe.close()


def _templates(tag: str, use_rid: bool) -> bytes:
    text = json.dumps(TEXT)
    if use_rid:
        return ('{"id":%%d,"op":"send","to":"%s","text":%s,"rid":"%s-%%d"}\n'
                % (SINK, text, tag)).encode()
    return ('{"id":%%d,"op":"send","to":"%s","text":%s}\n' % (SINK, text)).encode()


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _sleep_until(deadline_ns: int) -> None:
    delay = (deadline_ns - time.monotonic_ns()) / 1e9
    if delay > 0:
        time.sleep(delay)


def _run_blocking(sock, tag, use_rid, go, m_start, m_end, hard_end) -> dict:
    """
    One request at a time on a blocking socket: the least client overhead
    between an answer and the next request.
    """
    template = _templates(tag, use_rid)
    two = use_rid
    latencies = array("q")
    errors = completed = max_message = 0
    cpu_start = cpu_end = None
    buffer = b""
    recv, sendall, now_ns, loads = sock.recv, sock.sendall, time.monotonic_ns, json.loads
    _sleep_until(go)
    n = 0
    while True:
        sent = now_ns()
        if sent >= m_end or sent >= hard_end:
            break
        if cpu_start is None and sent >= m_start:
            cpu_start = _cpu()
        n += 1
        sendall(template % ((n, n) if two else n))
        while True:
            end = buffer.find(b"\n")
            if end >= 0:
                line, buffer = buffer[:end], buffer[end + 1:]
                if not line.startswith(b'{"event"'):
                    break
                continue
            data = recv(65536)
            if not data:
                raise ConnectionError("server closed the connection")
            buffer += data
        done = now_ns()
        answer = loads(line)
        if not answer.get("ok"):
            errors += 1
        else:
            max_message = max(max_message, answer["result"]["message"]["id"])
        if m_start <= sent and done <= m_end:
            latencies.append(done - sent)
        if m_start <= done < m_end:
            completed += 1
    cpu_end = _cpu()
    return {"completed": completed, "errors": errors, "latencies": latencies.tobytes(),
            "cpu": cpu_end - (cpu_start if cpu_start is not None else cpu_end),
            "max_message": max_message}


def _run_selector(socks, depth, tag, use_rid, go, m_start, m_end, hard_end, total) -> dict:
    """
    Many non-blocking connections on one epoll loop.  Each answer is parsed
    (C{json.loads}) and at once replaced by the next request on its
    connection, until C{m_end} (or until C{total} requests were sent).
    """
    template = _templates(tag, use_rid)
    two = use_rid
    latencies = array("q")
    errors = completed = max_message = 0
    sel = selectors.EpollSelector() if hasattr(selectors, "EpollSelector") else selectors.DefaultSelector()
    buffers = [b""] * len(socks)
    sent_at: dict[int, int] = {}
    now_ns, loads = time.monotonic_ns, json.loads
    next_id = 0
    sent_total = 0
    stop_sending = False
    cpu_start = cpu_end = None
    last_progress = time.monotonic()

    def send(i: int, count: int) -> None:
        nonlocal next_id, sent_total
        if total is not None:
            count = min(count, total - sent_total)
        if count <= 0:
            return
        parts = []
        stamp = now_ns()
        for _ in range(count):
            next_id += 1
            sent_at[next_id] = stamp
            parts.append(template % ((next_id, next_id) if two else next_id))
        sent_total += count
        data = b"".join(parts)
        sock = socks[i]
        try:
            done = sock.send(data)
        except BlockingIOError:
            done = 0
        if done < len(data):  # rare: fall back to a blocking write of the rest
            sock.setblocking(True)
            sock.sendall(data[done:])
            sock.setblocking(False)

    for i, sock in enumerate(socks):
        sock.setblocking(False)
        sel.register(sock, selectors.EVENT_READ, i)
    _sleep_until(go)
    for i in range(len(socks)):
        send(i, depth)
    while sent_at:
        now = now_ns()
        if cpu_start is None and now >= m_start:
            cpu_start = _cpu()
        if now >= m_end and not stop_sending and total is None:
            stop_sending = True
            cpu_end = _cpu()
        if now >= hard_end:
            break
        if total is not None and time.monotonic() - last_progress >= 10:
            last_progress = time.monotonic()
            log("fill: %d of %d sent (%d acknowledged in this process)"
                % (sent_total, total, sent_total - len(sent_at)))
        for key, _ in sel.select(0.05):
            i = key.data
            try:
                data = socks[i].recv(262144)
            except BlockingIOError:
                continue
            if not data:
                raise ConnectionError("server closed connection %d" % (i,))
            lines = (buffers[i] + data).split(b"\n")
            buffers[i] = lines.pop()
            done = now_ns()
            answered = 0
            for line in lines:
                if line.startswith(b'{"event"'):
                    continue
                answer = loads(line)
                sent = sent_at.pop(answer["id"], None)
                if sent is None:
                    continue
                answered += 1
                if not answer.get("ok"):
                    errors += 1
                else:
                    message = answer["result"]["message"]["id"]
                    if message > max_message:
                        max_message = message
                if m_start <= sent and done <= m_end:
                    latencies.append(done - sent)
                if m_start <= done < m_end:
                    completed += 1
            if answered and not stop_sending:
                send(i, answered)
    if cpu_end is None:
        cpu_end = _cpu()
    sel.close()
    return {"completed": completed, "errors": errors, "latencies": latencies.tobytes(),
            "cpu": cpu_end - (cpu_start if cpu_start is not None else cpu_end),
            "max_message": max_message, "unanswered": len(sent_at), "sent": sent_total}


def run_load(server: Server, token: str, clients: int, procs: int, depth: int,
             warmup: float, seconds: float, use_rid: bool, total: int | None = None,
             tag: str = "load") -> dict:
    """
    Drive C{server} from C{procs} worker processes sharing C{clients}
    connections; return throughput, latency and CPU figures for the window
    [go + warmup, go + warmup + seconds].
    """
    ctx = multiprocessing.get_context("fork")
    procs = max(1, min(procs, clients))
    shares = [clients // procs + (1 if k < clients % procs else 0) for k in range(procs)]
    totals = [None] * procs
    if total is not None:
        totals = [total // procs + (1 if k < total % procs else 0) for k in range(procs)]
    workers = []
    try:
        for k, share in enumerate(shares):
            parent, child = ctx.Pipe()
            process = ctx.Process(
                target=_load_worker,
                args=(child, server.port, token, share, depth, "%s%d" % (tag, k), use_rid, totals[k]),
                daemon=True,
            )
            process.start()
            child.close()
            workers.append((process, parent))
        for process, pipe in workers:
            if not pipe.poll(120):
                raise RuntimeError("a client process did not get ready")
            message = pipe.recv()
            if message != "ready":
                raise RuntimeError("client process failed: %r" % (message,))
        go = time.monotonic_ns() + 100_000_000
        m_start = go + int(warmup * 1e9)
        m_end = m_start + int(seconds * 1e9)
        hard_end = m_end + (int(3600 * 1e9) if total is not None else int(10e9))
        for _, pipe in workers:
            pipe.send((go, m_start, m_end, hard_end))
        _sleep_until(m_start)
        server_cpu0, system0, procs0 = server.cpu_seconds(), system_cpu(), process_cpu()
        t0 = time.monotonic()
        _sleep_until(m_end)
        server_cpu1, system1, procs1 = server.cpu_seconds(), system_cpu(), process_cpu()
        t1 = time.monotonic()
        client_cpu_proc = [
            (procs1.get(process.pid, ("", 0.0))[1] - procs0.get(process.pid, ("", 0.0))[1])
            for process, _ in workers
        ]
        results = []
        wait_limit = (hard_end - time.monotonic_ns()) / 1e9 + 30
        for process, pipe in workers:
            if not pipe.poll(max(wait_limit, 30)):
                raise RuntimeError("a client process did not report")
            result = pipe.recv()
            if "error" in result:
                raise RuntimeError("client process failed: %s" % (result["error"],))
            results.append(result)
    finally:
        for process, pipe in workers:
            process.join(10)
            if process.is_alive():
                os.kill(process.pid, signal.SIGKILL)
                process.join(10)
            pipe.close()
    window = seconds or 1e-9
    latencies = array("q")
    for result in results:
        latencies.frombytes(result["latencies"])
    ordered = sorted(latencies)
    completed = sum(r["completed"] for r in results)
    elapsed = t1 - t0
    client_cpu = [r["cpu"] / window for r in results]
    server_user = (server_cpu1[0] - server_cpu0[0]) / elapsed
    server_system = (server_cpu1[1] - server_cpu0[1]) / elapsed
    server_cpu = server_user + server_system
    busy = (system1["busy"] - system0["busy"]) / elapsed
    steal = (system1["steal"] - system0["steal"]) / elapsed
    mine = {os.getpid(), server.pid} | {process.pid for process, _ in workers}
    return {
        "sends_per_s": completed / window,
        "completed": completed,
        "errors": sum(r["errors"] for r in results),
        "p50_ms": percentile(ordered, 50) / 1e6,
        "p99_ms": percentile(ordered, 99) / 1e6,
        "p999_ms": percentile(ordered, 99.9) / 1e6,
        "max_ms": (ordered[-1] / 1e6) if ordered else float("nan"),
        # Measured from /proc like the server's; the workers' own getrusage
        # figures agree within a few percent.
        "client_cpu": sum(client_cpu_proc) / elapsed,
        "client_cpu_max_proc": max(client_cpu_proc) / elapsed,
        "client_cpu_rusage": sum(client_cpu),
        "server_cpu": server_cpu,
        "server_system_cpu": server_system,
        "server_us_per_send": server_cpu * 1e6 / (completed / window) if completed else float("nan"),
        # Everything else that ran: other processes, kernel threads (the
        # journal, softirq for loopback TCP) and interrupts; steal is CPU
        # the hypervisor gave to other guests.
        "other_cpu": max(0.0, busy - server_cpu - sum(client_cpu_proc) / elapsed),
        "steal_cpu": steal,
        "busiest_others": busiest_others(procs0, procs1, mine, elapsed),
        "max_message": max(r["max_message"] for r in results),
        "unanswered": sum(r.get("unanswered", 0) for r in results),
    }


def percentile(ordered, p: float) -> float:
    if not ordered:
        return float("nan")
    k = min(len(ordered) - 1, max(0, int(round(p / 100.0 * len(ordered) + 0.5)) - 1))
    return ordered[k]


# -- measurements -------------------------------------------------------------------


def measure_throughput(args, clients: int, procs: int, label: str) -> dict:
    idle = wait_idle(args)
    workdir = tempfile.mkdtemp(prefix="replichat-bench-")
    server = Server(workdir, os.path.join(workdir, "node-1"), args.snapshot_every,
                    prefix=cprofile_prefix(args, label))
    spy = None
    try:
        server.start()
        token = setup_accounts(server.port)
        spy = start_py_spy(args, server, label)
        result = run_load(server, token, clients, procs, 1, args.warmup, args.seconds,
                          args.rid, tag=label)
        finish_py_spy(spy)
        spy = None
        result["snapshots_in_run"] = len(re.findall(r"snapshot at \d+ written", server.output()))
        result["busy_before"] = idle
        return result
    finally:
        if spy is not None and spy.poll() is None:
            spy.send_signal(signal.SIGINT)
            spy.wait(timeout=30)
        server.stop()
        if args.keep:
            log("kept %s" % (workdir,))
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def cprofile_prefix(args, label: str):
    if not args.cprofile:
        return None
    os.makedirs(args.cprofile, exist_ok=True)
    path = os.path.join(args.cprofile, "%s-%d.prof" % (label, time.time_ns()))
    return [PYTHON, os.path.join(ROOT, "bench", "cprofile_twistd.py"), path]


def start_py_spy(args, server: Server, label: str):
    if not args.py_spy:
        return None
    os.makedirs(args.py_spy, exist_ok=True)
    spy = os.path.join(VENV_BIN, "py-spy")
    path = os.path.join(args.py_spy, "%s-%d.txt" % (label, time.time_ns()))
    duration = int(args.warmup + args.seconds)
    return subprocess.Popen(
        [spy, "record", "--pid", str(server.pid), "--duration", str(duration),
         "--rate", "250", "--format", "raw", "--output", path, "--nonblocking"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def finish_py_spy(spy) -> None:
    if spy is None:
        return
    try:
        spy.wait(timeout=60)
    except subprocess.TimeoutExpired:
        spy.send_signal(signal.SIGINT)
        spy.wait(timeout=30)


def fill(args, data_root: str) -> dict:
    """
    Fill C{data_root/node-1} with C{args.messages} acknowledged messages.
    """
    node_dir = os.path.join(data_root, "node-1")
    if os.path.exists(node_dir) and os.listdir(node_dir):
        raise SystemExit("%s is not empty and has no complete fill marker; remove it" % (node_dir,))
    server = Server(data_root, node_dir, args.snapshot_every)
    started = time.monotonic()
    try:
        server.start()
        token = setup_accounts(server.port)
        log("filling %s with %d messages (%d connections x %d in flight)"
            % (node_dir, args.messages, args.fill_conns, args.fill_depth))
        result = run_load(server, token, args.fill_conns, 1, args.fill_depth, 0.0, 0.0,
                          args.rid, total=args.messages, tag="fill")
        if result["errors"] or result["unanswered"]:
            raise RuntimeError("fill failed: %r" % (result,))
        server.wait_quiet()
    finally:
        server.stop()
    marker = {"messages": args.messages, "max_message_id": result["max_message"],
              "server_source": ("git %s" % (args.rev,)) if args.rev else SOURCE,
              "snapshot_every": args.snapshot_every,
              "fill_seconds": time.monotonic() - started}
    with open(os.path.join(data_root, "bench-fill.json"), "w") as f:
        json.dump(marker, f)
    log("filled in %.1f s" % (marker["fill_seconds"],))
    return marker


def du(path: str) -> int:
    total = 0
    for base, _, files in os.walk(path):
        for name in files:
            try:
                total += os.path.getsize(os.path.join(base, name))
            except OSError:
                pass
    return total


def one_restart(args, data_root: str, label: str) -> dict:
    wait_idle(args)
    node_dir = os.path.join(data_root, "node-1")
    workdir = tempfile.mkdtemp(prefix="replichat-bench-restart-")
    try:
        server = Server(workdir, node_dir, args.snapshot_every,
                        prefix=cprofile_prefix(args, label))
        try:
            seconds = server.start()
            memory = server.memory()
        finally:
            server.stop()
            output = server.output()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    found = RECOVERED.findall(output)
    entries, snapshot, recovery = found[-1] if found else (None, None, None)
    return {"serving_s": seconds,
            "recovery_s": float(recovery) if recovery else None,
            "replayed": int(entries) if entries else None,
            "snapshot": int(snapshot) if snapshot else None,
            "rss_mb": memory.get("VmRSS"), "hwm_mb": memory.get("VmHWM")}


def measure_restart(args) -> dict:
    owned = args.data is None
    data_root = os.path.abspath(args.data or tempfile.mkdtemp(prefix="replichat-bench-1m-"))
    os.makedirs(data_root, exist_ok=True)
    out = {"data": data_root}
    try:
        marker_path = os.path.join(data_root, "bench-fill.json")
        marker = None
        if os.path.exists(marker_path):
            with open(marker_path) as f:
                marker = json.load(f)
            if marker.get("messages") != args.messages:
                raise SystemExit("%s holds %s messages, not %d; use another --data"
                                 % (data_root, marker.get("messages"), args.messages))
            log("reusing %s (%d messages)" % (data_root, marker["messages"]))
        else:
            marker = fill(args, data_root)
        out["fill"] = marker
        node_dir = os.path.join(data_root, "node-1")
        out["data_bytes"] = du(node_dir)
        out["snapshot_bytes"] = du(os.path.join(node_dir, "snapshots"))

        empty = []
        for run in range(args.runs):
            workdir = tempfile.mkdtemp(prefix="replichat-bench-empty-")
            try:
                wait_idle(args)
                server = Server(workdir, os.path.join(workdir, "node-1"), args.snapshot_every)
                try:
                    empty.append(server.start())
                finally:
                    server.stop()
            finally:
                shutil.rmtree(workdir, ignore_errors=True)
        out["empty"] = empty

        out["restart"] = []
        for run in range(args.runs):
            result = one_restart(args, data_root, "restart")
            log("restart %d: serving after %.3f s (recovery %.3f s, %s entries after snapshot %s)"
                % (run + 1, result["serving_s"], result["recovery_s"] or -1,
                   result["replayed"], result["snapshot"]))
            out["restart"].append(result)

        if args.fallback:
            out["fallback"] = []
            snapshots_dir = os.path.join(node_dir, "snapshots")
            hidden_dir = os.path.join(data_root, "bench-hidden")
            os.makedirs(hidden_dir, exist_ok=True)
            names = sorted(n for n in os.listdir(snapshots_dir) if n.endswith(".snap"))
            if len(names) < 2:
                log("fallback restart skipped: fewer than two snapshots")
            else:
                newest = names[-1]
                for run in range(args.runs):
                    before = set(os.listdir(snapshots_dir))
                    os.rename(os.path.join(snapshots_dir, newest), os.path.join(hidden_dir, newest))
                    try:
                        result = one_restart(args, data_root, "restart-fallback")
                    finally:
                        # The start took a new snapshot (it was due): drop it
                        # and put the hidden one back, to leave the data as filled.
                        for name in set(os.listdir(snapshots_dir)) - before:
                            os.unlink(os.path.join(snapshots_dir, name))
                        os.rename(os.path.join(hidden_dir, newest), os.path.join(snapshots_dir, newest))
                    log("restart without the newest snapshot %d: serving after %.3f s (recovery %.3f s, %s entries "
                        "after snapshot %s)" % (run + 1, result["serving_s"], result["recovery_s"] or -1,
                                                result["replayed"], result["snapshot"]))
                    out["fallback"].append(result)
            os.rmdir(hidden_dir)
        return out
    finally:
        if owned and not args.keep:
            shutil.rmtree(data_root, ignore_errors=True)
        elif owned:
            log("kept %s" % (data_root,))


# -- reporting ----------------------------------------------------------------------


def summary(values) -> dict:
    values = [v for v in values if v is not None]
    if any(not isinstance(v, (int, float)) for v in values):
        return {"runs": values}
    if not values:
        return {"median": None, "min": None, "max": None, "runs": []}
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "runs": values}


def machine() -> dict:
    model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    with open("/proc/loadavg") as f:
        load = f.read().split()[:3]
    return {"nproc": os.cpu_count(), "cpu": model, "python": platform.python_version(),
            "kernel": platform.release(), "loadavg_at_start": load}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="repeat each measurement (default 3)")
    parser.add_argument("--seconds", type=float, default=10.0,
                        help="measured window of each throughput run (default 10)")
    parser.add_argument("--warmup", type=float, default=2.0,
                        help="load before each window that is not counted (default 2)")
    parser.add_argument("--clients", type=int, default=64, help="concurrent connections (default 64)")
    parser.add_argument("--procs", type=int, default=1,
                        help="client processes sharing the concurrent connections (default 1)")
    parser.add_argument("--skip-sequential", action="store_true")
    parser.add_argument("--skip-concurrent", action="store_true")
    parser.add_argument("--skip-restart", action="store_true")
    parser.add_argument("--data", metavar="DIR",
                        help="keep the filled data directory for the restart here and reuse it")
    parser.add_argument("--messages", type=int, default=1_000_000,
                        help="messages stored for the restart measurement (default 1,000,000)")
    parser.add_argument("--no-fallback", dest="fallback", action="store_false",
                        help="skip the restart with the newest snapshot set aside")
    parser.add_argument("--fill-conns", type=int, default=4)
    parser.add_argument("--fill-depth", type=int, default=128,
                        help="requests in flight per fill connection (<= limits.max_inflight)")
    parser.add_argument("--snapshot-every", type=int, default=100_000,
                        help="the server's snapshot.every_entries (default 100000, its default)")
    parser.add_argument("--no-rid", dest="rid", action="store_false",
                        help="send without request ids (the client library always sends one)")
    parser.add_argument("--json", nargs="?", const="-", metavar="FILE",
                        help="write the results as JSON to FILE (or stdout)")
    parser.add_argument("--keep", action="store_true", help="keep temporary data directories")
    parser.add_argument("--cprofile", metavar="DIR",
                        help="run each server under cProfile, writing DIR/<measurement>-*.prof")
    parser.add_argument("--settle", type=float, default=60.0, metavar="SECONDS",
                        help="before each run, wait up to this long for the machine to be "
                             "idle (default 60; 0 to start at once)")
    parser.add_argument("--rev", metavar="REV",
                        help="run the server from `git archive REV` of this repository "
                             "(e.g. HEAD), not from the working tree")
    parser.add_argument("--source", metavar="DIR",
                        help="run the server from this source tree (default: this repository)")
    parser.add_argument("--py-spy", metavar="DIR",
                        help="sample each throughput server with py-spy (raw stacks in DIR)")
    args = parser.parse_args(argv)
    if not os.path.exists(TWISTD):
        raise SystemExit("no twistd at %s: create the virtualenv first" % (TWISTD,))
    global SOURCE
    extracted = None
    if args.rev:
        args.rev = subprocess.run(["git", "-C", ROOT, "rev-parse", "--verify", args.rev + "^{commit}"],
                                  stdout=subprocess.PIPE, check=True, text=True).stdout.strip()
        extracted = tempfile.mkdtemp(prefix="replichat-bench-src-")
        archive = subprocess.run(["git", "-C", ROOT, "archive", args.rev],
                                 stdout=subprocess.PIPE, check=True).stdout
        subprocess.run(["tar", "-x", "-C", extracted], input=archive, check=True)
        SOURCE = extracted
    elif args.source:
        SOURCE = os.path.abspath(args.source)
    try:
        return run_all(args)
    finally:
        if extracted:
            shutil.rmtree(extracted, ignore_errors=True)


def wait_idle(args) -> float:
    """
    Wait (at most C{args.settle} seconds) until the machine is nearly idle
    (less than 10% of one core busy over one second), so that a run does
    not start while something else (another test suite) is loading it.

    @return: the busy share of one core measured last.
    """
    deadline = time.monotonic() + args.settle
    waited = False
    while True:
        before = system_cpu()["busy"]
        time.sleep(1.0)
        busy = system_cpu()["busy"] - before
        if busy < 0.10 or time.monotonic() >= deadline:
            if waited:
                log("machine %s (%.0f%% of a core busy)"
                    % ("idle" if busy < 0.10 else "still busy; going on", 100 * busy))
            return busy
        if not waited:
            log("waiting up to %.0f s for the machine to be idle (%.0f%% of a core busy)"
                % (args.settle, 100 * busy))
            waited = True


def run_all(args) -> int:

    report = {"machine": machine(),
              "settings": {"runs": args.runs, "seconds": args.seconds, "warmup": args.warmup,
                           "clients": args.clients, "procs": args.procs, "rid": args.rid,
                           "text_bytes": len(TEXT), "snapshot_every": args.snapshot_every,
                           "messages": args.messages,
                           "server_source": ("git archive %s" % (args.rev,)
                                             if args.rev else SOURCE)},
              "results": {}}
    results = report["results"]
    if not args.skip_sequential:
        runs = []
        for run in range(args.runs):
            runs.append(measure_throughput(args, 1, 1, "sequential"))
            log("sequential run %d: %.0f sends/s, p50 %.3f ms, p99 %.3f ms, client %.0f%%, "
                "server %.0f%%, everything else %.0f%% (%s)"
                % (run + 1, runs[-1]["sends_per_s"], runs[-1]["p50_ms"], runs[-1]["p99_ms"],
                   100 * runs[-1]["client_cpu"], 100 * runs[-1]["server_cpu"],
                   100 * runs[-1]["other_cpu"], ", ".join(runs[-1]["busiest_others"])))
        results["sequential"] = {key: summary([r[key] for r in runs]) for key in runs[0]}
    if not args.skip_concurrent:
        runs = []
        for run in range(args.runs):
            runs.append(measure_throughput(args, args.clients, args.procs, "concurrent"))
            log("%d clients run %d: %.0f sends/s, p50 %.3f ms, p99 %.3f ms, client %.0f%% "
                "(busiest process %.0f%%), server %.0f%%, everything else %.0f%% (%s)"
                % (args.clients, run + 1, runs[-1]["sends_per_s"], runs[-1]["p50_ms"],
                   runs[-1]["p99_ms"], 100 * runs[-1]["client_cpu"],
                   100 * runs[-1]["client_cpu_max_proc"], 100 * runs[-1]["server_cpu"],
                   100 * runs[-1]["other_cpu"], ", ".join(runs[-1]["busiest_others"])))
        results["concurrent"] = {key: summary([r[key] for r in runs]) for key in runs[0]}
    if not args.skip_restart:
        restart = measure_restart(args)
        results["restart"] = {
            "data": restart["data"], "fill": restart["fill"],
            "data_bytes": restart["data_bytes"], "snapshot_bytes": restart["snapshot_bytes"],
            "empty_start_s": summary(restart["empty"]),
        }
        for name in ("restart", "fallback"):
            if restart.get(name):
                results["restart"][name] = {
                    key: summary([r[key] for r in restart[name]]) for key in restart[name][0]
                }
    print_table(report, args)
    if args.json:
        text = json.dumps(report, indent=2, sort_keys=True)
        if args.json == "-":
            print(text)
        else:
            with open(args.json, "w") as f:
                f.write(text + "\n")
    return 0


def print_table(report: dict, args) -> None:
    out = sys.stdout if args.json != "-" else sys.stderr
    m = report["machine"]
    out.write("\nreplichat single-server benchmark: %s, %d CPUs (%s), Python %s, "
              "load average at start %s\n"
              % (platform.node(), m["nproc"], m["cpu"], m["python"], " ".join(m["loadavg_at_start"])))
    out.write("server code: %s\n" % (report["settings"]["server_source"],))
    out.write("runs=%d, %.0f s windows after %.0f s warm-up, %d-byte texts, fsync on, "
              "snapshot every %d entries, rid %s\n\n"
              % (args.runs, args.seconds, args.warmup, len(TEXT), args.snapshot_every,
                 "on" if args.rid else "off"))
    rows = []

    def row(name, stats, unit, scale=1.0, fmt="%.0f"):
        if not stats or stats.get("median") is None:
            return
        rows.append((name, fmt % (stats["median"] * scale),
                     (fmt + " - " + fmt) % (stats["min"] * scale, stats["max"] * scale), unit))

    r = report["results"]
    if "sequential" in r:
        s = r["sequential"]
        row("sequential: acknowledged sends/s", s["sends_per_s"], "/s")
        row("sequential: latency p50", s["p50_ms"], "ms", fmt="%.3f")
        row("sequential: latency p99", s["p99_ms"], "ms", fmt="%.3f")
        row("sequential: client CPU", s["client_cpu"], "% core", 100)
        row("sequential: server CPU", s["server_cpu"], "% core", 100)
        row("sequential: server CPU in the kernel", s["server_system_cpu"], "% core", 100)
        row("sequential: server CPU per send", s["server_us_per_send"], "us")
        row("sequential: everything else's CPU", s["other_cpu"], "% core", 100)
        row("sequential: CPU stolen by the hypervisor", s["steal_cpu"], "% core", 100)
    if "concurrent" in r:
        c, n = r["concurrent"], args.clients
        row("%d clients: acknowledged sends/s" % n, c["sends_per_s"], "/s")
        row("%d clients: latency p50" % n, c["p50_ms"], "ms", fmt="%.3f")
        row("%d clients: latency p99" % n, c["p99_ms"], "ms", fmt="%.3f")
        row("%d clients: latency p99.9" % n, c["p999_ms"], "ms", fmt="%.3f")
        row("%d clients: client CPU (%d proc)" % (n, args.procs), c["client_cpu"], "% core", 100)
        row("%d clients: busiest client process" % n, c["client_cpu_max_proc"], "% core", 100)
        row("%d clients: server CPU (with snapshot children)" % n, c["server_cpu"], "% core", 100)
        row("%d clients: server CPU in the kernel" % n, c["server_system_cpu"], "% core", 100)
        row("%d clients: server CPU per send" % n, c["server_us_per_send"], "us")
        row("%d clients: everything else's CPU" % n, c["other_cpu"], "% core", 100)
        row("%d clients: CPU stolen by the hypervisor" % n, c["steal_cpu"], "% core", 100)
        row("%d clients: errors" % n, c["errors"], "")
        row("%d clients: snapshots taken in the window" % n, c["snapshots_in_run"], "")
    if "restart" in r:
        x = r["restart"]
        row("start, empty data dir", x["empty_start_s"], "s", fmt="%.3f")
        for key, label in (("restart", "restart"), ("fallback", "restart, newest snapshot set aside")):
            if key in x:
                y = x[key]
                tail = "%s entries after snapshot %s" % (
                    int(y["replayed"]["median"]), int(y["snapshot"]["median"]))
                row("%s: to first hello" % label, y["serving_s"], "s", fmt="%.3f")
                row("%s: recovery (log line)" % label, y["recovery_s"], "s", fmt="%.3f")
                rows.append(("%s: replayed" % label, tail, "", ""))
                row("%s: server RSS" % label, y["rss_mb"], "MiB")
    width = max(len(name) for name, *_ in rows) if rows else 10
    out.write("%-*s  %12s  %21s  %s\n" % (width, "measurement", "median", "min - max", "unit"))
    out.write("-" * (width + 48) + "\n")
    for name, median, spread, unit in rows:
        if unit == "" and spread == "":
            out.write("%-*s  %s\n" % (width, name, median))
        else:
            out.write("%-*s  %12s  %21s  %s\n" % (width, name, median, spread, unit))
    if "restart" in r:
        x = r["restart"]
        out.write("\nrestart data: %s, %.0f MiB on disk (snapshots %.0f MiB), %d messages, filled in %.0f s\n"
                  % (x["data"], x["data_bytes"] / 2**20, x["snapshot_bytes"] / 2**20,
                     x["fill"]["messages"], x["fill"].get("fill_seconds", 0)))
    out.flush()


if __name__ == "__main__":
    sys.exit(main())
