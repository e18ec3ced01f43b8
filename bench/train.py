"""Training throughput per rule relative to backprop, backprop against a plain torchvision loop, and the
engine's host syncs: bp with a sync every step (what the loop did before: loss.item(), the finite flag,
int() of the accuracy) against one every 50 steps (train.check_every).

    .venv/bin/python bench/train.py                     # CPU: resnet18 small stem, 32 px, batch 32
    .venv/bin/python bench/train.py --device cuda       # GPU: resnet50, 224 px, batch 256, bf16, channels_last

Each round trains one "epoch" of `--steps` batches of random images already on the device (the loader is
out of the measurement) with: a plain loop (torchvision model, SGD, the same batches: the baseline any
trainer pays), then dlwt.engine.train_one_epoch with every rule (wm with the mirror steps params.yaml sets,
as the pipeline runs them). The order rotates each round and ratios are taken within a round. Prints
images/s relative to bp (mean +- std over rounds).
"""
import argparse
import time

import torch
import torch.nn.functional as F
import torchvision

import dlwt
import dlwt.mirror
from common import print_ratio_table  # bench/common.py (the script's folder is on sys.path)
from dlwt.engine import sgd, train_one_epoch
from dlwt.params import load

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("--device", default="cpu")
p.add_argument("--rules", default="bp,fa,ss,wm,kp")
p.add_argument("--rounds", type=int, default=3)
p.add_argument("--steps", type=int, default=10, help="batches per epoch")
p.add_argument("--params", default="params.yaml", help="the pipeline's params: the mirror settings come from here")
p.add_argument("--overlay", action="append", default=[])
args = p.parse_args()
mcfg = load(args.params, args.overlay)["mirror"]
mirror = {k: mcfg[k] for k in ("noise_std", "lr", "weight_decay", "batch_size", "size")}

device = torch.device(args.device)
cuda = device.type == "cuda"
if cuda:
    torch.backends.cudnn.benchmark = True
arch, stem, size, batch, classes, amp = (("resnet50", "imagenet", 224, 256, 1000, torch.bfloat16) if cuda else
                                         ("resnet18", "small", 32, 32, 10, None))
gen = torch.Generator(device=device).manual_seed(0)
batches = [(torch.randn(batch, 3, size, size, device=device, generator=gen).contiguous(
    memory_format=torch.channels_last), torch.randint(0, classes, (batch,), device=device, generator=gen))
    for _ in range(args.steps)]
fmt = torch.channels_last  # train.channels_last: what the pipeline runs on every device


def build(rule):
    torch.manual_seed(0)
    model = dlwt.models.build(arch, classes, rule, stem).to(device, memory_format=fmt)
    opt = sgd(model, 0.01, 0.9, 5e-5)
    return model, opt


def plain_epoch(model, opt):
    model.train()
    for images, targets in batches:
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            loss = F.cross_entropy(model(images), targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


class Batches(list):
    def set_epoch(self, *a, **k):
        pass


batches = Batches(batches)


def dlwt_epoch(rule, model, opt, sync_every=50):
    # what the rule does after each step, as the pipeline runs it (wm: mirror.steps every mirror.every steps)
    after = dlwt.mirror.after_step(model, rule, every=mcfg["every"], steps=mcfg["steps"], **mirror)
    train_one_epoch(model, batches, opt, device, after_step=after, amp_dtype=amp, sync_every=sync_every)


setups = {rule: build(rule) for rule in args.rules.split(",")}
torch.manual_seed(0)
plain = torchvision.models.get_model(arch, num_classes=classes)
if stem == "small":
    plain = dlwt.models.build(arch, classes, "bp", stem)  # plain torch layers: bp has no custom code
plain = plain.to(device, memory_format=fmt)
plain_opt = torch.optim.SGD(plain.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-5, fused=True)
jobs = {"plain loop": lambda: plain_epoch(plain, plain_opt)}
jobs.update({rule: (lambda r=rule: dlwt_epoch(r, *setups[r])) for rule in setups})
bp_sync = build("bp")
jobs["bp, sync every step"] = lambda: dlwt_epoch("bp", *bp_sync, sync_every=1)


def timed(fn):
    if cuda:
        torch.cuda.synchronize()
    t = time.perf_counter()
    fn()
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - t


for fn in jobs.values():  # warm-up (cuDNN autotuning, allocator)
    timed(fn)
names = list(jobs)
ratios = {name: [] for name in names}
ips = {name: [] for name in names}
for r in range(args.rounds):
    order = names[r % len(names):] + names[:r % len(names)]
    seconds = {name: timed(jobs[name]) for name in order}
    for name in names:
        ratios[name].append(seconds["bp"] / seconds[name])  # images/s relative to bp
        ips[name].append(len(batches) * batch / seconds[name])

where = torch.cuda.get_device_name() if cuda else f"CPU, {torch.get_num_threads()} threads"
print_ratio_table(f"{arch} {stem} stem, {size} px, batch {batch}, {len(batches)} steps per epoch, wm: {mirror}, "
                  f"{'bf16 channels_last' if cuda else 'fp32'} on {where}; {args.rounds} rounds, torch {torch.__version__}",
                  ("loop", "images/s relative to bp (mean +- std)", "images/s (mean)"), ratios, ips, ".0f")
