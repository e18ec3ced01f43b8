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
Live metrics never block training: a metrics.json left empty or torn (DVCLive rewrites it in place, so a kill
mid-write leaves it so) is set aside with one line before resuming, and any error of the logger itself (a full
disk) turns live metrics off with one line; metrics.jsonl and the checkpoints are the run's record.
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path


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
        if resume and not self._guard(lambda: _set_aside_if_damaged(Path(out) / "metrics.json")):
            return  # Live(resume=True) reads metrics.json: a damaged one that cannot be moved stays unread
        # dvcyaml=False: the pipeline's dvc.yaml declares these files itself; save_dvc_exp=False: a pipeline
        # stage must not create DVC experiments of its own
        self._guard(lambda: setattr(self, "live", Live(dir=str(out), resume=resume, save_dvc_exp=False,
                                                        dvcyaml=False, report=None)))

    def _guard(self, call) -> bool:
        """Run one DVCLive call; on any error of its own, say so once and log no more (training goes on)."""
        try:
            call()
            return True
        except Exception as e:  # noqa: BLE001 (the logger's errors, whatever they are, must not stop a run)
            print(f"dlwt train: live metrics off ({type(e).__name__}: {e}); training goes on, metrics.jsonl "
                  "keeps every epoch", file=sys.stderr)
            self.live = None
            return False

    def _log(self, step: int, values: dict) -> None:
        def write():
            self.live.step = step
            for name, value in values.items():
                self.live.log_metric(name, value)
            self.live.make_summary()
        self._guard(write)

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
            self._guard(self.live.end)


def _set_aside_if_damaged(path: Path) -> None:
    """Move an unreadable metrics.json to metrics.json.damaged-<time> and say so: DVCLive would stop every
    resume of the run at it (a JSONDecodeError); the plots' .tsv files keep the history."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return
    except (OSError, UnicodeDecodeError):
        text = ""
    try:
        if isinstance(json.loads(text), dict):
            return
    except ValueError:
        pass
    aside = path.with_name(f"{path.name}.damaged-{int(time.time())}")
    os.replace(path, aside)
    print(f"dlwt train: {path} was damaged (empty or cut short by a kill); set it aside as {aside.name} and "
          "going on (the live metrics resume from the next point)", file=sys.stderr)
