#!/usr/bin/env bash
# `make gpu-carry`: what a bare CUDA machine lacks for `make gpu-check`, put in .gpu-carry/ (ignored by git):
#   wheels/         jsonschema and its dependencies at constraints.txt's pins, for CPython 3.12 manylinux x86-64
#                   (the lent H200's Python; PYVER=3.11 for another), installed there with pip --no-index
#   fashion-mnist/  the four idx files of Debian's dataset-fashion-mnist (31 MB): the pipeline part's real data
# Run it where pip reaches PyPI; carry the folder with the checkout (the device tool's `carry: [".gpu-carry"]`).
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${1:-.gpu-carry}
PYVER=${PYVER:-3.12}
FMNIST=${FMNIST:-/usr/share/datasets/fashion-mnist}
PIP=${PIP:-$([ -x .venv/bin/pip ] && echo .venv/bin/pip || echo "python3 -m pip")}
mkdir -p "$DEST/wheels" "$DEST/fashion-mnist"
# jsonschema's own dependency tree (pip show -r); the versions are the lock's, so the check validates params
# with the same jsonschema the pipeline uses
PINS=$(grep -iE '^(jsonschema|jsonschema-specifications|attrs|referencing|rpds-py|typing_extensions)==' constraints.txt)
$PIP download --disable-pip-version-check -q --only-binary=:all: --no-deps --python-version "$PYVER" \
    --implementation cp --platform manylinux2014_x86_64 -d "$DEST/wheels" $PINS 2>&1 | { grep -v "is ignored: it is neither" >&2 || true; }
if ls "$FMNIST"/*-ubyte.gz >/dev/null 2>&1; then
    cp "$FMNIST"/*-ubyte.gz "$DEST/fashion-mnist/"
else
    echo "gpu_carry.sh: no Fashion-MNIST idx files in $FMNIST (apt-get install dataset-fashion-mnist, or" \
         "FMNIST=folder): the pipeline and claims parts will fail without them" >&2
fi
echo "gpu_carry.sh: $DEST ready ($(du -sh "$DEST" | cut -f1)): $(ls "$DEST/wheels" | tr '\n' ' ')"
