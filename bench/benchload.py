"""
What bench_single.py and bench_cluster.py share: the constants, a blocking
JSON-lines client, a twistd process stopped by its PID, the load generator
(client processes on raw sockets), CPU sampling from /proc, and the table
and summary helpers.

It imports neither C{replichat} nor C{tests}: the benchmarks run servers
from other source trees (C{--rev}, C{--source}).  Both scripts are run as
C{python bench/NAME.py}, which puts C{bench/} on C{sys.path}.
"""

from __future__ import annotations

import gc
import json
import multiprocessing
import os
import platform
import resource
import selectors
import signal
import socket
import statistics
import subprocess
import sys
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


def log(message: str) -> None:
    sys.stderr.write("[bench] %s\n" % (message,))
    sys.stderr.flush()


# -- a server process --------------------------------------------------------------


class TwistdProcess:
    """
    One C{twistd -n replichat} process, stopped by its PID.  Subclasses set
    C{log_path} and C{command} (the command that runs twistd, before
    twistd's arguments) and call L{spawn_twistd}.

    @cvar QUIET_S: how long L{stop} waits for snapshot children to end.
    @cvar TERM_S: how long L{stop} waits after SIGTERM before SIGKILL.
    @cvar KILL_S: how long L{stop} waits after SIGKILL.
    """

    QUIET_S = 300.0
    TERM_S = 60.0
    KILL_S = 60.0

    log_path: str
    command: list

    process: subprocess.Popen | None = None
    spawned_at = 0.0

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def name(self) -> str:
        """
        How log messages name this process.
        """
        return "server %d" % (self.pid,)

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def spawn_twistd(self, config_path: str, node_id: int, cwd: str, source: str) -> None:
        """
        Start C{command} for node C{node_id} of C{config_path} in C{cwd},
        with C{source} as C{PYTHONPATH}, its output appended to C{log_path}.
        """
        env = dict(os.environ, PYTHONPATH=source)
        with open(self.log_path, "ab") as out:
            self.spawned_at = time.monotonic()
            self.process = subprocess.Popen(
                self.command + ["-n", "--pidfile=", "replichat",
                                "--config", config_path, "--node", str(node_id)],
                stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd,
            )

    def children(self) -> list[int]:
        try:
            with open("/proc/%d/task/%d/children" % (self.pid, self.pid)) as f:
                return [int(p) for p in f.read().split()]
        except OSError:
            return []

    def wait_quiet(self, timeout: float | None = None) -> None:
        """
        Wait (at most C{timeout}, default C{QUIET_S}) until no snapshot
        child is running, so that a stop never leaves one writing into the
        data directory.
        """
        deadline = time.monotonic() + (self.QUIET_S if timeout is None else timeout)
        while self.children() and time.monotonic() < deadline:
            time.sleep(0.05)

    def stop(self) -> None:
        """
        SIGTERM (after any snapshot child is done, bounded), SIGKILL if it
        does not exit in time.
        """
        if not self.running():
            return
        self.wait_quiet()
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=self.TERM_S)
        except subprocess.TimeoutExpired:
            log("%s ignored SIGTERM; killing it" % (self.name,))
            self.process.kill()
            self.process.wait(timeout=self.KILL_S)

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

    def output(self) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""


def cprofile_command(directory: str, stem: str) -> list[str]:
    """
    The command that runs twistd under cProfile (L{bench/cprofile_twistd.py}),
    writing C{directory/stem-NS.prof}.
    """
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(os.path.abspath(directory), "%s-%d.prof" % (stem, time.time_ns()))
    return [PYTHON, os.path.join(ROOT, "bench", "cprofile_twistd.py"), path]


def start_py_spy(directory: str | None, pid: int, stem: str, duration: float):
    """
    Sample process C{pid} with py-spy for C{duration} seconds into
    C{directory/stem-NS.txt} (raw stacks); L{None} without a directory.
    """
    if not directory:
        return None
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(os.path.abspath(directory), "%s-%d.txt" % (stem, time.time_ns()))
    return subprocess.Popen(
        [os.path.join(VENV_BIN, "py-spy"), "record", "--pid", str(pid),
         "--duration", str(int(duration)), "--rate", "250", "--format", "raw",
         "--output", path, "--nonblocking"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def finish_py_spy(spy, wait: float = 60.0) -> None:
    """
    Let C{spy} end by itself (at most C{wait} seconds), then SIGINT it
    (it writes what it has), then SIGKILL it.
    """
    if spy is None:
        return
    try:
        spy.wait(timeout=wait)
    except subprocess.TimeoutExpired:
        spy.send_signal(signal.SIGINT)
        try:
            spy.wait(timeout=30)
        except subprocess.TimeoutExpired:
            spy.kill()
            spy.wait(timeout=10)


# -- CPU figures from /proc ----------------------------------------------------------


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
    def connect(cls, port: int, timeout: float = 30.0, host: str = "127.0.0.1") -> "BlockingClient":
        sock = socket.create_connection((host, port), timeout=timeout)
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


# -- the load generator (runs in worker processes) -------------------------------


def _load_worker(pipe, host: str, port: int, token: str, nconns: int, depth: int, tag: str,
                 use_rid: bool, total: int | None) -> None:
    """
    One client process: C{nconns} connections to C{host:port}, each keeping
    C{depth} requests in flight.  Talks to the parent over C{pipe}: sends
    C{"ready"}, receives C{(go, measure_start, measure_end, hard_end)} in
    C{time.monotonic_ns()} units, sends back its results.
    """
    try:
        socks = []
        for _ in range(nconns):
            client = BlockingClient.connect(port, host=host)
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


class Load:
    """
    What L{drive_load} measured: C{results} (one dict per client process
    that reported), C{failures} (the errors of those that did not, when
    tolerated), C{pids} of the client processes, C{sample0}/C{sample1}
    (the caller's C{sample()} at the start and end of the window), the
    machine's and every process's CPU then, and the C{elapsed} seconds
    between the two samples.
    """

    def __init__(self, results: list, failures: list, pids: list, sample0, sample1,
                 system0: dict, system1: dict, procs0: dict, procs1: dict,
                 elapsed: float) -> None:
        self.results, self.failures, self.pids = results, failures, pids
        self.sample0, self.sample1 = sample0, sample1
        self.system0, self.system1 = system0, system1
        self.procs0, self.procs1 = procs0, procs1
        self.elapsed = elapsed

    def per_s(self, before: float, after: float) -> float:
        return (after - before) / self.elapsed

    @property
    def client_cpu_proc(self) -> list[float]:
        """
        CPU seconds of each client process in the window (from /proc).
        """
        return [self.procs1.get(pid, ("", 0.0))[1] - self.procs0.get(pid, ("", 0.0))[1]
                for pid in self.pids]

    @property
    def client_cpu(self) -> float:
        return sum(self.client_cpu_proc) / self.elapsed

    @property
    def busy(self) -> float:
        """
        Machine-wide busy CPU (cores) in the window.
        """
        return self.per_s(self.system0["busy"], self.system1["busy"])

    @property
    def steal(self) -> float:
        return self.per_s(self.system0["steal"], self.system1["steal"])

    def busiest_others(self, servers: set) -> list:
        """
        L{busiest_others} in the window, leaving out this process, the
        client processes and C{servers}.
        """
        mine = {os.getpid()} | set(servers) | set(self.pids)
        return busiest_others(self.procs0, self.procs1, mine, self.elapsed)


def drive_load(host: str, port: int, token: str, conns: int, procs: int, depth: int,
               warmup: float, seconds: float, tag: str, sample, use_rid: bool = True,
               total: int | None = None, fill_limit: float = 3600.0, tolerate: bool = False,
               stamp_tags: bool = False) -> Load:
    """
    Drive C{host:port} from C{procs} client processes sharing C{conns}
    connections, each with C{depth} requests in flight; sample CPU (and
    C{sample()}) at the start and the end of the window [go + warmup, go +
    warmup + seconds].  With C{total}, send that many requests in all (at
    most C{fill_limit} seconds after the window).  With C{tolerate}, a
    client process that fails is counted in C{failures} instead of raising.
    Each process's rids start with C{tag} and its number (and, with
    C{stamp_tags}, C{-} and the time in ns).
    """
    ctx = multiprocessing.get_context("fork")
    procs = max(1, min(procs, conns))
    shares = [conns // procs + (1 if k < conns % procs else 0) for k in range(procs)]
    totals = [None] * procs
    if total is not None:
        totals = [total // procs + (1 if k < total % procs else 0) for k in range(procs)]
    workers = []
    results = []
    failures = []
    try:
        for k, share in enumerate(shares):
            parent, child = ctx.Pipe()
            name = "%s%d" % (tag, k) + ("-%d" % (time.time_ns(),) if stamp_tags else "")
            process = ctx.Process(
                target=_load_worker,
                args=(child, host, port, token, share, depth, name, use_rid, totals[k]),
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
        hard_end = m_end + (int(fill_limit * 1e9) if total is not None else int(10e9))
        for _, pipe in workers:
            pipe.send((go, m_start, m_end, hard_end))
        _sleep_until(m_start)
        sample0, system0, procs0 = sample(), system_cpu(), process_cpu()
        t0 = time.monotonic()
        _sleep_until(m_end)
        sample1, system1, procs1 = sample(), system_cpu(), process_cpu()
        t1 = time.monotonic()
        wait_limit = (hard_end - time.monotonic_ns()) / 1e9 + 30
        for process, pipe in workers:
            if not pipe.poll(max(wait_limit, 30)):
                raise RuntimeError("a client process did not report")
            result = pipe.recv()
            if "error" in result:
                if not tolerate:
                    raise RuntimeError("client process failed: %s" % (result["error"],))
                failures.append(result["error"])
                continue
            results.append(result)
    finally:
        for process, pipe in workers:
            process.join(10)
            if process.is_alive():
                os.kill(process.pid, signal.SIGKILL)
                process.join(10)
            pipe.close()
    return Load(results=results, failures=failures, pids=[p.pid for p, _ in workers],
                sample0=sample0, sample1=sample1, system0=system0, system1=system1,
                procs0=procs0, procs1=procs1, elapsed=(t1 - t0) or 1e-9)


def latency_figures(results: list[dict], window: float) -> dict:
    """
    Throughput and latency of the client processes' C{results} over a
    window of C{window} seconds.
    """
    latencies = array("q")
    for result in results:
        latencies.frombytes(result["latencies"])
    ordered = sorted(latencies)
    completed = sum(r["completed"] for r in results)
    return {
        "sends_per_s": completed / window,
        "completed": completed,
        "errors": sum(r["errors"] for r in results),
        "p50_ms": percentile(ordered, 50) / 1e6,
        "p99_ms": percentile(ordered, 99) / 1e6,
        "p999_ms": percentile(ordered, 99.9) / 1e6,
        "max_ms": (ordered[-1] / 1e6) if ordered else float("nan"),
    }


def percentile(ordered, p: float) -> float:
    if not ordered:
        return float("nan")
    k = min(len(ordered) - 1, max(0, int(round(p / 100.0 * len(ordered) + 0.5)) - 1))
    return ordered[k]


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


def wait_idle(settle: float) -> float:
    """
    Wait (at most C{settle} seconds) until the machine is nearly idle
    (less than 10% of one core busy over one second), so that a run does
    not start while something else (another test suite) is loading it.

    @return: the busy share of one core measured last.
    """
    deadline = time.monotonic() + settle
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
                % (settle, 100 * busy))
            waited = True


def stat_row(rows: list, name: str, stats: dict | None, unit: str, scale: float = 1.0,
             fmt: str = "%.0f") -> None:
    """
    Append C{(name, median, "min - max", unit)} for a L{summary} to
    C{rows}; nothing if it has no median.
    """
    if not stats or stats.get("median") is None:
        return
    rows.append((name, fmt % (stats["median"] * scale),
                 (fmt + " - " + fmt) % (stats["min"] * scale, stats["max"] * scale), unit))


def write_table(out, rows: list) -> None:
    """
    Write C{rows} (from L{stat_row}, or C{(name, text, "", "")} for a row
    of free text) as an aligned table.
    """
    width = max(len(name) for name, *_ in rows) if rows else 10
    out.write("%-*s  %12s  %21s  %s\n" % (width, "measurement", "median", "min - max", "unit"))
    out.write("-" * (width + 48) + "\n")
    for name, median, spread, unit in rows:
        if unit == "" and spread == "":
            out.write("%-*s  %s\n" % (width, name, median))
        else:
            out.write("%-*s  %12s  %21s  %s\n" % (width, name, median, spread, unit))
