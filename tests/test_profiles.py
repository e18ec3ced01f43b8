"""The Snakemake profiles under profiles/: Snakemake 9 accepts them, and the SLURM one gives each train job the
GPUs its `resources: gpu=` asks for, on one node (dlwt train runs torchrun itself when it has several).

    .venv/bin/pytest -q tests/test_profiles.py
"""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PROFILES = ROOT / "profiles"

# A stand-in workflow with the pipeline's rule names, so the profiles can be dry-run without data.
TOY_SNAKEFILE = """
rule all:
    input: expand("runs/{r}.done", r=["bp", "kp"]), "report.done"
rule acquire:
    output: "acquire.done"
    shell: "touch {output}"
rule extract:
    input: "acquire.done"
    output: "extract.done"
    threads: 2
    shell: "touch {output}"
rule convert:
    input: "extract.done"
    output: "convert.done"
    threads: workflow.cores
    shell: "touch {output}"
rule train:
    input: "convert.done"
    output: "runs/{r}.done"
    threads: 12
    resources: gpu=2
    shell: "touch {output}"
rule evaluate:
    input: "runs/bp.done"
    output: "evaluate.done"
    shell: "touch {output}"
rule report:
    input: "evaluate.done"
    output: "report.done"
    shell: "touch {output}"
"""


def load(name: str) -> dict:
    return yaml.safe_load((PROFILES / name / "config.yaml").read_text())


def snakemake_bin() -> str:
    beside = Path(sys.executable).parent / "snakemake"
    found = str(beside) if beside.exists() else shutil.which("snakemake")
    if not found:
        pytest.skip("snakemake is not installed (the pipeline extra)")
    return found


def dry_run(tmp_path: Path, profile: str) -> str:
    shutil.copytree(PROFILES, tmp_path / "profiles")
    (tmp_path / "Snakefile").write_text(TOY_SNAKEFILE)
    proc = subprocess.run([snakemake_bin(), "--profile", f"profiles/{profile}", "-n"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def test_slurm_profile_settings():
    p = load("slurm")
    assert p["executor"] == "slurm"
    assert p["software-deployment-method"] == "apptainer"
    assert "--nv" in p["apptainer-args"].split()
    assert p["retries"] >= 1 and p["jobs"] >= 1 and p["latency-wait"] >= 5
    # a cluster run has no --cores unless the profile gives it, and the Snakefile reads workflow.cores
    assert p["cores"] >= p["max-threads"] >= 1
    train = p["set-resources"]["train"]
    assert train["nodes"] == 1  # torchrun's GPUs on one node
    assert train["runtime"] and train["mem_mb"] and train["slurm_partition"]
    # the GPU count comes from the Snakefile (params.yaml's train.gpus), the same number dlwt train --gpus gets
    for rule, res in p["set-resources"].items():
        assert not {"gpu", "gpus", "gres"} & set(res), f"the profile must not override {rule}'s GPU count"


def test_local_profile_settings():
    p = load("local")
    assert p["cores"] == "all"
    assert int(p["resources"]["gpu"]) >= 1
    assert "executor" not in p or p["executor"] == "local"


def test_profile_rules_exist_in_the_snakefile():
    snakefile = ROOT / "Snakefile"
    if not snakefile.exists():
        pytest.skip("no Snakefile yet")
    rules = set(re.findall(r"^rule\s+(\w+)\s*:", snakefile.read_text(), re.M))
    unknown = set(load("slurm")["set-resources"]) - rules
    assert not unknown, f"profiles/slurm sets resources for rules the Snakefile lacks (silently ignored): {unknown}"


def test_snakemake_accepts_the_local_profile(tmp_path):
    out = dry_run(tmp_path, "local")
    assert "This was a dry-run" in out


def test_snakemake_accepts_the_slurm_profile(tmp_path):
    out = dry_run(tmp_path, "slurm")
    train = re.search(r"rule train:.*?resources: ([^\n]*)", out, re.S)
    assert train, out[-3000:]
    resources = dict(kv.split("=", 1) for kv in train.group(1).split(", "))
    assert resources["gpu"] == "2" and resources["nodes"] == "1"
    convert = re.search(r"rule convert:.*?threads: (\d+)", out, re.S)
    assert convert and int(convert.group(1)) == load("slurm")["max-threads"], "threads: workflow.cores is not capped"


def test_slurm_train_job_is_submitted_with_its_gpus_on_one_node():
    plugin = pytest.importorskip("snakemake_executor_plugin_slurm.submit_string")
    from snakemake_executor_plugin_slurm.utils import set_gres_string
    from snakemake_executor_plugin_slurm_jobstep import get_cpu_setting, get_gpu_setting, get_node_setting

    class Resources(dict):
        __getattr__ = dict.__getitem__

    class Job:
        threads = 12
        resources = Resources({k: v for k, v in load("slurm")["set-resources"]["train"].items()}, gpu=4)

    params = dict(run_uuid="id", slurm_logfile="log", comment_str="train", account="", partition="",
                  workdir="/repo")
    sbatch = plugin.get_submit_command(Job, params) + set_gres_string(Job)
    assert "--gpus=4" in sbatch and "--nodes=1" in sbatch and "--cpus-per-task=12" in sbatch, sbatch
    assert "--ntasks" not in sbatch  # one task: dlwt train starts torchrun's N processes itself
    srun = " ".join([get_cpu_setting(Job, "4"), get_gpu_setting(Job), get_node_setting(Job)])
    assert "--gpus=4" in srun and "--nodes=1" in srun, srun
