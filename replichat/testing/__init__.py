# -*- test-case-name: tests.test_log,tests.test_snapshot -*-
"""
In-memory fakes of replichat's collaborators, for tests.

Each fake implements the same interface as the real thing and is verified
by the same mixin of tests (C{LogContractMixin} in L{tests.test_log},
C{SnapshotStoreContractMixin} in L{tests.test_snapshot}), so a test that
passes against a fake says something about the real implementation.
"""

from zope.interface import implementer

from replichat.entries import CorruptSnapshot
from replichat.interfaces import ILog, ISnapshotStore
from replichat.log import check_continues


@implementer(ILog)
class MemoryLog:
    """
    An L{ILog} in memory, with simulated power loss.

    Like L{replichat.log.SegmentedLog}, C{truncate_after} and C{reset} are
    durable at once (and make the entries they keep durable).  Unlike it,
    C{crash} keeps the compacted base exactly, where a reopened
    L{replichat.log.SegmentedLog} may report a lower one.

    @ivar synced_index: the highest index that survives L{crash}.
    @ivar closed: whether L{close} was called.
    """

    def __init__(self):
        self._base_index = 0
        self._base_epoch = 0
        self._entries = []  # the entries after the base, in order
        self.synced_index = 0
        self.closed = False

    base_index = property(lambda self: self._base_index)
    base_epoch = property(lambda self: self._base_epoch)
    first_index = property(lambda self: self._base_index + 1)
    last_index = property(lambda self: self._base_index + len(self._entries))

    @property
    def last_epoch(self):
        return self._entries[-1].epoch if self._entries else self._base_epoch

    def append(self, entries):
        entries = list(entries)  # a generator would be used up by the check
        check_continues(self.last_index, self.last_epoch, entries)
        self._entries.extend(entries)

    def sync(self):
        self.synced_index = self.last_index

    def epoch_at(self, index):
        if index == self._base_index:
            return self._base_epoch
        if not self._base_index < index <= self.last_index:
            raise IndexError("entry {} is not in the log".format(index))
        return self._entries[index - self._base_index - 1].epoch

    def read(self, start, stop=None, max_bytes=None):
        if start < self.first_index:
            raise IndexError("entry {} is compacted".format(start))
        stop = self.last_index + 1 if stop is None else min(stop, self.last_index + 1)
        result, used = [], 0
        for entry in self._entries[start - self.first_index : max(0, stop - self.first_index)]:
            if max_bytes is not None:
                if result and used + len(entry.data) > max_bytes:
                    break
                used += len(entry.data)
            result.append(entry)
        return result

    def truncate_after(self, index):
        if index < self._base_index:
            raise ValueError("cannot truncate below the base {}".format(self._base_index))
        if index < self.last_index:
            del self._entries[index - self._base_index :]
            self.synced_index = index

    def compact(self, index):
        if index <= self._base_index:
            return
        self._base_epoch = self.epoch_at(index)
        del self._entries[: index - self._base_index]
        self._base_index = index

    def reset(self, index, epoch):
        self._base_index, self._base_epoch = index, epoch
        self._entries = []
        self.synced_index = index

    def close(self):
        self.closed = True

    def crash(self):
        """
        Simulate power loss and a restart: entries appended since the last
        L{sync} are lost.  The log stays usable, as if reopened.
        """
        keep = max(self.synced_index, self._base_index)
        del self._entries[keep - self._base_index :]
        self.synced_index = self.last_index
        self.closed = False


@implementer(ISnapshotStore)
class MemorySnapshotStore:
    """
    An L{ISnapshotStore} in memory that keeps the newest two snapshots.

    @ivar quarantined: the indexes passed to L{quarantine} that it set
        aside, in order.
    """

    def __init__(self):
        self._snapshots = {}  # index -> Snapshot or CorruptSnapshot
        self.quarantined = []

    def save(self, snapshot):
        self._snapshots[snapshot.index] = snapshot
        for index in self.indexes()[2:]:
            del self._snapshots[index]

    def load_all(self):
        for index in self.indexes():
            yield self._snapshots[index]

    def indexes(self):
        return sorted(self._snapshots, reverse=True)

    def quarantine(self, index, suffix=".corrupt"):
        if self._snapshots.pop(index, None) is not None:
            self.quarantined.append(index)

    def corrupt(self, index, reason="corrupted by a test"):
        """
        Make the stored snapshot at C{index} load as a L{CorruptSnapshot}, as
        a damaged file would.
        """
        self._snapshots[index] = CorruptSnapshot("memory:{}".format(index), reason, index=index)
