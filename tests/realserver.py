"""
Running real C{twistd replichat} processes on 127.0.0.1 for the tests that
only the real thing can show: start-up, SIGKILL, files on disk.

Everything is bounded: each wait has a deadline, each process is stopped by
its PID in the test's cleanup.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")


def free_port() -> int:
    """
    A TCP port on 127.0.0.1 that nothing listens on right now.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LineClient:
    """
    A blocking JSON-lines client, with a timeout on every read.
    """

    def __init__(self, port: int, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.file = self.sock.makefile("rwb")
        self.next_id = 0
        self.events: list[dict] = []

    def call(self, op: str, **args: object) -> dict:
        self.next_id += 1
        self.file.write(json.dumps({"id": self.next_id, "op": op, **args}).encode() + b"\n")
        self.file.flush()
        while True:
            line = self.file.readline()
            if not line:
                raise ConnectionError("server closed the connection")
            answer = json.loads(line)
            if "event" in answer:
                self.events.append(answer)
            elif answer.get("id") == self.next_id:
                return answer

    def ok(self, op: str, **args: object) -> dict:
        answer = self.call(op, **args)
        if not answer["ok"]:
            raise AssertionError("%s failed: %r" % (op, answer))
        return answer["result"]

    def close(self) -> None:
        self.file.close()
        self.sock.close()


class RealServer:
    """
    One C{twistd -n replichat} process with its own config and data dir.
    """

    def __init__(self, directory: str, node_id: int = 1, **extra: object) -> None:
        self.directory = directory = os.path.abspath(directory)
        os.makedirs(directory, exist_ok=True)
        self.node_id = node_id
        self.port = free_port()
        self.config_path = os.path.join(directory, "replichat.yaml")
        self.data_dir = os.path.join(directory, "node-%d" % (node_id,))
        self.log_path = os.path.join(directory, "twistd.log")
        document = {
            "nodes": {node_id: {"host": "127.0.0.1", "client_port": self.port,
                                "peer_port": free_port()}},
            "data_dir": os.path.join(directory, "node-{node}"),
            **extra,
        }
        with open(self.config_path, "w") as f:
            yaml.safe_dump(document, f)
        self.process: subprocess.Popen | None = None

    def spawn(self, env: dict | None = None) -> subprocess.Popen:
        environment = dict(os.environ, PYTHONPATH=ROOT, **(env or {}))
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [TWISTD, "-n", "--pidfile=", "replichat", "--config", self.config_path,
             "--node", str(self.node_id)],
            stdout=log, stderr=subprocess.STDOUT, env=environment, cwd=self.directory,
        )
        log.close()
        return self.process

    def start(self, timeout: float = 20.0, env: dict | None = None) -> "RealServer":
        """
        Start and wait until the client port answers C{hello}.
        """
        self.spawn(env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError("server exited with %s:\n%s"
                                     % (self.process.returncode, self.output()))
            try:
                client = LineClient(self.port, timeout=2)
            except OSError:
                time.sleep(0.05)
                continue
            try:
                client.ok("hello")
            finally:
                client.close()
            return self
        self.stop()
        raise AssertionError("server did not start within %ss:\n%s" % (timeout, self.output()))

    def client(self) -> LineClient:
        return LineClient(self.port)

    def kill(self, sig: int = signal.SIGKILL) -> int:
        """
        Signal the process and wait (bounded) for it to exit.
        """
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(sig)
        try:
            return self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(timeout=20)

    def stop(self) -> None:
        self.kill(signal.SIGKILL)

    def wait_exit(self, timeout: float = 20.0) -> int:
        return self.process.wait(timeout=timeout)

    def output(self) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def files(self, sub: str) -> list[str]:
        path = os.path.join(self.data_dir, sub)
        return sorted(os.path.join(path, name) for name in os.listdir(path))
