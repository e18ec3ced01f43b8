#!/usr/bin/env bash
# The first check on a new GPU node (`make gpu-check`): every CUDA path of dlwt run for real in about 8 minutes.
#   bash scripts/gpu_check.sh --out results/gpu-check          # GPU profile (needs CUDA)
#   bash scripts/gpu_check.sh --cpu --out /tmp/gpu-check       # tiny CPU profile, seconds per part (tests/ run it)
#   bash scripts/gpu_check.sh --out DIR --only cost,pipeline --limits cost=300   # some parts, other limits
# Runs from the checkout (PYTHONPATH=src) with the python3 it finds (PYTHON=... to choose), never needs the
# network: what that Python lacks (jsonschema) is installed with `pip install --no-index` from the wheels that
# `make gpu-carry` put in .gpu-carry/wheels, into a throwaway folder. Each part runs in its own process under
# its own time limit and the deadline of the whole; results: OUT/parts.jsonl, OUT/summary.json, OUT/summary.md.
# Exit code 1 when a part failed. What the parts are and what they do not cover: src/dlwt/gpucheck/__init__.py.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=results/gpu-check
PROFILE=gpu
CARRY=${DLWT_GPU_CARRY:-.gpu-carry}
ONLY=""
LIMITS=""
while [ $# -gt 0 ]; do
    case "$1" in
        --out) OUT=$2; shift 2 ;;
        --cpu) PROFILE=cpu; shift ;;
        --carry) CARRY=$2; shift 2 ;;
        --only) ONLY=$2; shift 2 ;;
        --limits) LIMITS=$2; shift 2 ;;
        *) echo "gpu_check.sh: unknown argument $1 (expected --out DIR, --cpu, --carry DIR, --only A,B," \
                "--limits A=S)" >&2; exit 2 ;;
    esac
done
PY=${PYTHON:-python3}
mkdir -p "$OUT" || { echo "gpu_check.sh: cannot create $OUT" >&2; exit 2; }
OUT=$(cd "$OUT" && pwd)
rm -rf "$OUT/parts" "$OUT/parts.jsonl" "$OUT/summary.json" "$OUT/summary.md" "$OUT/work"

SITE=$(mktemp -d "${TMPDIR:-/tmp}/dlwt-gpu-check-site.XXXXXX")
trap 'rm -rf "$SITE"' EXIT
if ! "$PY" -c "import jsonschema" 2>/dev/null; then
    if ! ls "$CARRY"/wheels/jsonschema-*.whl >/dev/null 2>&1; then
        echo "gpu_check.sh: $PY has no jsonschema and $CARRY/wheels has none: run \`make gpu-carry\` where pip can" \
             "reach PyPI, and bring $CARRY along" >&2
        exit 2
    fi
    "$PY" -m pip install -q --no-index --find-links "$CARRY/wheels" --target "$SITE" jsonschema \
        > "$OUT/pip.log" 2>&1 || { echo "gpu_check.sh: pip install from $CARRY/wheels failed ($OUT/pip.log)" >&2; exit 2; }
fi
export PYTHONPATH="$PWD/src:$SITE${PYTHONPATH:+:$PYTHONPATH}"
export MPLBACKEND=Agg DVC_NO_ANALYTICS=1 DLWT_GPU_CARRY="$(cd "$CARRY" 2>/dev/null && pwd || echo "$CARRY")"

PLAN=$("$PY" -m dlwt.gpucheck plan --profile "$PROFILE" --only "$ONLY" --limits "$LIMITS") || {
    echo "gpu_check.sh: no plan (a wrong --only/--limits name, or $PY cannot import dlwt from src/)" >&2; exit 2; }
DEADLINE=$(( $(date +%s) + $(echo "$PLAN" | awk '/^deadline/ {print $2}') ))
rc=0
while read -r name limit; do
    [ "$name" = deadline ] && continue
    left=$(( DEADLINE - $(date +%s) ))
    if [ "$left" -lt 15 ]; then
        "$PY" -m dlwt.gpucheck skip "$name" --profile "$PROFILE" --out "$OUT" --why "the deadline was reached"
        continue
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    echo "gpu-check: $name (limit ${limit} s)"
    # -k: a part that ignores SIGTERM (a hung CUDA call) is killed 10 s later
    timeout -k 10 "$limit" "$PY" -m dlwt.gpucheck part "$name" --profile "$PROFILE" --out "$OUT" \
        --deadline "$DEADLINE" --limit "$limit" 2>> "$OUT/stderr.log"
    status=$?
    if [ $status -eq 124 ] || [ $status -eq 137 ]; then
        why="timed out after $limit s"
    elif [ $status -gt 1 ]; then
        why="died with exit code $status (see $OUT/stderr.log)"
    else
        why=""
    fi
    if [ -n "$why" ]; then
        echo "gpu-check $name: $why"
        "$PY" -m dlwt.gpucheck died "$name" --profile "$PROFILE" --out "$OUT" --limit "$limit" --why "$why"
    fi
    [ $status -ne 0 ] && rc=1
done <<< "$PLAN"
"$PY" -m dlwt.gpucheck summary --out "$OUT" > /dev/null || rc=1
echo "gpu-check: $OUT/summary.md ($([ $rc -eq 0 ] && echo 'all parts ok or skipped' || echo 'a part FAILED'))"
exit $rc
