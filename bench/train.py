"""Training throughput per rule relative to backprop, and backprop against a plain torchvision loop.

    .venv/bin/python bench/train.py                     # CPU: the demo's setting (digits, 8 px, batch 64, small stem)
    .venv/bin/python bench/train.py --device cuda       # GPU: resnet50, 224 px, batch 256, bf16, channels_last

Each round trains one epoch (CPU: all of digits; GPU: `--steps` batches of random images already on the
device, so the loader is out of the measurement) with: a plain loop (torchvision model, SGD, the same
batches: the baseline any trainer pays), then dlwt.engine.train_one_epoch with every rule (wm with its
mirror step after every step, as the pipeline runs it). The order rotates each round and ratios are taken
within a round. Prints images/s relative to bp (mean +- std over rounds).
"""
import argparse
import time

import torch
import torch.nn.functional as F
import torchvision

import dlwt
from common import print_ratio_table  # bench/common.py (the script's folder is on sys.path)
from dlwt.engine import sgd, train_one_epoch

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("--device", default="cpu")
p.add_argument("--rules", default="bp,fa,ss,wm,kp")
p.add_argument("--rounds", type=int, default=3)
p.add_argument("--steps", type=int, default=30, help="GPU: batches per epoch")
args = p.parse_args()

device = torch.device(args.device)
cuda = device.type == "cuda"
if cuda:
    torch.backends.cudnn.benchmark = True
    arch, stem, size, batch, classes, amp = "resnet50", "imagenet", 224, 256, 1000, torch.bfloat16
    gen = torch.Generator(device=device).manual_seed(0)
    batches = [(torch.randn(batch, 3, size, size, device=device, generator=gen).contiguous(
        memory_format=torch.channels_last), torch.randint(0, classes, (batch,), device=device, generator=gen))
        for _ in range(args.steps)]
else:
    from dlwt.demo import digits_tensors

    arch, stem, size, batch, classes, amp = "resnet18", "small", 8, 64, 10, None
    train_set, _ = digits_tensors()
    n = len(train_set) // batch * batch
    x, y = train_set.tensors
    batches = [(x[i:i + batch].contiguous(), y[i:i + batch]) for i in range(0, n, batch)]
fmt = torch.channels_last if cuda else torch.contiguous_format
mirror = dict(dlwt.rules.MIRROR_DEFAULTS)


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


def dlwt_epoch(rule, model, opt):
    after = (lambda: dlwt.mirror_step(model, **mirror)) if rule == "wm" else None
    train_one_epoch(model, batches, opt, device, after_step=after, amp_dtype=amp)


setups = {rule: build(rule) for rule in args.rules.split(",")}
torch.manual_seed(0)
plain = torchvision.models.get_model(arch, num_classes=classes)
if stem == "small":
    plain = dlwt.models.build(arch, classes, "bp", stem)  # plain torch layers: bp has no custom code
plain = plain.to(device, memory_format=fmt)
plain_opt = torch.optim.SGD(plain.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-5, fused=True)
jobs = {"plain loop": lambda: plain_epoch(plain, plain_opt)}
jobs.update({rule: (lambda r=rule: dlwt_epoch(r, *setups[r])) for rule in setups})


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
print_ratio_table(f"{arch} {stem} stem, {size} px, batch {batch}, {len(batches)} steps per epoch, "
                  f"{'bf16 channels_last' if cuda else 'fp32'} on {where}; {args.rounds} rounds, torch {torch.__version__}",
                  ("loop", "images/s relative to bp (mean +- std)", "images/s (mean)"), ratios, ips, ".0f")
