"""Where every run and result lives: the one declaration of run ids, the run folder's files, the eval path,
the report's files and the roots (the only place a file name of the pipeline's outputs is spelled). The
Snakefile, dvc.yaml's generator, the stages and the report all read it.

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
SOURCE_ROOT = "src"  # the package's folder in the repository (dvc.yaml's code deps: src/dlwt/...)
FIGURE_FORMATS = ("pdf", "png")
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


def exp_dir(exp: str, results=RESULTS) -> Path:
    return Path(results) / safe_name(exp, "exp")


def paper_dir(exp: str) -> Path:
    return Path(PAPER) / safe_name(exp, "exp")


def run_dir(exp: str, run: str, results=RESULTS) -> Path:
    return exp_dir(exp, results) / "runs" / run


def eval_path(exp: str, run: str, results=RESULTS) -> Path:
    return exp_dir(exp, results) / "eval" / f"{run}.json"


def figures(params: dict) -> dict[str, tuple[str, str | None]]:
    """{file stem: (what it draws, its arch or None)} for the report's figures, in the README's order; each is
    written as <stem>.pdf and <stem>.png. dlwt.figures draws `what` (for one arch where it is given)."""
    per_arch = {f"fig_angle_vs_epoch_{a}": ("angle_vs_epoch", a) for a in params["model"]["archs"]}
    return {"fig_error_vs_epoch": ("error_vs_epoch", None), "fig_final_error": ("final_error", None), **per_arch,
            "fig_final_alignment": ("final_alignment", None),
            "fig_grad_alignment_vs_epoch": ("grad_alignment_vs_epoch", None),
            # the mechanisms behind kp's and wm's alignment against their predictions (dlwt.mechanism)
            **({"fig_kp_mechanism": ("kp_mechanism", None)} if "kp" in params["model"]["rules"] else {}),
            **({"fig_wm_mechanism": ("wm_mechanism", None)} if "wm" in params["model"]["rules"] else {})}


def figure_stems(params: dict) -> list[str]:
    """The report's figure stems; the set depends only on params."""
    return list(figures(params))


def dvc_metrics(params: dict) -> Path:
    """The flat summary `dvc metrics show` and `dvc exp show` display (written by the report)."""
    return exp_dir(params["exp"]) / "metrics.json"


def report_files(params: dict, results=RESULTS, paper=PAPER) -> dict[str, Path]:
    """{what: path} for every file `dlwt report` writes (under other roots for tests): the report writes
    exactly these, and they are the Snakefile's and dvc.yaml's report outputs."""
    res, pap = exp_dir(params["exp"], results), Path(paper) / safe_name(params["exp"], "exp")
    files = {"summary.csv": res / "summary.csv", "summary.json": res / "summary.json",
             "metrics.json": res / dvc_metrics(params).name, "curves.csv": res / "curves.csv",
             "table1.md": pap / "table1.md", "table1.tex": pap / "table1.tex", "README.md": pap / "README.md"}
    files.update({f"{stem}.{fmt}": pap / "figures" / f"{stem}.{fmt}"
                  for stem in figures(params) for fmt in FIGURE_FORMATS})
    return files


def report_outputs(params: dict) -> list[Path]:
    """Every file `dlwt report` writes for params: the Snakefile's and dvc.yaml's report outputs."""
    return list(report_files(params).values())


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

    def live_series(self, name: str) -> Path:
        """One DVCLive series, e.g. live_series("val/top1_err.tsv"): step and value per line."""
        return self.live / "plots" / "metrics" / name
