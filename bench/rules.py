"""Time of one training step for each learning rule, relative to backprop, in one process; and its FLOPs at
the pipeline's own settings.

    .venv/bin/python bench/rules.py                         # CPU: ResNet-18 small stem, 32 px, batch 32
    .venv/bin/python bench/rules.py --pipeline              # params.yaml's stem, data.res, data.batch_size
    .venv/bin/python bench/rules.py --device cuda           # GPU: params.yaml's settings, bf16, channels_last

A step is dlwt.rulecost's, the one `dlwt doctor` and `make gpu-check` time: forward, backward and the fused
SGD step, plus for wm the mirror steps exactly as the pipeline runs them (params.yaml's mirror section, with
--overlay files merged). The rules are interleaved round by round so that machine noise hits them alike; each
round times `--steps` steps per rule after warm-up, and the ratio to bp is taken within the round. Prints
mean +- std of the ratios over rounds, then the FLOPs of a step of each rule at params.yaml's resolution and
batch (FlopCounterMode on the meta device): what the ratio must approach at the pipeline's size, where the
mirror's fixed cost is spread over 256 images instead of 32.
"""
import argparse

import torch

from common import print_ratio_table  # bench/common.py (the script's folder is on sys.path)
from dlwt import devices, rulecost
from dlwt.params import load

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("--device", default="cpu")
p.add_argument("--arch", default="resnet18")
p.add_argument("--rules", default="bp,fa,ss,wm,kp")
p.add_argument("--rounds", type=int, default=5)
p.add_argument("--steps", type=int, default=5)
p.add_argument("--warmup", type=int, default=3)
p.add_argument("--pipeline", action="store_true", help="time at params' stem, data.res and data.batch_size")
p.add_argument("--params", default="params.yaml", help="the pipeline's params: the mirror settings come from here")
p.add_argument("--overlay", action="append", default=[])
args = p.parse_args()
params = load(args.params, args.overlay)
cuda = args.device.startswith("cuda")
pipeline_size = args.pipeline or cuda
if not pipeline_size:  # the CPU's toy size: a step in well under a second
    params["model"]["stem"] = "small"
    params["data"].update(res=32, batch_size=32)
params["train"]["compile"] = False
res, batch, stem = params["data"]["res"], params["data"]["batch_size"], params["model"]["stem"]
num_classes = 1000
dev = devices.Device.resolve(args.device, amp="bf16" if cuda else "none", channels_last=True)  # + cudnn.benchmark
rules = args.rules.split(",")
setups = {rule: rulecost.Setup.build(params, args.arch, rule, num_classes, dev) for rule in rules}
g = torch.Generator().manual_seed(0)
x = torch.randn(batch, 3, res, res, generator=g).to(dev.torch, memory_format=dev.memory_format)
y = torch.randint(0, num_classes, (batch,), generator=g).to(dev.torch)
raw = rulecost.interleaved(setups, x, y, dev, rounds=args.rounds, steps=args.steps, warmup=args.warmup)

name = torch.cuda.get_device_name() if cuda else f"CPU, {torch.get_num_threads()} threads"
mirror = rulecost.mirror_kwargs(params["mirror"])
print_ratio_table(f"{args.arch} {stem} stem, {res} px, batch {batch}, {'bf16 ' if cuda else ''}channels_last on "
                  f"{name}; {args.rounds} rounds x {args.steps} steps, torch {torch.__version__}; wm: {mirror} "
                  f"every {params['mirror']['every']} step(s)",
                  ("rule", "step time / bp (mean +- std over rounds)", "ms per step (mean)"),
                  {r: raw[r]["vs_bp"] for r in rules}, {r: raw[r]["ms"] for r in rules}, ".1f")

full = load(args.params, args.overlay)
print(f"\nFLOPs per step at params' settings ({full['model']['stem']} stem, {full['data']['res']} px, batch "
      f"{full['data']['batch_size']}; wm's mirror counted per training step):")
print("| arch | rule | GFLOP per step | of which mirror | FLOPs / bp |")
print("|---|---|---|---|---|")
for arch in full["model"]["archs"]:
    base = rulecost.flops_per_step(full, arch, "bp", num_classes)["total_gflop"]
    for rule in rules:
        f = rulecost.flops_per_step(full, arch, rule, num_classes)
        print(f"| {arch} | {rule} | {f['total_gflop']:.0f} | {f['mirror_gflop']:.1f} | "
              f"{f['total_gflop'] / base:.4f} |")
