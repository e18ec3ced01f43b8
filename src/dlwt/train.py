"""Train one (arch, rule, seed): resumable, preemption-safe, CPU or CUDA, one process or DDP under torchrun.

    dlwt train --params params.yaml --arch resnet18 --rule wm --seed 0 --out results/imagenet/runs/resnet18-wm-s0
    dlwt train --params params.yaml --overlay config/demo.yaml --arch resnet18 --rule kp --seed 0 --out ...

With train.gpus > 1 the command claims its GPUs and re-executes itself under torchrun (DDP, one node).
Each epoch rewrites <out>/metrics.jsonl and <out>/checkpoints/last.pt atomically; so does a mid-epoch
checkpoint every train.checkpoint_minutes and on SIGTERM/SIGINT (SLURM's time limit, Ctrl-C), after which the
run exits 128+signal. Running the same command again resumes from last.pt (on CPU with the torchvision
backend, a run stopped anywhere ends with exactly the metrics of an uninterrupted one), or starts afresh,
keeping the old file, when a setting the run depends on changed (it names the key). final.pt (weights, B and
metadata) is written last: its presence means the run finished; a finished last.pt is never retrained unless
--restart says so. One `dlwt train` per run folder: a second one stops at once naming the holder's pid.
"""
from __future__ import annotations

import argparse
import fcntl
import json
import os
import signal
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

import dlwt
from dlwt import checkpoint, dag, ddp, devices, layout
from dlwt.atomic import atomic_write, remove_stale_temps, save_torch, write_json_atomic
from dlwt.engine import EpochState, NonFiniteLoss, evaluate, fixed_batch, sgd, train_one_epoch
from dlwt.errors import DlwtError
from dlwt.live import LiveLog
from dlwt.progress import Progress
from dlwt.provenance import provenance

FORMAT = "dlwt-checkpoint-2"


def lr_lambda(train_cfg: dict, steps_per_epoch: int):
    """Per-step multiplier of the base lr: step decay at milestones, or linear warm-up then linear to 0."""
    total = train_cfg["epochs"] * steps_per_epoch
    warmup = int(train_cfg["warmup_epochs"] * steps_per_epoch)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if train_cfg["schedule"] == "step":
            epoch = step // steps_per_epoch
            return train_cfg["gamma"] ** sum(epoch >= m for m in train_cfg["milestones"])
        return max(0.0, (total - step) / max(1, total - warmup))

    return factor


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


class StopSignal:
    """SIGTERM/SIGINT set a flag the loop reads at its next sync point (a second Ctrl-C stops at once)."""

    def __init__(self):
        self.signum = None
        self.previous = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGINT)}

    def _handle(self, signum, frame):
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def restore(self):
        for s, h in self.previous.items():
            signal.signal(s, h)


def train(params: dict, arch: str, rule: str, seed: int, out: Path, *, restart: bool = False) -> dict:
    """Run, resume or finish one training run; returns {"status": "finished"|"stopped", "signal", "metrics"}."""
    run = layout.Run(out)
    rank, world, dev = ddp.setup(params["train"])
    lock = lock_run(run) if rank == 0 else None
    try:
        return _train(params, arch, rule, seed, run, rank, world, dev, restart)
    finally:
        if lock is not None:
            os.close(lock)  # the lock goes with the fd (also when the run stops with an error)


def _train(params, arch, rule, seed, run, rank, world, dev, restart) -> dict:
    from dlwt.data.loaders import make_loader, res_for_epoch

    out = run.out
    tcfg, mcfg, dcfg = params["train"], params["mirror"], params["data"]
    if rank == 0:  # temp files of killed writers (a checkpoint is ~0.2-0.5 GB each)
        for folder in (run.out, run.checkpoints):
            remove_stale_temps(folder)
    ckpt = load_checkpoint(run.last)
    if ckpt is not None and (ckpt["arch"], ckpt["rule"], ckpt["seed"]) != (arch, rule, seed):
        raise DlwtError(f"{run.last} is {layout.run_id(ckpt['arch'], ckpt['rule'], ckpt['seed'])}, not "
                        f"{layout.run_id(arch, rule, seed)}: use another --out, or move it away")
    keys = [] if ckpt is None else dag.changed_keys(ckpt["params"], params, rule)  # the DAG's own key set
    if ckpt is not None and (keys or restart):
        stale = run.last.with_name(f"last-stale-{int(time.time())}.pt")
        if rank == 0:
            os.replace(run.last, stale)
            why = f"setting {', '.join(keys)} changed" if keys else "--restart"
            print(f"dlwt train: {why}; moved {run.last.name} to {stale.name} and starting afresh", file=sys.stderr)
        ckpt = None
    finished = ckpt is not None and ckpt["epoch"] >= tcfg["epochs"] and not ckpt.get("step")
    if finished:  # a rerun after the runner removed final.pt (snakemake --rerun-incomplete): no retraining
        if rank == 0:
            _write_final(ckpt, run)
            write_json_atomic(run.config, ckpt["run_info"])
            atomic_write(run.metrics, "".join(json.dumps(r) + "\n" for r in ckpt["metrics"]))
            print(f"dlwt train: {run.last} is a finished run; rewrote {run.final.name} from it (--restart "
                  "retrains)", file=sys.stderr)
        return {"status": "finished", "signal": None, "metrics": ckpt["metrics"][-1]}

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
    mirror_gen = torch.Generator(device=dev.torch).manual_seed(seed)  # alike on every rank
    # the mirror's settings are read by wm runs only: the other rules' runs do not depend on them (params_schema)
    mirror = {k: mcfg[k] for k in ("noise_std", "lr", "weight_decay", "batch_size", "size")} if rule == "wm" else {}
    rows, epoch0, epoch_state = [], 0, None
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])  # CPU tensors copied into the device's parameters
        opt.load_state_dict(ckpt["optimizer"])  # moves its state to the parameters' device
        sched.load_state_dict(ckpt["scheduler"])
        if ckpt["mirror_rng"] is not None:
            mirror_gen.set_state(ckpt["mirror_rng"])
        epoch0, rows, epoch_state = ckpt["epoch"], ckpt["metrics"], ckpt.get("epoch_state")
        if rank == 0:
            atomic_write(run.metrics, "".join(json.dumps(r) + "\n" for r in rows))  # a runner may have deleted it
            where = f"epoch {epoch0 + 1}, step {epoch_state['step']}" if epoch_state else f"after epoch {epoch0}"
            print(f"dlwt train: resuming {out} at {where}", file=sys.stderr)
    elif rule == "wm" and mcfg["warmup_steps"]:
        dlwt.mirror_step(model, steps=mcfg["warmup_steps"], generator=mirror_gen, **mirror)

    run_info = {"arch": arch, "rule": rule, "seed": seed, "lr": lr, "global_batch": global_batch,
                **provenance(params, world_size=world, device=dev.torch)}
    if rank == 0:
        write_json_atomic(run.config, run_info)
    net = ddp.wrap(model, dev, opt) if world > 1 else model
    step_model = torch.compile(net) if tcfg["compile"] else net
    after_step = _mirror_every(model, mcfg, mirror_gen, mirror) if rule == "wm" else None
    probe = fixed_batch(val_loader, tcfg["align_batch"]) if tcfg["align_batch"] and rank == 0 else None
    name = layout.run_id(arch, rule, seed)

    def save(epoch_done: int, state: EpochState | None) -> None:
        save_torch({"format": FORMAT, "arch": arch, "rule": rule, "seed": seed, "epoch": epoch_done,
                     "step": state.step if state else 0, "epoch_state": state.as_dict() if state else None,
                     "model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                     "mirror_rng": mirror_gen.get_state() if rule == "wm" else None, "metrics": rows,
                     "params": params, "run_info": run_info, "stem": params["model"]["stem"],
                     "num_classes": train_loader.num_classes}, run.last)

    live = LiveLog(run.live, enabled=rank == 0, resume=ckpt is not None)
    stop = StopSignal()
    stopped = None
    try:
        for epoch in range(epoch0, tcfg["epochs"]):
            state = EpochState.from_dict(dev.torch, epoch_state)
            epoch_state = None
            res = res_for_epoch(dcfg, epoch)
            train_loader.set_epoch(epoch, start=state.step, res=res)
            bar = Progress(len(train_loader), f"{name} epoch {epoch + 1}/{tcfg['epochs']}", initial=state.step,
                           enabled=rank == 0)
            last_save = time.monotonic()

            def on_sync(state, last, epoch=epoch, bar=bar):
                nonlocal last_save, stopped
                if rank == 0 and (state.step - bar.n >= tcfg["log_every"] or last):
                    now = {"loss": float(state.loss_sum) / max(state.seen, 1), "lr": sched.get_last_lr()[0],
                           "images_per_s": state.seen * world / max(state.seconds, 1e-9)}
                    bar.update(state.step - bar.n, **now)
                    live.progress(epoch * len(train_loader) + state.step, **now)
                flag = torch.tensor([0.0 if stop.signum is None else float(stop.signum)], device=dev.torch)
                if world > 1:
                    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
                if flag.item() and not last:
                    stopped = int(flag.item())
                    if rank == 0:
                        save(epoch, state)
                    return True
                minutes = tcfg["checkpoint_minutes"]
                if rank == 0 and minutes and not last and time.monotonic() - last_save > 60 * minutes:
                    save(epoch, state)
                    last_save = time.monotonic()
                return False

            try:
                stats = train_one_epoch(step_model, train_loader, opt, dev.torch, epoch=epoch + 1, scheduler=sched,
                                        after_step=after_step, amp_dtype=dev.amp_dtype,
                                        label_smoothing=tcfg["label_smoothing"], state=state,
                                        sync_every=min(tcfg["check_every"], tcfg["log_every"]), on_sync=on_sync)
            except NonFiniteLoss as e:
                kept = f"the last good checkpoint is kept at {run.last}" if run.last.exists() else \
                    "no checkpoint was written yet (a rerun starts afresh)"
                raise DlwtError(f"{name}: {e}; {kept}") from None
            finally:
                bar.close()
            if stopped:
                break
            ddp.sync_buffers(model)
            stats.update(evaluate(model, val_loader, dev.torch, amp_dtype=dev.amp_dtype))
            stats["images_per_s"] *= world
            row = {"epoch": epoch + 1, "lr": lr * lr_factor(epoch * len(train_loader)), "res": res,
                   **{k: v for k, v in stats.items() if k != "stopped"},
                   "seconds": stats["train_seconds"] + stats["val_seconds"], "alignment": dlwt.alignment(model)}
            if probe is not None:
                model.eval()  # BatchNorm's running statistics: the angle does not depend on the batch's size
                row["grad_alignment"] = dlwt.gradient_alignment(model, *probe)
            rows.append(row)
            if rank == 0:
                atomic_write(run.metrics, "".join(json.dumps(r) + "\n" for r in rows))
                save(epoch + 1, None)
                live.epoch((epoch + 1) * len(train_loader), row)
                print(f"{name} epoch {epoch + 1}/{tcfg['epochs']}: train loss {row['train_loss']:.4f}, val top-1 "
                      f"err {row['val_top1_err']:.4f}, top-5 err {row['val_top5_err']:.4f}, "
                      f"{row['images_per_s']:.0f} img/s", flush=True)
    finally:
        stop.restore()
        live.close()
    if stopped:
        if rank == 0:
            print(f"dlwt train: {name} stopped by {signal.Signals(stopped).name} at a mid-epoch checkpoint "
                  f"({run.last}); rerun the same command to resume", file=sys.stderr, flush=True)
    elif rank == 0:
        _write_final(load_checkpoint(run.last), run)
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return {"status": "stopped" if stopped else "finished", "signal": stopped, "metrics": rows[-1] if rows else {}}


def _write_final(ckpt: dict, run: layout.Run) -> None:
    """final.pt: what evaluation and users need (weights with B, metadata), not the optimiser's state."""
    keep = ("format", "arch", "rule", "seed", "epoch", "model", "metrics", "params", "run_info", "stem",
            "num_classes")
    save_torch({k: ckpt[k] for k in keep}, run.final)


def _mirror_every(model, mcfg, generator, kwargs):
    """wm: `mirror.steps` mirror steps after every `mirror.every`-th training step, on the unwrapped model."""
    count = 0

    def after_step():
        nonlocal count
        count += 1
        if count % mcfg["every"] == 0:
            dlwt.mirror_step(model, steps=mcfg["steps"], generator=generator, **kwargs)
    return after_step


def main(args) -> int:
    from dlwt.params import load

    params = load(args.params, args.overlay)
    tcfg = params["train"]
    if "WORLD_SIZE" not in os.environ and tcfg["device"] != "cpu":
        devices.claim_gpus(tcfg["gpus"])  # before CUDA starts and before torchrun: this job's own GPUs
    if tcfg["gpus"] > 1 and "WORLD_SIZE" not in os.environ:  # relaunch this very command under torchrun
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={tcfg['gpus']}",
               "-m", "dlwt", *sys.argv[1:]]
        print("dlwt train: " + " ".join(cmd), file=sys.stderr, flush=True)
        os.execv(sys.executable, cmd)
    result = train(params, args.arch, args.rule, args.seed, Path(args.out), restart=args.restart)
    return 128 + result["signal"] if result["signal"] else 0


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

