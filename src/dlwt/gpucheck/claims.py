"""gpu-check part 7, claims: what time is left goes to the paper's claims at a scale no CPU run here reaches.

All of Fashion-MNIST (60k/10k), every rule, 3 seeds, with config/demo.yaml's recipe on the profile's overlay
(ResNet-18, bf16, batch 256), through the pipeline's own jobs (as the pipeline part runs them: every train job
at once on the GPU), then evaluate and report. A deadline, not a hope: jobs still running 15 s before the
check's deadline are killed and the part says how far it got; what finished is kept in OUT/work/claims.
"""
from __future__ import annotations

import json

from dlwt import layout
from dlwt.gpucheck.pipeline import prepare

VERDICTS = ("SUPPORTED", "CONTRADICTED", "INCONCLUSIVE")


def run(rec, profile, *, name, deadline):
    params, jobs, by_stage = prepare(rec, profile, name, profile.claims, f"gpu-check-claims-{profile.name}",
                                     deadline)
    work = jobs.work
    rec.data["settings"] = {"runs": len(by_stage["train"]), "epochs": params["train"]["epochs"],
                            "train_per_class": params["data"]["fashion_mnist"]["train_per_class"]}
    for stage in ("acquire", "extract", "train", "evaluate", "report"):
        if not jobs.run(by_stage[stage], rec):
            return None
    summary = json.loads((work / layout.exp_dir(params["exp"]) / "summary.json").read_text())
    rec.data["summary"] = {arch: {rule: {k: v for k, v in row.items() if k in (
        "n_seeds", "top1_err", "top1_err_std", "angle_deg", "angle_deg_std")} for rule, row in rules.items()}
        for arch, rules in summary.items()}
    readme = (work / layout.paper_dir(params["exp"]) / "README.md").read_text()
    rec.data["verdicts"] = [ln.strip() for ln in readme.splitlines() if any(v in ln for v in VERDICTS)]
    rec.check("report verdicts", bool(rec.data["verdicts"]), f"{len(rec.data['verdicts'])} verdict lines")
    return None
