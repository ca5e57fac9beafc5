# -*- test-case-name: tests.test_log -*-
"""
The interfaces between replichat's core and its storage.

Each has a real, on-disk implementation and an in-memory fake in
L{replichat.testing}; one mixin of tests runs against both, so the fake the
cluster tests rely on is verified against the real thing.
"""

from zope.interface import Attribute, Interface


class ILog(Interface):
    """
    An append-only log of L{replichat.entries.Entry}, indexed from 1.

    Appending is split from syncing so that a caller can group many entries
    (a whole batch of client requests) under one fsync.  Entries before
    C{first_index} have been compacted into a snapshot; C{base_index} and
    C{base_epoch} describe the last entry so compacted (0, 0 for none).
    """

    base_index = Attribute("Index of the last compacted entry (0 if none).")
    base_epoch = Attribute("Epoch of the last compacted entry (0 if none).")
    first_index = Attribute("base_index + 1: the first index the log can hold.")
    last_index = Attribute("Index of the last appended entry, or base_index.")
    last_epoch = Attribute("Epoch of the last appended entry, or base_epoch.")
    synced_index = Attribute("Highest index known durable (fsynced).")

    def append(entries):
        """
        Append entries after C{last_index}, buffered but not yet durable.

        @param entries: a sequence of L{Entry} whose indexes continue
            C{last_index} without a gap.
        @raise ValueError: if the indexes do not continue the log.
        """

    def sync():
        """
        Make every appended entry durable (write out and fsync).

        Afterwards C{synced_index == last_index}.
        @raise OSError: if the disk fails; the caller must stop, since a
            failed fsync cannot be retried safely.
        """

    def epoch_at(index):
        """
        The epoch of the entry at C{index}; C{base_epoch} for C{base_index}.

        @raise IndexError: if C{index} is neither held nor C{base_index}.
        """

    def read(start, stop=None, max_bytes=None):
        """
        Entries from C{start} up to but not including C{stop} (default: to
        the end), at least one entry if any, and no more than about
        C{max_bytes} of entry data when it is given.

        @raise IndexError: if C{start} is below C{first_index}.
        @rtype: L{list} of L{Entry}
        """

    def truncate_after(index):
        """
        Durably drop every entry after C{index} (a divergent suffix).

        @raise ValueError: if C{index} is below C{base_index}.
        """

    def compact(index):
        """
        Forget entries up to and including C{index}, which a durable
        snapshot now covers.  Storage may keep some of them (whole segments
        are dropped), but C{first_index} becomes C{index + 1}.
        """

    def reset(index, epoch):
        """
        Durably drop every entry and restart the log after (C{index},
        C{epoch}), as after installing a snapshot received from a peer.
        """

    def close():
        """
        Release files.  Unsynced entries may be lost, as in a crash.
        """


class ISnapshotStore(Interface):
    """
    Durable snapshots of the state machine, each covering a log prefix.
    """

    def save(snapshot):
        """
        Atomically and durably store a L{replichat.entries.Snapshot}: write a
        temporary file, fsync, rename, fsync the directory.  Older snapshots
        beyond the newest two are removed.
        """

    def load_all():
        """
        Every stored snapshot, newest first, each either a
        L{replichat.entries.Snapshot} or a L{replichat.entries.CorruptSnapshot}
        naming the file and what is wrong with it.

        @rtype: iterator
        """

    def indexes():
        """
        The indexes of the stored snapshots, newest first, without reading
        or verifying them.
        """

    def quarantine(index, suffix=".corrupt"):
        """
        Durably set aside the snapshot at C{index}, found corrupt (or, with
        C{suffix} C{".diverged"}, cut by a healed partition): it is no
        longer listed or loaded, and no longer counts as one of the newest
        two that L{save} keeps, so the one to fall back on is an intact one.
        A store on disk keeps the damaged file for the operator.  Does
        nothing if no snapshot at C{index} is stored.
        """
