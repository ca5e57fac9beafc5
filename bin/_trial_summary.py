"""
Run a trial command, pass its output through as it comes, and end with the
line C{N passed, N failed} (plus C{, N skipped} when there are skips).

Usage::

    python bin/_trial_summary.py -- COMMAND [ARGUMENT ...]

C{bin/run-tests} runs C{python -m twisted.trial ...} through this script.
The counts come from trial's own closing line, which every text reporter
prints::

    PASSED (successes=12)
    FAILED (skips=1, expectedFailures=2, failures=3, errors=4,
            unexpectedSuccesses=5, successes=6)        (on one line)

C{failed} is failures + errors + unexpectedSuccesses, C{passed} is successes
+ expectedFailures.  The exit status is 0 only if trial exited 0 and nothing
failed.  A command that ends without such a line (an import error before any
test ran, a crash, a signal) or that exits non-zero although its line says
nothing failed counts as one failure, so the closing line never claims a
clean run that was not one; without the summary line, the tests that the
verbose reporters' per-test lines (C{name ... [OK]}) reported are counted
too, so a run killed in its last test still shows what had passed.

This file uses only the standard library and is not part of the replichat
package: it must work before replichat is importable.
"""

import os
import re
import signal
import subprocess
import sys

_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")
_SUMMARY = re.compile(r"^(PASSED|FAILED)(?: \((\w+=\d+(?:, \w+=\d+)*)\))?$")

_PASSED_COUNTERS = ("successes", "expectedFailures")
_FAILED_COUNTERS = ("failures", "errors", "unexpectedSuccesses")

# The per-test lines of trial's verbose reporters: "name ... [OK]".  Only
# used when a run ends without its summary line (killed, hung, crashed).
_RESULT = re.compile(r"\.\.\.\s*\[(OK|TODO|FAIL|ERROR|SUCCESS!\?!|SKIPPED)\]$")
_RESULT_COUNTERS = {
    "OK": "successes",
    "TODO": "expectedFailures",
    "FAIL": "failures",
    "ERROR": "errors",
    "SUCCESS!?!": "unexpectedSuccesses",
    "SKIPPED": "skips",
}


def parse_summary(line):
    """
    Parse trial's closing line.

    @param line: one line of trial's output, with or without its newline or
        colour codes.
    @type line: L{str}

    @return: the counters by name (C{{"successes": 3, "skips": 1}}), with
        C{"status"} mapped to C{"PASSED"} or C{"FAILED"}; or L{None} if
        C{line} is not a summary line.
    @rtype: L{dict} or L{None}
    """
    match = _SUMMARY.match(_ANSI_ESCAPE.sub("", line).strip())
    if match is None:
        return None
    counters = {"status": match.group(1)}
    if match.group(2):
        for item in match.group(2).split(", "):
            name, _, number = item.partition("=")
            counters[name] = int(number)
    return counters


def parse_result(line):
    """
    Parse one per-test line of trial's verbose reporters.

    @param line: one line of output.
    @type line: L{str}

    @return: the name of the counter the line adds to (C{"successes"},
        C{"failures"}, ...), or L{None} if C{line} reports no test result.
    """
    match = _RESULT.search(_ANSI_ESCAPE.sub("", line).rstrip())
    if match is None:
        return None
    return _RESULT_COUNTERS[match.group(1)]


def count(summary, returncode, results=None):
    """
    Turn trial's counters and exit status into the closing counts.

    @param summary: what L{parse_summary} returned for the last summary line,
        or L{None} if there was none.
    @param returncode: the command's exit status (negative for a signal).
    @param results: the per-test counters seen so far (as L{parse_result}
        names them), used only when there is no summary line.

    @return: C{(passed, failed, skipped)}.
    @rtype: L{tuple} of three L{int}
    """
    if summary is None:
        # The run ended early: count the results it reported, plus the
        # crash itself as one failure.
        results = results or {}
        return (
            sum(results.get(name, 0) for name in _PASSED_COUNTERS),
            sum(results.get(name, 0) for name in _FAILED_COUNTERS) + 1,
            results.get("skips", 0),
        )
    passed = sum(summary.get(name, 0) for name in _PASSED_COUNTERS)
    failed = sum(summary.get(name, 0) for name in _FAILED_COUNTERS)
    skipped = summary.get("skips", 0)
    if failed == 0 and (returncode != 0 or summary["status"] != "PASSED"):
        # trial (or the process around it) failed in a way its counters do
        # not show: report it as one failure rather than claim a clean run.
        failed = 1
    return passed, failed, skipped


def format_counts(passed, failed, skipped):
    """
    @return: the closing line, C{"3 passed, 0 failed"} or
        C{"3 passed, 0 failed, 1 skipped"}, without a newline.
    @rtype: L{str}
    """
    line = "%d passed, %d failed" % (passed, failed)
    if skipped:
        line += ", %d skipped" % (skipped,)
    return line


class _LineScanner:
    """
    Remember the last summary line in a stream fed as arbitrary byte chunks.
    """

    def __init__(self):
        self._partial = b""
        self.summary = None
        self.results = {}

    def feed(self, data):
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            self._scan(line)

    def close(self):
        if self._partial:
            self._scan(self._partial)
            self._partial = b""

    def _scan(self, line):
        text = line.decode("utf-8", "replace")
        parsed = parse_summary(text)
        if parsed is not None:
            self.summary = parsed
            return
        result = parse_result(text)
        if result is not None:
            self.results[result] = self.results.get(result, 0) + 1


class _Output:
    """
    Write bytes to our stdout unbuffered; after the reader went away
    (C{bin/run-tests | head}) keep quiet instead of failing.
    """

    def __init__(self, fd):
        self._fd = fd
        self._open = True

    def write(self, data):
        view = memoryview(data)
        while self._open and view:
            try:
                written = os.write(self._fd, view)
            except BrokenPipeError:
                self._open = False
            else:
                view = view[written:]


def run(command, out_fd=1):
    """
    Run C{command}, copy its output (stdout and stderr, in order) to
    C{out_fd} as it arrives, then write the closing line.

    @return: the exit status to use: 0 only for a clean run.
    @rtype: L{int}
    """
    out = _Output(out_fd)
    env = dict(os.environ)
    # A Python child writing to a pipe would otherwise hold its output back
    # in 8 KiB blocks and a slow test would look hung.
    env["PYTHONUNBUFFERED"] = "1"
    try:
        child = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env
        )
    except OSError as e:
        out.write(("cannot run %s: %s\n" % (command[0], e)).encode())
        out.write((format_counts(0, 1, 0) + "\n").encode())
        return 1

    # Ctrl-C reaches the child too (same process group); let trial stop and
    # print its summary while we keep reading.  SIGTERM is passed on.  Both
    # are set after Popen so that the child keeps the default dispositions.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda signum, frame: child.send_signal(signum))

    scanner = _LineScanner()
    fd = child.stdout.fileno()
    while True:
        data = os.read(fd, 65536)
        if not data:
            break
        out.write(data)
        scanner.feed(data)
    scanner.close()
    child.stdout.close()
    returncode = child.wait()

    passed, failed, skipped = count(scanner.summary, returncode, scanner.results)
    if scanner.summary is None:
        out.write(
            (
                "\nthe test run %s without trial's PASSED/FAILED line; counting"
                " the tests it reported, and 1 failure for that\n"
                % (_describe_exit(returncode),)
            ).encode()
        )
    elif failed and not any(scanner.summary.get(n) for n in _FAILED_COUNTERS):
        out.write(
            (
                "\nthe test run %s although trial counted no failure; counting"
                " that as 1 failure\n" % (_describe_exit(returncode),)
            ).encode()
        )
    out.write((format_counts(passed, failed, skipped) + "\n").encode())
    return 0 if failed == 0 and returncode == 0 else 1


def _describe_exit(returncode):
    """
    @return: C{"exited with status 1"} or C{"was killed by SIGTERM"}.
    """
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = "signal %d" % (-returncode,)
        return "was killed by %s" % (name,)
    return "exited with status %d" % (returncode,)


def main(argv):
    if len(argv) < 2 or argv[0] != "--":
        sys.stderr.write("usage: %s -- COMMAND [ARGUMENT ...]\n" % (sys.argv[0],))
        return 2
    return run(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
