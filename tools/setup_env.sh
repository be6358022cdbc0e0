#!/usr/bin/env bash
# Create or refresh the project's virtual environment in .venv (idempotent).
#
#   bash tools/setup_env.sh
#
# Installs the exact, tested set of requirements/pinned.txt, then mmrevnet
# itself in editable mode without touching those pins (--no-deps). A stamp
# file (.venv/.mmrevnet-installed) holds the sha256 of requirements/pinned.txt
# and setup.py; while it matches, nothing is installed again. Delete .venv (or
# the stamp) to force a fresh install.
#
# Needs only Python 3.11 (python3 is used if python3.11 is absent; set
# MMREVNET_PYTHON to choose another interpreter) with its venv module.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)
VENV="$ROOT/.venv"
VPY="$VENV/bin/python"
STAMP="$VENV/.mmrevnet-installed"
HASHED_FILES=(requirements/pinned.txt setup.py)

log() { echo "[setup_env] $*"; }

choose_python() {
    if [[ -n "${MMREVNET_PYTHON:-}" ]]; then
        echo "$MMREVNET_PYTHON"
    elif command -v python3.11 > /dev/null 2>&1; then
        echo python3.11
    elif command -v python3 > /dev/null 2>&1; then
        echo python3
    else
        log 'ERROR: neither python3.11 nor python3 found on PATH.' >&2
        exit 1
    fi
}

file_hash() {
    # sha256 over the files that define the environment. Computed with
    # Python so it works wherever Python does (no sha256sum/shasum needed).
    "$1" - "${HASHED_FILES[@]}" << 'EOF'
import hashlib
import sys

digest = hashlib.sha256()
for name in sys.argv[1:]:
    digest.update(name.encode() + b'\0')
    with open(name, 'rb') as f:
        digest.update(f.read())
print(digest.hexdigest())
EOF
}

install() {
    if [[ -x "$VPY" ]] && ! "$VPY" -c 'import sys' > /dev/null 2>&1; then
        log "$VPY exists but does not run; recreating .venv"
        rm -rf "$VENV"
    fi
    if [[ ! -x "$VPY" ]]; then
        local base_python
        base_python=$(choose_python)
        log "creating .venv with $base_python ($("$base_python" --version 2>&1))"
        if ! "$base_python" -m venv "$VENV"; then
            log "ERROR: '$base_python -m venv' failed. On Debian/Ubuntu" \
                'install the venv module (e.g. apt-get install' \
                'python3.11-venv) and run this script again.' >&2
            exit 1
        fi
    fi
    local version
    version=$("$VPY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    if [[ "$version" != 3.11 ]]; then
        log "WARNING: .venv uses Python $version; the tested set uses 3.11."
    fi

    log 'upgrading pip'
    "$VPY" -m pip install --quiet --upgrade pip
    log 'installing requirements/pinned.txt (first time: a few minutes)'
    "$VPY" -m pip install -r requirements/pinned.txt
    # --no-build-isolation builds with the setuptools pinned above (no extra
    # download of the newest setuptools); --no-deps keeps the pins as they are.
    log 'installing mmrevnet (editable, no dependencies)'
    "$VPY" -m pip install --quiet --no-deps --no-build-isolation -e .
    file_hash "$VPY" > "$STAMP"
    log "done; wrote ${STAMP#"$ROOT"/}"
}

up_to_date() {
    [[ -x "$VPY" && -f "$STAMP" ]] || return 1
    local want
    want=$(file_hash "$VPY" 2> /dev/null) || return 1
    [[ "$(cat "$STAMP")" == "$want" ]]
}

if up_to_date; then
    log ".venv is up to date (stamp matches requirements/pinned.txt," \
        'setup.py); nothing to install'
    exit 0
fi

# Serialise concurrent runs (e.g. tests and demo started together).
mkdir -p "$VENV"
if command -v flock > /dev/null 2>&1; then
    exec 9> "$VENV/.mmrevnet-setup.lock"
    flock 9
    if up_to_date; then  # another run finished the install meanwhile
        log '.venv was brought up to date by a concurrent run'
        exit 0
    fi
fi
if [[ -f "$STAMP" ]]; then
    log 'requirements/pinned.txt or setup.py changed since the last install'
elif [[ -x "$VPY" ]]; then
    log '.venv exists but has no install stamp'
else
    log 'no .venv yet'
fi
install
