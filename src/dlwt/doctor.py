"""`dlwt doctor`: what to run first on a GPU node. Checks the machine against the experiment in params.yaml,
times a few training steps of every rule as the pipeline will run them, and estimates the whole experiment's
GPU-hours and disk before anything long starts.

    dlwt doctor --params params.yaml                          # on the GPU node (inside the container)
    dlwt doctor --params params.yaml --overlay config/ci.yaml # CPU, seconds (CI runs this)

Each failed check is one line with its fix, and the exit code is 1. The table and the estimates are also
written to results/<exp>/doctor.json (send that file with a bug report or a BENCHMARKS.md row).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time

import torch

from dlwt import devices, layout
from dlwt.errors import DlwtError

IMAGENET_TRAIN, IMAGENET_VAL = 1_281_167, 50_000
# Disk for ImageNet, GB: archives, the extracted tree, and FFCV files at ffcv-imagenet's settings (max side
# 512, half JPEG q90: their README's ~340 GB for train). Estimates until a user's convert measures them.
IMAGENET_DISK_GB = {"archives": 155, "images": 150, "ffcv": 350}
WORKER_SAYS = "dlwt all-reduce failed: "  # how an all-reduce rank's one line starts (found in torchrun's output)
LOADER_BATCHES = 10  # batches of the real .beton timed after the first (decoding's images/s)


def _versions(dev) -> dict:
    from dlwt.provenance import versions

    out = {**versions(), "torch_cuda": torch.version.cuda, "cudnn": None, "driver": None, "bf16": False,
           "gpus": [], "cpus_allowed": devices.cpus(), "cpus_node": os.cpu_count(),
           "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES")}
    if dev.cuda:
        out["cudnn"] = torch.backends.cudnn.version()
        out["bf16"] = torch.cuda.is_bf16_supported()
        out["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        if shutil.which("nvidia-smi"):
            q = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                               capture_output=True, text=True, timeout=30)
            out["driver"] = q.stdout.split("\n")[0].strip() or None
    return out


def _batch(params, dev, num_classes):
    """(images, labels, source, loader images/s): the real train .beton's first batch when it exists (checking
    the FFCV loader onto the device, and timing LOADER_BATCHES more of its batches: decoding is the likely limit
    of ResNet-18 on 12 cores), random data otherwise."""
    from dlwt.data import ffcv_dir

    d = params["data"]
    beton = os.path.join(ffcv_dir(d["root"], d["dataset"]), "train.beton")
    if os.path.exists(f"{beton}.json"):
        from dlwt.data.loaders import make_loader

        loader = make_loader("train", d, dev.torch)
        # closing the pass ends FFCV's epoch thread and its buffers (loaders._end_early), as fixed_batch does
        with contextlib.closing(iter(loader)) as it:
            x, y = next(it)
            if x.device.type != dev.torch.type or x.dtype != torch.float32 or not bool(torch.isfinite(x).all()):
                raise DlwtError(f"the FFCV loader gave {x.dtype} on {x.device}, not finite float32 on {dev.torch}")
            n, start = 0, time.perf_counter()
            for xb, _ in it:
                n += len(xb)
                if n >= LOADER_BATCHES * len(x):
                    break
            _sync(dev)
            rate = n / (time.perf_counter() - start) if n else None
        return x, y, "train.beton", rate
    g = torch.Generator().manual_seed(0)
    x = torch.randn(d["batch_size"], 3, d["res"], d["res"], generator=g)
    y = torch.randint(0, num_classes, (d["batch_size"],), generator=g)
    return x.to(dev.torch, memory_format=dev.memory_format), y.to(dev.torch), "random", None


def _sync(dev):
    if dev.cuda:
        torch.cuda.synchronize(dev.torch)


def time_rules(params, arch, dev, x, y, num_classes, steps) -> list[dict]:
    """Every rule of params on `arch`, as `dlwt train` steps it (dlwt.rulecost: same model, amp, memory format,
    fused SGD, compile, wm's mirror steps), interleaved round by round: ms per step, ratio to bp, images/s,
    peak memory."""
    from dlwt import rulecost

    rules = params["model"]["rules"]
    setups = {r: rulecost.Setup.build(params, arch, r, num_classes, dev) for r in rules}
    rounds = max(1, min(3, steps))
    raw = rulecost.interleaved(setups, x, y, dev, rounds=rounds, steps=-(-steps // rounds), warmup=2)
    return [{"arch": arch, **rulecost.summary_row(r, raw[r], x.shape[0])} for r in rules]


def _allreduce_check(n: int, backend: str = "nccl") -> str | None:
    """None when `n` ranks on this node can all-reduce, else the problem. The ranks run this module's
    `allreduce_worker` under torchrun (`-m`: torchrun has no `-c`)."""
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}",
                           "-m", "dlwt.doctor", "--allreduce-worker", backend],
                          capture_output=True, text=True, timeout=300)
    if proc.returncode == 0:
        return None
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()]
    return next((ln.split(WORKER_SAYS, 1)[1] for ln in lines if WORKER_SAYS in ln), lines[-1] if lines else "failed")


def allreduce_worker(backend: str) -> None:
    """One rank of the all-reduce check: a tensor of ones summed over the ranks must equal the world size."""
    import torch.distributed as dist

    rank = int(os.environ["LOCAL_RANK"])
    device = torch.device("cpu")
    if backend == "nccl":
        torch.cuda.set_device(rank)
        device = torch.device("cuda", rank)
    try:
        dist.init_process_group(backend)
        t = torch.ones(1, device=device)
        dist.all_reduce(t)
        if t.item() != dist.get_world_size():
            raise RuntimeError(f"all_reduce gave {t.item()} on rank {rank}, not {dist.get_world_size()}")
        dist.destroy_process_group()
    except Exception as e:  # noqa: BLE001 (the one line the parent reports, whatever went wrong)
        print(f"{WORKER_SAYS}rank {rank}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
              file=sys.stderr, flush=True)
        raise SystemExit(1) from None


LEFT_OUT = ("step times: compute only, on one batch already on the device, rules interleaved round by round; "
            "they leave out decoding (timed separately when the .beton exists), DDP's all-reduce across "
            "train.gpus, progressive resizing (data.min_res) and val_res, so the estimate is a lower bound")


def estimate(params, rows, train_images, val_images) -> dict:
    """GPU-hours of every run params asks for (train epochs + per-epoch validation) from the measured steps."""
    t, d = params["train"], params["data"]
    gpus = t["gpus"]
    steps = t["epochs"] * (train_images // (d["batch_size"] * gpus))
    hours = {}
    for r in rows:
        # validation is a forward pass: about a third of a training step per image
        per_run = steps * r["ms_per_step"] / 1000 + t["epochs"] * val_images / r["images_per_s"] / 3 / gpus
        hours[f"{r['arch']}-{r['rule']}"] = per_run * gpus / 3600 * len(params["model"]["seeds"])
    return {"runs": len(layout.run_ids(params)), "gpu_hours_per_arch_rule_all_seeds": hours,
            "gpu_hours_total": sum(hours.values())}


def run(params: dict, steps: int = 5) -> dict:
    from dlwt.data import images_dir, source
    from dlwt.data.imagefolder import read_classes

    t, d = params["train"], params["data"]
    checks, report = [], {}
    try:
        dev = devices.Device.resolve(t["device"], amp=t["amp"], channels_last=t["channels_last"])
    except DlwtError as e:
        return {"checks": [("device", False, str(e))], "versions": _versions(devices.Device.resolve("cpu"))}
    report["device"] = str(dev.torch)
    report["versions"] = v = _versions(dev)
    checks.append(("device", True, f"{dev.torch}, amp {dev.amp_dtype}, {v['cpus_allowed']} CPUs allowed"))
    if dev.cuda and t["amp"] == "bf16" and not v["bf16"]:
        checks.append(("bf16", False, "this GPU has no fast bf16: set train.amp: none (or use an Ampere+ GPU)"))
    per_rank = v["cpus_allowed"] // max(1, t["gpus"])
    if d["num_workers"] > per_rank:
        checks.append(("cpus", False, f"data.num_workers={d['num_workers']} but {per_rank} CPUs per rank are "
                                      "allowed: ask the scheduler for more CPUs, or lower data.num_workers"))
    if t["gpus"] > 1:
        have = torch.cuda.device_count() if dev.cuda else 0
        problem = (f"train.gpus={t['gpus']} but {have} GPUs are visible" if have < t["gpus"]
                   else _allreduce_check(t["gpus"]))
        checks.append(("all-reduce", problem is None, problem or f"NCCL all-reduce over {t['gpus']} GPUs"))
    try:
        num_classes = len(read_classes(images_dir(d["root"], d["dataset"])))
    except DlwtError:
        num_classes = source(d["source"]).classes(d) or 10  # before extract: the registry's count (a stand-in for imagefolder)
    try:
        x, y, source, loader_rate = _batch(params, dev, num_classes)
        checks.append(("loader", True, f"{source} batch {tuple(x.shape)} on {x.device}" + (
            f", {loader_rate:.0f} images/s decoded" if loader_rate else "")))
    except Exception as e:  # noqa: BLE001 (report any loader failure as a failed check)
        checks.append(("loader", False, f"{type(e).__name__}: {e}"))
        x, y, source, loader_rate = _batch({**params, "data": {**d, "root": os.devnull}}, dev, num_classes)
    rows = []
    for arch in params["model"]["archs"]:
        rows += time_rules(params, arch, dev, x, y, num_classes, steps)
    for r in rows:
        if not r["finite"]:
            checks.append((f"{r['arch']}-{r['rule']}", False, "non-finite loss in the timing steps"))
    counts = {}
    for split, default in (("train", IMAGENET_TRAIN), ("val", IMAGENET_VAL)):
        sidecar = os.path.join(d["root"], d["dataset"], "ffcv", f"{split}.beton.json")
        counts[split] = (json.load(open(sidecar))["images"] if os.path.exists(sidecar)
                         else default if d["source"] == "imagenet" else None)
    report.update({"steps": rows, "images": counts, "host": platform.node(), "data": source,
                   "loader_images_per_s": loader_rate,
                   "estimate": estimate(params, rows, counts["train"], counts["val"]) if counts["train"] else None,
                   "disk_gb": IMAGENET_DISK_GB if d["source"] == "imagenet" else None})
    report["checks"] = checks
    return report


def print_report(report: dict, out=None) -> None:
    out = out or sys.stdout  # looked up at call time: a redirected or captured stdout gets the report
    for name, ok, detail in report["checks"]:
        print(f"{'ok  ' if ok else 'FAIL'} {name}: {detail}", file=out)
    if "steps" not in report:
        return
    print(f"\n{'arch':10} {'rule':4} {'ms/step':>9} {'/ bp':>6} {'img/s':>8} {'peak MB':>8}", file=out)
    for r in report["steps"]:
        ratio = f"{r['vs_bp']:.2f}x" if r["vs_bp"] else "-"
        print(f"{r['arch']:10} {r['rule']:4} {r['ms_per_step']:9.1f} {ratio:>6} {r['images_per_s']:8.0f} "
              f"{r['peak_mb']:8.0f}", file=out)
    print(f"\n{LEFT_OUT}", file=out)
    if report.get("loader_images_per_s"):
        fastest = max(r["images_per_s"] for r in report["steps"])
        print(f"the loader decoded {report['loader_images_per_s']:.0f} images/s on this rank's CPUs; the fastest "
              f"rule computes {fastest:.0f}: " + ("decoding is the limit (more CPUs per GPU, or a smaller "
              "data.max_resolution)" if report["loader_images_per_s"] < fastest else "compute is the limit"),
              file=out)
    e = report["estimate"]
    print(f"\nwhole experiment ({e['runs']} runs, {report['images']['train']} train images, from these step times): "
          f"{e['gpu_hours_total']:.1f} device-hours" if e else "\nno estimate: run `dlwt convert` first (it counts "
          "the images)", file=out)
    if report["disk_gb"]:
        print("disk (GB, estimates): " + ", ".join(f"{k} {v}" for k, v in report["disk_gb"].items()), file=out)


def main(args) -> int:
    from dlwt.atomic import write_json_atomic
    from dlwt.params import load

    if args.steps < 1:  # a per-step time needs a step (0 divided by zero)
        raise DlwtError(f"--steps {args.steps}: time at least 1 step per rule (default 5)")
    params = load(args.params, args.overlay)
    if params["train"]["device"] != "cpu":
        devices.claim_gpus(params["train"]["gpus"])
    report = run(params, steps=args.steps)
    print_report(report)
    path = layout.exp_dir(params["exp"]) / "doctor.json"
    write_json_atomic(path, report)
    print(f"\nwrote {path}")
    return 0 if all(ok for _, ok, _ in report["checks"]) else 1


def add_subparser(sub) -> None:
    p = sub.add_parser("doctor", help="check this machine against params and time every rule (run first)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--overlay", action="append", default=[], help="YAML deep-merged over --params (repeatable)")
    p.add_argument("--steps", type=int, default=5, help="timed training steps per rule (after 2 warm-up steps)")
    p.set_defaults(func=main)


if __name__ == "__main__":  # torchrun's entry for the all-reduce check: python -m dlwt.doctor --allreduce-worker B
    if sys.argv[1:2] != ["--allreduce-worker"] or len(sys.argv) != 3:
        raise SystemExit("usage: python -m dlwt.doctor --allreduce-worker nccl|gloo (run by `dlwt doctor`)")
    allreduce_worker(sys.argv[2])
