"""The Snakefile and dvc.yaml: one DAG with two runners. Same stages, commands and outputs; dvc repro re-runs
only what an edit touches; snakemake lints clean and stops at once without the ImageNet archives."""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dlwt.params import deep_merge, load
from dlwt.pipeline import PipelineError, preflight

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ENV = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1",
       "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t",
       "MPLBACKEND": "Agg"}
REDIRECT = re.compile(r"\s*>\s*\S+\s+2>&1\s*$")


def sh(args, cwd, check=True):
    proc = subprocess.run(args, cwd=cwd, env=ENV, capture_output=True, text=True)
    if check and proc.returncode:
        raise AssertionError(f"{args} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="module")
def ci_repo(tmp_path_factory):
    """A git + DVC repository holding the project's pipeline files, params.yaml = params + config/ci.yaml
    (two rules, to keep it quick)."""
    repo = tmp_path_factory.mktemp("repo")
    for name in ("Snakefile", "dvc.yaml", "src", "paper/published.yaml"):
        src, dst = REPO / name, repo / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if src.is_dir() else shutil.copy)(src, dst)
    params = deep_merge(load(REPO / "params.yaml", [REPO / "config" / "ci.yaml"]), {"model": {"rules": ["bp", "kp"]}})
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (repo / ".gitignore").write_text("/data/\n/logs/\n/.snakemake/\n__pycache__/\n")
    sh(["git", "init", "-q"], repo)
    sh([BIN / "dvc", "init", "-q"], repo)
    sh(["git", "add", "-A"], repo)
    sh(["git", "commit", "-qm", "pipeline"], repo)
    return repo


def snakemake_jobs(repo):
    """{(rule, command without its log redirect, outputs)} from snakemake's dry run."""
    out = sh([BIN / "snakemake", "-n", "-p", "--forceall", "--cores", "1"], repo).stdout
    jobs = set()
    for block in out.split("\n\n"):
        rule = re.search(r"^(?:local)?rule (\w+):", block, re.M)
        cmd = re.search(r"^Shell command: (.*)$", block, re.M)
        if rule and cmd and cmd.group(1) != "None":  # rule all has no command
            outs = re.search(r"^\s+output: (.*)$", block, re.M).group(1).split(", ")
            jobs.add((rule.group(1), REDIRECT.sub("", cmd.group(1)).strip(), frozenset(outs)))
    return jobs


def dvc_jobs(repo):
    from dvc.repo import Repo

    with Repo(str(repo)) as dvc:
        return {(stage.name.split("@")[0], stage.cmd.strip(), frozenset(str(o.def_path) for o in stage.outs))
                for stage in dvc.index.stages}


def test_snakefile_and_dvc_yaml_have_the_same_stages_commands_and_outputs(ci_repo):
    smk, dvc = snakemake_jobs(ci_repo), dvc_jobs(ci_repo)
    assert {r for r, _, _ in smk} == {"acquire", "extract", "convert", "train", "evaluate", "report"}
    assert smk == dvc
    assert sum(r == "train" for r, _, _ in dvc) == 2  # the matrix: one job per arch x rule x seed


def ran(repo) -> set[str]:
    """The stages a real `dvc repro` runs now."""
    out = sh([BIN / "dvc", "repro"], repo).stdout
    return set(re.findall(r"Running stage '([^']+)'", out))


def edit(repo, section, key, value):
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params[section][key] = value
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.mark.timeout(600)
def test_dvc_repro_runs_the_pipeline_and_reruns_only_what_an_edit_touches(ci_repo):
    assert len(ran(ci_repo)) == 2 * 2 + 4  # everything, once
    summary = json.loads((ci_repo / "results" / "ci" / "summary.json").read_text())
    assert set(summary["resnet18"]) == {"bp", "kp"}
    assert (ci_repo / "paper" / "ci" / "table1.md").stat().st_size > 0
    assert ran(ci_repo) == set()  # up to date
    edit(ci_repo, "report", "dpi", 100)
    assert ran(ci_repo) == {"report"}
    edit(ci_repo, "train", "lr", 0.05)
    assert ran(ci_repo) == {"train@resnet18-bp-0", "train@resnet18-kp-0", "evaluate@resnet18-bp-0",
                            "evaluate@resnet18-kp-0", "report"}
    shows = json.loads(sh([BIN / "dvc", "metrics", "show", "--json"], ci_repo).stdout)
    assert "results/ci/summary.json" in json.dumps(shows)


def test_snakemake_lint_is_clean():
    proc = sh([BIN / "snakemake", "--lint", "--configfile", "config/demo.yaml"], REPO, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_snakemake_stops_at_once_without_imagenet_archives(tmp_path):
    for name in ("Snakefile", "params.yaml", "src"):
        (shutil.copytree if (REPO / name).is_dir() else shutil.copy)(REPO / name, tmp_path / name)
    proc = sh([BIN / "snakemake", "--cores", "1"], tmp_path, check=False)
    assert proc.returncode != 0
    text = proc.stdout + proc.stderr
    assert "ImageNet archives missing from data/raw/imagenet/" in text and "config/demo.yaml" in text
    assert not (tmp_path / "data").exists() and not (tmp_path / "results").exists()


def test_preflight_accepts_archives_given_by_url(tmp_path):
    params = load(REPO / "params.yaml")
    params["data"]["root"] = str(tmp_path)
    with pytest.raises(PipelineError, match="ILSVRC2012_img_train.tar"):
        preflight(params)
    params["data"]["urls"] = {"train": "https://x/t.tar", "val": "https://x/v.tar", "devkit": "https://x/d.tgz"}
    preflight(params)  # downloadable: the acquire stage will fetch them


def test_snakemake_names_an_unknown_params_key_before_any_work(tmp_path):
    (tmp_path / "typo.yaml").write_text("train:\n  lrr: 0.1\n")
    proc = sh([BIN / "snakemake", "-n", "--configfile", str(tmp_path / "typo.yaml")], REPO, check=False)
    assert proc.returncode != 0
    assert "unknown key train.lrr (allowed here: amp," in proc.stdout + proc.stderr
