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
import functools
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from benchload import (  # noqa: E402  (bench/benchload.py: what bench_cluster.py shares)
    PYTHON,
    ROOT,
    TEXT,
    TWISTD,
    SENDER,
    SINK,
    PASSWORD,
    BlockingClient,
    TwistdProcess,
    cprofile_command,
    drive_load,
    finish_py_spy,
    latency_figures,
    log,
    machine,
    start_py_spy,
    stat_row,
    summary,
    wait_idle,
    write_table,
)

#: The source tree the server runs from (PYTHONPATH); see --rev and --source.
SOURCE = ROOT
RECOVERED = re.compile(r"recovered (\d+) log entries after snapshot (\d+) in ([\d.]+)s")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- the server under test ------------------------------------------------------


class Server(TwistdProcess):
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

    def spawn(self) -> None:
        self.spawn_twistd(self.config_path, 1, self.workdir, SOURCE)

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
                client = BlockingClient.connect(self.port, timeout=5)
            except OSError:
                time.sleep(0.002)
                continue
            try:
                answer = client.call("hello")
            finally:
                client.close()
            if answer.get("ok"):
                return time.monotonic() - self.spawned_at
            time.sleep(0.002)
        raise RuntimeError("server did not serve within %ss:\n%s" % (timeout, self.output()[-3000:]))

    def start(self) -> float:
        self.spawn()
        return self.wait_serving()

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


# -- load ------------------------------------------------------------------------


def run_load(server: Server, token: str, clients: int, procs: int, depth: int,
             warmup: float, seconds: float, use_rid: bool, total: int | None = None,
             tag: str = "load") -> dict:
    """
    Drive C{server} from C{procs} worker processes sharing C{clients}
    connections; return throughput, latency and CPU figures for the window
    [go + warmup, go + warmup + seconds].
    """
    load = drive_load("127.0.0.1", server.port, token, clients, procs, depth, warmup, seconds,
                      tag, server.cpu_seconds, use_rid=use_rid, total=total, fill_limit=3600)
    results, elapsed = load.results, load.elapsed
    window = seconds or 1e-9
    result = latency_figures(results, window)
    completed = result["completed"]
    client_cpu_proc = load.client_cpu_proc
    server_user = load.per_s(load.sample0[0], load.sample1[0])
    server_system = load.per_s(load.sample0[1], load.sample1[1])
    server_cpu = server_user + server_system
    result.update({
        # Measured from /proc like the server's; the workers' own getrusage
        # figures agree within a few percent.
        "client_cpu": load.client_cpu,
        "client_cpu_max_proc": max(client_cpu_proc) / elapsed,
        "client_cpu_rusage": sum(r["cpu"] / window for r in results),
        "server_cpu": server_cpu,
        "server_system_cpu": server_system,
        "server_us_per_send": server_cpu * 1e6 / (completed / window) if completed else float("nan"),
        # Everything else that ran: other processes, kernel threads (the
        # journal, softirq for loopback TCP) and interrupts; steal is CPU
        # the hypervisor gave to other guests.
        "other_cpu": max(0.0, load.busy - server_cpu - load.client_cpu),
        "steal_cpu": load.steal,
        "busiest_others": load.busiest_others({server.pid}),
        "max_message": max(r["max_message"] for r in results),
        "unanswered": sum(r.get("unanswered", 0) for r in results),
    })
    return result


# -- measurements -------------------------------------------------------------------


def measure_throughput(args, clients: int, procs: int, label: str) -> dict:
    idle = wait_idle(args.settle)
    workdir = tempfile.mkdtemp(prefix="replichat-bench-")
    server = Server(workdir, os.path.join(workdir, "node-1"), args.snapshot_every,
                    prefix=cprofile_prefix(args, label))
    spy = None
    try:
        server.start()
        token = setup_accounts(server.port)
        spy = start_py_spy(args.py_spy, server.pid, label, args.warmup + args.seconds)
        result = run_load(server, token, clients, procs, 1, args.warmup, args.seconds,
                          args.rid, tag=label)
        finish_py_spy(spy)
        spy = None
        result["snapshots_in_run"] = len(re.findall(r"snapshot at \d+ written", server.output()))
        result["busy_before"] = idle
        return result
    finally:
        finish_py_spy(spy, wait=0)
        server.stop()
        if args.keep:
            log("kept %s" % (workdir,))
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def cprofile_prefix(args, label: str):
    return cprofile_command(args.cprofile, label) if args.cprofile else None


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
    wait_idle(args.settle)
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
                wait_idle(args.settle)
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
    row = functools.partial(stat_row, rows)

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
    write_table(out, rows)
    if "restart" in r:
        x = r["restart"]
        out.write("\nrestart data: %s, %.0f MiB on disk (snapshots %.0f MiB), %d messages, filled in %.0f s\n"
                  % (x["data"], x["data_bytes"] / 2**20, x["snapshot_bytes"] / 2**20,
                     x["fill"]["messages"], x["fill"].get("fill_seconds", 0)))
    out.flush()


if __name__ == "__main__":
    sys.exit(main())
