"""`dlwt doctor` on the ci settings (CPU, seconds): the checks, the per-rule step table, the estimate and its
JSON; a failed check is one FAIL line with its fix and a non-zero exit. In-process (conftest's `cli`), except the
case that binds the process to one core."""
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PARAMS, CI = os.path.join(REPO, "params.yaml"), os.path.join(REPO, "config", "ci.yaml")


def _args(*overlays):
    return ["doctor", "--params", PARAMS, "--overlay", CI, *(a for o in overlays for a in ("--overlay", str(o))),
            "--steps", "1"]


def _doctor(tmp_path, *overlays, affinity):
    """doctor in a process bound to the CPUs `affinity`."""
    code = (f"import os; os.sched_setaffinity(0, {affinity!r}); import sys; from dlwt.cli import main; "
            f"sys.exit(main({_args(*overlays)!r}))")
    return subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=600)


@pytest.mark.timeout(600)
def test_doctor_times_every_rule_and_estimates_the_experiment(cli, tmp_path):
    (tmp_path / "rules.yaml").write_text("model: {rules: [bp, fa, ss, wm, kp], seeds: [0]}\n")
    proc = cli(*_args(tmp_path / "rules.yaml"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads((tmp_path / "results" / "ci" / "doctor.json").read_text())
    assert report["device"] == "cpu" and report["data"] == "random"  # no .beton in this folder
    assert [r["rule"] for r in report["steps"]] == ["bp", "fa", "ss", "wm", "kp"]
    assert all(r["ms_per_step"] > 0 and r["finite"] for r in report["steps"])
    assert report["steps"][0]["vs_bp"] == 1.0 and all(r["vs_bp"] > 0 for r in report["steps"][1:])
    assert report["estimate"] is None and "no estimate: run `dlwt convert` first" in proc.stdout
    checks = proc.stdout.split("\n\n")[0].splitlines()
    assert [c.split(":")[0] for c in checks] == ["ok   device", "ok   loader"]


@pytest.mark.timeout(600)
def test_doctor_estimates_the_imagenet_experiment(cli, tmp_path):
    # both archs, bp and the one rule with extra arithmetic (the previous test times all five on one arch)
    (tmp_path / "imagenet.yaml").write_text("data: {source: imagenet}\nmodel: {archs: [resnet18, resnet50], "
                                            "rules: [bp, wm], seeds: [0, 1]}\n")
    proc = cli(*_args(tmp_path / "imagenet.yaml"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    e = json.loads((tmp_path / "results" / "ci" / "doctor.json").read_text())["estimate"]
    assert e["runs"] == 8 and set(e["gpu_hours_per_arch_rule_all_seeds"]) == {
        f"{a}-{r}" for a in ("resnet18", "resnet50") for r in ("bp", "wm")}
    assert "whole experiment (8 runs, 1281167 train images" in proc.stdout


@pytest.mark.timeout(600)
def test_doctor_names_a_failed_check_and_its_fix(tmp_path):
    (tmp_path / "workers.yaml").write_text("data: {num_workers: 4}\n")
    proc = _doctor(tmp_path, tmp_path / "workers.yaml", affinity={0})  # a job bound to one core
    assert proc.returncode == 1
    fails = [line for line in proc.stdout.splitlines() if line.startswith("FAIL")]
    assert fails == ["FAIL cpus: data.num_workers=4 but 1 CPUs per rank are allowed: ask the scheduler for more "
                     "CPUs, or lower data.num_workers"]
