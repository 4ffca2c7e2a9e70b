#!/usr/bin/env bash
# The project's two set-up commands (see README.md):
#   ./dev.sh demo   install into .venv and start the demo operator
#   ./dev.sh test   install everything the tests need, then lint, type-check and run the suite
# Extra arguments go to `mssante demo` or to pytest respectively.
set -euo pipefail
cd "$(dirname "$0")"

PYTHON=${PYTHON:-python3}

need_python() {
    if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
        echo "dev.sh: Python 3.11 or newer is required (found: $("$PYTHON" --version 2>&1))" >&2
        exit 1
    fi
}

# Debian packages, installed only when missing and only when we are root (CI, fresh machines).
apt_install() {
    local missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
            || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
        echo "dev.sh: missing Debian packages: ${missing[*]} (install them as root)" >&2
        return 0
    fi
    echo "dev.sh: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

venv() {
    need_python
    if ! "$PYTHON" -c 'import venv, ensurepip' 2>/dev/null; then
        apt_install python3-venv
    fi
    if [ ! -x .venv/bin/python ]; then
        "$PYTHON" -m venv .venv
    fi
    .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
    .venv/bin/python -m pip install -q --disable-pip-version-check -e "$1"
}

case "${1:-}" in
demo)
    shift
    venv .
    exec .venv/bin/mssante demo "$@"
    ;;
test)
    shift
    # postgresql: the store tests start a throwaway cluster with its initdb/pg_ctl;
    # swaks: a real SMTP client for the relay tests (libnet-ssleay-perl: its STARTTLS, only a
    # Recommends of swaks, which --no-install-recommends leaves out);
    # isync (mbsync) and curl: real IMAP clients for tests/operator/imap/test_imap_clients.py;
    # neomutt: a real mail reader driven by `push` keys in tests/operator/imap/test_imap_neomutt.py.
    apt_install postgresql swaks libnet-ssleay-perl isync curl neomutt
    venv '.[test]'
    echo "== ruff" && .venv/bin/ruff check . && .venv/bin/ruff format --check .
    echo "== mypy --strict" && .venv/bin/mypy
    echo "== pytest"
    exec .venv/bin/pytest "$@"
    ;;
*)
    echo "usage: ./dev.sh demo [--dir DIR] [--port-base N] | ./dev.sh test [PYTEST ARGS]" >&2
    exit 2
    ;;
esac
