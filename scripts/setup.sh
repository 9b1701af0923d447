#!/usr/bin/env bash
# Install what strongroom needs on a Debian machine: system packages (as root) and a
# virtualenv in .venv with strongroom and its development tools. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

DEB_PACKAGES=(python3 python3-venv python3-dev gcc restic borgbackup openssh-server attr acl util-linux)

missing=()
for pkg in "${DEB_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
    if [[ $(id -u) -ne 0 ]]; then
        echo "setup: missing Debian packages: ${missing[*]} (run as root, or install them)" >&2
        exit 2
    fi
    echo "setup: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
fi

PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "setup: $PYTHON is older than 3.11" >&2
    exit 2
fi
if [[ ! -x .venv/bin/python ]]; then
    "$PYTHON" -m venv .venv
fi
extras=${1:-dev}
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[${extras}]" 2>&1 \
    | grep -v "^WARNING: Location" || true
# Bytecode now, as installing a package does: an editable install otherwise compiles
# on first use, and never where PYTHONDONTWRITEBYTECODE is set (every run pays again).
.venv/bin/python -m compileall -q src/strongroom >/dev/null
.venv/bin/strongroom --version >/dev/null
