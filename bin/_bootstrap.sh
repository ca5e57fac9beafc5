# shellcheck shell=bash
#
# Shared set-up for bin/run-tests and bin/replichat-local: find the repository,
# create .venv when it is missing and install replichat into it (editable, with
# the test extras), so that both commands work on a fresh clone.
#
# Source it (do not run it) after setting PROG to the calling command's name;
# then call bootstrap_venv.  It defines:
#
#   REPO_ROOT   absolute path of the repository (the parent of bin/)
#   VENV        $REPO_ROOT/.venv
#   VENV_PY     $VENV/bin/python
#   die, note   error / progress messages on stderr, prefixed with $PROG
#
# Environment knobs:
#
#   REPLICHAT_PYTHON     interpreter used to create .venv (default: python3)
#   REPLICHAT_REINSTALL  set to 1 to force "pip install -e .[test]" this time

REPO_ROOT="$(cd -P "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$REPO_ROOT/.venv"
VENV_PY="$VENV/bin/python"

# The oldest Python that setup.py accepts (python_requires=">=3.10").
_MIN_PYTHON_MAJOR=3
_MIN_PYTHON_MINOR=10

die() {
    printf '%s: error: %s\n' "${PROG:-replichat}" "$*" >&2
    exit 1
}

note() {
    printf '%s: %s\n' "${PROG:-replichat}" "$*" >&2
}

# _python_is_recent_enough PYTHON: succeed when PYTHON runs and is new enough.
_python_is_recent_enough() {
    "$1" -c "import sys; sys.exit(sys.version_info < ($_MIN_PYTHON_MAJOR, $_MIN_PYTHON_MINOR))" \
        >/dev/null 2>&1
}

# _python_version PYTHON: print "3.11.7", or "unknown" if it does not run.
_python_version() {
    "$1" -c 'import platform; print(platform.python_version())' 2>/dev/null || echo unknown
}

_create_venv() {
    local python="${REPLICHAT_PYTHON:-python3}"
    local found
    found="$(command -v "$python" || true)"
    if [[ -z "$found" ]]; then
        die "$python not found: install Python $_MIN_PYTHON_MAJOR.$_MIN_PYTHON_MINOR or newer" \
            "(Debian/Ubuntu: apt-get install python3 python3-venv), or set REPLICHAT_PYTHON" \
            "to the path of a suitable interpreter"
    fi
    if ! _python_is_recent_enough "$found"; then
        die "$found is Python $(_python_version "$found"); replichat needs" \
            "$_MIN_PYTHON_MAJOR.$_MIN_PYTHON_MINOR or newer: install one and set REPLICHAT_PYTHON to it"
    fi
    note "creating $VENV with $found (Python $(_python_version "$found"))"
    # venv fills in an existing directory too, so a half-created .venv (an
    # interrupted earlier run) is completed rather than refused.
    if ! "$found" -m venv "$VENV"; then
        die "could not create $VENV (Debian/Ubuntu need the python3-venv package)"
    fi
}

# _install_fingerprint: print a digest of everything that decides what
# "pip install -e .[test]" installs.  The install is editable, so source edits
# never need a reinstall; only a change to the packaging metadata (new
# dependency, entry point) or to the interpreter or repository path does.
# Prints "missing" when replichat is not installed in the venv at all.
_install_fingerprint() {
    "$VENV_PY" - "$REPO_ROOT" <<'PYTHON'
import hashlib
import importlib.metadata
import os
import sys

root = sys.argv[1]
try:
    importlib.metadata.distribution("replichat")
except importlib.metadata.PackageNotFoundError:
    print("missing")
    raise SystemExit(0)
digest = hashlib.sha256()
digest.update(root.encode() + b"\0" + sys.version.encode() + b"\0")
for name in ("setup.py", "setup.cfg", "pyproject.toml"):
    path = os.path.join(root, name)
    if os.path.exists(path):
        with open(path, "rb") as f:
            digest.update(name.encode() + b"\0" + f.read() + b"\0")
print(digest.hexdigest())
PYTHON
}

# _pip_is_recent_enough: pip 21.3 is the first that can do editable installs
# of projects that have a pyproject.toml (PEP 660).  Any pip newer than that
# is fine, so the (networked, slow) self-upgrade runs only on old venvs.
_pip_is_recent_enough() {
    "$VENV_PY" - <<'PYTHON'
import sys
from importlib.metadata import version

parts = []
for part in version("pip").split(".")[:2]:
    digits = "".join(c for c in part if c.isdigit())
    parts.append(int(digits or 0))
sys.exit(tuple(parts) < (21, 3))
PYTHON
}

bootstrap_venv() {
    # pip must never wait for an answer (CI has no stdin), must not print
    # its "new version available" nag (a network round trip) and must not
    # warn about running as root inside a venv.
    export PIP_NO_INPUT=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore

    if [[ ! -x "$VENV_PY" ]]; then
        _create_venv
    fi
    if ! _python_is_recent_enough "$VENV_PY"; then
        die "$VENV uses Python $(_python_version "$VENV_PY"); replichat needs" \
            "$_MIN_PYTHON_MAJOR.$_MIN_PYTHON_MINOR or newer: remove $VENV and run this again"
    fi
    if ! "$VENV_PY" -m pip --version >/dev/null 2>&1; then
        # Some distributions create venvs without pip; ensurepip is the
        # standard way to add it back without going to the network.
        note "adding pip to $VENV"
        "$VENV_PY" -m ensurepip --upgrade >/dev/null ||
            die "$VENV has no pip and ensurepip failed (Debian/Ubuntu: apt-get install python3-venv)"
    fi
    if ! _pip_is_recent_enough; then
        note "upgrading pip in $VENV"
        "$VENV_PY" -m pip install --quiet --upgrade pip || die "could not upgrade pip in $VENV"
    fi

    # Installing takes seconds even when nothing changed (pip builds the
    # editable wheel in an isolated environment), so it runs only when the
    # fingerprint of the packaging metadata differs from the last successful
    # install's.  A fresh clone has no .venv, hence no stamp, hence installs.
    local stamp="$VENV/.replichat-install-stamp"
    local want have=""
    want="$(_install_fingerprint)" || die "$VENV_PY does not run; remove $VENV and run this again"
    if [[ -f "$stamp" ]]; then
        have="$(cat "$stamp")"
    fi
    if [[ "${REPLICHAT_REINSTALL:-0}" == 1 || "$want" == missing || "$want" != "$have" ]]; then
        note "installing replichat and its test dependencies into $VENV"
        (cd "$REPO_ROOT" && "$VENV_PY" -m pip install --quiet --config-settings editable_mode=compat --editable '.[test]') ||
            die "pip install -e '.[test]' failed (see pip's messages above)"
        want="$(_install_fingerprint)"
        printf '%s\n' "$want" >"$stamp"
    fi
}

# export_pythonpath: put the repository first on PYTHONPATH.  twistd finds the
# replichat plugin by scanning twisted/plugins/ directories on sys.path, and the
# one in this checkout is not part of the editable install's import hook.
export_pythonpath() {
    export PYTHONPATH="$REPO_ROOT${PYTHONPATH:+:$PYTHONPATH}"
}
