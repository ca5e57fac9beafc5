# -*- test-case-name: tests.test_node -*-
"""
Applying committed entries to the state machine, answering the leader's
own proposals and pushing committed messages to the observers.
"""

from __future__ import annotations

from typing import Callable

from twisted.internet.defer import Deferred

from replichat.nodecommands import REPLAY_CHUNK_BYTES, decode_command
from replichat.state import Outcome


class _Applying:
    """
    The applying of L{replichat.node.Node}.

    Advances C{commit_index} and C{_bytes_since_snapshot} as it applies to
    C{state}, takes the leader's proposals from C{_waiting} and calls the
    C{_push_observers}; a committed C{config} entry goes on in
    L{replichat.nodemembership._Membership._membership_committed}.
    """

    def _apply_through(self, index: int) -> int:
        """
        Apply the committed entries up to C{index}; answer and push.
        """
        applied = 0
        waiting = self._waiting
        while self.commit_index < index:
            start = self.commit_index + 1
            if start in waiting:
                # This leader's own proposal: the command is at hand.
                command, d, size = waiting.pop(start)
                self._apply_one(start, self.epoch, command, size, d)
                applied += 1
                continue
            for entry in self.disk_log.read(start, index + 1, max_bytes=REPLAY_CHUNK_BYTES):
                if entry.index in waiting:
                    break
                self._apply_one(
                    entry.index, entry.epoch, decode_command(entry.data), len(entry.data), None
                )
                applied += 1
        return applied

    def _apply_one(
        self, index: int, epoch: int, command: dict, size: int, d: Deferred | None
    ) -> None:
        outcome = self.state.apply(index, command, epoch)
        self.commit_index = index
        self._bytes_since_snapshot += size
        self._publish(outcome)
        if d is not None:
            d.callback(outcome)
        if command["op"] == "config":
            self._membership_committed(index)

    def _publish(self, outcome: Outcome) -> None:
        for uid, message in outcome.pushes:
            for observer in self._push_observers:
                try:
                    observer(uid, message)
                except Exception:
                    self.log.failure("push observer failed")

    def add_push_observer(self, observer: Callable[[int, dict], None]) -> None:
        """
        Call C{observer(uid, message)} for every committed message, after it
        is durable.
        """
        self._push_observers.append(observer)
