"""One DAG, two runners: the jobs Snakemake plans from the real Snakefile and the stages DVC reads from the real
(generated) dvc.yaml are dlwt.dag's jobs, with the same commands, files and params keys; the Snakefile parses
without torch, lints clean, and stops at once, in one line, on bad params or missing ImageNet archives.
The rerun table itself (both runners, from a finished run) is tests/test_rerun.py.

    nice pytest -q tests/test_pipeline.py
"""
import contextlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import BIN, ENV, REPO, pipeline_copy, sh
from dlwt import dag, layout
from dlwt.cli import main
from dlwt.params import load, schema

REDIRECT = re.compile(r"\s*>\s*\S+\s+2>&1(\s*# code [0-9a-f]+)?\s*$")  # the log, and the code hash


@pytest.fixture(scope="module")
def ci():
    return load(REPO / "params.yaml", [REPO / "config" / "ci.yaml"])


@pytest.fixture(scope="module")
def ci_repo(tmp_path_factory, ci):
    """A copy of the pipeline files whose params.yaml is params.yaml + config/ci.yaml (and dvc.yaml generated)."""
    repo = pipeline_copy(tmp_path_factory.mktemp("repo"), ("Snakefile", "src", "paper/published.yaml",
                                                            "paper/report.rst"))
    (repo / "params.yaml").write_text(yaml.safe_dump(ci, sort_keys=False))
    sh([BIN / "dvc", "init", "--no-scm", "-q"], repo)
    with contextlib.chdir(repo):
        assert main(["dag", "--write", "dvc.yaml"]) == 0  # `dlwt dag --write dvc.yaml`, in-process
    return repo


@pytest.fixture(scope="module")
def planned(ci_repo):
    """What `snakemake -n -p --forceall` plans on the ci repository (asked once for the module)."""
    return snakemake_jobs(ci_repo)


def snakemake_jobs(repo, *extra):
    """{name: (command, inputs, outputs)} of every job `snakemake -n -p --forceall` plans, rule all left out."""
    out = sh([BIN / "snakemake", "-n", "-p", "--forceall", *extra], repo).stdout
    jobs = {}
    for block in out.split("\n\n"):
        rule = re.search(r"^(?:local)?rule (\w+):", block, re.M)
        cmd = re.search(r"^Shell command: (.*)$", block, re.M)
        if not rule or rule.group(1) == "all":
            continue
        run = re.search(r"wildcards: run=(\S+)", block)
        files = {k: re.search(rf"^\s+{k}: (.*)$", block, re.M) for k in ("input", "output")}
        jobs[f"{rule.group(1)}-{run.group(1)}" if run else rule.group(1)] = (
            REDIRECT.sub("", cmd.group(1)).strip(),
            # "(update)": the report's outputs are updated in place (kept when the job fails)
            *(frozenset(f.removesuffix(" (update)") for f in m.group(1).split(", ")) if m else frozenset()
              for m in files.values()))
    return jobs


def test_snakemake_plans_exactly_the_jobs_of_dlwt_dag(planned, ci):
    want = {j.name: (j.command('"$DLWT_PARAMS"'), frozenset(j.deps), frozenset(j.outs)) for j in dag.jobs(ci)}
    assert planned == want
    assert len(want) == 3 + 2 * 2 + 1  # data stages, train + evaluate per (arch, rule, seed), report


def test_dvc_reads_exactly_the_jobs_of_dlwt_dag(ci_repo, ci):
    from dvc.repo import Repo

    with Repo(str(ci_repo)) as repo:
        stages = {s.name: s for s in repo.index.stages}
        assert set(stages) == {j.name for j in dag.jobs(ci)}
        for j in dag.jobs(ci):
            s = stages[j.name]
            assert s.cmd == j.command("params.yaml")
            assert [str(d.def_path) for d in s.deps if not hasattr(d, "params")] == [*j.deps, *j.code]
            params = [k for d in s.deps if hasattr(d, "params") for k in d.params]
            assert params == j.keys
            assert {str(o.def_path) for o in s.outs} == set(j.outs) | ({j.live} if j.live else set())


def test_dependencies_are_the_keys_each_stage_reads(ci):
    keys = {j.name: set(j.keys) for j in dag.jobs(ci)}
    assert {k for k in keys["train-resnet18-wm-s0"] if k.startswith("mirror.")} == \
        {f"mirror.{k}" for k in ci["mirror"]}
    assert not any(k.startswith("mirror.") for k in keys["train-resnet18-bp-s0"])
    assert "train.grad_batch" in keys["evaluate-resnet18-bp-s0"]
    assert "train.grad_batch" not in keys["train-resnet18-bp-s0"]
    for name, ks in keys.items():
        assert not ks & set(dag.operational_keys()), name
        assert name == "report" or not any(k.startswith("report.") for k in ks), name
    assert dag.train_keys("wm") == dag.job(ci, "train", "resnet18-wm-s0").keys
    picked = dag.pick(ci, dag.train_keys("bp"))
    assert picked["train.lr"] == ci["train"]["lr"] and picked["data.res"] == ci["data"]["res"]
    assert dag.pick({}, ["train.lr"]) == {"train.lr": None}  # an older checkpoint's params without the key


def test_a_train_run_restarts_exactly_when_one_of_its_keys_changed(ci):
    def edit(section, key, value):
        return {**ci, section: {**ci[section], key: value}}

    assert dag.changed_keys(ci, edit("mirror", "lr", 0.5), "wm") == ["mirror.lr"]
    assert dag.changed_keys(ci, edit("mirror", "lr", 0.5), "bp") == []
    assert dag.changed_keys(ci, edit("data", "batch_size", 8), "bp") == ["data.batch_size"]
    assert dag.changed_keys(ci, edit("data", "num_workers", 7), "wm") == []  # operational
    assert dag.changed_keys(ci, edit("train", "grad_batch", 7), "wm") == []  # evaluation only
    older = {**ci, "data": {k: v for k, v in ci["data"].items() if k != "min_res"}}
    assert dag.changed_keys(older, ci, "bp") == []  # a key added since, at its null default


def schema_leaves(node, prefix=""):
    props = node.get("properties")
    if not props or "x-read-by" in node:
        return [prefix]
    return [leaf for k, sub in props.items() for leaf in schema_leaves(sub, f"{prefix}.{k}" if prefix else k)]


def test_every_setting_is_read_by_a_stage_or_declared_operational(ci):
    """A new key must say what it reruns: it is a dependency of some stage, names files, or is operational
    (x-read-by: []); the code's reads are checked against these declarations in tests/test_declarations.py."""
    read = set(dag.operational_keys()) | set(dag.path_keys())
    for source in ("imagenet", "synthetic", "digits", "imagefolder", "fashion-mnist", "cifar10", "cifar100"):
        params = {**ci, "data": {**ci["data"], "source": source}}
        for j in dag.jobs(params):
            read |= set(j.keys)
        read |= set(dag.train_keys("wm"))
    assert [k for k in schema_leaves(schema()) if k not in read] == []


def test_dvc_yaml_is_generated_from_params_yaml_and_checked(cli):
    proc = cli("dag", "--check", "dvc.yaml", cwd=REPO)
    assert proc.returncode == 0, proc.stderr


def test_a_stale_dvc_yaml_is_named_in_one_line(cli, ci_repo, tmp_path):
    params = yaml.safe_load((ci_repo / "params.yaml").read_text())
    params["model"]["seeds"] = [0, 1, 2]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    shutil.copy(ci_repo / "dvc.yaml", tmp_path / "dvc.yaml")
    proc = cli("dag", "--check", "dvc.yaml", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "dlwt dag --write dvc.yaml" in proc.stderr


def test_reading_the_snakefile_does_not_import_torch():
    code = ("import sys, dlwt.dag, dlwt.params, dlwt.layout; from dlwt.data.config import resolve; "
            "assert not {'torch', 'pandas', 'matplotlib'} & set(sys.modules), sorted(sys.modules)")
    sh([sys.executable, "-c", code], REPO)


def test_an_overlay_that_changes_nothing_changes_no_command(ci_repo, planned, tmp_path):
    (tmp_path / "same.yaml").write_text("train:\n  epochs: 1\n")
    assert snakemake_jobs(ci_repo, "--configfile", tmp_path / "same.yaml") == planned


def test_train_threads_and_gpus_follow_params(ci_repo, tmp_path):
    (tmp_path / "gpus.yaml").write_text("data:\n  num_workers: 3\ntrain:\n  gpus: 2\n  device: cuda\n")
    out = sh([BIN / "snakemake", "-n", "--forceall", "--cores", "64", "--configfile", tmp_path / "gpus.yaml"],
             ci_repo).stdout
    train = re.search(r"rule train:.*?threads: (\d+).*?resources: ([^\n]*)", out, re.S)
    assert train and train.group(1) == "6" and "gpu=2" in train.group(2), out[-3000:]
    evaluate = re.search(r"rule evaluate:.*?threads: (\d+).*?resources: ([^\n]*)", out, re.S)
    assert evaluate.group(1) == "3" and "gpu=1" in evaluate.group(2)


def test_snakemake_lint_is_clean():
    proc = sh([BIN / "snakemake", "--lint", "--configfile", "config/ci.yaml"], REPO, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_snakemake_stops_at_once_without_imagenet_archives(tmp_path):
    for name in ("Snakefile", "params.yaml", "paper/published.yaml", "paper/report.rst"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / name, tmp_path / name)
    proc = sh([BIN / "snakemake", "--cores", "1"], tmp_path, check=False)
    assert proc.returncode != 0
    text = proc.stdout + proc.stderr
    assert "ImageNet archives missing from data/raw/imagenet/" in text and "config/demo.yaml" in text
    assert "Traceback" not in text
    assert not (tmp_path / "data").exists() and not (tmp_path / "results").exists()
    assert sh([BIN / "snakemake", "--cores", "1"], tmp_path, check=False).returncode == proc.returncode  # no lock left


def test_snakemake_stops_before_any_job_when_apptainer_has_no_image(ci_repo, tmp_path):
    fake = tmp_path / "apptainer"
    fake.write_text("#!/bin/sh\necho 'apptainer version 1.3.4'\n")
    fake.chmod(0o755)
    env = {**ENV, "PATH": f"{tmp_path}{os.pathsep}{ENV['PATH']}"}
    proc = subprocess.run([BIN / "snakemake", "--cores", "1", "--sdm", "apptainer"], cwd=ci_repo, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "container image dlwt.sif not found" in proc.stdout + proc.stderr
    assert not (ci_repo / "data").exists()


def test_preflight_accepts_archives_given_by_url(tmp_path):
    params = load(REPO / "params.yaml")
    params["data"]["root"] = str(tmp_path)
    with pytest.raises(dag.PipelineError, match="ILSVRC2012_img_train.tar"):
        dag.preflight(params)
    params["data"]["urls"] = {"train": "https://x/t.tar", "val": "https://x/v.tar", "devkit": "https://x/d.tgz"}
    dag.preflight(params)  # downloadable: the acquire stage will fetch them


def test_preflight_stops_when_apptainer_is_asked_for_and_the_image_is_missing(ci, tmp_path):
    params = {**ci, "container": str(tmp_path / "dlwt.sif")}
    dag.preflight(params)  # not running in containers: no image needed
    with pytest.raises(dag.PipelineError, match="apptainer build --fakeroot"):
        dag.preflight(params, container_method=True)
    (tmp_path / "dlwt.sif").write_bytes(b"image")
    dag.preflight(params, container_method=True)


def test_snakemake_names_an_unknown_params_key_in_one_line(tmp_path):
    (tmp_path / "typo.yaml").write_text("train:\n  lrr: 0.1\n")
    proc = sh([BIN / "snakemake", "-n", "--configfile", tmp_path / "typo.yaml"], REPO, check=False)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.startswith("dlwt:")]
    assert len(lines) == 1 and "unknown key train.lrr (allowed here: align_batch," in lines[0]
    assert "Traceback" not in proc.stderr


def test_snakemake_names_a_params_folder_that_is_a_file_in_one_line(tmp_path):
    # the merged params go to .snakemake/dlwt/: a file there (a stray `touch`, a botched cleanup) is one line
    repo = pipeline_copy(tmp_path)
    (repo / ".snakemake").mkdir()
    (repo / ".snakemake" / "dlwt").write_text("")
    proc = sh([BIN / "snakemake", "-n", "--configfile", "config/ci.yaml"], repo, check=False)
    lines = [line for line in proc.stderr.splitlines() if line.startswith("dlwt:")]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert len(lines) == 1 and ".snakemake/dlwt/params-" in lines[0] and "is a file, not a folder" in lines[0]
    assert (repo / ".snakemake" / "dlwt").is_file()


def test_report_outputs_are_the_layouts(ci):
    outs = dag.job(ci, "report").outs
    assert str(layout.exp_dir("ci") / "summary.json") in outs
    assert {Path(o).name for o in outs if "/figures/" in o} == \
        {f"{s}.{f}" for s in layout.figure_stems(ci) for f in ("pdf", "png")}


def test_a_core_install_runs_the_stages_and_names_the_report_extra(tmp_path):
    """Without pandas, matplotlib and seaborn (the report extra) every other stage runs; `dlwt report` says what
    to install, in one line."""
    code = f"""
import sys
from pathlib import Path
for name in ("pandas", "matplotlib", "seaborn"):
    sys.modules[name] = None  # import fails, as in an install without the extra
from dlwt.cli import main
root = {str(tmp_path)!r}
assert main(["params", "--overlay", "config/ci.yaml"]) == 0
assert main(["dag", "--overlay", "config/ci.yaml"]) == 0
for stage in ("acquire", "extract"):
    assert main([stage, "--source", "synthetic", "--dataset", "s", "--root", root]) == 0
sys.exit(main(["report", "--params", "params.yaml"]))
"""
    proc = sh([sys.executable, "-c", code], REPO, check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1] == \
        "dlwt report: needs the report extra (pandas is not installed): pip install 'dlwt[report]'"
    assert (tmp_path / "s" / "images" / "classes.json").is_file()
