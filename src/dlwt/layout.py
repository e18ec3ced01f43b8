"""Where every run and result lives: the one declaration of run ids, the run folder's files, the eval path
and the roots. The Snakefile, dvc.yaml's generator, the stages and the report all read it.

    from dlwt import layout
    layout.run_id("resnet18", "wm", 0)             # 'resnet18-wm-s0'
    layout.Run(layout.run_dir("imagenet", "resnet18-wm-s0")).last   # results/imagenet/runs/resnet18-wm-s0/checkpoints/last.pt

Names that become path components (exp, dataset, class names, WNIDs) go through `safe_name` first: no '.',
'..', separators or absolute paths, so nothing the pipeline writes or removes can leave its root.
"""
from __future__ import annotations

import itertools
import re
from pathlib import Path

from dlwt.errors import DlwtError

RESULTS, PAPER = "results", "paper"
_SAFE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]*$")


def safe_name(name: str, what: str) -> str:
    """`name` if it is one plain path component (letters, digits, _ . + -, not starting with '.'), else
    DlwtError naming `what` (e.g. "params exp")."""
    if not isinstance(name, str) or not _SAFE.match(name) or name in (".", ".."):
        raise DlwtError(f"{what}={name!r} is not a plain folder name: use letters, digits, '_', '-', '.' "
                        "(not starting with '.'), no '/' or '..'")
    return name


def run_id(arch: str, rule: str, seed: int) -> str:
    return f"{arch}-{rule}-s{int(seed)}"


def parse_run_id(name: str) -> tuple[str, str, int]:
    """(arch, rule, seed) from '<arch>-<rule>-s<seed>'."""
    m = re.fullmatch(r"(.+)-([a-z]+)-s(\d+)", name)
    if not m:
        raise DlwtError(f"{name!r} is not a run id <arch>-<rule>-s<seed>")
    return m.group(1), m.group(2), int(m.group(3))


def run_ids(params: dict) -> list[str]:
    """Every run params asks for, in params order (arch, then rule, then seed)."""
    m = params["model"]
    return [run_id(a, r, s) for a, r, s in itertools.product(m["archs"], m["rules"], m["seeds"])]


def exp_dir(exp: str) -> Path:
    return Path(RESULTS) / safe_name(exp, "exp")


def paper_dir(exp: str) -> Path:
    return Path(PAPER) / safe_name(exp, "exp")


def run_dir(exp: str, run: str) -> Path:
    return exp_dir(exp) / "runs" / run


def eval_path(exp: str, run: str) -> Path:
    return exp_dir(exp) / "eval" / f"{run}.json"


def figure_stems(params: dict) -> list[str]:
    """The report's figures (each written as <stem>.pdf and <stem>.png); the set depends only on params."""
    return ["fig_error_vs_epoch", *(f"fig_angle_vs_epoch_{a}" for a in params["model"]["archs"]),
            "fig_final_alignment"]


def report_outputs(params: dict) -> list[Path]:
    """Every file `dlwt report` writes for params: the Snakefile's and dvc.yaml's report outputs."""
    res, pap = exp_dir(params["exp"]), paper_dir(params["exp"])
    return [res / "summary.csv", res / "summary.json", res / "curves.csv",
            pap / "table1.md", pap / "table1.tex", pap / "README.md",
            *(pap / "figures" / f"{stem}.{fmt}" for stem in figure_stems(params) for fmt in ("pdf", "png"))]


class Run:
    """The files of one run folder (results/<exp>/runs/<run>/)."""

    def __init__(self, out):
        self.out = Path(out)
        self.metrics = self.out / "metrics.jsonl"      # one line per finished epoch
        self.config = self.out / "config.json"         # resolved params + provenance
        self.checkpoints = self.out / "checkpoints"
        self.last = self.checkpoints / "last.pt"       # the resume point (model, optimiser, RNG, position)
        self.final = self.checkpoints / "final.pt"     # written last: the run finished
        self.lock = self.out / ".lock"                 # held by the one `dlwt train` writing here
        self.live = self.out / "dvclive"               # DVCLive: metrics.json (latest) and plots/metrics/**.tsv
