"""The rerun table (issue 11): from a finished pipeline on the ci settings (2 rules x 2 seeds), each params edit
makes Snakemake and DVC rerun exactly the jobs whose params keys (src/dlwt/dag.py) it touches, and nothing else.

    nice pytest -q -m slow tests/test_rerun.py      # one real run (about 5 minutes on 2 cores), then dry runs

The finished state is built once: a real `snakemake --cores 2` in a scratch git + DVC repository whose
params.yaml is params.yaml + config/ci.yaml, then `dvc commit` records the same state in dvc.lock. Each edit is
then asked of both runners without running anything (`snakemake -n` lists every job it would run; DVC's
`status` lists the stages whose own deps or params changed, and a stage reruns when it or an upstream stage
does: the descendants in DVC's own graph), and undone.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dlwt import dag, dvc_yaml, layout
from dlwt.params import deep_merge, load

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ENV = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1",
       "PYTHONPATH": str(REPO / "src"), "MPLBACKEND": "Agg", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
       "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]


def sh(args, cwd, check=True):
    proc = subprocess.run([str(a) for a in args], cwd=cwd, env=ENV, capture_output=True, text=True)
    if check and proc.returncode:
        raise AssertionError(f"{args} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A scratch repository after a real, complete pipeline run on the ci settings, known to both runners."""
    repo = tmp_path_factory.mktemp("finished")
    for name in ("Snakefile", "src", "paper/published.yaml", "paper/report.rst"):
        src, dst = REPO / name, repo / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, dst, **({"ignore": shutil.ignore_patterns(
            "__pycache__")} if src.is_dir() else {}))
    params = load(REPO / "params.yaml", [REPO / "config" / "ci.yaml"])
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (repo / "dvc.yaml").write_text(dvc_yaml.render(params))
    (repo / ".gitignore").write_text("/data/\n/logs/\n/.snakemake/\n__pycache__/\n/results/\n/paper/ci/\n")
    sh(["git", "init", "-q"], repo)
    sh([BIN / "dvc", "init", "-q"], repo)
    shutil.copy(REPO / ".dvc" / "config", repo / ".dvc" / "config")  # cache.type hardlink: keeps mtimes
    sh(["git", "add", "-A"], repo)
    sh(["git", "commit", "-qm", "pipeline"], repo)
    sh([BIN / "snakemake", "--cores", "2"], repo)
    sh([BIN / "dvc", "commit", "-f"], repo)  # dvc.lock: the same finished state, without running it again
    assert snakemake_reruns(repo, {}) == set() and dvc_reruns(repo, {}) == set()
    return repo, params


def snakemake_reruns(repo: Path, overlay: dict) -> set[str]:
    """The jobs `snakemake -n --configfile <overlay>` would run, named like dvc.yaml's stages."""
    (repo / "edit.yaml").write_text(yaml.safe_dump(overlay))
    out = sh([BIN / "snakemake", "-n", "--configfile", "edit.yaml"], repo).stdout
    jobs, rule = [], None
    for line in out.splitlines():
        if m := re.match(r"(?:local)?rule (\w+):$", line):
            rule = m.group(1)
            jobs.append(rule)
        elif (m := re.match(r"\s+wildcards: run=(\S+)$", line)) and rule:
            jobs[-1] = f"{rule}-{m.group(1)}"
    return set(jobs) - {"all"}


def dvc_reruns(repo: Path, overlay: dict) -> set[str]:
    """The stages `dvc repro` would run with the edit merged into params.yaml (dvc.yaml regenerated, as the
    README says to after editing model.*): the changed ones and everything downstream of them."""
    import networkx as nx
    from dvc.repo import Repo

    base_params, base_dvc = (repo / "params.yaml").read_text(), (repo / "dvc.yaml").read_text()
    params = deep_merge(yaml.safe_load(base_params), overlay)
    try:
        (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        (repo / "dvc.yaml").write_text(dvc_yaml.render(params))
        changed = set(json.loads(sh([BIN / "dvc", "status", "--json"], repo).stdout))
        with Repo(str(repo)) as dvc:
            graph = dvc.index.graph  # edges point from a stage to the stages it depends on
            names = {stage: stage.addressing.split(":")[-1] for stage in graph.nodes}
            by_name = {name: stage for stage, name in names.items()}
            return {names[s] for c in changed for s in {by_name[c], *nx.ancestors(graph, by_name[c])}}
    finally:
        (repo / "params.yaml").write_text(base_params)
        (repo / "dvc.yaml").write_text(base_dvc)


def expected(params: dict, *stages: str, rule: str | None = None, runs=None) -> set[str]:
    """dvc.yaml stage names: the data stages named, and train/evaluate of every run (or of `rule`, or `runs`)."""
    names = set()
    for stage in stages:
        if stage in ("train", "evaluate"):
            for run in runs or layout.run_ids(params):
                if rule is None or layout.parse_run_id(run)[1] == rule:
                    names.add(f"{stage}-{run}")
        else:
            names.add(stage)
    return names


TABLE = [  # (edit as an overlay, what reruns)
    ({"train": {"lr": 0.05}}, lambda p: expected(p, "train", "evaluate", "report")),
    ({"mirror": {"lr": 0.01}}, lambda p: expected(p, "train", "evaluate", rule="wm") | {"report"}),
    ({"train": {"grad_batch": 2}}, lambda p: expected(p, "evaluate", "report")),
    ({"report": {"dpi": 100}}, lambda p: {"report"}),
    ({"data": {"res": 40}}, lambda p: expected(p, "train", "evaluate", "report")),
    ({"data": {"max_resolution": 40}}, lambda p: expected(p, "convert", "train", "evaluate", "report")),
    ({"model": {"seeds": [0, 1, 2]}}, lambda p: expected(p, "train", "evaluate", "report",
                                                         runs=["resnet18-bp-s2", "resnet18-wm-s2"])),
    ({"train": {"epochs": 1}}, lambda p: set()),  # an overlay that changes nothing
    ({"data": {"num_workers": 2}, "container": "other.sif", "train": {"log_every": 7}}, lambda p: set()),  # operational
]
IDS = ["train.lr", "mirror.lr", "train.grad_batch", "report.dpi", "data.res", "data.max_resolution", "new seed",
       "overlay that changes nothing", "operational keys"]


@pytest.mark.parametrize("overlay, reruns", TABLE, ids=IDS)
def test_snakemake_reruns_exactly_what_an_edit_touches(finished, overlay, reruns):
    repo, params = finished
    assert snakemake_reruns(repo, overlay) == reruns(params)


@pytest.mark.parametrize("overlay, reruns", TABLE, ids=IDS)
def test_dvc_reruns_exactly_what_an_edit_touches(finished, overlay, reruns):
    repo, params = finished
    assert dvc_reruns(repo, overlay) == reruns(params)


def test_finished_pipeline_wrote_every_output_and_the_benchmarks(finished):
    repo, params = finished
    here = os.getcwd()
    os.chdir(repo)
    try:
        assert len(dag.check_outputs(params)) > 20
    finally:
        os.chdir(here)
    assert {p.name for p in (repo / "logs" / "ci" / "benchmarks" / "train").iterdir()} == \
        {f"{run}.tsv" for run in layout.run_ids(params)}


def test_snakemakes_html_report_holds_table_1_the_verdicts_and_the_figures(finished):
    repo, params = finished
    proc = sh([BIN / "snakemake", "--report", "report.html"], repo)
    added = set(re.findall(r"Adding (\S+) \(", proc.stdout + proc.stderr))
    assert {"table1.md", "README.md", "summary.csv"} <= added
    assert {f"{stem}.png" for stem in layout.figure_stems(params)} <= added
    assert (repo / "report.html").stat().st_size > 100_000
