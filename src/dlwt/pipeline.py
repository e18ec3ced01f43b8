"""What the Snakefile needs at parse time, kept here so that the Snakefile holds no logic.

    python -c "import dlwt.pipeline as p, dlwt.params as q; print(p.run_ids(q.load('params.yaml')))"
"""
from __future__ import annotations

import itertools
import os

from dlwt.data.config import resolve
from dlwt.data.imagenet import ARCHIVES
from dlwt.errors import DlwtError


class PipelineError(DlwtError):
    """The pipeline cannot start; the message says what to do."""


def run_ids(params: dict) -> list[str]:
    """<arch>-<rule>-s<seed> for every run params asks for, in params order."""
    m = params["model"]
    return [f"{a}-{r}-s{s}" for a, r, s in itertools.product(m["archs"], m["rules"], m["seeds"])]


def paths(params: dict) -> dict:
    """Every file the DAG passes between stages (the same in the Snakefile and dvc.yaml)."""
    d = resolve(params["data"])
    root, ds, exp = d["root"], d["dataset"], params["exp"]
    return {"acquired": f"{root}/{ds}/acquired.json", "images": f"{root}/{ds}/images",
            "train_beton": f"{root}/{ds}/ffcv/train.beton", "val_beton": f"{root}/{ds}/ffcv/val.beton",
            "runs": f"results/{exp}/runs", "eval": f"results/{exp}/eval", "summary": f"results/{exp}/summary.json",
            "paper": f"paper/{exp}"}


def preflight(params: dict) -> None:
    """Stop before any work when the ImageNet archives are neither in place nor downloadable."""
    d = resolve(params["data"])
    if d["source"] != "imagenet":
        return
    missing = [name for role, (name, _) in ARCHIVES.items()
               if not os.path.exists(os.path.join(d["raw_dir"], name)) and role not in d["urls"]]
    if missing:
        raise PipelineError(
            f"ImageNet archives missing from {d['raw_dir']}/: {', '.join(missing)}. Put them there (an ImageNet "
            "account is needed; or give your own download links as data.urls in params.yaml), or run the demo "
            "instead: snakemake --cores all --configfile config/demo.yaml")


def overlay_flags(configfiles) -> str:
    """' --overlay <file>' for each --configfile Snakemake was given (params.yaml itself excluded)."""
    return "".join(f" --overlay {os.path.relpath(f)}" for f in configfiles
                   if os.path.abspath(f) != os.path.abspath("params.yaml"))


def check_outputs(params: dict) -> list[str]:
    """The final outputs the pipeline must have written for `params`, each non-empty; returns them.
    Raises PipelineError naming the first missing or empty one."""
    p = paths(params)
    files = [p["summary"], f"results/{params['exp']}/summary.csv", f"results/{params['exp']}/curves.csv",
             *(f"{p['paper']}/{name}" for name in ("README.md", "table1.md", "table1.tex")),
             *(f"{p['eval']}/{run}.json" for run in run_ids(params)),
             *(f"{p['runs']}/{run}/metrics.jsonl" for run in run_ids(params))]
    figures = os.path.join(p["paper"], "figures")
    files += sorted(os.path.join(figures, f) for f in os.listdir(figures)) if os.path.isdir(figures) else [figures]
    for f in files:
        if not os.path.isfile(f) or os.path.getsize(f) == 0:
            raise PipelineError(f"{f} is missing or empty: the pipeline did not finish (see logs/)")
    return files


if __name__ == "__main__":
    import sys

    from dlwt.params import load

    try:
        done = check_outputs(load(sys.argv[1], sys.argv[2:]))
    except PipelineError as e:
        sys.exit(f"dlwt: {e}")
    print(f"pipeline outputs: {len(done)} files, all non-empty")
