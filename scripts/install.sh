#!/usr/bin/env bash
# Install dlwt and every pinned dependency into .venv at the repository root.
#   bash scripts/install.sh        (the Makefile's `make install`; CI and the README use it)
# Reruns are cheap: the venv is rebuilt only when missing or when pyproject.toml/constraints.txt change.
set -euo pipefail
cd "$(dirname "$0")/.."

# FFCV's setup.py needs these headers even to resolve (and a C++ compiler to build). Check what is there first:
# apt (as root, or through passwordless sudo) only for what is missing, so a normal user on a cluster login node
# whose admins installed them gets through; otherwise name exactly what to ask an admin for.
APT_PACKAGES="pkg-config libturbojpeg0-dev libopencv-dev g++"
# The demo's data (Fashion-MNIST, MIT, 31 MB): installed with the rest when apt can; a user who cannot is told
# and goes on (ImageNet runs do not need it; data.fashion_mnist.dir can point at a copy instead).
DEMO_PACKAGES="dataset-fashion-mnist"
have() {  # is Debian package $1 installed (or, without dpkg, does its file/tool exist)?
    if command -v dpkg-query >/dev/null; then
        [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" = "install ok installed" ] && return 0
    fi
    case "$1" in
        pkg-config) command -v pkg-config >/dev/null ;;
        g++) command -v g++ >/dev/null ;;
        libturbojpeg0-dev) pkg-config --exists libturbojpeg 2>/dev/null ;;
        libopencv-dev) pkg-config --exists opencv4 2>/dev/null ;;
        dataset-fashion-mnist) [ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] ;;
        *) return 1 ;;
    esac
}
MISSING=""
for pkg in $APT_PACKAGES; do have "$pkg" || MISSING="$MISSING $pkg"; done
DEMO_MISSING=""
for pkg in $DEMO_PACKAGES; do have "$pkg" || DEMO_MISSING="$DEMO_MISSING $pkg"; done
SUDO=""
if [ -n "$MISSING$DEMO_MISSING" ] && [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then SUDO="sudo -n"; else SUDO="none"; fi
fi
if [ -n "$DEMO_MISSING" ]; then
    if [ "$SUDO" = "none" ] || ! command -v apt-get >/dev/null; then
        echo "install: the demo's data is missing:$DEMO_MISSING (ask an admin for it, or set data.fashion_mnist.dir); going on" >&2
    else
        MISSING="$MISSING$DEMO_MISSING"
    fi
fi
if [ -n "$MISSING" ]; then
    if [ "$SUDO" = "none" ] || ! command -v apt-get >/dev/null; then
        echo "install: missing system packages:$MISSING (Debian/Ubuntu names; FFCV needs them to build)." >&2
        echo "install: ask an admin to run: apt-get install --no-install-recommends$MISSING  (then rerun this)" >&2
        exit 1
    fi
    echo "install: apt-get install$MISSING"
    if ! { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq --no-install-recommends $MISSING; } >/dev/null; then
        echo "install: apt-get install$MISSING failed; install them yourself (root) and rerun" >&2
        exit 1
    fi
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
