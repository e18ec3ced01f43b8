"""Images/s of the FFCV train loader against the torchvision loader on the same JPEGs, same transforms.

    .venv/bin/python bench/loaders.py                         # CPU, 2 workers, 224 px train crops
    .venv/bin/python bench/loaders.py --device cuda --workers 8 --batch 128

Both read the same synthetic ILSVRC-layout JPEGs (textured, ImageNet-like size), extracted once; FFCV reads
them from a .beton written with write_mode=jpg, so both decode the same JPEG quality (--write-mode
proportion stores half raw, as ffcv-imagenet does, and is faster still). Each loader is built once and
warmed up (numba JIT, worker start); then rounds time one full epoch of each, interleaved, so machine
noise hits both alike. The speedup is taken within each round. Prints a markdown table.
"""

import argparse
import os
import statistics
import tempfile
import time

import torch

from dlwt.data.imagenet import extract
from dlwt.data.loaders import make_loader
from dlwt.data.stages import convert_stage
from dlwt.data.synthetic import write_archives

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("--device", default="cpu")
p.add_argument("--workers", type=int, default=2)
p.add_argument("--batch", type=int, default=64)
p.add_argument("--res", type=int, default=224)
p.add_argument("--classes", type=int, default=8)
p.add_argument("--per-class", type=int, default=64)
p.add_argument("--size", type=int, default=384, help="JPEG side (ImageNet's mean is about 400x350)")
p.add_argument("--write-mode", default="jpg")
p.add_argument("--rounds", type=int, default=5)
p.add_argument("--root", default=None, help="work folder (default: a temporary one)")
args = p.parse_args()

root = args.root or tempfile.mkdtemp(prefix="dlwt-bench-")
raw = os.path.join(root, "raw", "synthetic")
if not os.path.exists(os.path.join(root, "synthetic", "ffcv", "train.beton.json")):
    write_archives(
        raw, classes=args.classes, train_per_class=args.per_class, val_per_class=1, size=args.size, noise=20.0
    )  # noise: JPEGs of realistic size (~60 KB), not flat colour
    extract(raw, root, "synthetic")
    convert_stage(
        {
            "root": root,
            "dataset": "synthetic",
            "max_resolution": args.size,
            "jpeg_quality": 90,
            "write_mode": args.write_mode,
            "num_workers": args.workers,
        }
    )
device = torch.device(args.device)
loaders = {
    b: make_loader(
        "train",
        {
            "root": root,
            "dataset": "synthetic",
            "backend": b,
            "res": args.res,
            "batch_size": args.batch,
            "num_workers": args.workers,
        },
        device,
    )
    for b in ("ffcv", "torchvision")
}


def epoch(loader):
    """Seconds for one epoch and images seen; synchronise so GPU copies are counted."""
    t, n = time.perf_counter(), 0
    for _, y in loader:
        n += len(y)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t, n


for loader in loaders.values():
    epoch(loader)  # warm-up: numba JIT (FFCV), worker processes (torchvision)
rates = {b: [] for b in loaders}
for _ in range(args.rounds):
    for b, loader in loaders.items():
        s, n = epoch(loader)
        rates[b].append(n / s)
ratio = [f / t for f, t in zip(rates["ffcv"], rates["torchvision"])]
jpeg_kb = (
    sum(
        os.path.getsize(os.path.join(d, f))
        for d, _, fs in os.walk(os.path.join(root, "synthetic", "images", "train"))
        for f in fs
    )
    / 1024
    / (args.classes * args.per_class)
)
print(
    f"\n{args.classes * args.per_class} JPEGs of {args.size}x{args.size} px ({jpeg_kb:.0f} KB mean), train "
    f"crop {args.res}, batch {args.batch}, {args.workers} workers, {device}, write_mode={args.write_mode}, "
    f"{args.rounds} interleaved rounds (mean +- std)\n"
)
print("| loader | images/s | speedup vs torchvision |")
print("|---|---|---|")
for b in loaders:
    r = ratio if b == "ffcv" else [1.0]
    sd = statistics.stdev(rates[b]) if len(rates[b]) > 1 else 0.0
    rs = statistics.stdev(r) if len(r) > 1 else 0.0
    print(f"| {b} | {statistics.mean(rates[b]):.0f} +- {sd:.0f} | {statistics.mean(r):.2f} +- {rs:.2f} |")
