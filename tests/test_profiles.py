"""The Snakemake profiles under profiles/, dry-run on the real Snakefile (ci settings): Snakemake 9 accepts them,
every rule they configure exists, a train job gets the GPUs and CPUs its params ask for on one node, and the
SLURM submission carries them (and the SIGTERM ahead of the time limit that lets a run checkpoint).

    nice pytest -q tests/test_profiles.py
"""
from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dlwt.params import load

ROOT = Path(__file__).resolve().parents[1]
PROFILES = ROOT / "profiles"
BIN = Path(sys.executable).parent


def profile(name: str) -> dict:
    return yaml.safe_load((PROFILES / name / "config.yaml").read_text())


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """The pipeline files with params.yaml = params.yaml + config/ci.yaml + 2 GPUs per train job, and a stand-in
    `apptainer` on PATH (the SLURM profile runs jobs in the image; a dry run only asks for its version)."""
    repo = tmp_path_factory.mktemp("profiles")
    for name in ("Snakefile", "profiles", "paper/published.yaml", "paper/report.rst"):
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if (ROOT / name).is_dir() else shutil.copy)(ROOT / name, repo / name)
    params = load(ROOT / "params.yaml", [ROOT / "config" / "ci.yaml"])
    params["train"].update(gpus=2, device="cuda")
    params["data"]["num_workers"] = 3
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    fake = repo / "bin" / "apptainer"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho 'apptainer version 1.3.4'\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    return repo


def dry_run(repo: Path, name: str) -> str:
    env = {**os.environ, "PATH": f"{repo / 'bin'}{os.pathsep}{BIN}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run([BIN / "snakemake", "--profile", f"profiles/{name}", "-n"], cwd=repo, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def job(out: str, rule: str) -> dict:
    block = re.search(rf"^rule {rule}:\n(.*?)(?:\n\n|\Z)", out, re.S | re.M)
    assert block, out[-3000:]
    fields = dict(re.findall(r"^\s+(\w+): (.*)$", block.group(1), re.M))
    fields["resources"] = dict(kv.split("=", 1) for kv in fields.get("resources", "").split(", ") if kv)
    return fields


def test_every_rule_a_profile_configures_exists(repo):
    rules = set(re.findall(r"^rule\s+(\w+)\s*:", (ROOT / "Snakefile").read_text(), re.M))
    for name in ("local", "slurm"):
        unknown = set(profile(name).get("set-resources", {})) - rules
        assert not unknown, f"profiles/{name} configures rules the Snakefile lacks (silently ignored): {unknown}"


def test_both_profiles_rerun_incomplete_jobs():
    assert profile("local")["rerun-incomplete"] and profile("slurm")["rerun-incomplete"]


def test_local_profile_runs_a_train_job_on_its_gpus_with_its_workers(repo):
    out = dry_run(repo, "local")
    train = job(out, "train")
    # train.gpus, capped by the GPUs the profile says this machine has (Snakemake never oversubscribes them)
    assert train["resources"]["gpu"] == str(min(2, profile("local")["resources"]["gpu"]))
    # 3 workers x 2 GPUs, capped at this machine's cores (`cores: all`)
    assert int(train["threads"]) in {min(6, os.cpu_count()), min(6, len(os.sched_getaffinity(0)))}
    assert job(out, "evaluate")["resources"]["gpu"] == "1"


def test_slurm_profile_puts_a_train_job_on_one_node_with_its_gpus(repo):
    out = dry_run(repo, "slurm")
    train = job(out, "train")
    assert train["resources"]["gpu"] == "2" and train["resources"]["nodes"] == "1"
    assert train["threads"] == "6"
    convert = job(out, "convert")
    assert int(convert.get("threads", 1)) <= profile("slurm")["max-threads"]
    # the GPU count comes from params (train.gpus), the same number dlwt train uses: the profile never sets it
    for rule, res in profile("slurm")["set-resources"].items():
        assert not {"gpu", "gpus", "gres"} & set(res), f"the profile must not override {rule}'s GPU count"


def test_slurm_train_job_is_submitted_with_its_gpus_on_one_node_and_a_warning_signal():
    plugin = pytest.importorskip("snakemake_executor_plugin_slurm.submit_string")
    from snakemake_executor_plugin_slurm.utils import set_gres_string
    from snakemake_executor_plugin_slurm.validation import validate_slurm_extra
    from snakemake_executor_plugin_slurm_jobstep import get_cpu_setting, get_gpu_setting, get_node_setting

    class Resources(dict):
        __getattr__ = dict.get

    class Job:
        threads = 12
        resources = Resources({k: v for k, v in profile("slurm")["set-resources"]["train"].items()}, gpu=4)
        is_group = staticmethod(lambda: False)
        name = "train"

    validate_slurm_extra(Job)  # the plugin refuses flags it sets itself
    params = dict(run_uuid="id", slurm_logfile="log", comment_str="train", account="", partition="",
                  workdir="/repo")
    sbatch = plugin.get_submit_command(Job, params) + set_gres_string(Job)
    assert "--gpus=4" in sbatch and "--nodes=1" in sbatch and "--cpus-per-task=12" in sbatch, sbatch
    assert "--signal=TERM@300" in sbatch and "--ntasks" not in sbatch  # one task: dlwt train starts torchrun
    srun = " ".join([get_cpu_setting(Job, "4"), get_gpu_setting(Job), get_node_setting(Job)])
    assert "--gpus=4" in srun and "--nodes=1" in srun, srun
