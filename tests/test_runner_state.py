"""What both runners do with a finished pipeline: a code edit reruns the stages that run the edited file (DVC by
content hash, Snakemake by the code hash in each rule's command) and an edit of an output-neutral module reruns
nothing; a failed report leaves the last good report in place (Snakemake would delete its outputs; DVC keeps
persisted ones) and Snakemake shows the failure's line; dvc.yaml generated for an overlay is up to date after
Snakemake ran that overlay and `dvc commit`, and `dvc exp run -S` works on it; `snakemake --list-changes params`
agrees with `-n`.

    nice pytest -q tests/test_runner_state.py

The jobs are stand-ins: `dlwt` on PATH is a script that writes each job's declared outputs (found in dlwt.dag
by its command), so the runners' bookkeeping is tested in seconds without training anything.
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

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

FAKE_DLWT = f"""#!{sys.executable}
# a stand-in for `dlwt <stage>`: writes the job's declared outputs; DLWT_FAKE_FAIL=<stage> fails that stage
import os, sys
from pathlib import Path
from dlwt import dag
from dlwt.params import load
argv = sys.argv[1:]
params = load(argv[argv.index("--params") + 1])
job = next(j for j in dag.jobs(params) if [w if w != "{{params}}" else argv[argv.index("--params") + 1]
                                           for w in j.cmd[1:]] == argv)
if os.environ.get("DLWT_FAKE_FAIL") == job.stage:
    sys.exit(f"dlwt {{job.stage}}: stand-in failure (the line a real failure prints)")
for out in job.outs:
    path = Path(out) / "classes.json" if job.stage == "extract" else Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{{job.name}} {{os.environ.get('DLWT_FAKE_TAG', '')}}\\n")
if job.live:
    Path(job.live).mkdir(parents=True, exist_ok=True)
"""


def sh(args, cwd, env, check=True):
    proc = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    if check and proc.returncode:
        raise AssertionError(f"{args} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A scratch git + DVC repository: params.yaml, config/ci.yaml and dvc.yaml generated for that overlay by the
    documented command, the pipeline run by Snakemake with the overlay (stand-in jobs), then `dvc commit`."""
    repo = tmp_path_factory.mktemp("runners")
    for name in ("Snakefile", "src", "params.yaml", "config/ci.yaml", "paper/published.yaml", "paper/report.rst",
                 "profiles", ".dvc/config", ".dvc/plots"):
        src, dst = REPO / name, repo / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, dst, **({"ignore": shutil.ignore_patterns(
            "__pycache__")} if src.is_dir() else {}))
    (repo / "bin").mkdir()
    (repo / "bin" / "dlwt").write_text(FAKE_DLWT)
    (repo / "bin" / "dlwt").chmod(0o755)
    (repo / ".gitignore").write_text("/data/\n/logs/\n/.snakemake/\n__pycache__/\n/results/\n/paper/ci/\n/bin/\n")
    env = {**os.environ, "PATH": f"{repo / 'bin'}{os.pathsep}{BIN}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": str(repo / "src"), "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "t",
           "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    sh(["git", "init", "-q"], repo, env)
    sh(["git", "config", "core.hooksPath", "/dev/null"], repo, env)
    sh([BIN / "python", "-m", "dlwt", "dag", "--overlay", "config/ci.yaml", "--write", "dvc.yaml"], repo, env)
    sh(["git", "add", "-A"], repo, env)
    sh(["git", "commit", "-qm", "pipeline"], repo, env)
    sh([BIN / "snakemake", "--cores", "1", "--configfile", "config/ci.yaml"], repo, env)
    sh([BIN / "dvc", "commit", "-f", "-q"], repo, env)
    return repo, env


def snakemake_plans(repo, env, *extra) -> set[str]:
    out = sh([BIN / "snakemake", "-n", "--configfile", "config/ci.yaml", *extra], repo, env).stdout
    jobs, rule = [], None
    for line in out.splitlines():
        if m := re.match(r"(?:local)?rule (\w+):$", line):
            jobs.append(rule := m.group(1))
        elif (m := re.match(r"\s+wildcards: run=(\S+)$", line)) and rule:
            jobs[-1] = f"{rule}-{m.group(1)}"
    return set(jobs) - {"all"}


def dvc_changed(repo, env) -> set[str]:
    return set(json.loads(sh([BIN / "dvc", "status", "--json"], repo, env).stdout))


def test_dvc_yaml_for_an_overlay_is_up_to_date_after_snakemake_ran_it(finished):
    repo, env = finished
    assert dvc_changed(repo, env) == set()
    assert snakemake_plans(repo, env) == set()
    text = (repo / "dvc.yaml").read_text()
    assert "dlwt dag --overlay config/ci.yaml --write dvc.yaml" in text and "--params params.ci.yaml" in text
    assert "mirror:" in (repo / "params.ci.yaml").read_text()  # every key, defaults filled in


def test_snakemake_list_changes_params_agrees_with_the_dry_run(finished):
    repo, env = finished
    listed = sh([BIN / "snakemake", "--list-changes", "params", "--configfile", "config/ci.yaml"], repo, env).stdout
    assert [line for line in listed.splitlines() if line.strip() and not line.startswith(("Building", "Using"))] == []


@pytest.mark.parametrize("module, reruns", [("claims.py", {"report"}), ("progress.py", set())],
                         ids=["claims.py: the report", "progress.py: output-neutral, nothing"])
def test_a_code_edit_reruns_the_stages_that_run_it_in_both_runners(finished, module, reruns):
    repo, env = finished
    path = repo / "src" / "dlwt" / module
    text = path.read_text()
    try:
        path.write_text(text + "\n# an edit\n")
        assert dvc_changed(repo, env) == reruns
        assert snakemake_plans(repo, env, "--rerun-triggers", "code") == reruns
    finally:
        path.write_text(text)
    assert dvc_changed(repo, env) == set()


def test_a_failed_report_keeps_the_last_good_report_in_both_runners(finished):
    repo, env = finished
    outs = sorted(p for p in (repo / "paper" / "ci").rglob("*") if p.is_file())
    before = {p: p.read_bytes() for p in outs}
    failing = {**env, "DLWT_FAKE_FAIL": "report"}
    proc = sh([BIN / "snakemake", "--profile", "profiles/local", "--resources", "gpu=0", "--configfile",
               "config/ci.yaml", "--forcerun", "report"], repo, failing, check=False)
    assert proc.returncode != 0
    assert "dlwt report: stand-in failure" in proc.stdout + proc.stderr  # show-failed-logs: the cause on screen
    assert {p: p.read_bytes() for p in outs if p.is_file()} == before
    proc = sh([BIN / "dvc", "repro", "--single-item", "--force", "report"], repo, failing, check=False)
    assert proc.returncode != 0
    assert {p: p.read_bytes() for p in outs if p.is_file()} == before


def test_dvc_exp_run_sets_a_value_of_the_overlays_params_file(finished):
    repo, env = finished
    proc = sh([BIN / "dvc", "exp", "run", "-S", "params.ci.yaml:report.dpi=100", "--name", "dpi100"], repo,
              {**env, "DLWT_FAKE_TAG": "dpi100"})
    assert "dpi100" in sh([BIN / "dvc", "exp", "show", "--no-pager", "--csv"], repo, env).stdout, proc.stdout


def test_the_slurm_profile_previews_on_a_node_without_apptainer(finished):
    """The README's preview command: a dry run with the SLURM profile where no apptainer is installed."""
    repo, env = finished
    out = sh([BIN / "snakemake", "-n", "--profile", "profiles/slurm", "--sdm", "env-modules", "--configfile",
              "config/ci.yaml", "--forceall"], repo, env).stdout
    assert re.search(r"^rule train:", out, re.M) and "This was a dry-run" in out
