"""Time of one training step of ResNet-18 for each learning rule, relative to backprop, in one process.

    .venv/bin/python bench/rules.py                      # CPU: small-image stem, 32 px, batch 32
    .venv/bin/python bench/rules.py --device cuda        # GPU: ImageNet stem, 224 px, batch 128, bf16, channels_last

A step is forward, backward and the SGD step, plus for wm the mirror steps exactly as the pipeline runs them
(params.yaml's mirror section, with --overlay files merged: mirror.steps every mirror.every steps, its noise
batch and map size). The rules are interleaved
round by round so that machine noise hits them alike; each round times `--steps` steps per rule after
warm-up, and the ratio to bp is taken within the round. Prints mean +- std of the ratios over rounds.
"""
import argparse
import time

import torch
import torch.nn.functional as F

import dlwt
from common import print_ratio_table  # bench/common.py (the script's folder is on sys.path)
from dlwt.engine import sgd
from dlwt.params import load

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("--device", default="cpu")
p.add_argument("--arch", default="resnet18")
p.add_argument("--rules", default="bp,fa,ss,wm,kp")
p.add_argument("--rounds", type=int, default=5)
p.add_argument("--steps", type=int, default=5)
p.add_argument("--warmup", type=int, default=3)
p.add_argument("--params", default="params.yaml", help="the pipeline's params: the mirror settings come from here")
p.add_argument("--overlay", action="append", default=[])
args = p.parse_args()
mcfg = load(args.params, args.overlay)["mirror"]
mirror = {k: mcfg[k] for k in ("noise_std", "lr", "weight_decay", "batch_size", "size")}

cuda = args.device.startswith("cuda")
device = torch.device(args.device)
size, batch, stem = (224, 128, "imagenet") if cuda else (32, 32, "small")
num_classes = 1000 if cuda else 10
if cuda:
    torch.backends.cudnn.benchmark = True
fmt = torch.channels_last if cuda else torch.contiguous_format
rules = args.rules.split(",")


def make(rule):
    torch.manual_seed(0)
    model = dlwt.models.build(args.arch, num_classes, rule, stem).to(device, memory_format=fmt)
    opt = sgd(model, 0.01, 0.9, 5e-4)
    return model, opt


setups = {rule: make(rule) for rule in rules}
x = torch.randn(batch, 3, size, size, device=device).to(memory_format=fmt)
y = torch.randint(0, num_classes, (batch,), device=device)


count = {}


def step(rule):
    model, opt = setups[rule]
    opt.zero_grad(set_to_none=True)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
        loss = F.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    count[rule] = count.get(rule, 0) + 1
    if rule == "wm" and count[rule] % mcfg["every"] == 0:
        dlwt.mirror_step(model, steps=mcfg["steps"], **mirror)


def timed(rule, n):
    if cuda:
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(n):
        step(rule)
    if cuda:
        torch.cuda.synchronize()
    return (time.perf_counter() - t) / n


for rule in rules:
    timed(rule, args.warmup)
ratios = {rule: [] for rule in rules}
ms = {rule: [] for rule in rules}
for _ in range(args.rounds):
    times = {rule: timed(rule, args.steps) for rule in rules}
    for rule in rules:
        ratios[rule].append(times[rule] / times["bp"])
        ms[rule].append(times[rule] * 1e3)

name = torch.cuda.get_device_name() if cuda else f"CPU, {torch.get_num_threads()} threads"
print_ratio_table(f"{args.arch} {stem} stem, {size} px, batch {batch}, {'bf16 channels_last' if cuda else 'fp32'}"
                  f" on {name}; {args.rounds} rounds x {args.steps} steps, torch {torch.__version__}; wm: {mirror}",
                  ("rule", "step time / bp (mean +- std over rounds)", "ms per step (mean)"), ratios, ms, ".1f")
