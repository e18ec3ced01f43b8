"""The gpu-check runner's entry points (scripts/gpu_check.sh calls these; see dlwt/gpucheck/__init__.py).

    python -m dlwt.gpucheck plan --profile gpu [--only a,b] [--limits a=30]  # "name limit_s" per part
    python -m dlwt.gpucheck part cost --profile gpu --out DIR --deadline EPOCH_S
    python -m dlwt.gpucheck died cost --profile gpu --out DIR --limit 150 --why "timed out after 150 s"
    python -m dlwt.gpucheck summary --out DIR
"""
from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path

from dlwt.gpucheck import DEADLINE_S, PARTS, PROFILES, record


def _part(name: str):
    for part in PARTS:
        if part[0] == name:
            return part
    raise SystemExit(f"gpu-check: no part {name!r}: the parts are {', '.join(p[0] for p in PARTS)}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m dlwt.gpucheck", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", choices=["plan", "part", "died", "skip", "summary"])
    p.add_argument("name", nargs="?")
    p.add_argument("--profile", choices=sorted(PROFILES), default="gpu")
    p.add_argument("--out", type=Path)
    p.add_argument("--deadline", type=float, help="epoch seconds by which the whole check must end")
    p.add_argument("--limit", type=float, default=0.0)
    p.add_argument("--why", default="")
    p.add_argument("--only", default="", help="plan: these parts only (comma-separated names)")
    p.add_argument("--limits", default="", help="plan: NAME=SECONDS,... overriding parts' time limits")
    a = p.parse_args(argv)
    col = 2 if a.profile == "gpu" else 3
    if a.action == "plan":
        only = [n for n in a.only.split(",") if n]
        limits = dict(kv.split("=", 1) for kv in a.limits.split(",") if kv)
        for n in [*only, *limits]:
            _part(n)
        print(f"deadline {DEADLINE_S[a.profile]}")
        for part in PARTS:
            if not only or part[0] in only:
                print(f"{part[0]} {int(float(limits.get(part[0], part[col])))}")
        return 0
    if a.action == "summary":
        s = record.summarize(a.out, [part[0] for part in PARTS])
        print((a.out / "summary.md").read_text())
        return 0 if s["ok"] else 1
    name, module, *_ = _part(a.name)
    if a.action == "died":
        record.died(a.out, name, a.limit, a.profile, a.why)
        return 1
    if a.action == "skip":
        record.not_run(a.out, name, a.why, a.profile)
        return 0
    rec = record.Record(name, a.out, a.profile, a.limit)
    deadline = a.deadline or time.time() + (a.limit or 600)
    try:
        mod = importlib.import_module(f"dlwt.gpucheck.{module}")
        skipped = mod.run(rec, PROFILES[a.profile], name=name, deadline=deadline)
        result = rec.finish(skipped=skipped)
    except Exception as e:  # noqa: BLE001 (a failed part records its traceback; the next part runs)
        result = rec.finish(error=e)
    print(f"gpu-check {name}: {result['status']} in {result['seconds']:.0f} s"
          + (f" ({result.get('error') or result.get('why')})" if result["status"] != "ok" else ""), flush=True)
    return 0 if result["status"] != "fail" else 1


if __name__ == "__main__":
    sys.exit(main())
