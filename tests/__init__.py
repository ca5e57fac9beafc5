"""
replichat's trial test suite; run it with C{bin/run-tests}.

Most tests are synchronous (fake clock, fake transports) and finish in
milliseconds.  A few start real C{twistd replichat} processes on 127.0.0.1
and wait for them, so trial's per-test timeout is lowered from its default
of 120 seconds to one minute: a hung real-process test fails in a minute
instead of two, while a slow machine still has ample time.  Set here, as
Synapse does, so that it applies before any test module is loaded.
"""

from twisted.trial import util

util.DEFAULT_TIMEOUT_DURATION = 60
