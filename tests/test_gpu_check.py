"""`make gpu-check` on its CPU profile: the same script and parts as on a GPU node, at toy size, so the check
cannot rot before a GPU comes. What the CPU profile cannot assert (CUDA-only) each part lists as skipped:
environment: nvidia-smi, the CUDA device, bf16, cuDNN; cost and cost-compile: the measured ratios against the
FLOP ratios (a toy size says nothing about the pipeline's cost); pipeline: that every rule learned (a few steps only)."""
import json
import os
import subprocess
import sys

import pytest

from dlwt.gpucheck import PARTS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CUDA_ONLY = {"environment": {"nvidia-smi", "cuda-device", "bf16", "cudnn"}, "cost": {"ratio vs FLOPs"},
             "cost-compile": {"ratio vs FLOPs"}, "pipeline": {"every rule learned"}}


def _check(out, *args, timeout=900):
    env = {**os.environ, "PYTHON": sys.executable}
    return subprocess.run(["bash", os.path.join(REPO, "scripts", "gpu_check.sh"), "--cpu", "--out", str(out), *args],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_cpu_profile_runs_every_part(tmp_path):
    proc = _check(tmp_path / "out")
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert proc.returncode == 0, proc.stdout + (tmp_path / "out" / "summary.md").read_text()
    assert [p["name"] for p in summary["parts"]] == [p[0] for p in PARTS]
    assert all(p["status"] == "ok" for p in summary["parts"]), [(p["name"], p["status"]) for p in summary["parts"]]
    lines = [json.loads(ln) for ln in (tmp_path / "out" / "parts.jsonl").read_text().splitlines()]
    assert [ln["name"] for ln in lines] == [p[0] for p in PARTS]  # one line per part, in order, as each ended
    for part in summary["parts"]:
        assert {s["name"] for s in part["skipped"]} == CUDA_ONLY.get(part["name"], set()), part["name"]
        assert part["checks"] and all(c["ok"] for c in part["checks"])
    names = {p["name"]: {c["name"] for c in p["checks"]} for p in summary["parts"]}
    assert {"kp W - B shrinks by (1 - lr wd)", "mirror_step cpu generator", "kp bf16 channels_last vs fp32"} \
        <= names["rules"]
    assert {"sigterm exit 143", "sigterm resumed", "dlwt doctor", "job report"} <= names["pipeline"]
    assert "kp graph breaks" in names["compile"] and "report verdicts" in names["claims"]
    cost = summary["parts"][2]["data"]["cost resnet8"]
    assert [r["rule"] for r in cost] == ["bp", "fa", "ss", "wm", "kp"] and cost[0]["vs_bp"] == 1.0
    assert cost[3]["mirror_gflop"] > 0 and cost[1]["flops_vs_bp"] == 1.0  # only wm adds arithmetic
    md = (tmp_path / "out" / "summary.md").read_text()
    assert "| cost | ok |" in md and "GFLOP/step" in md


@pytest.mark.timeout(300)
def test_a_part_past_its_time_limit_fails_and_the_next_part_runs(tmp_path):
    proc = _check(tmp_path / "out", "--only", "rules,cost", "--limits", "rules=1", timeout=300)
    assert proc.returncode == 1
    assert "gpu-check rules: timed out after 1 s" in proc.stdout
    parts = {p["name"]: p for p in json.loads((tmp_path / "out" / "summary.json").read_text())["parts"]}
    assert parts["rules"]["status"] == "fail" and "timed out after 1 s" in parts["rules"]["error"]
    assert parts["cost"]["status"] == "ok"
    assert parts["environment"]["status"] == "skipped" and parts["environment"]["why"] == "not run"


def test_a_failing_part_records_its_traceback(tmp_path, monkeypatch):
    from dlwt.gpucheck import __main__ as runner
    from dlwt.gpucheck import env

    def broken(rec, profile, *, name, deadline):
        rec.check("first", True, "recorded before the failure")
        raise ValueError("a broken driver")

    monkeypatch.setattr(env, "run", broken)
    assert runner.main(["part", "environment", "--profile", "cpu", "--out", str(tmp_path)]) == 1
    part = json.loads((tmp_path / "parts" / "environment.json").read_text())
    assert part["status"] == "fail" and part["error"] == "ValueError: a broken driver"
    assert "raise ValueError" in part["traceback"] and part["checks"][0]["name"] == "first"
    assert json.loads((tmp_path / "parts.jsonl").read_text())["status"] == "fail"


def test_an_unknown_part_name_stops_the_plan(tmp_path):
    proc = _check(tmp_path / "out", "--only", "nosuch", timeout=120)
    assert proc.returncode == 2 and "no plan" in proc.stderr


def test_the_runtime_images_have_the_c_compiler_triton_needs():
    # train.compile: true runs Triton, which compiles its launcher with $CC, gcc or clang at first use
    build = open(os.path.join(os.path.dirname(__import__("triton").__file__), "runtime", "build.py")).read()
    assert 'shutil.which("gcc")' in build and 'shutil.which("clang")' in build
    for image, marker in (("Dockerfile", "FROM python:3.11-slim-bookworm\n"), ("dlwt.def", "Stage: final")):
        runtime = open(os.path.join(REPO, image)).read().split(marker)[-1]
        installs = [ln for ln in runtime.splitlines() if "apt-get install" in ln]
        assert installs and all({"gcc", "libc6-dev"} <= set(ln.split()) for ln in installs), image
