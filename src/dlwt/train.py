"""Train one (arch, rule, seed): resumable, CPU or CUDA, single process or DDP under torchrun.

    dlwt train --params params.yaml --arch resnet18 --rule wm --seed 0 --out results/imagenet/runs/resnet18-wm-s0
    torchrun --nproc_per_node 8 -m dlwt train --params params.yaml --arch resnet50 --rule kp --seed 0 --out ...
    dlwt train --params params.yaml --overlay config/demo.yaml --arch resnet18 --rule kp --seed 0 --out ...

Each epoch rewrites <out>/metrics.jsonl (one line per epoch) and <out>/checkpoints/last.pt atomically;
running the same command again resumes from last.pt (on CPU the resumed run ends with exactly the metrics
of an uninterrupted one). <out>/checkpoints/final.pt is written last: its presence means the run finished.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

import dlwt
from dlwt.engine import NonFiniteLoss, evaluate, sgd, train_one_epoch
from dlwt.provenance import atomic_write, provenance, write_json_atomic


def _recipe(params: dict) -> dict:
    """What a checkpoint must have been made with to be resumed (data paths, workers and the list of
    runs may change)."""
    return {"train": params["train"], "mirror": params["mirror"], "stem": params["model"]["stem"]}


def setup_distributed():
    """(rank, world_size, device) from torchrun's environment, or a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if torch.cuda.is_available():
            torch.cuda.set_device(local)
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        rank = dist.get_rank()
    else:
        rank, local = 0, 0
    device = torch.device(f"cuda:{local}" if torch.cuda.is_available() else "cpu")
    return rank, world, device


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


def _rng_state(mirror_gen):
    return {"torch": torch.get_rng_state(), "mirror": mirror_gen.get_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def _set_rng_state(state, mirror_gen):
    torch.set_rng_state(state["torch"])
    mirror_gen.set_state(state["mirror"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_atomic(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _write_metrics(path: Path, rows: list[dict]) -> None:
    atomic_write(path, "".join(json.dumps(r) + "\n" for r in rows))


def train(params: dict, arch: str, rule: str, seed: int, out: Path) -> dict:
    """Run (or resume) one training run; returns the last epoch's metrics."""
    from dlwt.data.loaders import make_loader

    out = Path(out)
    rank, world, device = setup_distributed()
    cuda = device.type == "cuda"
    tcfg, mcfg = params["train"], params["mirror"]
    amp_dtype = torch.bfloat16 if cuda and tcfg["amp"] == "bf16" else None
    if cuda:
        torch.backends.cudnn.benchmark = True
    fmt = torch.channels_last if tcfg["channels_last"] else torch.contiguous_format

    train_loader = make_loader("train", params["data"], device, distributed=world > 1)
    val_loader = make_loader("val", params["data"], device, distributed=world > 1)
    torch.manual_seed(seed)  # the same W and B on every rank
    model = dlwt.models.build(arch, train_loader.num_classes, rule, params["model"]["stem"])
    model = model.to(device, memory_format=fmt)
    global_batch = params["data"]["batch_size"] * world
    lr = tcfg["lr"] * global_batch / tcfg["lr_batch"]
    opt = sgd(model, lr, tcfg["momentum"], tcfg["weight_decay"], tcfg["nesterov"])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(tcfg, len(train_loader)))
    mirror_gen = torch.Generator(device=device).manual_seed(seed)  # alike on every rank
    mirror = {k: mcfg[k] for k in ("noise_std", "lr", "weight_decay", "batch_size", "size")}

    last, metrics_path = out / "checkpoints" / "last.pt", out / "metrics.jsonl"
    rows, start_epoch = [], 0
    ckpt = torch.load(last, map_location=device, weights_only=False) if last.exists() else None
    if ckpt is not None and (ckpt["arch"], ckpt["rule"], ckpt["seed"]) != (arch, rule, seed):
        raise SystemExit(f"dlwt train: {last} is {ckpt['arch']}-{ckpt['rule']}-s{ckpt['seed']}, not "
                         f"{arch}-{rule}-s{seed}; use another --out or delete it")
    # Start afresh, keeping the old checkpoint, when params were edited (dvc repro, snakemake rerun) or when
    # the run had finished and its final.pt was removed (snakemake --forcerun / dvc repro -f: a recompute).
    why = None if ckpt is None else ("was made with other train/mirror/stem params"
                                      if _recipe(ckpt["params"]) != _recipe(params) else
                                      "is a finished run whose final.pt was removed"
                                      if ckpt["epoch"] >= tcfg["epochs"] else None)
    if why:
        stale = last.with_name(f"last-stale-{int(time.time())}.pt")
        if rank == 0:
            os.replace(last, stale)
            print(f"dlwt train: {last} {why}; moved it to {stale.name} and starting afresh", file=sys.stderr)
        ckpt = None
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        _set_rng_state(ckpt["rng"], mirror_gen)
        start_epoch = ckpt["epoch"]
        rows = ckpt["metrics"]  # lines written after this checkpoint belong to an epoch that is redone
        if rank == 0:
            _write_metrics(metrics_path, rows)  # a runner may have deleted it when the killed job failed
            print(f"dlwt train: resuming {out} after epoch {start_epoch}", file=sys.stderr)
    elif rule == "wm" and mcfg["warmup_steps"]:
        dlwt.mirror_step(model, steps=mcfg["warmup_steps"], generator=mirror_gen, **mirror)

    prov = provenance(params, world_size=world, device=device)
    run_info = {"arch": arch, "rule": rule, "seed": seed, "lr": lr, "global_batch": global_batch, **prov}
    if rank == 0:
        write_json_atomic(out / "config.json", run_info)
    net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if cuda else None) \
        if world > 1 else model
    step_model = torch.compile(net) if tcfg["compile"] else net
    mirror_every = _MirrorEvery(mcfg["every"], mcfg["steps"], mirror_gen, mirror) if rule == "wm" else None

    for epoch in range(start_epoch, tcfg["epochs"]):
        torch.manual_seed(seed * 100003 + epoch)  # augmentation/shuffle RNG independent of resume
        train_loader.set_epoch(epoch)
        bar = tqdm(total=len(train_loader), desc=f"{arch}-{rule}-s{seed} epoch {epoch + 1}/{tcfg['epochs']}",
                   leave=False, disable=rank != 0 or not sys.stderr.isatty())
        current_lr = sched.get_last_lr()[0]
        try:
            stats = train_one_epoch(step_model, train_loader, opt, device, epoch=epoch + 1, scheduler=sched,
                                    after_step=mirror_every and mirror_every(model),
                                    amp_dtype=amp_dtype, label_smoothing=tcfg["label_smoothing"],
                                    progress=bar)
        except NonFiniteLoss as e:
            raise SystemExit(f"dlwt train: {e}; the last good checkpoint is kept at {last}") from None
        finally:
            bar.close()
        stats.update(evaluate(model, val_loader, device, amp_dtype=amp_dtype))
        stats["images_per_s"] *= world
        row = {"epoch": epoch + 1, "lr": current_lr, **stats, "seconds": stats["train_seconds"] +
               stats["val_seconds"], "alignment": dlwt.alignment(model)}
        rows.append(row)
        if rank == 0:
            _write_metrics(metrics_path, rows)
            save_atomic({"arch": arch, "rule": rule, "seed": seed, "epoch": epoch + 1,
                         "model": model.state_dict(), "optimizer": opt.state_dict(),
                         "scheduler": sched.state_dict(), "rng": _rng_state(mirror_gen), "metrics": rows,
                         "params": params, "provenance": prov}, last)
            print(f"{arch}-{rule}-s{seed} epoch {epoch + 1}/{tcfg['epochs']}: train loss "
                  f"{row['train_loss']:.4f}, val top-1 err {row['val_top1_err']:.4f}, top-5 err "
                  f"{row['val_top5_err']:.4f}, {row['images_per_s']:.0f} img/s", flush=True)
    if rank == 0:
        final = torch.load(last, map_location="cpu", weights_only=False)
        save_atomic(final, out / "checkpoints" / "final.pt")
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return rows[-1] if rows else {}


class _MirrorEvery:
    """After every `every`-th training step, `steps` mirror steps (wm), on the unwrapped model."""

    def __init__(self, every, steps, generator, kwargs):
        self.every, self.steps, self.generator, self.kwargs, self.count = every, steps, generator, kwargs, 0

    def __call__(self, model):
        def after_step():
            self.count += 1
            if self.count % self.every == 0:
                dlwt.mirror_step(model, steps=self.steps, generator=self.generator, **self.kwargs)
        return after_step


def main(args) -> int:
    from dlwt.params import load
    params = load(args.params, args.overlay)
    gpus = params["train"]["gpus"]
    if gpus > 1 and "WORLD_SIZE" not in os.environ:  # relaunch this very command under torchrun
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}",
               "-m", "dlwt", *sys.argv[1:]]
        print("dlwt train: " + " ".join(cmd), file=sys.stderr, flush=True)
        os.execv(sys.executable, cmd)
    train(params, args.arch, args.rule, args.seed, Path(args.out))
    return 0


def add_run_arguments(p) -> None:
    """--params/--overlay/--arch/--rule/--seed, shared with `dlwt evaluate`."""
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--overlay", action="append", default=[], help="YAML deep-merged over --params (repeatable)")
    p.add_argument("--arch", required=True, choices=dlwt.models.ARCHS)
    p.add_argument("--rule", required=True, choices=dlwt.RULES)
    p.add_argument("--seed", type=int, default=0)


def add_subparser(sub) -> None:
    p = sub.add_parser("train", help="train one (arch, rule, seed); resumes from <out>/checkpoints/last.pt",
                       description=__doc__, formatter_class=__import__("argparse").RawDescriptionHelpFormatter)
    add_run_arguments(p)
    p.add_argument("--out", required=True, help="run folder, e.g. results/<exp>/runs/<arch>-<rule>-s<seed>")
    p.set_defaults(func=main)
