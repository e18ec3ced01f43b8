"""The run files a report reads, checked: each run's evaluation JSON and metrics.jsonl, and the tidy frame
(arch, rule, seed, epoch, metric, value) that the report's summaries and figures are drawn from.

    python -c "from dlwt import run_files; print(run_files.load(...))"   # dlwt.report is the stage that calls it

A NaN error stops with one line naming the file; other NaNs (an angle) are left out, so they show as missing.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from dlwt import layout
from dlwt.errors import DlwtError

COLUMNS = ["arch", "rule", "seed", "epoch", "metric", "value"]
# wall-clock numbers differ on every rerun: they stay in metrics.jsonl and the eval files, out of the summary,
# so a rerun of the same results rewrites the same summary files (and `git status` stays clean)
TIMING = ("images_per_s", "seconds", "train_seconds", "val_seconds")


run_name = layout.run_id  # <arch>-<rule>-s<seed>, spelled once (dlwt.layout)


def expected_runs(params: dict) -> list[tuple[str, str, int]]:
    m = params["model"]
    return [(a, r, int(s)) for a in m["archs"] for r in m["rules"] for s in m["seeds"]]


def _fraction(path: Path, key: str, x) -> float:
    if isinstance(x, float) and math.isnan(x):
        raise DlwtError(f"{path}: {key} is NaN: the run diverged; fix its recipe (lr, warm-up) and rerun "
                        "train and evaluate for it")
    if not isinstance(x, (int, float)) or not 0.0 <= x <= 1.0:
        raise DlwtError(f"{path}: {key} = {x!r}, expected an error fraction in [0, 1]")
    return float(x)


def read_eval(path: Path, arch: str, rule: str, seed: int) -> dict:
    try:
        ev = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DlwtError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(ev, dict):
        raise DlwtError(f"{path}: holds a JSON {type(ev).__name__}, not the object `dlwt evaluate` writes; "
                        "rerun evaluate for it")
    for key, want in (("arch", arch), ("rule", rule), ("seed", seed)):
        if ev.get(key) != want:
            raise DlwtError(f"{path}: {key} = {ev.get(key)!r} but the file name says {want!r}")
    for key in ("val_top1_err", "val_top5_err"):
        _fraction(path, key, ev.get(key))
    return ev


def read_metrics(path: Path) -> list[dict]:
    rows = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DlwtError(f"{path}: line {i}: not valid JSON ({e})") from None
        if not isinstance(row.get("epoch"), int):
            raise DlwtError(f"{path}: line {i}: missing integer 'epoch'")
        if "val_top1_err" in row:
            _fraction(path, f"line {i}: val_top1_err", row["val_top1_err"])
        rows.append(row)
    return rows


def _is_num(x) -> bool:
    """A finite number: NaN/inf (an undefined angle, a diverged loss) is left out, so it shows as missing."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def load(exp_dir: Path, params: dict) -> dict:
    """Every expected run's eval dict and metrics rows (under exp_dir, results/<exp>), and the names of those
    without one."""
    results_dir = Path(exp_dir).parent
    out = {"evals": {}, "metrics": {}, "missing_eval": [], "missing_metrics": []}
    for a, r, s in expected_runs(params):
        name = run_name(a, r, s)
        ev = layout.eval_path(params["exp"], name, results_dir)
        mt = layout.Run(layout.run_dir(params["exp"], name, results_dir)).metrics
        if ev.is_file():
            out["evals"][a, r, s] = read_eval(ev, a, r, s)
        else:
            out["missing_eval"].append(name)
        if mt.is_file():
            out["metrics"][a, r, s] = read_metrics(mt)
        else:
            out["missing_metrics"].append(name)
    return out


def tidy(runs: dict) -> pd.DataFrame:
    """One row per (run, epoch, metric): the per-epoch log, then the final evaluation (metrics 'final_*')."""
    rows = []
    for (a, r, s), log in runs["metrics"].items():
        for row in log:
            ep = row["epoch"]
            rows += [(a, r, s, ep, k, float(v)) for k, v in row.items()
                     if k not in ("epoch", *TIMING) and _is_num(v)]
            for layer, al in (row.get("alignment") or {}).items():
                rows += [(a, r, s, ep, f"{k}/{layer}", float(v)) for k, v in al.items() if _is_num(v)]
            # before the first step (first row only): epoch 0, metrics 'init_<key>/<layer>' (dlwt.mechanism)
            for layer, al in (row.get("alignment_init") or {}).items():
                rows += [(a, r, s, 0, f"init_{k}/{layer}", float(v)) for k, v in al.items() if _is_num(v)]
            # per-epoch angle(rule update, backprop gradient) on one fixed train batch, where train logs it
            rows += [(a, r, s, ep, f"grad_angle_deg/{layer}", float(v))
                     for layer, v in (row.get("grad_alignment") or {}).items() if _is_num(v)]
    for (a, r, s), ev in runs["evals"].items():
        ep = ev.get("epoch")
        rows += [(a, r, s, ep, f"final_{k}", float(v)) for k, v in ev.items()
                 if k not in ("seed", "epoch", *TIMING) and _is_num(v)]
        for layer, al in (ev.get("alignment") or {}).items():
            rows += [(a, r, s, ep, f"final_{k}/{layer}", float(v)) for k, v in al.items() if _is_num(v)]
        for layer, v in (ev.get("gradient_alignment") or {}).items():
            rows.append((a, r, s, ep, f"final_grad_angle_deg/{layer}", float(v)))
    df = pd.DataFrame(rows, columns=COLUMNS)
    return df.astype({"epoch": "Int64"})  # nullable: an eval file may lack 'epoch'


def curves(df: pd.DataFrame, params: dict) -> pd.DataFrame:
    """The DVC plots file: epoch, then one column '<arch>-<rule>' per run group holding the top-1 test error
    (%) averaged over seeds, so `dvc plots show` draws one line per rule and arch."""
    cols = [f"{a}-{r}" for a in params["model"]["archs"] for r in params["model"]["rules"]]
    d = df[df["metric"] == "val_top1_err"]
    if d.empty:
        return pd.DataFrame(columns=["epoch", *cols])
    d = d.assign(series=d["arch"] + "-" + d["rule"], value=100 * d["value"])
    wide = d.pivot_table(index="epoch", columns="series", values="value", aggfunc="mean")
    return wide.reindex(columns=cols).reset_index().astype({"epoch": int})
