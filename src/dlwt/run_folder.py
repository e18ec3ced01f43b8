"""A run folder's files as dlwt train keeps them: its lock, last.pt (what a resume reads), final.pt and
metrics.jsonl, each written atomically; and the rule that decides between resuming and starting afresh.

    dlwt train --params params.yaml --arch resnet18 --rule wm --seed 0 --out results/imagenet/runs/resnet18-wm-s0
"""
from __future__ import annotations

import fcntl
import json
import os
import sys
import time
from pathlib import Path

import torch

from dlwt import checkpoint, dag, layout
from dlwt.atomic import atomic_write, remove_stale_temps, save_torch, write_json_atomic
from dlwt.errors import DlwtError

FORMAT = "dlwt-checkpoint-2"


def load_checkpoint(path: Path) -> dict | None:
    """last.pt as data on the CPU (dlwt.checkpoint), or None when there is none yet."""
    if not path.exists():
        return None
    ckpt = checkpoint.load(path, fix="move it away to start the run afresh")
    if ckpt.get("format") != FORMAT:
        raise DlwtError(f"{path}: not a {FORMAT} file (an older dlwt?); move it away to start the run afresh")
    return ckpt


def lock_run(run: layout.Run):
    """Hold run.lock for the life of the process; DlwtError naming the holder when another process has it."""
    run.out.mkdir(parents=True, exist_ok=True)
    fd = os.open(run.lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise DlwtError(f"{run.out} is being trained by another process (pid {holder}, lock {run.lock}): wait "
                        "for it, or stop it first") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def checkpoint_to_resume(params, arch, rule, seed, run, rank, restart) -> dict | None:
    """last.pt when this run resumes from it; None to start afresh (a changed setting or --restart moves it
    aside, naming why)."""
    if rank == 0:  # temp files of killed writers (a checkpoint is ~0.2-0.5 GB each)
        for folder in (run.out, run.checkpoints):
            remove_stale_temps(folder)
    ckpt = load_checkpoint(run.last)
    if ckpt is None:
        return None
    if (ckpt["arch"], ckpt["rule"], ckpt["seed"]) != (arch, rule, seed):
        raise DlwtError(f"{run.last} is {layout.run_id(ckpt['arch'], ckpt['rule'], ckpt['seed'])}, not "
                        f"{layout.run_id(arch, rule, seed)}: use another --out, or move it away")
    keys = dag.changed_keys(ckpt["params"], params, rule)  # the DAG's own key set
    if not (keys or restart):
        return ckpt
    if rank == 0:
        stale = run.last.with_name(f"last-stale-{int(time.time())}.pt")
        os.replace(run.last, stale)
        why = f"setting {', '.join(keys)} changed" if keys else "--restart"
        print(f"dlwt train: {why}; moved {run.last.name} to {stale.name} and starting afresh", file=sys.stderr)
    return None


def rewrite_outputs(ckpt, run, rank) -> dict:
    """A finished last.pt whose outputs a runner removed (snakemake --rerun-incomplete): no retraining."""
    if rank == 0:
        write_final(ckpt, run)
        write_json_atomic(run.config, ckpt["run_info"])
        write_metrics(run, ckpt["metrics"])
        print(f"dlwt train: {run.last} is a finished run; rewrote {run.final.name} from it (--restart "
              "retrains)", file=sys.stderr)
    return {"status": "finished", "signal": None, "metrics": ckpt["metrics"][-1]}


def write_metrics(run: layout.Run, rows: list) -> None:
    atomic_write(run.metrics, "".join(json.dumps(r) + "\n" for r in rows))


def write_final(ckpt: dict, run: layout.Run) -> None:
    """final.pt: what evaluation and users need (weights with B, metadata), not the optimiser's state."""
    keep = ("format", "arch", "rule", "seed", "epoch", "model", "metrics", "params", "run_info", "stem",
            "num_classes")
    out = {k: ckpt[k] for k in keep}
    # CPU tensors: a plain torch.load of a CUDA run's final.pt on a machine without a GPU must work
    out["model"] = {k: v.detach().cpu() if torch.is_tensor(v) else v for k, v in out["model"].items()}
    save_torch(out, run.final)
