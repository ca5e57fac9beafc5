# -*- test-case-name: tests.test_fsutil -*-
"""
Tests for L{replichat.fsutil}.
"""

import os

from twisted.trial.unittest import SynchronousTestCase

from replichat.fsutil import (
    DataDirLock,
    DataDirLocked,
    fsync_directory,
    make_directory,
    remove_temp_files,
    write_all,
    write_atomically,
)


class WriteAtomicallyTests(SynchronousTestCase):
    """
    L{write_atomically} replaces a file whole, durably.
    """

    def setUp(self):
        self.directory = self.mktemp()
        os.mkdir(self.directory)
        self.path = os.path.join(self.directory, "state")

    def read(self):
        with open(self.path, "rb") as f:
            return f.read()

    def test_create_and_replace(self):
        """
        The file is created, then replaced, and no temporary file remains.
        """
        write_atomically(self.path, b"first")
        self.assertEqual(self.read(), b"first")
        write_atomically(self.path, b"second, longer")
        self.assertEqual(self.read(), b"second, longer")
        self.assertEqual(os.listdir(self.directory), ["state"])

    def test_syncs(self):
        """
        The temporary file and then the directory are fsynced.
        """
        synced = []
        real = os.fsync
        self.patch(os, "fsync", lambda fd: synced.append(os.readlink("/proc/self/fd/%d" % (fd,))) or real(fd))
        write_atomically(self.path, b"data")
        self.assertEqual(len(synced), 2)
        self.assertTrue(os.path.basename(synced[0]).endswith(".tmp"))
        self.assertEqual(synced[1], os.path.abspath(self.directory))

    def test_failure_keeps_old(self):
        """
        If writing fails, the old content stays and the temporary file is
        removed.
        """
        write_atomically(self.path, b"old")

        def fail(fd):
            raise OSError(28, "ENOSPC injected")

        self.patch(os, "fsync", fail)
        self.assertRaises(OSError, write_atomically, self.path, b"new")
        self.assertEqual((self.read(), os.listdir(self.directory)), (b"old", ["state"]))

    def test_short_writes(self):
        """
        L{write_all} goes on after short writes, with or without an offset.
        """
        real_write, real_pwrite = os.write, os.pwrite
        self.patch(os, "write", lambda fd, data: real_write(fd, data[:3]))
        self.patch(os, "pwrite", lambda fd, data, offset: real_pwrite(fd, data[:3], offset))
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT)
        self.addCleanup(os.close, fd)
        write_all(fd, b"0123456789")
        write_all(fd, b"abcdefgh", 4)
        self.assertEqual(self.read(), b"0123abcdefgh")

    def test_remove_temp_files(self):
        """
        L{remove_temp_files} removes what L{write_atomically} may leave
        after a crash, and nothing else.
        """
        for name in (".state.x1y2.tmp", "state", "other.tmp", ".hidden"):
            with open(os.path.join(self.directory, name), "wb"):
                pass
        self.assertEqual(remove_temp_files(self.directory), [".state.x1y2.tmp"])
        self.assertEqual(sorted(os.listdir(self.directory)), [".hidden", "other.tmp", "state"])


class DirectoryTests(SynchronousTestCase):
    """
    L{make_directory} and L{fsync_directory}.
    """

    def test_make_directory(self):
        """
        L{make_directory} creates missing parents and says whether it
        created anything.
        """
        path = os.path.join(self.mktemp(), "a", "b")
        self.assertEqual((make_directory(path), make_directory(path)), (True, False))
        self.assertTrue(os.path.isdir(path))

    def test_fsync_missing_directory(self):
        """
        Syncing a directory that does not exist is an error, not a no-op.
        """
        self.assertRaises(FileNotFoundError, fsync_directory, self.mktemp())


class DataDirLockTests(SynchronousTestCase):
    """
    L{DataDirLock} keeps two servers out of one data directory.
    """

    def setUp(self):
        self.directory = self.mktemp()
        os.mkdir(self.directory)

    def test_second_holder_refused(self):
        """
        While one holder has the lock, another (even in the same process,
        through its own open file) is refused with the holder's pid; after
        release it may take it.
        """
        first, second = DataDirLock(self.directory), DataDirLock(self.directory)
        self.addCleanup(first.release)
        self.addCleanup(second.release)
        first.acquire()
        error = self.assertRaises(DataDirLocked, second.acquire)
        self.assertEqual((error.pid, error.path), (os.getpid(), first.path))
        self.assertIn("must never share", str(error))
        self.assertEqual((first.held, second.held), (True, False))
        first.release()
        first.release()
        second.acquire()
        self.assertTrue(second.held)
        self.assertRaises(DataDirLocked, first.acquire)

    def test_pid_recorded(self):
        """
        The lock file names the holder's process.
        """
        lock = DataDirLock(self.directory)
        self.addCleanup(lock.release)
        lock.acquire()
        with open(os.path.join(self.directory, "lock")) as f:
            self.assertEqual(f.read(), "%d\n" % (os.getpid(),))
