#!/usr/bin/env python3
"""
The Python cost of one C{send}, without the reactor, sockets or fsync.

    .venv/bin/python bench/bench_inprocess.py [--sends 200000] [--clients 64] [--profile]
        [--source DIR]

Builds one node in memory (as the line-protocol tests do: L{MemoryLog},
L{twisted.internet.task.Clock}, L{StringTransport}), logs C{--clients}
connections in as one sender, then feeds them request lines in rounds: one
100-byte C{send} (with a C{rid}) per connection, then one reactor turn (the
group-commit flush), then the answers are taken from the transports.  What
it reports, microseconds of CPU per acknowledged send, is the floor of
C{server CPU per send} in C{bench_single.py}: the real server adds
C{recv}/C{send}/C{epoll} system calls, Twisted's TCP transport and the
log's C{pwrite} and C{fdatasync}.

C{--profile} runs the rounds under cProfile and prints the functions with
the most own time and the most cumulative time.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _import(source: str) -> None:
    """
    Import replichat from C{source} (default: this repository).
    """
    global evolve, Clock, StringTransport, parse_config, ChatHandler, ClientFactory
    global MemoryMetaStore, Node, PasswordHasher, MemoryLog, MemorySnapshotStore
    sys.path.insert(0, source)
    from attrs import evolve
    from twisted.internet.task import Clock
    from twisted.internet.testing import StringTransport

    from replichat.config import parse_config
    from replichat.handler import ChatHandler
    from replichat.lineproto import ClientFactory
    from replichat.metastore import MemoryMetaStore
    from replichat.node import Node
    from replichat.passwords import PasswordHasher
    from replichat.testing import MemoryLog, MemorySnapshotStore


TEXT = ("replichat benchmark message, exactly one hundred bytes of text: "
        "0123456789abcdefghijklmnopqrstuvwxyz")[:100]


def build(clients: int):
    clock = Clock()
    clock.advance(1_700_000_000)
    config = parse_config({
        "nodes": {1: {"host": "127.0.0.1", "client_port": 7001, "peer_port": 7101}},
        "data_dir": "unused",
    })
    config = evolve(config, limits=evolve(config.limits, idle_timeout=3600.0))
    node = Node(1, MemoryLog(), MemorySnapshotStore(), MemoryMetaStore(), clock,
                snapshot_every=10**12)
    node.start()
    handler = ChatHandler(node, PasswordHasher(n=16), config, config.limits, clock)
    factory = ClientFactory(handler, config.limits, clock)
    conns = []
    for _ in range(clients):
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        conns.append((protocol, transport))

    def call(k, op, **args):
        protocol, transport = conns[k]
        protocol.dataReceived(json.dumps({"id": 0, "op": op, **args}).encode() + b"\n")
        clock.advance(0)
        answer = json.loads(transport.value().split(b"\n")[0])
        transport.clear()
        assert answer["ok"], answer
        return answer["result"]

    call(0, "create_account", username="sender", password="pw")
    call(0, "create_account", username="sink", password="pw")
    token = call(0, "login", username="sender", password="pw")["token"]
    for k in range(1, clients):
        call(k, "resume", token=token)
    return clock, conns


def run(clock, conns, rounds: int, first: int) -> int:
    template = ('{"id":%%d,"op":"send","to":"sink","text":%s,"rid":"r-%%d"}\n'
                % (json.dumps(TEXT),)).encode()
    n = first
    answered = 0
    advance = clock.advance
    for _ in range(rounds):
        for protocol, _ in conns:
            n += 1
            protocol.dataReceived(template % (n, n))
        advance(0)
        for _, transport in conns:
            out = transport.value()
            answered += out.count(b'"ok":true')
            transport.clear()
    return answered


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sends", type=int, default=200_000)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--top", type=int, default=20)
    parser.add_argument("--source", default=ROOT,
                        help="the replichat source tree to run (default: this repository)")
    args = parser.parse_args()
    _import(os.path.abspath(args.source))
    clock, conns = build(args.clients)
    rounds = max(1, args.sends // args.clients)
    run(clock, conns, max(1, rounds // 10), 10**9)  # warm up
    if args.profile:
        profile = cProfile.Profile()
        profile.enable()
    cpu, wall = time.process_time(), time.perf_counter()
    answered = run(clock, conns, rounds, 0)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    if args.profile:
        profile.disable()
    assert answered == rounds * args.clients, answered
    print("%d sends in batches of %d: %.1f us CPU per send (%.0f sends/s on one core)%s"
          % (answered, args.clients, cpu / answered * 1e6, answered / cpu,
             " [under cProfile]" if args.profile else ""))
    if args.profile:
        stats = pstats.Stats(profile).strip_dirs()
        stats.sort_stats("tottime").print_stats(args.top)
        stats.sort_stats("cumulative").print_stats(args.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
