"""
replichat: a replicated, persistent chat service on Twisted.

A chat server (accounts, login, wildcard account listing, instant or mailbox
delivery, reading, deleting) whose every acknowledged write is appended to a
durable, checksummed log and fsynced before it is applied and answered.
"""

__all__ = ["__version__"]

__version__ = "0.1.0"
