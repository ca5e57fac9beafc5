# -*- test-case-name: tests.test_history -*-
"""
What the servers kept, and the replay of their committed logs.

A L{Replica} is one server at the end of a run: its committed entries
(after the snapshot its log was compacted to, if it was) and its state.

L{_Replay} merges the committed entries of every replica, reporting
L{DIVERGED} where two committed different entries at one index; finds the
lowest point from which the merged log is complete (the start, or a
snapshot some replica holds); and applies it to a fresh
L{replichat.state.ChatState}, recording each entry as L{Applied} and
reporting L{STATE} for a snapshot that is not the replay's state at its
index.  L{replichat.testing.checker} holds the replay against the replicas'
states and the clients' history.
"""

from __future__ import annotations

import os
from typing import Any

from attrs import field, frozen

from replichat.entries import CorruptSnapshot, Entry, Snapshot
from replichat.jsonwire import DECODER
from replichat.state import ChatState, resolved
from replichat.testing.checkerreport import DIVERGED, STATE, Anomaly, Report

# -- what the servers kept ---------------------------------------------------------------


@frozen
class Replica:
    """
    What one server holds at the end of a run.

    @ivar commit_index: the highest index it knows committed.
    @ivar entries: the committed entries it still holds (after its
        compacted base), in index order.
    @ivar base: the snapshot its log starts from, if it was compacted.
    @ivar state: its state machine, if it has one to compare.
    """

    node_id: int
    commit_index: int
    entries: tuple = ()
    base: Snapshot | None = None
    state: ChatState | None = field(default=None, eq=False)

    @classmethod
    def of_storage(cls, node_id, disk_log, snapshots, commit_index, state=None) -> Replica:
        """
        Read a server's committed entries from its L{replichat.interfaces.ILog}
        and the snapshot its log starts from out of its snapshot store.
        """
        stop = min(commit_index, disk_log.last_index) + 1
        entries = ()
        if stop > disk_log.first_index:
            entries = tuple(disk_log.read(disk_log.first_index, stop))
        base = None
        if disk_log.base_index > 0:
            intact = [
                s for s in snapshots.load_all()
                if not isinstance(s, CorruptSnapshot) and s.index >= disk_log.base_index
            ]
            if intact:
                base = min(intact, key=lambda s: s.index)
        return cls(node_id, commit_index, entries, base, state)

    @classmethod
    def of_node(cls, node) -> Replica:
        """
        A running or stopped L{replichat.node.Node}'s committed log and state.
        """
        return cls.of_storage(
            node.node_id, node.disk_log, node.snapshots, node.commit_index, node.state
        )

    @classmethod
    def of_data_dir(cls, node_id: int, data_dir: str, commit_index: int | None = None) -> Replica:
        """
        A stopped server's data directory.  Opening the log recovers it as a
        start-up would (a torn tail is cut).

        @param commit_index: how far its log is known committed; by default
            all of it, which is right only after the cluster converged.
        """
        from replichat.log import SegmentedLog
        from replichat.snapshot import FileSnapshotStore

        disk_log = SegmentedLog(os.path.join(data_dir, "log"))
        try:
            snapshots = FileSnapshotStore(os.path.join(data_dir, "snapshots"))
            last = disk_log.last_index if commit_index is None else commit_index
            return cls.of_storage(node_id, disk_log, snapshots, last)
        finally:
            disk_log.close()

# -- replaying the committed log ---------------------------------------------------------


@frozen
class Applied:
    """
    One committed entry as the replay applied it.
    """

    index: int
    command: dict  # as committed
    result: Any
    error: str | None
    duplicate: bool
    who_name: str | None  # the name of the account C{who} named, before
    created: bool = False  # a send or create_account that made a new id
    # The command with the ids it names (who, to, ids) resolved through the
    # aliases known when it was applied, as the state machine applied it.
    resolved: dict = field(kw_only=True)

    @property
    def who(self) -> int | None:
        """
        The account the command was applied to, after alias resolution.
        """
        return self.resolved.get("who")

    @property
    def to(self) -> int | None:
        """
        A send's recipient, after alias resolution.
        """
        return self.resolved.get("to")

    @property
    def ids(self) -> list:
        """
        A C{delete_messages}' ids, after alias resolution.
        """
        return list(self.resolved.get("ids") or ())

    @property
    def merged(self) -> bool:
        """
        Whether this is a command re-proposed after a partition healed
        (L{replichat.merge}), whose answer may differ from the first one's.
        """
        return bool(self.command.get("merged"))

    @property
    def effect(self) -> bool:
        """
        Whether applying it changed something a client asked for.
        """
        if self.duplicate or self.error is not None:
            return False
        if self.command["op"] in ("send", "create_account"):
            return self.created
        return True


class _Replay:
    """
    The committed log merged from every replica, applied from the lowest
    point where it is complete.
    """

    def __init__(self, replicas: list[Replica], report: Report) -> None:
        self.report = report
        self.entries: dict[int, Entry] = {}
        self.applied: list[Applied] = []
        self.start = 0
        self.base_state: ChatState | None = None
        self.state: ChatState | None = None
        self.digests: dict[int, str] = {}
        self.complete = False
        self._merge(replicas)
        self._run(replicas)

    def _merge(self, replicas: list[Replica]) -> None:
        holder: dict[int, int] = {}
        for replica in replicas:
            previous = None
            for entry in replica.entries:
                if entry.index > replica.commit_index:
                    break
                if previous is not None and entry.index != previous + 1:
                    self.report.notes.append(
                        "node %d's log skips from %d to %d"
                        % (replica.node_id, previous, entry.index)
                    )
                previous = entry.index
                known = self.entries.get(entry.index)
                if known is None:
                    self.entries[entry.index] = entry
                    holder[entry.index] = replica.node_id
                elif (known.epoch, known.data) != (entry.epoch, entry.data):
                    self.report.anomalies.append(
                        Anomaly(
                            DIVERGED,
                            "nodes %d and %d committed different entries at index %d "
                            "(epochs %d and %d): %s / %s"
                            % (holder[entry.index], replica.node_id, entry.index, known.epoch,
                               entry.epoch, _short(known.data), _short(entry.data)),
                            indexes=(entry.index,),
                            nodes=(holder[entry.index], replica.node_id),
                        )
                    )

    def _starts(self, replicas: list[Replica]):
        """
        Where a replay can begin: C{(index, state)}, lowest first.
        """
        if 1 in self.entries or all(r.commit_index == 0 for r in replicas):
            yield 0, None
        bases = {r.base.index: r.base for r in replicas if r.base is not None}
        for index in sorted(bases):
            yield index, bases[index]

    def _run(self, replicas: list[Replica]) -> None:
        top = max([r.commit_index for r in replicas] + [max(self.entries, default=0)])
        wanted = {r.state.applied_index for r in replicas if r.state is not None}
        for start, snapshot in self._starts(replicas):
            if all(i in self.entries for i in range(start + 1, top + 1)):
                break
        else:
            missing = [i for i in range(1, top + 1) if i not in self.entries]
            self.report.notes.append(
                "no replica holds committed entries %s and no snapshot covers them: "
                "only the logs' agreement was checked" % (_ranges(missing),)
            )
            return
        self.complete = True
        self.start = start
        if snapshot is None:
            state = ChatState()
        else:
            state = ChatState.from_snapshot(snapshot.data)
            self.base_state = ChatState.from_snapshot(snapshot.data)
        based: dict[int, list[Replica]] = {}  # snapshot index -> the replicas based on it
        for replica in replicas:
            if replica.base is not None:
                based.setdefault(replica.base.index, []).append(replica)
        self._check_snapshots(based, state, start)
        if start in wanted:
            self.digests[start] = state.digest()
        for index in range(start + 1, top + 1):
            command = DECODER.decode(self.entries[index].data.decode("utf-8"))
            resolved = _resolved(state.aliases, command)
            who = resolved.get("who")
            account = state.accounts.get(who) if who is not None else None
            sizes = len(state.messages), len(state.accounts)
            outcome = state.apply(index, command, self.entries[index].epoch)
            self.applied.append(
                Applied(
                    index,
                    command,
                    outcome.result,
                    None if outcome.error is None else outcome.error.code,
                    outcome.duplicate,
                    None if account is None else account.username,
                    created=len(state.messages) > sizes[0] or len(state.accounts) > sizes[1],
                    resolved=resolved,
                )
            )
            if index in wanted:
                self.digests[index] = state.digest()
            self._check_snapshots(based, state, index)
        self.state = state

    def _check_snapshots(
        self, based: dict[int, list[Replica]], state: ChatState, index: int
    ) -> None:
        """
        Report every replica whose snapshot at C{index} is not C{state}.

        @param based: the replicas by the index of the snapshot their log
            starts from.
        """
        holders = based.get(index)
        if not holders:
            return
        data = state.to_snapshot()
        for replica in holders:
            if replica.base.data != data:
                self.report.anomalies.append(
                    Anomaly(
                        STATE,
                        "node %d's snapshot at index %d is not the replay of the committed log"
                        % (replica.node_id, index),
                        indexes=(index,),
                        nodes=(replica.node_id,),
                    )
                )


def _resolved(aliases: dict, command: dict) -> dict:
    """
    C{command} with the ids it names resolved through C{aliases}, as
    L{ChatState.apply} resolves them.
    """
    return resolved(aliases, command) if aliases else command


def _short(data: bytes, limit: int = 120) -> str:
    text = data.decode("utf-8", "replace")
    return text if len(text) <= limit else text[:limit] + "..."


def _ranges(numbers: list[int]) -> str:
    spans: list[list[int]] = []
    for n in numbers:
        if spans and spans[-1][1] == n - 1:
            spans[-1][1] = n
        else:
            spans.append([n, n])
    return ", ".join(str(a) if a == b else "%d-%d" % (a, b) for a, b in spans[:10])
