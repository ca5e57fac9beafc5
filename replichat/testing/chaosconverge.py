# -*- test-case-name: tests.test_chaos -*-
"""
The end of a chaos run's final phase: L{converge} waits, over the real
client protocol, until the healed servers agree on their last and commit
index, the index their data directories are then checked at.
"""

from __future__ import annotations

import time

from twisted.internet.task import deferLater

from replichat.testing.chaosconnection import ask


async def converge(reactor, cluster, timeout: float) -> tuple[int | None, dict]:
    """
    Wait until every server's own row of its C{cluster} answer shows the
    same last index and commit index, equal to each other.

    @return: that index (L{None} if C{timeout} seconds passed first), and
        the last C{(last index, commit index)} seen of each server (L{None}
        for one that did not answer).
    """
    deadline = time.time() + timeout
    rows: dict = {}
    while time.time() < deadline:
        rows = {}
        for node, server in cluster.servers.items():
            answer = await ask(reactor, server, "cluster")
            row = None
            if answer is not None and answer.get("ok"):
                row = next((r for r in answer["result"]["nodes"] if r["id"] == node), None)
            rows[node] = None if row is None else (row["last_index"], row["commit_index"])
        pairs = set(rows.values())
        if len(pairs) == 1:
            (pair,) = pairs
            if pair is not None and pair[0] == pair[1]:
                return pair[0], rows
        await deferLater(reactor, 0.1)
    return None, rows
