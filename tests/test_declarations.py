"""The declarations the DAG runs from hold against the code: the params keys each stage's code reads are the
keys the schema declares for it (x-read-by), every module is a code dependency of a stage or declared
output-neutral, and the report writes exactly the files the DAG declares.

    nice pytest -q tests/test_declarations.py

One in-process pipeline on the ci settings (synthetic archives, resnet18 bp and wm, one seed) records, stage by
stage, every params key its code reads: `dlwt.params.load` and the data config's `resolve` hand out dicts that log
each read.
"""
from __future__ import annotations

import collections
import copy
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from dlwt import code_deps, dag, layout
from dlwt.params import load

REPO = Path(__file__).resolve().parents[1]
READS: list[str] = []  # dotted keys read since the last clear, in order


class Recorded(dict):
    """A params dict (or section) that appends the dotted key of every value read to READS. Copies made with
    deepcopy stay recorded; pickling (torch.save of a checkpoint's params) stores a plain OrderedDict, which
    checkpoints may hold."""

    def __init__(self, data: dict, prefix: str = ""):
        super().__init__({k: Recorded(v, f"{prefix}{k}.") if isinstance(v, dict) else v for k, v in data.items()})
        self.prefix = prefix

    def __getitem__(self, key):
        READS.append(f"{self.prefix}{key}")
        return super().__getitem__(key)

    def get(self, key, default=None):
        if key in self:
            READS.append(f"{self.prefix}{key}")
        return super().get(key, default)

    def __deepcopy__(self, memo):
        return Recorded(copy.deepcopy(dict(self), memo), self.prefix)

    def __reduce_ex__(self, protocol):
        return collections.OrderedDict, (), None, None, iter(dict.items(self))


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """Every stage of the ci pipeline run in-process in a scratch folder: {job name: keys its code read}, the
    files the report wrote, the params and the folder."""
    from yaml.representer import SafeRepresenter

    import dlwt.data.config
    import dlwt.data.loaders  # noqa: F401  (imported before patching, so its `resolve` is patched too)
    import dlwt.data.stages  # noqa: F401
    import dlwt.params
    from dlwt.cli import main

    root = tmp_path_factory.mktemp("declared")
    (root / "paper").mkdir()
    shutil.copy(REPO / "paper" / "published.yaml", root / "paper" / "published.yaml")
    params = load(REPO / "params.yaml", [REPO / "config" / "ci.yaml"])
    # one seed per rule and the smallest arch: the keys a run reads depend on neither
    params["model"].update(seeds=[0], archs=["resnet8"])
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    mp = pytest.MonkeyPatch()
    real_load, real_complete, real_resolve = dlwt.params.load, dlwt.params.complete, dlwt.data.config.resolve

    def recorded(function, prefix=""):
        """`function`'s result recorded; what it reads itself (validation reads every key) is not a stage's read."""
        def run(*args, **kwargs):
            n = len(READS)
            out = function(*args, **kwargs)
            del READS[n:]
            return Recorded(out, prefix)
        return run

    mp.setattr(dlwt.params, "load", recorded(real_load))
    mp.setattr(dlwt.params, "complete", recorded(real_complete))  # the report completes a caller's params
    for mod in [m for name, m in sys.modules.items() if name.startswith("dlwt")]:
        for attr, value in list(vars(mod).items()):
            if value is real_resolve:  # the resolved data cfg the stages read from: recorded as data.*
                mp.setattr(mod, attr, recorded(real_resolve, "data."))
    mp.setitem(yaml.SafeDumper.yaml_representers, Recorded, SafeRepresenter.represent_dict)
    mp.chdir(root)
    reads, before = {}, set()
    try:
        for j in dag.jobs(params):
            argv = [w if w != "{params}" else "params.yaml" for w in j.cmd[1:]]
            if j.stage == "report":
                before = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}
            READS.clear()
            assert main(argv) == 0, j.name
            reads[j.name] = list(READS)
    finally:
        mp.undo()
    wrote = {str(p.relative_to(root)) for p in root.rglob("*")
             if p.is_file() and before.get(p) != p.stat().st_mtime_ns}
    return {"reads": reads, "report_wrote": wrote, "params": params, "root": root}


def test_each_stage_reads_only_the_params_keys_the_schema_declares_for_it(pipeline):
    params, declared = pipeline["params"], dag.declared()
    free = set(dag.operational_keys()) | set(dag.path_keys())  # never an output's dependency
    undeclared = {}
    for j in dag.jobs(params):
        allowed = set(j.keys) | free
        for read in pipeline["reads"][j.name]:
            key = next((k for k in declared if read == k or read.startswith(k + ".")), None)
            if key is None:
                assert any(k.startswith(read + ".") for k in declared), f"{j.name} reads {read}: not in the schema"
                continue  # a section, not a value
            if key not in allowed:
                undeclared.setdefault(j.name, set()).add(key)
    assert undeclared == {}, f"{undeclared}: add the stage to these keys' x-read-by in src/dlwt/params_schema.yaml"
    # the recording sees the reads: train reads its recipe, the wm run its mirror settings, the report its dpi
    assert {"train.lr", "data.batch_size"} <= set(pipeline["reads"]["train-resnet8-bp-s0"])
    assert any(r.startswith("mirror.") for r in pipeline["reads"]["train-resnet8-wm-s0"])
    assert not any(r.startswith("mirror.") for r in pipeline["reads"]["train-resnet8-bp-s0"])
    assert "report.dpi" in pipeline["reads"]["report"]


def test_the_report_writes_exactly_the_files_the_dag_declares(pipeline):
    declared = set(dag.job(pipeline["params"], "report").outs)
    assert pipeline["report_wrote"] == declared
    figures = {Path(o).name for o in declared if "/figures/" in o}
    assert {"fig_final_error.png", "fig_grad_alignment_vs_epoch.pdf"} <= figures  # once missing from the DAG
    assert len(figures) == 2 * len(layout.figure_stems(pipeline["params"]))


def test_every_module_is_a_stages_code_dependency_or_declared_output_neutral():
    used = {m for stage in code_deps.ENTRY for m in code_deps.stage_modules(stage)}
    neither = [m for m in code_deps.all_modules() if m not in used and m not in code_deps.OUTPUT_NEUTRAL]
    assert neither == [], "import it from a stage, or declare it in dlwt.code_deps.OUTPUT_NEUTRAL with the reason"
    assert set(code_deps.OUTPUT_NEUTRAL) <= set(code_deps.all_modules())  # no stale declaration
    assert not used & set(code_deps.OUTPUT_NEUTRAL)


def test_code_dependencies_follow_the_imports_without_importing_torch(tmp_path):
    import subprocess

    code = ("import sys; from dlwt import code_deps as c; report = c.stage_files('report'); "
            "assert 'dlwt/claims.py' in report and 'dlwt/table1.py' in report, report; "
            "assert 'dlwt/rules.py' in c.stage_files('train') and 'dlwt/checkpoint.py' in c.stage_files('evaluate'); "
            "assert 'dlwt/data/fashion_mnist.py' in c.stage_files('extract'); "
            "assert 'dlwt/data/ffcv_io.py' not in c.stage_files('acquire'); "
            "assert 'dlwt/progress.py' not in c.stage_files('convert'); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path,
                   env={"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin"})
