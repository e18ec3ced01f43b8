"""Train one (arch, rule, seed): resumable, preemption-safe, CPU or CUDA, one process or DDP on one node.

    dlwt train --params params.yaml --arch resnet18 --rule wm --seed 0 --out results/imagenet/runs/resnet18-wm-s0
    dlwt train --params params.yaml --overlay config/demo.yaml --arch resnet18 --rule kp --seed 0 --out ...

With train.gpus > 1 the command claims its GPUs and runs itself as that many DDP ranks (ddp.launch).
Each epoch rewrites <out>/metrics.jsonl and <out>/checkpoints/last.pt atomically; so does a mid-epoch
checkpoint every train.checkpoint_minutes and, at the next step boundary, on SIGTERM/SIGINT (SLURM's time
limit, Ctrl-C), after which the run prints one line and exits 128+signal. Running the same command again
resumes from last.pt (on CPU with the torchvision backend, a run stopped anywhere ends with exactly the
metrics of an uninterrupted one), or starts afresh,
keeping the old file, when a setting the run depends on changed (it names the key). final.pt (weights, B and
metadata) is written last: its presence means the run finished; a finished last.pt is never retrained unless
--restart says so. One `dlwt train` per run folder: a second one stops at once naming the holder's pid.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

import dlwt
from dlwt import ddp, devices, layout, run_folder
from dlwt.atomic import save_torch, write_json_atomic
from dlwt.engine import EpochState, NonFiniteLoss, evaluate, fixed_batch, lr_lambda, sgd, train_one_epoch
from dlwt.errors import DlwtError
from dlwt.live import LiveLog
from dlwt.mirror import after_step, noise_generator
from dlwt.progress import Progress
from dlwt.provenance import provenance
from dlwt.run_folder import FORMAT, load_checkpoint, lock_run


class StopSignal:
    """SIGTERM/SIGINT set a flag that the loop reads after every step (a Python bool: no device sync); a second
    Ctrl-C stops at once. Installed first thing, so a signal during start-up stops the run with its line too."""

    def __init__(self):
        self.signum = None
        self.previous = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGINT)}

    def _handle(self, signum, frame):
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def requested(self) -> bool:
        return self.signum is not None

    def restore(self):
        for s, h in self.previous.items():
            signal.signal(s, h)


def train(params: dict, arch: str, rule: str, seed: int, out: Path, *, restart: bool = False,
          stop: StopSignal | None = None) -> dict:
    """Run, resume or finish one training run; returns {"status": "finished"|"stopped", "signal", "metrics"}.
    `stop`: the caller's StopSignal (dlwt train installs it first thing), else one installed here."""
    stop = stop or StopSignal()
    world = 1
    try:
        run = layout.Run(out)
        rank, world, dev = ddp.setup(params["train"])
        lock = lock_run(run) if rank == 0 else None
        try:
            return _train(params, arch, rule, seed, run, rank, world, dev, restart, stop)
        finally:
            if lock is not None:
                os.close(lock)  # the lock goes with the fd (also when the run stops with an error)
    except Exception as e:
        # under DDP only rank 0 acts on a signal (it saves at its next step boundary and leaves); a rank whose
        # collective then fails because its peer left has nothing to save or say: the launcher ends the job
        if world > 1 and stop.requested() and not isinstance(e, DlwtError):
            os._exit(128 + stop.signum)
        raise
    finally:
        stop.restore()


class _StoppedInStartUp(Exception):
    """A signal came while the run was being set up (wm's mirror warm-up): nothing to save yet."""


@dataclass
class Job:
    """What the steps of one training process share: built once by _build, then only its epoch position,
    metrics rows and checkpoint clock change."""
    params: dict
    arch: str
    rule: str
    seed: int
    run: layout.Run
    rank: int
    world: int
    dev: devices.Device
    train_loader: object
    val_loader: object
    model: torch.nn.Module
    step_model: torch.nn.Module  # what the loop steps: the model, DDP around it, torch.compile of either
    opt: torch.optim.Optimizer
    sched: object
    lr: float
    lr_factor: object
    mirror_gen: torch.Generator
    run_info: dict
    rows: list
    epoch0: int
    epoch_state: dict | None
    after_step: object
    probe: tuple | None
    name: str
    last_save: float = 0.0


def _train(params, arch, rule, seed, run, rank, world, dev, restart, stop) -> dict:
    ckpt = run_folder.checkpoint_to_resume(params, arch, rule, seed, run, rank, restart)
    if ckpt is not None and ckpt["epoch"] >= params["train"]["epochs"] and not ckpt.get("step"):
        return run_folder.rewrite_outputs(ckpt, run, rank)
    try:
        job = _build(params, arch, rule, seed, run, rank, world, dev, ckpt, stop)
    except _StoppedInStartUp:
        _stop_line(layout.run_id(arch, rule, seed), stop.signum, "before training started")
        return {"status": "stopped", "signal": stop.signum, "metrics": {}}
    live = LiveLog(run.live, enabled=rank == 0, resume=ckpt is not None)
    try:
        stopped = _epochs(job, live, stop)
    finally:
        live.close()
    return _end(job, stopped)


def _build(params, arch, rule, seed, run, rank, world, dev, ckpt, stop) -> Job:
    """Loaders, model, optimiser, schedule and the rule's hook, at the checkpoint's state when resuming."""
    from dlwt.data.loaders import make_loader

    tcfg, mcfg, dcfg = params["train"], params["mirror"], params["data"]
    train_loader = make_loader("train", dcfg, dev.torch, rank=rank, world=world)
    val_loader = make_loader("val", dcfg, dev.torch, rank=rank, world=world)
    torch.manual_seed(seed)  # the same W and B on every rank
    model = dlwt.models.build(arch, train_loader.num_classes, rule, params["model"]["stem"])
    model = model.to(dev.torch, memory_format=dev.memory_format)
    global_batch = dcfg["batch_size"] * world
    lr = tcfg["lr"] * global_batch / tcfg["lr_batch"]
    opt = sgd(model, lr, tcfg["momentum"], tcfg["weight_decay"], tcfg["nesterov"])
    lr_factor = lr_lambda(tcfg, len(train_loader))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    # wm's noise state: a CPU generator on every device (rules.noise_generator), seeded alike on every rank
    mirror_gen = torch.Generator().manual_seed(seed)
    # the mirror's settings are read by wm runs only: the other rules' runs do not depend on them (params_schema)
    mirror = {k: mcfg[k] for k in ("noise_std", "lr", "weight_decay", "batch_size", "size")} if rule == "wm" else {}
    rows, epoch0, epoch_state = [], 0, None
    if ckpt is not None:
        epoch0, rows, epoch_state = ckpt["epoch"], ckpt["metrics"], ckpt.get("epoch_state")
        _restore(ckpt, run, rank, model, opt, sched, mirror_gen, epoch0, epoch_state)
    elif rule == "wm":  # the warm-up (1,000 steps by default) gives way to a signal, read between its steps
        noise = noise_generator(mirror_gen, dev.torch)
        for _ in range(mcfg["warmup_steps"]):
            if rank == 0 and stop.requested():  # rank 0 decides (see train); the others are ended
                raise _StoppedInStartUp
            dlwt.mirror_step(model, steps=1, generator=noise, **mirror)
    # B against W before the first training step (after wm's warm-up), kept across resumes: the start that
    # dlwt.mechanism's prediction of kp's |B - W| decays from
    init = (ckpt.get("run_info") or {}).get("alignment_init") if ckpt is not None else dlwt.alignment(model)
    run_info = {"arch": arch, "rule": rule, "seed": seed, "lr": lr, "global_batch": global_batch,
                "steps_per_epoch": len(train_loader), "alignment_init": init,
                **provenance(params, world_size=world, device=dev.torch)}
    if rank == 0:
        write_json_atomic(run.config, run_info)
    net = ddp.wrap(model, dev, opt) if world > 1 else model
    done = epoch0 * len(train_loader) + (epoch_state["step"] if epoch_state else 0)
    # mirror.* is read by wm runs only (params_schema: x-read-by train:wm), so another rule's run never depends on it
    every = {"every": mcfg["every"], "steps": mcfg["steps"]} if rule == "wm" else {}
    hook = after_step(model, rule, done=done, generator=mirror_gen, **every, **mirror)
    probe = fixed_batch(val_loader, tcfg["align_batch"]) if tcfg["align_batch"] and rank == 0 else None
    return Job(params, arch, rule, seed, run, rank, world, dev, train_loader, val_loader, model,
               torch.compile(net) if tcfg["compile"] else net, opt, sched, lr, lr_factor, mirror_gen, run_info,
               rows, epoch0, epoch_state, hook, probe, layout.run_id(arch, rule, seed))


def _restore(ckpt, run, rank, model, opt, sched, mirror_gen, epoch0, epoch_state) -> None:
    model.load_state_dict(ckpt["model"])  # CPU tensors copied into the device's parameters
    opt.load_state_dict(ckpt["optimizer"])  # moves its state to the parameters' device
    sched.load_state_dict(ckpt["scheduler"])
    if ckpt["mirror_rng"] is not None:
        try:
            mirror_gen.set_state(ckpt["mirror_rng"])
        except RuntimeError:  # a CUDA generator's state, from a dlwt that kept it on the GPU
            raise DlwtError(f"{run.last}: its weight-mirror noise state is not a CPU generator's (written by an "
                            "older dlwt on a GPU): move it away to start the run afresh") from None
    if rank == 0:
        run_folder.write_metrics(run, ckpt["metrics"])  # a runner may have deleted it
        where = f"epoch {epoch0 + 1}, step {epoch_state['step']}" if epoch_state else f"after epoch {epoch0}"
        print(f"dlwt train: resuming {run.out} at {where}", file=sys.stderr)


def _epochs(job: Job, live: LiveLog, stop: StopSignal) -> tuple[int, str] | None:
    """Train the remaining epochs; (signal, where) when a signal stopped them, else None."""
    from dlwt.data.loaders import res_for_epoch

    if job.rank == 0 and stop.requested():  # in start-up: nothing trained in this process, last.pt as it was
        return stop.signum, "before training started"
    epoch_state, job.epoch_state = job.epoch_state, None
    for epoch in range(job.epoch0, job.params["train"]["epochs"]):
        state = EpochState.from_dict(job.dev.torch, epoch_state)
        epoch_state = None
        res = res_for_epoch(job.params["data"], epoch)
        stats = _train_epoch(job, epoch, state, res, live, stop)
        if stats["stopped"]:
            if job.rank == 0:
                _save(job, epoch, state)
            return stop.signum, f"at a mid-epoch checkpoint ({job.run.last})"
        _record_epoch(job, epoch, res, stats, live)
    return None


def _train_epoch(job: Job, epoch: int, state: EpochState, res: int, live: LiveLog, stop: StopSignal) -> dict:
    """One epoch's training pass from `state`: progress and live points at sync points, a checkpoint every
    train.checkpoint_minutes, and (rank 0) a stop after any step once a signal came."""
    tcfg, n = job.params["train"], len(job.train_loader)
    job.train_loader.set_epoch(epoch, start=state.step, res=res)
    bar = Progress(n, f"{job.name} epoch {epoch + 1}/{tcfg['epochs']}", initial=state.step,
                   enabled=job.rank == 0)
    job.last_save = time.monotonic()

    def on_sync(state, last):
        if job.rank != 0:
            return False
        if state.step - bar.n >= tcfg["log_every"] or last:
            now = {"loss": float(state.loss_sum) / max(state.seen, 1), "lr": job.sched.get_last_lr()[0],
                   "images_per_s": state.seen * job.world / max(state.seconds, 1e-9)}
            bar.update(state.step - bar.n, **now)
            live.progress(epoch * n + state.step, **now)
        minutes = tcfg["checkpoint_minutes"]
        if minutes and not last and time.monotonic() - job.last_save > 60 * minutes:
            _save(job, epoch, state)
            job.last_save = time.monotonic()
        return False

    try:
        return train_one_epoch(job.step_model, job.train_loader, job.opt, job.dev.torch, epoch=epoch + 1,
                               scheduler=job.sched, after_step=job.after_step, amp_dtype=job.dev.amp_dtype,
                               label_smoothing=tcfg["label_smoothing"], state=state,
                               sync_every=min(tcfg["check_every"], tcfg["log_every"]), on_sync=on_sync,
                               stop=stop.requested if job.rank == 0 else None)
    except NonFiniteLoss as e:
        kept = f"the last good checkpoint is kept at {job.run.last}" if job.run.last.exists() else \
            "no checkpoint was written yet (a rerun starts afresh)"
        raise DlwtError(f"{job.name}: {e}; {kept}") from None
    finally:
        bar.close()


def _record_epoch(job: Job, epoch: int, res: int, stats: dict, live: LiveLog) -> None:
    """Validation, angles and the epoch's row: metrics.jsonl, last.pt, live metrics and one line."""
    model, n, epochs = job.model, len(job.train_loader), job.params["train"]["epochs"]
    ddp.sync_buffers(model)
    stats.update(evaluate(model, job.val_loader, job.dev.torch, amp_dtype=job.dev.amp_dtype))
    stats["images_per_s"] *= job.world
    row = {"epoch": epoch + 1, "step": (epoch + 1) * n, "lr": job.lr * job.lr_factor(epoch * n), "res": res,
           **{k: v for k, v in stats.items() if k != "stopped"},
           "seconds": stats["train_seconds"] + stats["val_seconds"], "alignment": dlwt.alignment(model)}
    if epoch == 0:
        row["alignment_init"] = job.run_info["alignment_init"]
    if job.probe is not None:
        model.eval()  # BatchNorm's running statistics: the angle does not depend on the batch's size
        row["grad_alignment"] = dlwt.gradient_alignment(model, *job.probe)
    job.rows.append(row)
    if job.rank == 0:  # last.pt first: metrics.jsonl never holds a row no checkpoint backs (a full disk)
        _save(job, epoch + 1, None)
        run_folder.write_metrics(job.run, job.rows)
        live.epoch((epoch + 1) * n, row)
        print(f"{job.name} epoch {epoch + 1}/{epochs}: train loss {row['train_loss']:.4f}, val top-1 err "
              f"{row['val_top1_err']:.4f}, top-5 err {row['val_top5_err']:.4f}, {row['images_per_s']:.0f} img/s",
              flush=True)


def _save(job: Job, epoch_done: int, state: EpochState | None) -> None:
    """last.pt: everything a resume needs, at an epoch's end (state None) or mid-epoch."""
    save_torch({"format": FORMAT, "arch": job.arch, "rule": job.rule, "seed": job.seed, "epoch": epoch_done,
                "step": state.step if state else 0, "epoch_state": state.as_dict() if state else None,
                "model": job.model.state_dict(), "optimizer": job.opt.state_dict(),
                "scheduler": job.sched.state_dict(),
                "mirror_rng": job.mirror_gen.get_state() if job.rule == "wm" else None, "metrics": job.rows,
                "params": job.params, "run_info": job.run_info, "stem": job.params["model"]["stem"],
                "num_classes": job.train_loader.num_classes}, job.run.last)


def _end(job: Job, stopped: tuple[int, str] | None) -> dict:
    """final.pt and the process group's end, or the stop's one line."""
    last = job.rows[-1] if job.rows else {}
    if stopped:
        signum, where = stopped
        if job.rank == 0:
            _stop_line(job.name, signum, where)
        # no barrier: under DDP the other ranks are still in a step, and the launcher ends them
        return {"status": "stopped", "signal": signum, "metrics": last}
    if job.rank == 0:
        run_folder.write_final(load_checkpoint(job.run.last), job.run)
    if job.world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return {"status": "finished", "signal": None, "metrics": last}


def main(args) -> int:
    from dlwt.atomic import check_target
    from dlwt.params import check_seed, load

    check_seed(args.seed)
    check_target(args.out, "folder", "--out")  # a file there: one line now, not a traceback after set-up
    stop = StopSignal()  # before anything slow: a signal while params load or GPUs are claimed has its line too
    try:
        params = load(args.params, args.overlay)
        tcfg = params["train"]
        if "WORLD_SIZE" not in os.environ and tcfg["device"] != "cpu":
            devices.claim_gpus(tcfg["gpus"])  # before CUDA starts and before the ranks: this job's own GPUs
        if stop.requested():
            _stop_line("the run", stop.signum, "before training started")
            return 128 + stop.signum
        if tcfg["gpus"] > 1 and "WORLD_SIZE" not in os.environ:  # this very command as DDP ranks
            return ddp.launch(tcfg["gpus"], _command(args))  # it handles the signals from here on
        result = train(params, args.arch, args.rule, args.seed, Path(args.out), restart=args.restart, stop=stop)
    finally:
        stop.restore()
    return 128 + result["signal"] if result["signal"] else 0


def _stop_line(who: str, signum: int, where: str) -> None:
    print(f"dlwt train: {who} stopped by {signal.Signals(signum).name} {where}; rerun the same command to "
          "resume", file=sys.stderr, flush=True)


def _command(args) -> list[str]:
    """The `dlwt train ...` arguments that every DDP rank runs (the parsed ones: not sys.argv, which is not
    this command's when the CLI is called in-process)."""
    cmd = ["train", "--params", str(args.params)]
    for overlay in args.overlay:
        cmd += ["--overlay", str(overlay)]
    cmd += ["--arch", args.arch, "--rule", args.rule, "--seed", str(args.seed), "--out", str(args.out)]
    return cmd + (["--restart"] if args.restart else [])


def add_run_arguments(p) -> None:
    """--params/--overlay/--arch/--rule/--seed, shared with `dlwt evaluate` and `dlwt doctor`."""
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--overlay", action="append", default=[], help="YAML deep-merged over --params (repeatable)")
    p.add_argument("--arch", required=True, choices=dlwt.models.ARCHS)
    p.add_argument("--rule", required=True, choices=dlwt.RULES)
    p.add_argument("--seed", type=int, default=0)


def add_subparser(sub) -> None:
    p = sub.add_parser("train", help="train one (arch, rule, seed); resumes from <out>/checkpoints/last.pt",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(p)
    p.add_argument("--out", required=True, help="run folder, e.g. results/<exp>/runs/<arch>-<rule>-s<seed>")
    p.add_argument("--restart", action="store_true", help="start afresh even if last.pt matches (kept aside)")
    p.set_defaults(func=main)

