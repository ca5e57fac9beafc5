"""
Tests for L{replichat.sdnotify}, against real C{AF_UNIX} datagram sockets.
"""

import os
import shutil
import socket
import sys
import tempfile

from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from replichat.sdnotify import notify


class NotifyTests(SynchronousTestCase):
    """
    Tests for L{notify}.
    """

    def bound_socket(self, address):
        """
        Bind a datagram socket to C{address} for the length of the test.

        @param address: a path, or a name starting with NUL (abstract).
        @return: the socket, with a timeout so that a missing datagram
            fails the test instead of hanging it.
        """
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.addCleanup(sock.close)
        sock.bind(address)
        sock.settimeout(5)
        return sock

    def short_tempdir(self):
        """
        A fresh directory under the system's temporary directory.

        Not C{self.mktemp()}: socket paths are limited to about 100 bytes and
        trial's temporary paths under C{_trial_temp/} can be longer.
        """
        path = tempfile.mkdtemp(prefix="rc-sdn-")
        self.addCleanup(shutil.rmtree, path, True)
        return path

    def test_ready_is_sent(self):
        """
        With C{NOTIFY_SOCKET} naming a socket file, L{notify} sends exactly
        the state's bytes as one datagram and returns L{True}.
        """
        path = os.path.join(self.short_tempdir(), "notify")
        sock = self.bound_socket(path)
        self.assertTrue(notify("READY=1", {"NOTIFY_SOCKET": path}))
        self.assertEqual(sock.recv(4096), b"READY=1")

    def test_utf8_and_several_assignments(self):
        """
        A multi-line state goes out as one UTF-8 datagram.
        """
        path = os.path.join(self.short_tempdir(), "notify")
        sock = self.bound_socket(path)
        state = "STATUS=leader \N{EM DASH} epoch 3\nREADY=1"
        self.assertTrue(notify(state, {"NOTIFY_SOCKET": path}))
        self.assertEqual(sock.recv(4096), state.encode("utf-8"))

    def test_abstract_socket(self):
        """
        A C{NOTIFY_SOCKET} starting with C{@} names a socket in the abstract
        namespace, where C{@} stands for a NUL byte.
        """
        if not sys.platform.startswith("linux"):
            raise self.skipTest("abstract AF_UNIX sockets exist only on Linux")
        name = "replichat-test-%d-%s" % (os.getpid(), os.urandom(6).hex())
        sock = self.bound_socket("\0" + name)
        self.assertTrue(notify("READY=1", {"NOTIFY_SOCKET": "@" + name}))
        self.assertEqual(sock.recv(4096), b"READY=1")

    def test_unset(self):
        """
        Without C{NOTIFY_SOCKET} (not under systemd) L{notify} returns
        L{False} and logs nothing.
        """
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        self.assertFalse(notify("READY=1", {}))
        self.assertFalse(notify("READY=1", {"NOTIFY_SOCKET": ""}))
        self.assertEqual(len(events), 0)

    def test_default_environ(self):
        """
        By default L{notify} reads the process environment.
        """
        path = os.path.join(self.short_tempdir(), "notify")
        sock = self.bound_socket(path)
        old = os.environ.get("NOTIFY_SOCKET")
        self.addCleanup(self.restore_notify_socket, old)
        os.environ["NOTIFY_SOCKET"] = path
        self.assertTrue(notify("READY=1"))
        self.assertEqual(sock.recv(4096), b"READY=1")

    def restore_notify_socket(self, value):
        """
        Put C{NOTIFY_SOCKET} back as it was before a test changed it.
        """
        if value is None:
            os.environ.pop("NOTIFY_SOCKET", None)
        else:
            os.environ["NOTIFY_SOCKET"] = value

    def test_nobody_listening(self):
        """
        When the socket does not exist, L{notify} logs a warning naming the
        address and returns L{False} instead of raising.
        """
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        path = os.path.join(self.short_tempdir(), "absent")
        self.assertFalse(notify("READY=1", {"NOTIFY_SOCKET": path}))
        self.assertEqual(len(events), 1)
        self.assertEqual(events[0]["address"], path)
        self.assertIsInstance(events[0]["error"], OSError)

    def test_not_an_address(self):
        """
        A C{NOTIFY_SOCKET} that is neither an absolute path nor abstract is
        logged and ignored.
        """
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        self.assertFalse(notify("READY=1", {"NOTIFY_SOCKET": "vsock:2:1234"}))
        self.assertEqual(len(events), 1)
        self.assertEqual(events[0]["address"], "vsock:2:1234")
