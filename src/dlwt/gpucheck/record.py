"""How a gpu-check part records what it found, and the summary of all parts (JSON and markdown).

A part gets a `Record`: `check(name, ok, detail)` for each assertion, `skip(name, why)` for an assertion the
profile cannot make (the CUDA-only ones on the CPU profile), `data[...]` for measurements, `flush()` to write
what it has so far (a part killed at its time limit still leaves its finished rows). The part's file is
rewritten atomically on every flush; the JSON line in parts.jsonl is appended once, when the part ends.
"""
from __future__ import annotations

import json
import threading
import time
import traceback
from pathlib import Path

from dlwt.atomic import atomic_write, write_json_atomic


class Record:
    def __init__(self, name: str, out: Path, profile: str, limit_s: float):
        self.out, self.t0 = Path(out), time.monotonic()
        self.lock = threading.RLock()  # a part's threads (the pipeline's SIGTERM job) record concurrently
        self.result = {"name": name, "status": "running", "profile": profile, "limit_s": limit_s, "seconds": 0.0,
                       "checks": [], "skipped": [], "data": {}}
        self.data = self.result["data"]
        self.flush()

    def check(self, name: str, ok: bool, detail: str = "") -> bool:
        with self.lock:
            self.result["checks"].append({"name": name, "ok": bool(ok), "detail": detail})
            self.flush()
        return bool(ok)

    def skip(self, name: str, why: str) -> None:
        self.result["skipped"].append({"name": name, "why": why})

    def flush(self) -> None:
        with self.lock:
            self.result["seconds"] = round(time.monotonic() - self.t0, 2)
            write_json_atomic(self.out / "parts" / f"{self.result['name']}.json", self.result)

    def finish(self, error: BaseException | None = None, skipped: str | None = None) -> dict:
        if error is not None:
            self.result["status"] = "fail"
            self.result["error"] = f"{type(error).__name__}: {error}"
            self.result["traceback"] = "".join(traceback.format_exception(error))
        elif skipped:
            self.result["status"] = "skipped"
            self.result["why"] = skipped
        else:
            self.result["status"] = "ok" if all(c["ok"] for c in self.result["checks"]) else "fail"
        self.flush()
        with open(self.out / "parts.jsonl", "a") as f:  # one line per part, appended when it ends
            f.write(json.dumps({k: v for k, v in self.result.items() if k != "traceback"}) + "\n")
        return self.result


def died(out: Path, name: str, limit_s: float, profile: str, why: str) -> dict:
    """What the runner writes for a part that its time limit (or a crash) killed: whatever the part had
    flushed, marked fail with `why`."""
    path = Path(out) / "parts" / f"{name}.json"
    try:
        result = json.loads(path.read_text())
    except (OSError, ValueError):
        result = {"name": name, "profile": profile, "checks": [], "skipped": [], "data": {}}
    result.update({"status": "fail", "limit_s": limit_s, "seconds": limit_s,
                   "error": f"{why} (what it had finished is kept in data)"})
    write_json_atomic(path, result)
    with open(Path(out) / "parts.jsonl", "a") as f:
        f.write(json.dumps(result) + "\n")
    return result


def not_run(out: Path, name: str, why: str, profile: str) -> dict:
    result = {"name": name, "profile": profile, "status": "skipped", "seconds": 0.0, "why": why, "checks": [],
              "skipped": [], "data": {}}
    write_json_atomic(Path(out) / "parts" / f"{name}.json", result)
    with open(Path(out) / "parts.jsonl", "a") as f:
        f.write(json.dumps(result) + "\n")
    return result


def summarize(out: Path, names) -> dict:
    """summary.json and summary.md from the parts' files, in the order of `names`."""
    out = Path(out)
    parts = []
    for name in names:
        path = out / "parts" / f"{name}.json"
        if path.exists():
            parts.append(json.loads(path.read_text()))
        else:
            parts.append({"name": name, "status": "skipped", "seconds": 0.0, "why": "not run", "checks": []})
    summary = {"parts": parts, "ok": all(p["status"] != "fail" for p in parts),
               "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    write_json_atomic(out / "summary.json", summary)
    atomic_write(out / "summary.md", markdown(summary))
    return summary


def _table(rows: list[dict], columns: list[tuple[str, str, str]]) -> list[str]:
    lines = ["| " + " | ".join(h for h, _, _ in columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        cells = []
        for _, key, fmt in columns:
            v = r.get(key)
            cells.append("-" if v is None else format(v, fmt) if fmt else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def markdown(summary: dict) -> str:
    lines = ["# gpu-check", "", f"{summary['time']}: {'all parts ok' if summary['ok'] else 'SOME PARTS FAILED'}", "",
             "| part | status | seconds | checks |", "|---|---|---|---|"]
    for p in summary["parts"]:
        n_ok = sum(c["ok"] for c in p.get("checks", []))
        lines.append(f"| {p['name']} | {p['status']} | {p.get('seconds', 0):.0f} | {n_ok}/{len(p.get('checks', []))} |")
    for p in summary["parts"]:
        lines += ["", f"## {p['name']}: {p['status']}", ""]
        if p.get("why"):
            lines.append(f"skipped: {p['why']}")
        if p.get("error"):
            lines.append(f"error: `{p['error']}`")
        env = p.get("data", {}).get("environment")
        if env:
            lines += [f"- {k}: {v}" for k, v in env.items()]
        for c in p.get("checks", []):
            lines.append(f"- {'ok  ' if c['ok'] else 'FAIL'} {c['name']}: {c['detail']}")
        for s in p.get("skipped", []):
            lines.append(f"- skipped {s['name']}: {s['why']}")
        for title, rows in p.get("data", {}).items():
            if isinstance(rows, list) and rows and isinstance(rows[0], dict) and "ms_per_step" in rows[0]:
                lines += ["", f"{title}:", ""] + _table(rows, [
                    ("arch", "arch", ""), ("rule", "rule", ""), ("ms/step", "ms_per_step", ".1f"),
                    ("/ bp", "vs_bp", ".3f"), ("sd", "vs_bp_sd", ".3f"), ("img/s", "images_per_s", ".0f"),
                    ("peak MB", "peak_mb", ".0f"), ("GFLOP/step", "total_gflop", ".1f"),
                    ("FLOPs / bp", "flops_vs_bp", ".3f")])
    return "\n".join(lines) + "\n"
