# -*- test-case-name: tests.test_lineproto -*-
"""
Password hashing with scrypt, off the reactor thread.

Only the hash record (salt, hash, cost parameters) ever reaches the log.
scrypt at N=2**14 takes tens of milliseconds, so hashing and checking run
through an injected C{run} callable: a thread pool in the server, a plain
synchronous call in tests (which also use a cheap N to stay fast; the cost
parameters travel in the record, so checking needs no setting).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from typing import Callable

from twisted.internet.defer import Deferred, succeed

#: scrypt cost: 2**14 * 8 * 128 bytes = 16 MiB of memory per hash.
DEFAULT_N = 2**14
MAXMEM = 64 * 2**20


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=n, r=r, p=p, maxmem=MAXMEM, dklen=32
    )


def make_record(password: str, n: int = DEFAULT_N, salt: bytes | None = None) -> dict:
    """
    A new hash record for C{password} with a fresh random salt.
    """
    salt = os.urandom(16) if salt is None else salt
    return {
        "alg": "scrypt",
        "n": n,
        "r": 8,
        "p": 1,
        "salt": _b64(salt),
        "hash": _b64(_scrypt(password, salt, n, 8, 1)),
    }


def check_record(password: str, record: dict) -> bool:
    """
    Whether C{password} matches a record made by L{make_record}, compared in
    constant time.
    """
    salt = base64.b64decode(record["salt"])
    actual = _scrypt(password, salt, record["n"], record["r"], record["p"])
    return hmac.compare_digest(actual, base64.b64decode(record["hash"]))


def _call_now(function: Callable, *args: object) -> Deferred:
    return succeed(function(*args))


class PasswordHasher:
    """
    Makes and checks password records through C{run} (e.g. a thread pool's
    C{deferToThreadPool}).
    """

    def __init__(self, n: int = DEFAULT_N, run: Callable[..., Deferred] = _call_now):
        self.n = n
        self._run = run
        # Checking a login for a name that does not exist still costs one
        # hash, so a wrong name and a wrong password take equally long.
        self._decoy = make_record("decoy password", n=n)

    def hash(self, password: str) -> Deferred:
        """
        A Deferred firing with a new record for C{password}.
        """
        return self._run(make_record, password, self.n)

    def check(self, password: str, record: dict | None) -> Deferred:
        """
        A Deferred firing with whether C{password} matches C{record}; a
        missing record (no such account) costs as much and never matches.
        """
        if record is None:
            return self._run(check_record, password, self._decoy).addCallback(
                lambda _: False
            )
        return self._run(check_record, password, record)
