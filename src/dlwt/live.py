"""Live metrics of a training run with DVCLive, DVC's own logger (the pipeline already uses DVC, so `dvc exp
show`, `dvc plots show` and VS Code's DVC extension read them with nothing else to run; TensorBoard would need
its own server and a second logging format).

    results/<exp>/runs/<run>/dvclive/metrics.json            the latest values (dvc exp show / dvc metrics)
    results/<exp>/runs/<run>/dvclive/plots/metrics/**.tsv    one file per metric: step, value (dvc plots)

Every `train.log_every` steps: train/loss (mean over the epoch so far), train/lr, train/images_per_s; every
epoch: val/top1_err, val/top5_err, val/loss, align/mean_angle_deg and align/<layer> (angle of B to W),
grad_align/mean_angle_deg and grad_align/<layer> (angle of the rule's update to backprop's). The step axis is
the global training step.
Rank 0 only under DDP. Without dvclive installed (a core install), training says so once and goes on.
"""
from __future__ import annotations

import statistics
import sys


class LiveLog:
    def __init__(self, out, *, enabled: bool, resume: bool):
        self.live = None
        if not enabled:
            return
        try:
            from dvclive import Live
        except ImportError:
            print("dlwt train: live metrics off (dvclive is not installed: pip install 'dlwt[pipeline]')",
                  file=sys.stderr)
            return
        # dvcyaml=False: the pipeline's dvc.yaml declares these files itself; save_dvc_exp=False: a pipeline
        # stage must not create DVC experiments of its own
        self.live = Live(dir=str(out), resume=resume, save_dvc_exp=False, dvcyaml=False, report=None)

    def _log(self, step: int, values: dict) -> None:
        self.live.step = step
        for name, value in values.items():
            self.live.log_metric(name, value)
        self.live.make_summary()

    def progress(self, step: int, *, loss: float, lr: float, images_per_s: float) -> None:
        if self.live is not None:
            self._log(step, {"train/loss": loss, "train/lr": lr, "train/images_per_s": images_per_s})

    def epoch(self, step: int, row: dict) -> None:
        if self.live is None:
            return
        values = {"epoch": row["epoch"], "val/top1_err": row["val_top1_err"], "val/top5_err": row["val_top5_err"],
                  "val/loss": row["val_loss"]}
        angles = {name: a["angle_deg"] for name, a in row["alignment"].items()}
        values["align/mean_angle_deg"] = statistics.mean(angles.values())
        values.update({f"align/{name}": v for name, v in angles.items()})
        grads = row.get("grad_alignment") or {}
        if grads:  # the mean: what dvc.yaml's gradient-alignment plot compares across rules
            values["grad_align/mean_angle_deg"] = statistics.mean(grads.values())
        values.update({f"grad_align/{name}": v for name, v in grads.items()})
        self._log(step, values)

    def close(self) -> None:
        if self.live is not None:
            self.live.end()
