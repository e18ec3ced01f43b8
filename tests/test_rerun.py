"""The rerun table (issue 11): from a finished pipeline on the ci settings (2 rules x 1 seed), each params edit
makes Snakemake and DVC rerun exactly the jobs whose params keys (src/dlwt/dag.py) it touches, and nothing else.

    nice pytest -q -m slow tests/test_rerun.py      # one real run (about 5 minutes on 2 cores), then dry runs

The finished state is built once per test run (tests/conftest.py's ci_pipeline: the CI smoke run itself, a real
`snakemake --cores 2 --configfile config/ci.yaml` in a scratch git + DVC repository; then params.yaml becomes
params.yaml + config/ci.yaml and `dvc commit` records the same state in dvc.lock). Each edit is then asked of
both runners without running anything (`snakemake -n` lists every job it would run, all edits side by side;
DVC's `status`, in-process, lists the stages whose own deps or params changed, and a stage reruns when it or an
upstream stage does: the descendants in DVC's own graph), and undone.
"""
from __future__ import annotations

import contextlib
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import BIN, ENV, sh
from dlwt import dag, dvc_yaml, layout
from dlwt.params import deep_merge

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]


@pytest.fixture(scope="module")
def finished(ci_pipeline):
    """conftest's ci_pipeline: a scratch repository after the real, complete smoke run, known to both runners."""
    repo, params = ci_pipeline
    assert snakemake_reruns(repo, [{}]) == [set()] and dvc_reruns(repo, {}) == set()
    return repo, params


def snakemake_reruns(repo: Path, overlays: list[dict]) -> list[set[str]]:
    """For each overlay, the jobs `snakemake -n --configfile <overlay>` would run, named like dvc.yaml's stages.
    The dry runs run side by side (--nolock: none of them writes), one Snakemake start each."""
    procs = []
    for i, overlay in enumerate(overlays):
        (repo / f"edit-{i}.yaml").write_text(yaml.safe_dump(overlay))
        procs.append(subprocess.Popen([str(BIN / "snakemake"), "-n", "--nolock", "--configfile", f"edit-{i}.yaml"],
                                      cwd=repo, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outs = [p.communicate(timeout=600) for p in procs]
    for i, (p, (out, err)) in enumerate(zip(procs, outs)):
        (repo / f"edit-{i}.yaml").unlink()
        assert p.returncode == 0, f"snakemake -n with {overlays[i]} failed:\n{out[-3000:]}\n{err[-3000:]}"
    return [_jobs(out) for out, _ in outs]


def _jobs(out: str) -> set[str]:
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
    README says to after editing model.*): the changed ones and everything downstream of them. DVC's own
    `status` (what `dvc status --json` prints), asked in-process."""
    import networkx as nx
    from dvc.repo import Repo

    base_params, base_dvc = (repo / "params.yaml").read_text(), (repo / "dvc.yaml").read_text()
    params = deep_merge(yaml.safe_load(base_params), overlay)
    try:
        (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        (repo / "dvc.yaml").write_text(dvc_yaml.render(params))
        with contextlib.chdir(repo), Repo(str(repo)) as dvc:
            changed = set(dvc.status())
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
    ({"model": {"seeds": [0, 1]}}, lambda p: expected(p, "train", "evaluate", "report",
                                                      runs=["resnet18-bp-s1", "resnet18-wm-s1"])),
    ({"train": {"epochs": 1}}, lambda p: set()),  # an overlay that changes nothing
    ({"data": {"num_workers": 2}, "container": "other.sif", "train": {"log_every": 7}}, lambda p: set()),  # operational
]
IDS = ["train.lr", "mirror.lr", "train.grad_batch", "report.dpi", "data.res", "data.max_resolution", "new seed",
       "overlay that changes nothing", "operational keys"]


@pytest.fixture(scope="module")
def snakemake_plans(finished):
    """Every edit of TABLE asked of Snakemake at once: {id: the jobs it would run}."""
    repo, _ = finished
    return dict(zip(IDS, snakemake_reruns(repo, [overlay for overlay, _ in TABLE])))


@pytest.mark.parametrize("overlay, reruns", TABLE, ids=IDS)
def test_snakemake_reruns_exactly_what_an_edit_touches(finished, snakemake_plans, overlay, reruns, request):
    _, params = finished
    assert snakemake_plans[request.node.callspec.id] == reruns(params)


@pytest.mark.parametrize("overlay, reruns", TABLE, ids=IDS)
def test_dvc_reruns_exactly_what_an_edit_touches(finished, overlay, reruns):
    repo, params = finished
    assert dvc_reruns(repo, overlay) == reruns(params)


def test_finished_pipeline_wrote_every_output_and_the_benchmarks(finished):
    repo, params = finished
    with contextlib.chdir(repo):
        assert len(dag.check_outputs(params)) > 20
    assert {p.name for p in (repo / "logs" / "ci" / "benchmarks" / "train").iterdir()} == \
        {f"{run}.tsv" for run in layout.run_ids(params)}


def test_snakemakes_html_report_holds_table_1_the_verdicts_and_the_figures(finished):
    repo, params = finished
    proc = sh([BIN / "snakemake", "--report", "report.html"], repo)
    added = set(re.findall(r"Adding (\S+) \(", proc.stdout + proc.stderr))
    assert {"table1.md", "README.md", "summary.csv"} <= added
    assert {f"{stem}.png" for stem in layout.figure_stems(params)} <= added
    assert (repo / "report.html").stat().st_size > 100_000
