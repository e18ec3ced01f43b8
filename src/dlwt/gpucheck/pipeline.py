"""gpu-check part 4, pipeline: the pipeline's own jobs on the device, on real data (Fashion-MNIST).

The jobs are dlwt.dag's (the commands Snakemake and DVC run), with config/demo.yaml and the profile's overlay
(ResNet-18, bf16, channels_last, the torchvision loader: FFCV is not on the lent machine) merged over
params.yaml, in OUT/work: acquire and extract, every rule's train job at once on the one GPU (they share it:
CUDA_VISIBLE_DEVICES is set, so none claims it), then evaluate and report, then `dlwt doctor`. One more train
job, the wm run again in its own folder, is stopped by SIGTERM mid-epoch, must exit 143 and resume to the end
within bf16 noise (RESUME_TOL) of its uninterrupted twin: a CUDA run is not bit-reproducible (cuDNN's kernel
choice, atomics), so equality is not asked.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from dlwt import dag, layout
from dlwt.params import deep_merge, load, validate

RESUME_TOL = 0.03  # top-1 error (a fraction, as metrics.jsonl has it), resumed run vs twin (2,000 images)
LEARNED = 0.40     # top-1 error every rule must beat after 2 epochs (chance is 90%)
SIGTERM_RUN = "wm"


def pipeline_params(profile, work: Path, overlay: dict, exp: str) -> dict:
    params = deep_merge(load("params.yaml", ["config/demo.yaml"]), overlay)
    carried = Path(os.environ.get("DLWT_GPU_CARRY", ".gpu-carry")) / "fashion-mnist"
    params = deep_merge(params, {"exp": exp, "data": {"root": str(work / "data")},
                                 # the demo's notes are about the demo: this report is a check's
                                 "report": {"published": str(Path("paper/published.yaml").resolve()), "notes": None}})
    if carried.is_dir():
        params["data"]["fashion_mnist"]["dir"] = str(carried.resolve())
    return validate(params, "gpu-check params")


def prepare(rec, profile, name: str, overlay: dict, exp: str, deadline: float):
    """OUT/work/<name>/ with its params.yaml written; (params, Jobs there, {stage: [dag jobs]})."""
    import yaml

    work = rec.out / "work" / name
    work.mkdir(parents=True, exist_ok=True)
    params = pipeline_params(profile, work, overlay, exp)
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    by_stage: dict[str, list] = {}
    for j in dag.jobs(params):
        by_stage.setdefault(j.stage, []).append(j)
    return params, Jobs(work, str(work / "params.yaml"), deadline, cpu=profile.device == "cpu"), by_stage


def _argv(job, params_file: str) -> list[str]:
    cmd = [params_file if w == "{params}" else w for w in job.cmd]
    return [sys.executable, "-m", "dlwt", *cmd[1:]]  # the checkout's dlwt (PYTHONPATH=src), not an installed one


class Jobs:
    """Start pipeline jobs in `work`, each logging to logs/<name>.log; wait for them; say how they ended."""

    def __init__(self, work: Path, params_file: str, deadline: float, cpu: bool = False):
        self.work, self.params_file, self.deadline = work, params_file, deadline
        self.env = {**os.environ, "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES", "0")}
        if cpu:  # the CPU profile runs its jobs side by side: one thread each, or they spin against each other
            self.env["OMP_NUM_THREADS"] = "1"
        (work / "logs").mkdir(parents=True, exist_ok=True)

    def start(self, name: str, argv: list[str]) -> subprocess.Popen:
        log = open(self.work / "logs" / f"{name}.log", "w")
        return subprocess.Popen(argv, cwd=self.work, env=self.env, stdout=log, stderr=subprocess.STDOUT, text=True)

    def wait(self, procs: dict[str, subprocess.Popen]) -> dict[str, int | None]:
        rcs = {}
        for name, p in procs.items():
            try:
                rcs[name] = p.wait(timeout=max(1.0, self.deadline - 15 - time.time()))
            except subprocess.TimeoutExpired:
                p.kill()
                rcs[name] = None
        return rcs

    def run(self, jobs, rec) -> bool:
        procs = {j.name: self.start(j.name, _argv(j, self.params_file)) for j in jobs}
        rcs = self.wait(procs)
        for name, rc in rcs.items():
            tail = (self.work / "logs" / f"{name}.log").read_text(errors="replace").strip().splitlines()[-1:]
            rec.check(f"job {name}", rc == 0, "rc 0" if rc == 0 else f"rc {rc}: {tail[0] if tail else ''}")
        return all(rc == 0 for rc in rcs.values())


def _final(run_dir: Path) -> dict:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return rows[-1]


def _sigterm_and_resume(rec, jobs: Jobs, train_job, twin_out: Path) -> threading.Thread:
    """Start the SIGTERM twin of `train_job` in a thread: run, stop mid-epoch 1, check rc 143, resume."""
    out = twin_out / train_job.run
    argv = _argv(train_job, jobs.params_file)
    argv[argv.index("--out") + 1] = str(out)
    name = f"sigterm-{train_job.run}"

    def go():
        log_path = jobs.work / "logs" / f"{name}.log"
        p = jobs.start(name, argv)
        stopped_at = None
        while p.poll() is None and time.time() < jobs.deadline - 30:
            m = re.findall(r"epoch 1/\d+: (\d+)/(\d+)", log_path.read_text(errors="replace"))
            if m and 0 < int(m[-1][0]) < int(m[-1][1]):
                stopped_at = m[-1]
                p.send_signal(signal.SIGTERM)
                break
            time.sleep(0.2)
        rc = jobs.wait({name: p})[name]
        text = log_path.read_text(errors="replace")
        rec.check("sigterm exit 143", stopped_at is not None and rc == 143,
                  f"SIGTERM at step {stopped_at[0]}/{stopped_at[1]} of epoch 1: rc {rc}" if stopped_at else
                  f"the run ended (rc {rc}) before a mid-epoch progress line appeared")
        rec.check("sigterm one line", "stopped by SIGTERM" in text and "Traceback" not in text,
                  (text.strip().splitlines() or [""])[-1][:300])
        resumed = jobs.wait({f"{name}-resumed": jobs.start(f"{name}-resumed", argv)})[f"{name}-resumed"]
        rtext = (jobs.work / "logs" / f"{name}-resumed.log").read_text(errors="replace")
        rec.check("sigterm resumed", resumed == 0 and "resuming" in rtext,
                  f"rc {resumed}; " + next((ln for ln in rtext.splitlines() if "resuming" in ln), "no 'resuming' line"))

    t = threading.Thread(target=go, daemon=True)
    t.start()
    return t


def run(rec, profile, *, name, deadline):
    params, jobs, by_stage = prepare(rec, profile, name, profile.pipeline, f"gpu-check-{profile.name}", deadline)
    work, params_file = jobs.work, jobs.params_file
    for stage in ("acquire", "extract"):
        if not jobs.run(by_stage[stage], rec):
            return None
    sig_job = next(j for j in by_stage["train"] if layout.parse_run_id(j.run)[1] == SIGTERM_RUN)
    stopper = _sigterm_and_resume(rec, jobs, sig_job, work / "sigterm")
    trained = jobs.run(by_stage["train"], rec)
    stopper.join(timeout=max(1.0, deadline - 10 - time.time()))
    if trained:
        try:
            twin = _final(work / layout.run_dir(params["exp"], sig_job.run))
            resumed = _final(work / "sigterm" / sig_job.run)
            diff = abs(resumed["val_top1_err"] - twin["val_top1_err"])
            rec.data["sigterm_vs_twin"] = {"resumed": resumed, "twin": twin}
            rec.check("resumed vs twin", diff <= RESUME_TOL,
                      f"top-1 error {resumed['val_top1_err']:.4f} vs {twin['val_top1_err']:.4f} uninterrupted "
                      f"(|diff| {diff:.4f}, tolerance {RESUME_TOL})")
        except (OSError, KeyError, ValueError) as e:
            rec.check("resumed vs twin", False, f"{type(e).__name__}: {e}")
    if trained and jobs.run(by_stage["evaluate"], rec):
        errs = {}
        for j in by_stage["evaluate"]:
            ev = json.loads((work / layout.eval_path(params["exp"], j.run)).read_text())
            errs[j.run] = ev.get("val_top1_err")
        rec.data["top1_err"] = errs
        if profile.device == "cuda":
            rec.check("every rule learned", all(e is not None and e < LEARNED for e in errs.values()),
                      ", ".join(f"{r} {e:.3f}" for r, e in errs.items()) + f" (each must be < {LEARNED})")
        else:
            rec.skip("every rule learned", "the CPU profile trains for a few steps only")
        jobs.run(by_stage["report"], rec)
    doctor = jobs.wait({"doctor": jobs.start("doctor", [sys.executable, "-m", "dlwt", "doctor", "--params",
                                                       params_file, "--steps", "3"])})["doctor"]
    text = (work / "logs" / "doctor.log").read_text(errors="replace")
    rec.data["doctor"] = text[-4000:]
    rec.check("dlwt doctor", doctor == 0, f"rc {doctor}: " + "; ".join(
        ln for ln in text.splitlines() if ln.startswith("FAIL"))[:400])
    return None
