#!/usr/bin/env bash
# Install dlwt and every pinned dependency into .venv at the repository root.
#   bash scripts/install.sh        (the Makefile's `make install`; CI and the README use it)
# Reruns are cheap: the venv is rebuilt only when missing or when pyproject.toml/constraints.txt change.
set -euo pipefail
cd "$(dirname "$0")/.."

# FFCV's setup.py needs these headers even to resolve (and a C++ compiler to build), so install them
# before pip, every time (a machine that already has them would hide a missing step).
APT_PACKAGES="pkg-config libturbojpeg0-dev libopencv-dev g++"
if command -v apt-get >/dev/null; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo -n"
    if ! { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq --no-install-recommends $APT_PACKAGES; } >/dev/null; then
        echo "install: could not apt-get install $APT_PACKAGES; install them yourself (root) and rerun" >&2
        exit 1
    fi
elif ! pkg-config --exists libturbojpeg opencv4 2>/dev/null; then
    echo "install: need libturbojpeg and OpenCV headers (Debian: $APT_PACKAGES); install them and rerun" >&2
    exit 1
fi

PY=${PYTHON:-python3}
STAMP=.venv/.dlwt-installed
WANT=$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)
if [ -x .venv/bin/python ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$WANT" ]; then
    echo "install: .venv is up to date"
    exit 0
fi
rm -rf .venv
"$PY" -m venv .venv
# pip's log is kept, not shown: this machine's pip config prints a warning per package
if ! .venv/bin/pip install --disable-pip-version-check -c constraints.txt -e ".[all]" > .venv/pip-install.log 2>&1; then
    grep -v "is ignored: it is neither" .venv/pip-install.log | tail -30 >&2
    echo "install: pip install failed (full log: .venv/pip-install.log)" >&2
    exit 1
fi
.venv/bin/pip check
echo "$WANT" > "$STAMP"
echo "install: .venv ready ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
