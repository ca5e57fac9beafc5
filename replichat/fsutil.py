# -*- test-case-name: tests.test_fsutil -*-
"""
Small durable-file helpers shared by the log, the snapshot store and the
server's start-up.

A write is durable only once the file has been fsynced, and a file created,
renamed or removed is durable only once its I{directory} has been fsynced as
well.  L{twisted.python.filepath.FilePath.setContent} renames without any
fsync, so replichat uses L{write_atomically} instead.

Everything here is plain synchronous file I/O, so it also works in a forked
child process that has no reactor and no threads.
"""

import errno
import fcntl
import os
import tempfile

TEMP_SUFFIX = ".tmp"
"""
Every temporary file made by L{write_atomically} is called
C{.<final name>.<random>.tmp}: hidden, and never ending in a name that a store
would take for one of its own files.
"""


def fsync_directory(path):
    """
    Make the creations, renames and removals of entries in a directory
    durable.

    @param path: the directory.
    @raise OSError: if it cannot be opened or synced.
    """
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_directory(path):
    """
    Create C{path} (and missing parents) if it does not exist, durably: the
    parent directory is fsynced so that the new name survives a crash.

    @return: L{True} if the directory was created.
    """
    if os.path.isdir(path):
        return False
    os.makedirs(path, exist_ok=True)
    fsync_directory(os.path.dirname(os.path.abspath(path)))
    return True


def write_all(fd, data, offset=None):
    """
    Write every byte of C{data}, retrying short writes.

    @param offset: where to write with C{os.pwrite}; L{None} to write at the
        file's current position.
    """
    view = memoryview(data)
    while view:
        if offset is None:
            written = os.write(fd, view)
        else:
            written = os.pwrite(fd, view, offset)
            offset += written
        view = view[written:]


def write_atomically(path, data):
    """
    Replace the file at C{path} with C{data}, so that after a crash it holds
    either the old content or all of the new one.

    The data goes to a temporary file in the same directory (a rename is only
    atomic within one file system), which is fsynced, renamed over C{path},
    and then the directory is fsynced so that the rename itself is durable.

    @param path: the file to replace or create.
    @type data: L{bytes}
    @raise OSError: if any step fails; the temporary file is then removed
        and C{path} is left as it was.
    """
    directory, name = os.path.split(os.path.abspath(path))
    fd, temp = tempfile.mkstemp(dir=directory, prefix="." + name + ".", suffix=TEMP_SUFFIX)
    try:
        try:
            write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, path)
    except BaseException:
        try:
            os.unlink(temp)
        except OSError:
            pass
        raise
    fsync_directory(directory)


def remove_temp_files(directory):
    """
    Remove the temporary files that a crash in the middle of
    L{write_atomically} may have left in C{directory}.

    @return: the names removed.
    @rtype: L{list} of L{str}
    """
    removed = [
        name
        for name in sorted(os.listdir(directory))
        if name.startswith(".") and name.endswith(TEMP_SUFFIX)
    ]
    for name in removed:
        os.unlink(os.path.join(directory, name))
    if removed:
        fsync_directory(directory)
    return removed


class DataDirLocked(Exception):
    """
    Another process holds the lock on a data directory.

    @ivar path: the lock file.
    @ivar pid: the process id recorded in it, or L{None} if unreadable.
    """

    def __init__(self, path, pid):
        holder = "process {}".format(pid) if pid is not None else "another process"
        super().__init__(
            "{} is locked by {}: two replichat servers must never share a "
            "data directory".format(path, holder)
        )
        self.path = path
        self.pid = pid


class DataDirLock:
    """
    An exclusive C{flock} on C{<directory>/lock}, held for as long as a server
    uses the directory.

    The kernel drops the lock when the holder dies, so a crash never leaves a
    stale lock behind.  C{flock} locks belong to an open file description, so
    even a second L{DataDirLock} in the same process is refused.

    @ivar path: the lock file.
    """

    def __init__(self, directory):
        self.path = os.path.join(directory, "lock")
        self._fd = None

    @property
    def held(self):
        """
        Whether this object holds the lock.
        """
        return self._fd is not None

    def acquire(self):
        """
        Take the lock, without waiting, and record our process id in the file
        for the operator's benefit.

        @raise DataDirLocked: if another holder has it.
        @raise OSError: if the lock file cannot be opened.
        """
        if self._fd is not None:
            return
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            pid = _read_pid(fd)
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise DataDirLocked(self.path, pid) from None
            raise
        os.ftruncate(fd, 0)
        write_all(fd, "{}\n".format(os.getpid()).encode("ascii"), 0)
        self._fd = fd

    def release(self):
        """
        Drop the lock (idempotent).  The file stays: removing it would race
        with a process that has just opened it.
        """
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)


def _read_pid(fd):
    """
    The process id written in a lock file, or L{None}.
    """
    try:
        return int(os.pread(fd, 32, 0).decode("ascii").strip())
    except (OSError, ValueError):
        return None
