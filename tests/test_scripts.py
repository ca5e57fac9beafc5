"""
Tests for the shell tooling in C{bin/}: C{bin/_trial_summary.py}, which
gives C{bin/run-tests} (and so CI) its closing C{N passed, N failed} line and
its exit status, and the syntax of the bash scripts.
"""

import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap

from twisted.trial.unittest import SynchronousTestCase

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUMMARY_SCRIPT = os.path.join(ROOT, "bin", "_trial_summary.py")
BASH_SCRIPTS = [
    "bin/run-tests",
    "bin/replichat-local",
    "bin/_bootstrap.sh",
    ".ci/run",
]


def load_summary_module():
    """
    Import C{bin/_trial_summary.py}, which is a script, not a module of the
    package.
    """
    spec = importlib.util.spec_from_file_location("_trial_summary", SUMMARY_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


summary = load_summary_module()

# What trial prints at the end of a run that had one of everything.
CANNED_FAILED = textwrap.dedent(
    """\
    tests.test_a.ATests.test_one ... [OK]
    tests.test_a.ATests.test_two ... [FAIL]

    ===============================================================================
    [FAIL]
    Traceback (most recent call last):
      File "tests/test_a.py", line 9, in test_two
    twisted.trial.unittest.FailTest: 1 != 2
    -------------------------------------------------------------------------------
    Ran 21 tests in 0.123s

    FAILED (skips=2, expectedFailures=1, failures=3, errors=4, unexpectedSuccesses=5, successes=6)
    """
)


def run_wrapper(output, status):
    """
    Run C{bin/_trial_summary.py} around a child that prints C{output} and
    exits with C{status} (a negative status: killed by that signal).

    @return: the completed process, output decoded.
    """
    child = textwrap.dedent(
        """\
        import os, sys
        sys.stdout.write(sys.argv[1])
        sys.stdout.flush()
        status = int(sys.argv[2])
        if status < 0:
            os.kill(os.getpid(), -status)
        sys.exit(status)
        """
    )
    return subprocess.run(
        [
            sys.executable,
            SUMMARY_SCRIPT,
            "--",
            sys.executable,
            "-c",
            child,
            output,
            str(status),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        timeout=60,
        text=True,
    )


class ParseSummaryTests(SynchronousTestCase):
    """
    Tests for C{parse_summary}, C{count} and C{format_counts}.
    """

    def test_passed(self):
        """
        C{PASSED (successes=N)} is N passed and nothing failed.
        """
        parsed = summary.parse_summary("PASSED (successes=12)\n")
        self.assertEqual(parsed, {"status": "PASSED", "successes": 12})
        self.assertEqual(summary.count(parsed, 0), (12, 0, 0))

    def test_all_counters(self):
        """
        Failures, errors and unexpected successes fail; successes and
        expected failures pass; skips are counted apart.
        """
        parsed = summary.parse_summary(CANNED_FAILED.splitlines()[-1])
        self.assertEqual(summary.count(parsed, 1), (7, 12, 2))

    def test_no_tests(self):
        """
        A bare C{PASSED} (no test ran) is 0 passed, 0 failed.
        """
        parsed = summary.parse_summary("PASSED")
        self.assertEqual(summary.count(parsed, 0), (0, 0, 0))

    def test_colour(self):
        """
        The colour codes of trial's default reporter on a terminal do not
        hide the line.
        """
        parsed = summary.parse_summary("\x1b[31;1mFAILED\x1b[0m (errors=1)")
        self.assertEqual(parsed, {"status": "FAILED", "errors": 1})

    def test_not_a_summary(self):
        """
        Lines that only look similar are not summaries.
        """
        for line in [
            "",
            "PASSED!",
            "tests.test_a.ATests.test_one ... [OK]",
            "FAILED (errors=one)",
            "the test PASSED (successes=1)",
        ]:
            self.assertIsNone(summary.parse_summary(line), line)

    def test_no_summary_is_a_failure(self):
        """
        Without a summary line the run counts as one failure.
        """
        self.assertEqual(summary.count(None, 1), (0, 1, 0))
        self.assertEqual(summary.count(None, 0), (0, 1, 0))

    def test_no_summary_counts_results(self):
        """
        Without a summary line, the per-test results seen are counted, and
        the run that ended early is one more failure.
        """
        results = {"successes": 4, "expectedFailures": 1, "errors": 2, "skips": 3}
        self.assertEqual(summary.count(None, -15, results), (5, 3, 3))

    def test_per_test_lines(self):
        """
        C{parse_result} reads the per-test lines of the C{bwverbose} and
        C{verbose} reporters and nothing else.
        """
        for line, counter in [
            ("tests.test_a.ATests.test_one ... [OK]", "successes"),
            ("tests.test_a.ATests.test_two ... [FAIL]", "failures"),
            ("tests.test_b ... [ERROR]\n", "errors"),
            ("tests.test_a.ATests.test_three ... [SKIPPED]", "skips"),
            ("tests.test_a.ATests.test_four ... [TODO]", "expectedFailures"),
            ("tests.test_a.ATests.test_five ... [SUCCESS!?!]", "unexpectedSuccesses"),
            ("    test_one ...                                 \x1b[32m[OK]\x1b[0m", "successes"),
            ("[FAIL]", None),
            ("tests.test_a.ATests.test_six ... ", None),
            ("PASSED (successes=1)", None),
        ]:
            self.assertEqual(summary.parse_result(line), counter, line)

    def test_nonzero_status_is_a_failure(self):
        """
        A run whose counters show no failure but whose process failed counts
        one failure.
        """
        parsed = summary.parse_summary("PASSED (successes=2)")
        self.assertEqual(summary.count(parsed, -9), (2, 1, 0))

    def test_format(self):
        """
        The closing line mentions skips only when there are some.
        """
        self.assertEqual(summary.format_counts(3, 0, 0), "3 passed, 0 failed")
        self.assertEqual(
            summary.format_counts(3, 1, 2), "3 passed, 1 failed, 2 skipped"
        )


class WrapperTests(SynchronousTestCase):
    """
    Tests for running C{bin/_trial_summary.py} around a command, as
    C{bin/run-tests} does.
    """

    def test_passed(self):
        """
        A clean run ends with C{N passed, 0 failed} and exit status 0, after
        the command's own output.
        """
        result = run_wrapper("Ran 3 tests in 0.1s\n\nPASSED (successes=3)\n", 0)
        self.assertEqual(result.returncode, 0)
        lines = result.stdout.splitlines()
        self.assertEqual(lines[-1], "3 passed, 0 failed")
        self.assertIn("PASSED (successes=3)", lines)

    def test_skips(self):
        """
        Skips are reported and do not fail the run.
        """
        result = run_wrapper("PASSED (skips=1, successes=2)\n", 0)
        self.assertEqual(result.returncode, 0)
        self.assertEqual(result.stdout.splitlines()[-1], "2 passed, 0 failed, 1 skipped")

    def test_failed(self):
        """
        A failed run with every counter ends with the sums and exit status 1.
        """
        result = run_wrapper(CANNED_FAILED, 1)
        self.assertEqual(result.returncode, 1)
        self.assertEqual(
            result.stdout.splitlines()[-1], "7 passed, 12 failed, 2 skipped"
        )
        self.assertIn("twisted.trial.unittest.FailTest: 1 != 2", result.stdout)

    def test_unexpected_success(self):
        """
        trial exits 0 on an unexpected success; the wrapper fails the run.
        """
        result = run_wrapper("PASSED (unexpectedSuccesses=1, successes=2)\n", 0)
        self.assertEqual(result.returncode, 1)
        self.assertEqual(result.stdout.splitlines()[-1], "2 passed, 1 failed")

    def test_crash(self):
        """
        A command that dies before any summary (an import error, a crash)
        ends with C{0 passed, 1 failed} and a non-zero status.
        """
        result = run_wrapper(
            "Traceback (most recent call last):\nImportError: no module\n", 1
        )
        self.assertEqual(result.returncode, 1)
        lines = result.stdout.splitlines()
        self.assertEqual(lines[-1], "0 passed, 1 failed")
        self.assertIn("ImportError: no module", lines)

    def test_killed(self):
        """
        A run killed before its summary (a hung test, say) counts the
        results it had reported, plus one failure, and says how it ended.
        """
        result = run_wrapper(
            "tests.a.T.test_1 ... [OK]\ntests.a.T.test_2 ... [SKIPPED]\n"
            "tests.a.T.test_3 ... [OK]\ntests.a.T.test_4 ... ",
            -15,
        )
        self.assertEqual(result.returncode, 1)
        lines = result.stdout.splitlines()
        self.assertEqual(lines[-1], "2 passed, 1 failed, 1 skipped")
        self.assertIn("killed by SIGTERM", result.stdout)

    def test_crash_after_summary(self):
        """
        A command that printed C{PASSED} but then exited non-zero fails.
        """
        result = run_wrapper("PASSED (successes=4)\n", 3)
        self.assertEqual(result.returncode, 1)
        self.assertEqual(result.stdout.splitlines()[-1], "4 passed, 1 failed")

    def test_last_summary_wins(self):
        """
        Only the last summary line counts: a test may print one of its own
        before trial prints the real one.
        """
        result = run_wrapper("FAILED (failures=9)\nPASSED (successes=5)\n", 0)
        self.assertEqual(result.returncode, 0)
        self.assertEqual(result.stdout.splitlines()[-1], "5 passed, 0 failed")

    def test_missing_command(self):
        """
        A command that cannot be started counts as one failure.
        """
        result = subprocess.run(
            [sys.executable, SUMMARY_SCRIPT, "--", "/nonexistent/replichat-trial"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=60,
            text=True,
        )
        self.assertEqual(result.returncode, 1)
        self.assertEqual(result.stdout.splitlines()[-1], "0 passed, 1 failed")

    def test_streams(self):
        """
        Output is passed on as the command writes it, not at its end: the
        child prints a line and then waits (a bounded time) for a file that
        this test creates only after it has read that line.
        """
        tmp = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, tmp, True)
        flag = os.path.join(tmp, "flag")
        child = textwrap.dedent(
            """\
            import os, sys, time
            print("first line", flush=True)
            deadline = time.monotonic() + 20
            while not os.path.exists(sys.argv[1]) and time.monotonic() < deadline:
                time.sleep(0.01)
            if os.path.exists(sys.argv[1]):
                print("PASSED (successes=1)")
            else:
                print("FAILED (errors=1)")
                sys.exit(1)
            """
        )
        process = subprocess.Popen(
            [sys.executable, SUMMARY_SCRIPT, "--", sys.executable, "-c", child, flag],
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        self.addCleanup(process.stdout.close)
        self.assertEqual(process.stdout.readline(), "first line\n")
        open(flag, "w").close()
        rest = process.stdout.read()
        self.assertEqual(process.wait(timeout=60), 0)
        self.assertEqual(rest.splitlines()[-1], "1 passed, 0 failed")

    def test_usage(self):
        """
        Without C{-- COMMAND} the script explains itself and exits 2.
        """
        result = subprocess.run(
            [sys.executable, SUMMARY_SCRIPT],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            timeout=60,
            text=True,
        )
        self.assertEqual(result.returncode, 2)
        self.assertIn("usage:", result.stderr)


class BashScriptTests(SynchronousTestCase):
    """
    Checks of the bash scripts that need no running cluster.
    """

    def test_syntax(self):
        """
        Every bash script parses (C{bash -n}).
        """
        bash = shutil.which("bash")
        if bash is None:
            raise self.skipTest("bash is not installed")
        for name in BASH_SCRIPTS:
            result = subprocess.run(
                [bash, "-n", os.path.join(ROOT, name)],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                timeout=60,
                text=True,
            )
            self.assertEqual(result.returncode, 0, "%s: %s" % (name, result.stdout))

    def test_executable(self):
        """
        The commands README and CI run are executable (C{.ci/run} calls
        C{bin/run-tests} directly, so a lost mode bit would break CI).
        """
        for name in ["bin/run-tests", "bin/replichat-local", ".ci/run"]:
            self.assertTrue(os.access(os.path.join(ROOT, name), os.X_OK), name)
