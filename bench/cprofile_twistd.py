"""
Run twistd under cProfile and write the stats when it stops, also when it
is stopped by SIGTERM or SIGINT.

    python bench/cprofile_twistd.py OUT.prof -n --pidfile= replichat --config F --node 1

C{python -m cProfile twistd ...} writes nothing when the server is stopped
by a signal: twistd ends by re-sending itself the signal with the default
handler (C{twisted.application.app._exitWithSignal}), which kills the
process before cProfile can dump.  Here that last step is skipped.
"""

import cProfile
import sys


def main() -> None:
    out = sys.argv[1]
    sys.argv = ["twistd"] + sys.argv[2:]
    from twisted.application import app

    app._exitWithSignal = lambda sig: None
    profile = cProfile.Profile()
    try:
        profile.enable()
        from twisted.scripts.twistd import run

        run()
    finally:
        profile.disable()
        profile.dump_stats(out)


if __name__ == "__main__":
    main()
